//! MeshMetric applied on global exposes a zone's kuma-dp sidecar metrics: real kuma-cp
//! processes (global + zone-1), a kuma-dp sidecar in front of an echo application, and an
//! application metrics endpoint the test runs. curl scrapes the port and path the policy names
//! on the sidecar's address and gets Envoy-named lines that pass the profile (and none it
//! excludes), followed by the application's metrics; once the policy is deleted on global
//! nothing listens there any more.

use std::process::Command;
use std::time::Duration;

use meshzone_integration_tests::{
    EchoServer, apply_ok, free_port, global_and_one_zone, http_request, start_sidecar, wait_for,
};
use meshzone_model::policies::mesh_metric::MetricFilter;

const PROPAGATION: Duration = Duration::from_secs(30);

const MESH: &str = "type: Mesh\nname: default\n";

fn metric_policy(port: u16, app_port: u16) -> String {
    format!(
        "type: MeshMetric
name: metrics-all
mesh: default
spec:
  targetRef: {{kind: Mesh}}
  default:
    sidecar:
      profiles:
        appendProfiles: [{{name: Basic}}]
        exclude: [{{type: Contains, match: rx_bytes}}]
    applications:
      - name: app
        path: /app-metrics
        port: {app_port}
    backends:
      - type: Prometheus
        prometheus: {{port: {port}, path: /custom-metrics, clientId: scraper}}
"
    )
}

/// `curl -s -f` of `http://127.0.0.1:<port><path>`: the body, or why it failed.
fn curl(port: u16, path: &str) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-s", "-f", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .map_err(|e| format!("cannot run curl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("curl exit {:?}", out.status.code()))
    }
}

#[test]
fn a_mesh_metric_from_global_is_scraped_on_a_zone_kuma_dp_until_it_is_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let (global, zone1) = global_and_one_zone(dir);
    apply_ok(&global, dir, "mesh.yaml", MESH);
    wait_for("the mesh in zone-1", PROPAGATION, || {
        zone1
            .kumactl_ok(&["get", "meshes"])
            .contains("default")
            .then_some(())
    });

    // The application's own metrics endpoint.
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    let app_port = free_port();
    let app_listener = rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", app_port)))
        .expect("bind the app's metrics");
    let app = axum::Router::new().route(
        "/app-metrics",
        axum::routing::get(|| async { "# TYPE app_orders_total counter\napp_orders_total 42\n" }),
    );
    rt.spawn(async move { axum::serve(app_listener, app).await });

    let echo = EchoServer::start("backend");
    let inbound = free_port();
    let yaml = format!(
        "type: Dataplane\nmesh: default\nname: backend-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {inbound}\n    servicePort: {}\n    tags:\n      kuma.io/service: backend\n      kuma.io/protocol: http\n",
        echo.port
    );
    let _backend = start_sidecar(&zone1, dir, "backend-1", &yaml);
    // Traffic, so the inbound's request and byte counters are written.
    wait_for("the inbound answering", PROPAGATION, || {
        matches!(http_request(inbound, "/", &[]), Ok((200, _))).then_some(())
    });

    let port = free_port();
    apply_ok(&global, dir, "metric.yaml", &metric_policy(port, app_port));
    let body = wait_for("the scrape endpoint on kuma-dp", PROPAGATION, || {
        curl(port, "/custom-metrics")
            .ok()
            .filter(|b| b.contains("app_orders_total"))
    });
    let names: Vec<&str> = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default())
        .collect();
    assert!(names.contains(&"envoy_server_live"), "{body}");
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("envoy_") && n.contains("_rq")),
        "request stats pass Basic: {body}"
    );
    assert!(
        names.iter().any(|n| n.contains("tx_bytes")),
        "byte stats pass Basic: {body}"
    );
    assert!(
        !names.iter().any(|n| n.contains("rx_bytes")),
        "excluded: {body}"
    );
    // Every Envoy-named family passes Basic (the profile's definition is the model's).
    let basic = MetricFilter::new(None);
    for name in names.iter().filter(|n| n.starts_with("envoy_")) {
        let family = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            basic.keeps(family),
            "{name} is not in the Basic profile: {body}"
        );
    }
    assert!(body.contains("app_orders_total 42"), "{body}");
    assert!(
        curl(port, "/other").is_err(),
        "only the policy's path is served"
    );

    let out = global.kumactl(&["delete", "meshmetric", "metrics-all", "--mesh", "default"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the scrape endpoint gone", PROPAGATION, || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .is_err()
            .then_some(())
    });
}
