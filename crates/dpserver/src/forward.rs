//! Zone CP instances sharing a Postgres store: a request about a proxy connected to another
//! instance (its config dump, stats or clusters) goes to that instance's DP server as
//! `ProxyAdmin.Forward`. Which instance holds the proxy comes from its insight's open
//! subscription; where it is and its DP server certificate (pinned) from the instance's record
//! in the database; the bearer token is the instances' shared secret.

use std::sync::Arc;
use std::time::Duration;

use meshzone_model::{ResourceKey, ResourceType};
use meshzone_store::Store;
use meshzone_store::postgres::PostgresBackend;
use meshzone_tls_client::Connector;
use meshzone_xds::proxy_admin::proxy_admin_client::ProxyAdminClient;
use meshzone_xds::proxy_admin::{AdminAnswer, ForwardedRequest};

const FORWARD_TIMEOUT: Duration = Duration::from_secs(8);

/// Where requests about proxies of other instances go.
pub(crate) struct Forwarder {
    pub(crate) backend: PostgresBackend,
    pub(crate) own: String,
    pub(crate) token: Arc<str>,
}

fn insight_type(rt: ResourceType) -> Option<ResourceType> {
    match rt {
        ResourceType::Dataplane => Some(ResourceType::DataplaneInsight),
        ResourceType::ZoneIngress => Some(ResourceType::ZoneIngressInsight),
        ResourceType::ZoneEgress => Some(ResourceType::ZoneEgressInsight),
        _ => None,
    }
}

/// The other instance holding the proxy's newest open subscription, if one does.
async fn holder(store: &Store, key: &ResourceKey, own: &str) -> Option<String> {
    let insight = insight_type(key.resource_type)?;
    let r = store
        .find(&ResourceKey::new(insight, &key.mesh, &key.name))
        .await
        .ok()??;
    r.spec
        .proxy_subscriptions()?
        .iter()
        .filter(|s| s.disconnect_time.is_none() && !s.control_plane_instance_id.is_empty())
        .max_by_key(|s| s.connect_time)
        .map(|s| s.control_plane_instance_id.clone())
        .filter(|id| id != own)
}

impl Forwarder {
    /// Whether `token` is the instances' shared token (compared in time that depends on the
    /// length only).
    pub(crate) fn is_token(&self, token: &str) -> bool {
        meshzone_identity::same_secret(token, &self.token)
    }

    /// Asks the instance holding `key` for `what`; `Ok(None)` when no other instance holds it.
    pub(crate) async fn ask(
        &self,
        store: &Store,
        key: &ResourceKey,
        what: &str,
    ) -> Result<Option<Vec<u8>>, String> {
        let Some(instance) = holder(store, key, &self.own).await else {
            return Ok(None);
        };
        let failed = |m: String| {
            format!("{key} is connected to instance {instance:?}, which could not be asked: {m}")
        };
        let (url, certificate) = self
            .backend
            .instance_endpoint(&instance)
            .await
            .map_err(|e| failed(e.to_string()))?
            .ok_or_else(|| failed("it advertised no address".into()))?;
        let channel = Connector::pinned_channel(&url, &certificate, 5678)
            .await
            .map_err(|e| {
                failed(format!(
                    "{e} (KUMA_INTER_CP_CATALOG_INSTANCE_ADDRESS of that instance must be an address this one reaches, named in its DP server certificate)"
                ))
            })?;
        let mut call = tonic::Request::new(ForwardedRequest {
            what: what.to_string(),
            r#type: key.resource_type.name().to_string(),
            mesh: key.mesh.clone(),
            name: key.name.clone(),
        });
        call.set_timeout(FORWARD_TIMEOUT);
        meshzone_tls_client::bearer::present(call.metadata_mut(), &self.token)
            .map_err(|e| failed(e.to_string()))?;
        let AdminAnswer { body, error, .. } = ProxyAdminClient::new(channel)
            .forward(call)
            .await
            .map_err(|status| failed(status.message().to_string()))?
            .into_inner();
        if error.is_empty() {
            Ok(Some(body))
        } else {
            Err(error)
        }
    }
}
