//! The proxy admin stream (`meshzone.proxyadmin.v1.ProxyAdmin`): each kuma-dp opens one next to
//! its ADS stream, authenticated the same way, so that this control plane can read the proxy's
//! Envoy-style `/stats` and `/clusters` without dialing it. [`ProxyAdmins`] asks.

use std::sync::Arc;
use std::time::Duration;

use meshzone_model::ResourceKey;
use meshzone_reverse::{CallError, ReverseCalls};
use meshzone_xds::envoy_types::pb::envoy::config::core::v3::Node;
use meshzone_xds::envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use meshzone_xds::proxy_admin::proxy_admin_server::{ProxyAdmin, ProxyAdminServer};
use meshzone_xds::proxy_admin::{AdminAnswer, AdminRequest, ForwardedRequest};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use crate::Shared;
use crate::handshake::{PROXY_TYPE_METADATA_KEY, admit, identify};

/// How long a proxy has to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) type AdminCalls = ReverseCalls<AdminRequest, AdminAnswer>;

fn answer_id(a: &AdminAnswer) -> &str {
    &a.id
}

/// The gRPC service proxies open their admin stream on.
#[derive(Clone)]
pub struct ProxyAdminService {
    pub(crate) shared: Arc<Shared>,
}

impl ProxyAdminService {
    pub fn into_server(self) -> ProxyAdminServer<ProxyAdminService> {
        ProxyAdminServer::new(self).max_decoding_message_size(16 * 1024 * 1024)
    }
}

#[tonic::async_trait]
impl ProxyAdmin for ProxyAdminService {
    type StreamStream = ReceiverStream<Result<AdminRequest, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<AdminAnswer>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let (token, mut answers) = admit(&self.shared, request)?;
        let hello = answers
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream closed before the hello"))?;
        // The same identity check as the ADS stream's, from the same node id and proxy type.
        let node = Node {
            id: hello.node_id,
            metadata: Some(Struct {
                fields: [(
                    PROXY_TYPE_METADATA_KEY.to_string(),
                    Value {
                        kind: Some(Kind::StringValue(hello.proxy_type)),
                    },
                )]
                .into_iter()
                .collect(),
            }),
            ..Default::default()
        };
        let (_, key) = identify(&self.shared, &token, &node).await?;
        debug!(proxy = %key, "proxy admin stream open");
        let requests = self.shared.admin_calls.attach(
            key.to_string(),
            answers,
            answer_id,
            self.shared.shutdown.clone(),
            crate::stream::shutting_down(),
        );
        Ok(Response::new(ReceiverStream::new(requests)))
    }

    async fn forward(
        &self,
        request: Request<ForwardedRequest>,
    ) -> Result<Response<AdminAnswer>, Status> {
        let Some(forwarder) = self.shared.forwarder.get() else {
            return Err(Status::unimplemented(
                "this control plane takes no forwarded requests: it shares no Postgres store with other instances",
            ));
        };
        let token = meshzone_identity::bearer_token(meshzone_tls_client::bearer::authorization(
            request.metadata(),
        ));
        if !forwarder.is_token(&token) {
            return Err(Status::unauthenticated(
                "forwarded requests need the token the instances share in their store",
            ));
        }
        let f = request.into_inner();
        let rt = f
            .r#type
            .parse::<meshzone_model::ResourceType>()
            .map_err(|_| Status::invalid_argument(format!("unknown type {:?}", f.r#type)))?;
        let key = ResourceKey::new(rt, &f.mesh, &f.name);
        let mut answer = AdminAnswer::default();
        // Answered from this instance only: a forwarded request is never forwarded again.
        if f.what == meshzone_xds::proxy_admin::CONFIG_DUMP {
            let dumps = crate::ConfigDumps {
                shared: self.shared.clone(),
            };
            match dumps.dump(&key) {
                Some(d) => answer.body = serde_json::to_vec(&d).unwrap_or_default(),
                None => answer.error = format!("{key} is not connected to this instance"),
            }
        } else {
            match self
                .shared
                .admin_calls
                .call(
                    &key.to_string(),
                    |id| AdminRequest {
                        id,
                        what: f.what.clone(),
                    },
                    ANSWER_TIMEOUT,
                )
                .await
            {
                Ok(a) if a.error.is_empty() => answer.body = a.body,
                Ok(a) => answer.error = format!("{key} cannot show {}: {}", f.what, a.error),
                Err(e) => answer.error = format!("{key} {e} on this instance"),
            }
        }
        Ok(Response::new(answer))
    }
}

/// Reads connected proxies' admin data (`what` is one of the `meshzone_xds::proxy_admin`
/// constants) over their admin streams.
#[derive(Clone)]
pub struct ProxyAdmins {
    pub(crate) shared: Arc<Shared>,
}

impl ProxyAdmins {
    /// The proxy's answer as text, from this instance or the one the proxy is connected to;
    /// `Err` says why there is none.
    pub async fn ask(&self, key: &ResourceKey, what: &str) -> Result<String, String> {
        let request = |id| AdminRequest {
            id,
            what: what.to_string(),
        };
        let peer = key.to_string();
        match self
            .shared
            .admin_calls
            .call(&peer, request, ANSWER_TIMEOUT)
            .await
        {
            Ok(answer) if answer.error.is_empty() => String::from_utf8(answer.body)
                .map_err(|_| format!("{key} sent {what} that is not UTF-8")),
            Ok(answer) => Err(format!("{key} cannot show {what}: {}", answer.error)),
            // Not connected here: connected to another instance on the same store, or nowhere.
            Err(CallError::Offline) if !self.shared.is_configured(key) => {
                let forwarded = match self.shared.forwarder.get() {
                    Some(f) => f.ask(&self.shared.store, key, what).await?,
                    None => None,
                };
                let body = forwarded.ok_or_else(|| {
                    format!("{key} is not connected to this control plane (no {what} to show)")
                })?;
                String::from_utf8(body).map_err(|_| format!("{key} sent {what} that is not UTF-8"))
            }
            Err(CallError::Offline) => Err(format!(
                "{key} is connected but opened no admin stream (an Envoy sidecar does not): read {what} from its own admin API on its host"
            )),
            Err(e) => Err(format!("{key} {e}")),
        }
    }
}
