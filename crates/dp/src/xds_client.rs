//! The ADS client: one gRPC/TLS stream to the zone control plane, state-of-the-world updates
//! applied to the proxy's configuration, ACK or NACK per response, reconnect with jittered
//! exponential backoff. The proxy keeps serving its last good configuration while disconnected.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshzone_xds::decode::ProxyConfig;
use meshzone_xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use meshzone_xds::discovery::{DiscoveryRequest, DiscoveryResponse};
use meshzone_xds::envoy_types::pb::envoy::config::core::v3::Node;
use meshzone_xds::envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
use meshzone_xds::envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use meshzone_xds::envoy_types::pb::google::rpc::Status as RpcStatus;
use meshzone_xds::names::{TypeUrl, node_id};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tracing::{debug, info, warn};

use crate::runtime::Runtime;
use crate::stats::Stats;

pub struct XdsSettings {
    pub cp_address: String,
    /// TLS to the control plane, verified with `--ca-cert-file` (a self-signed one is pinned).
    pub tls: meshzone_tls_client::Connector,
    pub token: String,
    pub mesh: String,
    pub name: String,
    /// The Dataplane to register, as JSON, when kuma-dp was given one.
    pub dataplane_json: Option<String>,
    /// `dataplane`, `ingress` or `egress`; zone proxies are named by their resource name alone.
    pub proxy_type: &'static str,
    /// What the control plane may read over the proxy admin stream.
    pub admin: crate::admin::AdminView,
}

/// A refusal that retrying cannot fix (bad token, unknown Dataplane, bad resource).
#[derive(Debug, thiserror::Error)]
#[error("the control plane at {address} refused this proxy: {message}")]
pub struct Refused {
    pub address: String,
    pub message: String,
}

enum Ended {
    /// The stream worked and then ended; reconnect.
    AfterUpdates,
    /// It never got going: no connection, or the stream broke before any configuration.
    /// Reconnect after a backoff.
    Failed(String),
    /// The control plane was reached and answered with a status worth retrying (Unavailable
    /// while it starts or stands by, ResourceExhausted, Internal…). Reconnect after a backoff.
    Answered(String),
    Refused(Refused),
}

const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

fn jitter(d: Duration) -> Duration {
    // ±20 %, from the clock's nanoseconds: enough to spread reconnecting proxies.
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let factor = 0.8 + f64::from(nanos % 400) / 1000.0;
    d.mul_f64(factor)
}

/// Runs until the process stops. Returns only when the control plane refuses the proxy before
/// it ever received a configuration.
pub async fn run(
    settings: XdsSettings,
    runtime: watch::Sender<Arc<Runtime>>,
    ready: watch::Sender<bool>,
    stats: Arc<Stats>,
) -> Result<(), Refused> {
    let mut backoff = BACKOFF_START;
    let mut ever_connected = false;
    loop {
        match connect_once(&settings, &runtime, &ready, &stats).await {
            Ended::AfterUpdates => {
                ever_connected = true;
                backoff = BACKOFF_START;
                warn!(
                    cp = settings.cp_address,
                    "lost the control plane; serving the last configuration and reconnecting"
                );
            }
            Ended::Refused(r) if !ever_connected => return Err(r),
            Ended::Refused(r) => warn!("{r}; retrying"),
            Ended::Failed(reason) => {
                warn!(
                    cp = settings.cp_address,
                    reason, "cannot reach the control plane; retrying in {backoff:?}"
                );
            }
            Ended::Answered(answer) => {
                warn!(
                    cp = settings.cp_address,
                    answer,
                    "the control plane did not serve this proxy yet; retrying in {backoff:?}"
                );
            }
        }
        stats.set("control_plane.connected_state", 0);
        stats.inc("control_plane.reconnects");
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn node(settings: &XdsSettings) -> Node {
    let mut fields = std::collections::BTreeMap::new();
    if let Some(json) = &settings.dataplane_json {
        fields.insert(
            "dataplane.resource".to_string(),
            Value {
                kind: Some(Kind::StringValue(json.clone())),
            },
        );
    }
    fields.insert(
        "dataplane.proxyType".to_string(),
        Value {
            kind: Some(Kind::StringValue(settings.proxy_type.to_string())),
        },
    );
    let id = if settings.proxy_type == "dataplane" {
        node_id(&settings.mesh, &settings.name)
    } else {
        settings.name.clone()
    };
    Node {
        id,
        metadata: Some(Struct {
            fields: fields.into_iter().collect(),
        }),
        user_agent_name: "kuma-dp".into(),
        user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
            meshzone_model::VERSION.into(),
        )),
        ..Default::default()
    }
}

async fn connect_once(
    settings: &XdsSettings,
    runtime: &watch::Sender<Arc<Runtime>>,
    ready: &watch::Sender<bool>,
    stats: &Stats,
) -> Ended {
    let address = meshzone_tls_client::Connector::tonic_address(&settings.cp_address);
    let endpoint = match Channel::from_shared(address) {
        Ok(e) => e
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(15))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true),
        Err(e) => {
            return Ended::Refused(Refused {
                address: settings.cp_address.clone(),
                message: format!("invalid --cp-address: {e}"),
            });
        }
    };
    let channel = match endpoint.connect_with_connector(settings.tls.clone()).await {
        Ok(c) => c,
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg = format!("{msg}: {s}");
                src = s.source();
            }
            if msg.contains("certificate") {
                msg.push_str(
                    " (--ca-cert-file must be the CA, or the self-signed certificate, of the control plane's KUMA_DP_SERVER_TLS_CERT_FILE)",
                );
            }
            return Ended::Failed(msg);
        }
    };
    let mut client = AggregatedDiscoveryServiceClient::new(channel.clone())
        .max_decoding_message_size(16 * 1024 * 1024);
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
    let node = node(settings);
    for t in TypeUrl::ALL {
        let _ = tx
            .send(DiscoveryRequest {
                node: Some(node.clone()),
                type_url: t.as_str().to_string(),
                ..Default::default()
            })
            .await;
    }
    let mut request = Request::new(ReceiverStream::new(rx));
    if let Err(e) = meshzone_tls_client::bearer::present(request.metadata_mut(), &settings.token) {
        return Ended::Refused(Refused {
            address: settings.cp_address.clone(),
            message: format!("the data-plane token: {e}"),
        });
    }
    let responses = match client.stream_aggregated_resources(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => return classify(&settings.cp_address, status),
    };
    info!(cp = settings.cp_address, "connected to the control plane");
    stats.set("control_plane.connected_state", 1);
    // The admin stream lives as long as this ADS stream: it ends with it.
    let admin = answer_admin_requests(channel, settings, node.id.clone());
    tokio::select! {
        ended = follow_updates(settings, runtime, ready, stats, responses, tx, node) => ended,
        never = admin => match never {},
    }
}

/// Applies every update on the ADS stream and answers with an ACK or NACK, until it ends.
async fn follow_updates(
    settings: &XdsSettings,
    runtime: &watch::Sender<Arc<Runtime>>,
    ready: &watch::Sender<bool>,
    stats: &Stats,
    mut responses: tonic::Streaming<DiscoveryResponse>,
    tx: mpsc::Sender<DiscoveryRequest>,
    node: Node,
) -> Ended {
    let mut config: ProxyConfig = runtime.borrow().config.clone();
    let mut received: BTreeSet<TypeUrl> = BTreeSet::new();
    let mut updates = 0u64;
    loop {
        let response = match responses.message().await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(status) if updates == 0 => return classify(&settings.cp_address, status),
            Err(status) => {
                warn!(%status, "stream to the control plane ended");
                break;
            }
        };
        let Some(type_url) = TypeUrl::parse(&response.type_url) else {
            continue;
        };
        let mut next = config.clone();
        let errors = next.apply(type_url, &response.resources);
        let (rt, problems) = Runtime::build(next.clone(), &runtime.borrow());
        let mut reasons: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        reasons.extend(problems.into_iter().map(|p| p.0));
        let ack = DiscoveryRequest {
            node: Some(node.clone()),
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            version_info: if errors.is_empty() {
                response.version_info.clone()
            } else {
                String::new()
            },
            error_detail: (!errors.is_empty()).then(|| RpcStatus {
                code: Code::InvalidArgument as i32,
                message: reasons.join("; "),
                details: vec![],
            }),
            ..Default::default()
        };
        if errors.is_empty() {
            config = next;
            runtime.send_replace(Arc::new(rt));
            stats.retain_configured(
                config.clusters.keys().map(String::as_str),
                config.listeners.keys().map(String::as_str),
            );
            stats.inc(format!("control_plane.{}.update_success", type_url.short()));
            if !reasons.is_empty() {
                warn!(
                    problems = reasons.join("; "),
                    "configuration applied with problems"
                );
            }
        } else {
            stats.inc(format!(
                "control_plane.{}.update_rejected",
                type_url.short()
            ));
            warn!(
                type_url = type_url.short(),
                reasons = reasons.join("; "),
                "rejected an update (NACK)"
            );
        }
        updates += 1;
        received.insert(type_url);
        if received.len() == TypeUrl::ALL.len() {
            ready.send_replace(true);
        }
        if tx.send(ack).await.is_err() {
            break;
        }
    }
    if updates == 0 {
        Ended::Failed("stream ended before any configuration arrived".into())
    } else {
        Ended::AfterUpdates
    }
}

/// Opens the proxy admin stream on `channel` and answers the control plane's requests (stats,
/// clusters) until the stream ends; then stays pending, since the ADS stream decides when this
/// connection is over. A control plane without the stream (an older one) is only logged.
async fn answer_admin_requests(
    channel: Channel,
    settings: &XdsSettings,
    node_id: String,
) -> std::convert::Infallible {
    use meshzone_xds::proxy_admin::{
        AdminAnswer, CLUSTERS, STATS, proxy_admin_client::ProxyAdminClient,
    };
    let (tx, rx) = mpsc::channel::<AdminAnswer>(4);
    let hello = AdminAnswer {
        node_id,
        proxy_type: settings.proxy_type.to_string(),
        ..Default::default()
    };
    if tx.send(hello).await.is_err() {
        return std::future::pending().await;
    }
    let mut request = Request::new(ReceiverStream::new(rx));
    if let Err(e) = meshzone_tls_client::bearer::present(request.metadata_mut(), &settings.token) {
        warn!(reason = %e, "the data-plane token cannot be sent: no admin stream");
        return std::future::pending().await;
    }
    let mut requests = match ProxyAdminClient::new(channel).stream(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            warn!(%status, "the control plane opened no admin stream: it cannot show this proxy's stats");
            return std::future::pending().await;
        }
    };
    loop {
        let request = match requests.message().await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(status) => {
                debug!(%status, "admin stream ended");
                break;
            }
        };
        let mut answer = AdminAnswer {
            id: request.id,
            ..Default::default()
        };
        match request.what.as_str() {
            STATS => answer.body = settings.admin.stats_text().into_bytes(),
            CLUSTERS => answer.body = settings.admin.clusters_text().into_bytes(),
            other => answer.error = format!("kuma-dp cannot show {other:?}"),
        }
        if tx.send(answer).await.is_err() {
            break;
        }
    }
    std::future::pending().await
}

fn classify(cp_address: &str, status: tonic::Status) -> Ended {
    match status.code() {
        Code::Unauthenticated
        | Code::PermissionDenied
        | Code::NotFound
        | Code::InvalidArgument
        | Code::FailedPrecondition => Ended::Refused(Refused {
            address: cp_address.to_string(),
            message: status.message().to_string(),
        }),
        // No ADS here at all (another gRPC server): retrying cannot help.
        Code::Unimplemented => Ended::Refused(Refused {
            address: cp_address.to_string(),
            message: format!(
                "it does not serve xDS ({}); is this a zone control plane's DP server (port 5678 by default)?",
                status.message()
            ),
        }),
        // tonic turns a broken connection into a Status carrying the transport error as its
        // source; a status the control plane sent has none.
        _ if std::error::Error::source(&status).is_some() => {
            Ended::Failed(format!("{}: {}", status.code(), status.message()))
        }
        _ => Ended::Answered(format!("{}: {}", status.code(), status.message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_told_apart_by_who_sent_them() {
        let broken = tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        )));
        let cases: Vec<(tonic::Status, &str)> = vec![
            (tonic::Status::unauthenticated("token expired"), "refused"),
            (tonic::Status::not_found("no Dataplane web"), "refused"),
            (tonic::Status::unimplemented(""), "refused"),
            (
                tonic::Status::unavailable("this instance is not the leader"),
                "answered",
            ),
            (tonic::Status::internal("store error"), "answered"),
            (broken, "failed"),
        ];
        for (status, want) in cases {
            let shown = format!("{status:?}");
            let got = match classify("https://zone-cp:5678", status) {
                Ended::Refused(_) => "refused",
                Ended::Answered(a) => {
                    assert!(a.contains(": "), "{a}");
                    "answered"
                }
                Ended::Failed(_) => "failed",
                Ended::AfterUpdates => "after updates",
            };
            assert_eq!(got, want, "{shown}");
        }
    }
}
