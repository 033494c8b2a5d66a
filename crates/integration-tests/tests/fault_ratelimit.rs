//! MeshRateLimit and MeshFaultInjection applied on global take effect on a zone's kuma-dp
//! inbound: real kuma-cp processes (global + zone-1), a kuma-dp server sidecar in front of an
//! echo app and a kuma-dp client sidecar calling it through its outbound, with mTLS. The rate
//! limit answers `local_rate_limited` once its budget is spent; the fault, selecting the client
//! by the `kuma.io/service` of its certificate, aborts its requests with the configured status.

use std::path::Path;
use std::time::Duration;

use meshzone_integration_tests::{
    ControlPlane, DataPlane, EchoServer, apply_ok, free_port, global_and_two_zones, http_request,
    start_sidecar, wait_for,
};

const PROPAGATION: Duration = Duration::from_secs(30);

const MESH: &str = "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n";

/// Three requests a minute for backend's inbound: nothing refills while the test counts.
const RATE_LIMIT: &str = "type: MeshRateLimit
name: backend-limit
mesh: default
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
    - targetRef: {kind: Mesh}
      default:
        local:
          http:
            requestRate: {num: 3, interval: 1m}
            onRateLimit: {headers: {add: [{name: x-limited, value: 'yes'}]}}
";

const FAULT: &str = "type: MeshFaultInjection
name: frontend-teapot
mesh: default
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
    - targetRef: {kind: MeshSubset, tags: {kuma.io/service: frontend}}
      default:
        http:
          - abort: {httpStatus: 418, percentage: 100}
";

fn sidecars(zone: &ControlPlane, dir: &Path, echo: &EchoServer) -> (DataPlane, DataPlane, u16) {
    let server = format!(
        "type: Dataplane\nmesh: default\nname: backend-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {}\n    servicePort: {}\n    tags:\n      kuma.io/service: backend\n      kuma.io/protocol: http\n",
        free_port(),
        echo.port
    );
    let outbound = free_port();
    let client = format!(
        "type: Dataplane\nmesh: default\nname: frontend-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {}\n    servicePort: 1\n    tags:\n      kuma.io/service: frontend\n  outbound:\n  - port: {outbound}\n    tags:\n      kuma.io/service: backend\n",
        free_port()
    );
    let server = start_sidecar(zone, dir, "backend-1", &server);
    let client = start_sidecar(zone, dir, "frontend-1", &client);
    (server, client, outbound)
}

#[test]
fn policies_applied_on_global_limit_and_fault_a_zones_kuma_dp_inbound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let (global, zone1, _zone2) = global_and_two_zones(dir);
    apply_ok(&global, dir, "mesh.yaml", MESH);
    let echo = EchoServer::start("backend");
    let (_server, _client, outbound) = {
        // The mesh reaches the zone first; its sidecars then get certificates.
        wait_for("the mesh in zone-1", PROPAGATION, || {
            zone1
                .kumactl_ok(&["get", "meshes"])
                .contains("default")
                .then_some(())
        });
        sidecars(&zone1, dir, &echo)
    };
    wait_for("backend through the client sidecar", PROPAGATION, || {
        matches!(http_request(outbound, "/", &[]), Ok((200, _))).then_some(())
    });

    // The limit arrives from global; from then on three requests pass and the next is refused.
    apply_ok(&global, dir, "rate-limit.yaml", RATE_LIMIT);
    let body = wait_for("a rate-limited answer", PROPAGATION, || match http_request(
        outbound,
        "/",
        &[],
    ) {
        Ok((429, body)) => Some(body),
        _ => None,
    });
    assert_eq!(body, "local_rate_limited");
    // Still within the minute: every further request is refused.
    for _ in 0..3 {
        assert_eq!(http_request(outbound, "/", &[]).map(|r| r.0), Ok(429));
    }

    // Without the limit, and with frontend's fault: frontend's requests are aborted.
    global.kumactl_ok(&[
        "delete",
        "meshratelimit",
        "backend-limit",
        "--mesh",
        "default",
    ]);
    apply_ok(&global, dir, "fault.yaml", FAULT);
    let body = wait_for("frontend's fault", PROPAGATION, || {
        match http_request(outbound, "/", &[]) {
            Ok((418, body)) => Some(body),
            _ => None,
        }
    });
    assert_eq!(body, "fault filter abort");
    for _ in 0..5 {
        assert_eq!(http_request(outbound, "/", &[]).map(|r| r.0), Ok(418));
    }
}
