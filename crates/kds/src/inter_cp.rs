//! Global instances sharing a Postgres store: a request about a zone whose KDS streams another
//! instance holds goes to that instance (as Kuma's inter-CP forwarding does), over its KDS port.
//! Which instance holds the zone comes from the ZoneInsight's open subscription; where it is
//! and which certificate it presents (pinned) from the instance's own record in the database;
//! the bearer token is the instances' shared secret, which only the database's users can read.

use std::sync::Arc;
use std::time::Duration;

use meshzone_model::{ResourceKey, ResourceType, Spec};
use meshzone_store::Store;
use meshzone_store::postgres::PostgresBackend;
use meshzone_tls_client::Connector;

use crate::inspect::{ForwardFn, InspectError};
use crate::proto::kds_sync_client::KdsSyncClient;
use crate::proto::{ForwardedInspect, InspectRequest, InspectResponse};

const FORWARD_TIMEOUT: Duration = Duration::from_secs(8);

/// Forwards to the instance holding the zone; `own` is this instance's id.
pub fn forwarder(store: Store, backend: PostgresBackend, own: String, token: String) -> ForwardFn {
    let token: Arc<str> = token.into();
    Arc::new(move |zone: String, request: InspectRequest| {
        let (store, backend, own, token) =
            (store.clone(), backend.clone(), own.clone(), token.clone());
        Box::pin(async move { forward(&store, &backend, &own, &token, zone, request).await })
    })
}

/// The global instance holding `zone`'s newest open subscription, unless it is `own`.
async fn holder(store: &Store, zone: &str, own: &str) -> Result<Option<String>, String> {
    let key = ResourceKey::global(ResourceType::ZoneInsight, zone);
    let Some(r) = store.find(&key).await.map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let Spec::ZoneInsight(spec) = &r.spec else {
        return Ok(None);
    };
    Ok(spec
        .subscriptions
        .iter()
        .filter(|s| s.disconnect_time.is_none() && !s.global_instance_id.is_empty())
        .max_by_key(|s| s.connect_time)
        .map(|s| s.global_instance_id.clone())
        .filter(|id| id != own))
}

async fn forward(
    store: &Store,
    backend: &PostgresBackend,
    own: &str,
    token: &str,
    zone: String,
    request: InspectRequest,
) -> Result<InspectResponse, InspectError> {
    let failed = |instance: &str, message: String| InspectError::Forward {
        zone: zone.clone(),
        instance: instance.to_string(),
        message,
    };
    let Some(instance) = holder(store, &zone, own)
        .await
        .map_err(|e| failed("?", e))?
    else {
        return Err(InspectError::Offline(zone));
    };
    let (url, certificate) = backend
        .instance_endpoint(&instance)
        .await
        .map_err(|e| failed(&instance, e.to_string()))?
        .ok_or_else(|| failed(&instance, "it advertised no inter-CP address".into()))?;
    let channel = Connector::pinned_channel(&url, &certificate, 5685)
        .await
        .map_err(|e| {
            failed(
                &instance,
                format!(
                    "{e} (KUMA_INTER_CP_CATALOG_INSTANCE_ADDRESS of that instance must be an address this one reaches, named in its KDS certificate)"
                ),
            )
        })?;
    let mut call = tonic::Request::new(ForwardedInspect {
        zone: zone.clone(),
        request: Some(request),
    });
    call.set_timeout(FORWARD_TIMEOUT);
    meshzone_tls_client::bearer::present(call.metadata_mut(), token)
        .map_err(|e| failed(&instance, e.to_string()))?;
    KdsSyncClient::new(channel)
        .forward_inspect(call)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| failed(&instance, status.message().to_string()))
}
