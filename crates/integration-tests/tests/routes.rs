//! MeshHTTPRoute end to end on loopback with the real binaries: a zone CP, two instances of the
//! HTTP service `web` (`version: v1`, `version: v2`) behind kuma-dp, and two clients, kuma-dp and
//! Envoy 1.40. A route applied with kumactl splits each client's requests 90/10 between the
//! versions and sends `x-canary: 1` requests to v2 only; Envoy ACKs the route configuration.

use std::collections::BTreeMap;
use std::time::Duration;

use meshzone_integration_tests::{
    ControlPlane, EchoServer, Envoy, apply_ok, free_port, http_request, mtls_mesh, start_sidecar,
    wait_for,
};
use serde_json::{Value, json};

const ROUTE: &str = r#"type: MeshHTTPRoute
name: web-canary
mesh: default
spec:
  targetRef:
    kind: Mesh
  to:
    - targetRef:
        kind: MeshService
        name: web
      rules:
        - matches:
            - headers:
                - type: Exact
                  name: x-canary
                  value: "1"
          default:
            backendRefs:
              - kind: MeshServiceSubset
                name: web
                tags:
                  version: v2
        - matches:
            - path:
                type: PathPrefix
                value: /
          default:
            backendRefs:
              - kind: MeshServiceSubset
                name: web
                tags:
                  version: v1
                weight: 90
              - kind: MeshServiceSubset
                name: web
                tags:
                  version: v2
                weight: 10
"#;

fn web(name: &str, app: u16, version: &str) -> String {
    format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: {}\n      servicePort: {app}\n      tags:\n        kuma.io/service: web\n        kuma.io/protocol: http\n        version: {version}\n",
        free_port()
    )
}

fn client(app: u16, out: u16) -> String {
    format!(
        "type: Dataplane\nmesh: default\nname: client\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: {}\n      servicePort: {app}\n      tags:\n        kuma.io/service: client\n  outbound:\n    - port: {out}\n      tags:\n        kuma.io/service: web\n",
        free_port()
    )
}

#[test]
fn a_mesh_http_route_splits_and_matches_headers_on_kuma_dp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let cp = ControlPlane::start(dir, &[("KUMA_STORE_TYPE", "memory")]);
    cp.configure_kumactl();
    apply_ok(&cp, dir, "mesh.yaml", &mtls_mesh("24h"));
    let (v1, v2, app) = (
        EchoServer::start("v1"),
        EchoServer::start("v2"),
        EchoServer::start("client-app"),
    );
    let _v1 = start_sidecar(&cp, dir, "web-v1", &web("web-v1", v1.port, "v1"));
    let _v2 = start_sidecar(&cp, dir, "web-v2", &web("web-v2", v2.port, "v2"));
    let out = free_port();
    let client = start_sidecar(&cp, dir, "client", &client(app.port, out));
    apply_ok(&cp, dir, "route.yaml", ROUTE);

    // The client has the route table (the canary route, then the split, which is the catch-all)
    // and both subset clusters with their endpoints.
    wait_for("the route on the client", Duration::from_secs(30), || {
        let dump: Value = serde_json::from_str(&client.admin("/config_dump")?).ok()?;
        let listener = dump["listeners"]
            .as_object()?
            .values()
            .find(|l| l["address"].as_str() == Some(&format!("127.0.0.1:{out}")))?;
        let routes = listener["routes"].as_array()?.len();
        let subsets: Vec<&Value> = dump["endpoints"]
            .as_object()?
            .iter()
            .filter(|(name, eps)| {
                name.starts_with("web_") && eps.as_array().is_some_and(|e| !e.is_empty())
            })
            .map(|(_, eps)| eps)
            .collect();
        (routes == 2 && subsets.len() == 2).then_some(())
    });

    // kuma-dp: a deterministic smooth weighted round robin.
    let seen = split_of(out);
    eprintln!("kuma-dp, split over 1000 requests: {seen:?}");
    assert_eq!(seen.get("v2"), Some(&100), "exactly 10 % of 1000: {seen:?}");
    canary_goes_to_v2(out);

    // Envoy 1.40 as the client: it ACKs the routes and splits (at random) within ±3 %.
    let envoy_out = free_port();
    let token = cp.kumactl_ok(&["generate", "dataplane-token", "--name", "envoy-client"]);
    let mut envoy = Envoy::start(
        &cp,
        dir,
        "envoy-client",
        &json!({
            "type": "Dataplane", "mesh": "default", "name": "envoy-client",
            "networking": {
                "address": "127.0.0.1",
                "inbound": [{"port": free_port(), "servicePort": app.port,
                             "tags": {"kuma.io/service": "envoy-client"}}],
                "outbound": [{"port": envoy_out, "tags": {"kuma.io/service": "web"}}]
            }
        }),
        token.trim(),
    );
    envoy.wait_ready();
    wait_for(
        "Envoy's route to both versions",
        Duration::from_secs(30),
        || {
            let dump = envoy.admin("/config_dump")?;
            let clusters = envoy.admin("/clusters")?;
            // The subset clusters of version v1 and v2 (names pinned by ADR 0004).
            let healthy = |c: &str| {
                clusters
                    .lines()
                    .any(|l| l.starts_with(&format!("{c}::127.0.0.1:")))
            };
            (dump.contains("x-canary") && healthy("web_322e89ae") && healthy("web_3231efae"))
                .then_some(())
        },
    );
    let (rejected, _) = envoy.rejected_and_accepted();
    assert!(rejected.is_empty(), "Envoy rejected: {rejected:?}");
    let seen = split_of(envoy_out);
    eprintln!("Envoy, split over 1000 requests: {seen:?}");
    let v2_share = seen.get("v2").copied().unwrap_or(0);
    assert!(
        (70..=130).contains(&v2_share),
        "90/10 within ±3 % over 1000 requests: {seen:?}"
    );
    canary_goes_to_v2(envoy_out);
}

/// Which version answered each of 1000 requests through the outbound on `port`.
fn split_of(port: u16) -> BTreeMap<String, usize> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..1000 {
        let (status, body) = http_request(port, "/items", &[]).expect("an answer");
        assert_eq!(status, 200, "{body}");
        *seen.entry(body.trim().to_string()).or_default() += 1;
    }
    assert_eq!(seen.values().sum::<usize>(), 1000, "{seen:?}");
    seen
}

fn canary_goes_to_v2(port: u16) {
    for _ in 0..20 {
        let (status, body) = http_request(port, "/items", &[("x-canary", "1")]).expect("answer");
        assert_eq!((status, body.trim()), (200, "v2"));
    }
}
