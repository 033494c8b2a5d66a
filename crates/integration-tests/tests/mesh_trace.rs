//! MeshTrace applied on global traces a zone's kuma-dp sidecars: real kuma-cp processes
//! (global + zone-1), a frontend application that calls backend through its sidecar's outbound
//! passing the trace headers on (as an instrumented application does), and two kuma-dp
//! sidecars. A request to frontend's inbound gives three spans — frontend's SERVER, its
//! CLIENT, backend's SERVER — of one trace, each the child of the one before, with the policy's
//! tags, at an OTLP/gRPC receiver the test runs (the collector's `TraceService`) and then, with
//! the policy switched to Zipkin, at a Zipkin v2 HTTP receiver the test runs (there with
//! Zipkin's shared span context: backend's SERVER span reuses frontend's CLIENT span id). A
//! caller's "not sampled" decision is respected: such a request leaves no span anywhere. A real
//! Envoy 1.40 sidecar under the same policy exports to the same OTLP receiver, its span a
//! child of kuma-dp's.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshzone_integration_tests::{
    ControlPlane, DataPlane, EchoServer, Envoy, apply_ok, free_port, global_and_one_zone,
    http_request, start_sidecar, wait_for,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

const PROPAGATION: Duration = Duration::from_secs(30);

const MESH: &str = "type: Mesh\nname: default\n";

fn trace_policy(backend: &str) -> String {
    format!(
        "type: MeshTrace
name: trace-all
mesh: default
spec:
  targetRef: {{kind: Mesh}}
  default:
    backends:
      - {backend}
    tags:
      - name: team
        literal: core
      - name: tenant
        header: {{name: x-tenant, default: none}}
"
    )
}

/// One span as the receivers saw it, in a common shape.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    service: String,
    trace_id: String,
    id: String,
    parent: Option<String>,
    kind: String,
    tags: Vec<(String, String)>,
}

impl Seen {
    fn tag(&self, name: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

type Spans = Arc<Mutex<Vec<Seen>>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The collector's TraceService: keeps every span it is sent.
struct OtlpReceiver(Spans);

#[tonic::async_trait]
impl TraceService for OtlpReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(AnyValue::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                let kind = match SpanKind::try_from(span.kind) {
                    Ok(SpanKind::Server) => "SERVER",
                    Ok(SpanKind::Client) => "CLIENT",
                    _ => "OTHER",
                };
                seen.push(Seen {
                    service: service.clone(),
                    trace_id: hex(&span.trace_id),
                    id: hex(&span.span_id),
                    parent: (!span.parent_span_id.is_empty()).then(|| hex(&span.parent_span_id)),
                    kind: kind.into(),
                    tags: span
                        .attributes
                        .iter()
                        .filter_map(|a| match a.value.as_ref()?.value.as_ref()? {
                            AnyValue::StringValue(s) => Some((a.key.clone(), s.clone())),
                            _ => None,
                        })
                        .collect(),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A Zipkin collector's `POST /api/v2/spans`: keeps every span of each JSON list.
async fn zipkin_collector(
    axum::extract::State(spans): axum::extract::State<Spans>,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    let Ok(serde_json::Value::Array(list)) = serde_json::from_slice(&body) else {
        return axum::http::StatusCode::BAD_REQUEST;
    };
    let mut seen = spans.lock().unwrap_or_else(|e| e.into_inner());
    for s in list {
        let text = |k: &str| s[k].as_str().map(str::to_string);
        seen.push(Seen {
            service: s["localEndpoint"]["serviceName"]
                .as_str()
                .unwrap_or_default()
                .into(),
            trace_id: text("traceId").unwrap_or_default(),
            id: text("id").unwrap_or_default(),
            parent: text("parentId"),
            kind: text("kind").unwrap_or_default(),
            tags: s["tags"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    axum::http::StatusCode::ACCEPTED
}

/// frontend: answers each request by calling backend through its sidecar's outbound, with the
/// trace headers it received.
async fn frontend_app(
    axum::extract::State(outbound): axum::extract::State<u16>,
    headers: axum::http::HeaderMap,
) -> (axum::http::StatusCode, String) {
    let client = reqwest::Client::new();
    let mut req = client.get(format!("http://127.0.0.1:{outbound}/"));
    for (name, value) in &headers {
        let n = name.as_str();
        if n == "traceparent" || n == "tracestate" || n.starts_with("x-b3-") || n == "x-tenant" {
            req = req.header(n, value.as_bytes());
        }
    }
    match req.send().await {
        Ok(r) => (
            axum::http::StatusCode::OK,
            format!("frontend got {}", r.status()),
        ),
        Err(e) => (axum::http::StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

struct Receivers {
    otlp: SocketAddr,
    zipkin: SocketAddr,
    otlp_spans: Spans,
    zipkin_spans: Spans,
}

/// The receivers and the frontend application, served on `rt`.
fn start_servers(rt: &tokio::runtime::Runtime, frontend_port: u16, outbound: u16) -> Receivers {
    let otlp_spans = Spans::default();
    let zipkin_spans = Spans::default();
    let bind = |port: u16| {
        rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .expect("bind")
    };
    let otlp_listener = bind(0);
    let otlp = otlp_listener.local_addr().expect("addr");
    let service = TraceServiceServer::new(OtlpReceiver(otlp_spans.clone()));
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream_of(otlp_listener)),
    );
    let zipkin_listener = bind(0);
    let zipkin = zipkin_listener.local_addr().expect("addr");
    let app = axum::Router::new()
        .route("/api/v2/spans", axum::routing::post(zipkin_collector))
        .with_state(zipkin_spans.clone());
    rt.spawn(async move { axum::serve(zipkin_listener, app).await });
    let frontend_listener = bind(frontend_port);
    let app = axum::Router::new()
        .fallback(frontend_app)
        .with_state(outbound);
    rt.spawn(async move { axum::serve(frontend_listener, app).await });
    Receivers {
        otlp,
        zipkin,
        otlp_spans,
        zipkin_spans,
    }
}

/// Accepted connections of `listener` as tonic's server takes them.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener)
}

/// backend-2: an Envoy sidecar in front of the same application.
fn envoy_backend(zone: &ControlPlane, dir: &Path, echo: &EchoServer) -> Envoy {
    let dataplane = serde_json::json!({
        "type": "Dataplane", "mesh": "default", "name": "backend-2",
        "networking": {"address": "127.0.0.1", "inbound": [{
            "port": free_port(), "servicePort": echo.port,
            "tags": {"kuma.io/service": "backend", "kuma.io/protocol": "http"}}]}
    });
    let token = zone.kumactl_ok(&["generate", "dataplane-token", "--name", "backend-2"]);
    let mut envoy = Envoy::start(zone, dir, "backend-2", &dataplane, token.trim());
    envoy.wait_ready();
    envoy
}

fn sidecars(
    zone: &ControlPlane,
    dir: &Path,
    echo: &EchoServer,
    frontend_app: u16,
    outbound: u16,
) -> (DataPlane, DataPlane, u16) {
    let backend = format!(
        "type: Dataplane\nmesh: default\nname: backend-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {}\n    servicePort: {}\n    tags:\n      kuma.io/service: backend\n      kuma.io/protocol: http\n",
        free_port(),
        echo.port
    );
    let inbound = free_port();
    let frontend = format!(
        "type: Dataplane\nmesh: default\nname: frontend-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {inbound}\n    servicePort: {frontend_app}\n    tags:\n      kuma.io/service: frontend\n      kuma.io/protocol: http\n  outbound:\n  - port: {outbound}\n    tags:\n      kuma.io/service: backend\n"
    );
    let backend = start_sidecar(zone, dir, "backend-1", &backend);
    let frontend = start_sidecar(zone, dir, "frontend-1", &frontend);
    (backend, frontend, inbound)
}

/// Sends requests to frontend's inbound until the receiver holds a whole trace (three spans
/// with the tenant header's value) and returns them: frontend SERVER, frontend CLIENT,
/// backend SERVER.
fn one_trace(inbound: u16, spans: &Spans, tenant: &str) -> Vec<Seen> {
    wait_for(&format!("the spans of trace {tenant}"), PROPAGATION, || {
        let answered = http_request(inbound, "/checkout", &[("x-tenant", tenant)]);
        assert!(
            matches!(&answered, Ok((200, _))),
            "frontend's answer: {answered:?}"
        );
        let seen = spans.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let ours: Vec<Seen> = seen
            .into_iter()
            .filter(|s| s.tag("tenant") == Some(tenant))
            .collect();
        // The first trace whose three spans all arrived (a proxy may have got the policy
        // after the other, and requests before that leave partial traces).
        let find = |trace: &str, service: &str, kind: &str| {
            ours.iter()
                .find(|s| s.trace_id == trace && s.service == service && s.kind == kind)
                .cloned()
        };
        ours.iter().find_map(|s| {
            let t = &s.trace_id;
            Some(vec![
                find(t, "frontend", "SERVER")?,
                find(t, "frontend", "CLIENT")?,
                find(t, "backend", "SERVER")?,
            ])
        })
    })
}

fn check_tags(span: &Seen, tenant: &str) {
    assert_eq!(span.tag("team"), Some("core"), "{span:?}");
    assert_eq!(span.tag("tenant"), Some(tenant), "{span:?}");
    assert_eq!(span.tag("kuma.mesh"), Some("default"), "{span:?}");
    assert_eq!(span.tag("http.status_code"), Some("200"), "{span:?}");
    assert_eq!(span.tag("http.method"), Some("GET"), "{span:?}");
}

#[test]
fn a_mesh_trace_from_global_gives_one_trace_through_two_kuma_dps_at_otlp_and_zipkin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let (global, zone1) = global_and_one_zone(dir);
    apply_ok(&global, dir, "mesh.yaml", MESH);

    let rt = tokio::runtime::Runtime::new().expect("tokio");
    let frontend_port = free_port();
    let outbound = free_port();
    let receivers = start_servers(&rt, frontend_port, outbound);
    let echo = EchoServer::start("backend");
    wait_for("the mesh in zone-1", PROPAGATION, || {
        zone1
            .kumactl_ok(&["get", "meshes"])
            .contains("default")
            .then_some(())
    });
    let (_backend, _frontend, inbound) = sidecars(&zone1, dir, &echo, frontend_port, outbound);
    wait_for("backend through frontend", PROPAGATION, || {
        matches!(http_request(inbound, "/", &[]), Ok((200, body)) if body.contains("200"))
            .then_some(())
    });

    // OpenTelemetry: W3C context, each span the child of the one before.
    let otlp = format!(
        "{{type: OpenTelemetry, openTelemetry: {{endpoint: '{}'}}}}",
        receivers.otlp
    );
    apply_ok(&global, dir, "trace.yaml", &trace_policy(&otlp));
    // Synced down like every policy: the zone holds global's copy under its hashed name.
    let copy = wait_for("the MeshTrace in zone-1", PROPAGATION, || {
        let table = zone1.kumactl_ok(&["get", "meshtraces", "--mesh", "default"]);
        table
            .lines()
            .find(|l| l.contains("trace-all-"))
            .map(str::to_string)
    });
    assert!(copy.contains("Mesh"), "{copy}");
    let spans = one_trace(inbound, &receivers.otlp_spans, "otlp-1");
    let [server, client, backend] = [&spans[0], &spans[1], &spans[2]];
    assert_eq!(server.trace_id.len(), 32);
    assert_eq!(server.parent, None, "{server:?}");
    assert_eq!(client.parent.as_deref(), Some(server.id.as_str()));
    assert_eq!(backend.parent.as_deref(), Some(client.id.as_str()));
    assert!(server.id != client.id && client.id != backend.id);
    for s in &spans {
        check_tags(s, "otlp-1");
    }
    assert_eq!(client.tag("upstream_cluster"), Some("backend"));

    // A caller that decided not to sample: no span of its trace, while a sampled one after it
    // (queued behind it on each proxy) arrives whole.
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    assert_eq!(
        http_request(
            inbound,
            "/",
            &[("traceparent", unsampled), ("x-tenant", "no")]
        )
        .map(|r| r.0),
        Ok(200)
    );
    let after = one_trace(inbound, &receivers.otlp_spans, "otlp-2");
    assert_eq!(after.len(), 3);
    let seen = receivers
        .otlp_spans
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert!(
        !seen
            .iter()
            .any(|s| s.trace_id == "0af7651916cd43dd8448eb211c80319c"
                || s.tag("tenant") == Some("no")),
        "an unsampled request left spans: {seen:?}"
    );

    // A real Envoy 1.40 sidecar, a second backend instance under the same policy, exports its
    // SERVER span to the same receiver as the child of kuma-dp's CLIENT span (Envoy tags its
    // spans with its node id).
    let envoy = envoy_backend(&zone1, dir, &echo);
    let (envoy_span, parent) = wait_for("a span from Envoy", PROPAGATION, || {
        let answered = http_request(inbound, "/", &[("x-tenant", "envoy")]);
        assert!(matches!(&answered, Ok((200, _))), "{answered:?}");
        let seen = receivers
            .otlp_spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let from_envoy = seen
            .iter()
            .find(|s| {
                s.tag("node_id") == Some("default.backend-2") && s.tag("tenant") == Some("envoy")
            })?
            .clone();
        let parent = seen
            .iter()
            .find(|s| Some(s.id.as_str()) == from_envoy.parent.as_deref())?
            .clone();
        Some((from_envoy, parent))
    });
    assert_eq!(envoy_span.kind, "SERVER");
    assert_eq!(envoy_span.service, "backend");
    assert_eq!(envoy_span.tag("team"), Some("core"));
    assert_eq!(envoy_span.tag("kuma.mesh"), Some("default"));
    assert_eq!(
        (parent.service.as_str(), parent.kind.as_str()),
        ("frontend", "CLIENT")
    );
    assert_eq!(parent.trace_id, envoy_span.trace_id);
    let (rejected, _) = envoy.rejected_and_accepted();
    assert!(rejected.is_empty(), "Envoy rejected: {rejected:?}");

    // Zipkin: B3 context, 64-bit trace ids, and the shared span context (backend's SERVER span
    // joins frontend's CLIENT span: same id and parent).
    let zipkin = format!(
        "{{type: Zipkin, zipkin: {{url: 'http://{}/api/v2/spans'}}}}",
        receivers.zipkin
    );
    apply_ok(&global, dir, "trace.yaml", &trace_policy(&zipkin));
    let spans = one_trace(inbound, &receivers.zipkin_spans, "zipkin-1");
    let [server, client, backend] = [&spans[0], &spans[1], &spans[2]];
    assert_eq!(server.trace_id.len(), 16);
    assert_eq!(server.parent, None, "{server:?}");
    assert_eq!(client.parent.as_deref(), Some(server.id.as_str()));
    assert_eq!(backend.id, client.id, "shared span context");
    assert_eq!(backend.parent, client.parent);
    for s in &spans {
        check_tags(s, "zipkin-1");
    }
    drop(envoy);
    drop(rt);
}
