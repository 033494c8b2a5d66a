//! MeshCircuitBreaker across zones with real processes on loopback: the mesh's default
//! `mesh-circuit-breaker-all-default` reaches the zone with the mesh; a policy applied on
//! global reaches a zone's kuma-dp client sidecar (its cluster plan shows the limits) and takes
//! effect there: with one connection and one pending request allowed towards a slow backend,
//! a third concurrent request gets Envoy's 503 with `x-envoy-overloaded: true` at once and is
//! counted as `upstream_rq_pending_overflow`, while the first two are answered. A
//! MeshHealthCheck applied on global reaches the client sidecar, which accepts it (the check is
//! in its plan) and probes both instances of `backend` over mTLS: the instance whose health path
//! starts failing stops receiving requests while the other serves them all, and gets them
//! again once it heals.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use meshzone_integration_tests::{
    ControlPlane, DataPlane, EchoServer, apply_ok, free_port, host_dirs, start_global,
    start_loopback_sidecar, wait_for, zone,
};

const PROPAGATION: Duration = Duration::from_secs(30);

const BREAKER: &str = "type: MeshCircuitBreaker
name: backend-limits
mesh: default
spec:
  targetRef: {kind: Mesh}
  to:
    - targetRef: {kind: MeshService, name: backend}
      default:
        connectionLimits: {maxConnections: 1, maxPendingRequests: 1}
";

const HEALTH_CHECK: &str = "type: MeshHealthCheck
name: backend-health
mesh: default
spec:
  targetRef: {kind: Mesh}
  to:
    - targetRef: {kind: MeshService, name: backend}
      default:
        interval: 1s
        timeout: 1s
        unhealthyThreshold: 2
        healthyThreshold: 1
        noTrafficInterval: 1s
        http: {path: /health}
";

/// One request over a new connection: status and the `x-envoy-overloaded` header.
fn request(port: u16) -> Result<(u16, Option<String>), String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let head = out.split("\r\n\r\n").next().unwrap_or_default();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no HTTP answer: {out:?}"))?;
    let overloaded = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("x-envoy-overloaded")
            .then(|| v.trim().to_string())
    });
    Ok((status, overloaded))
}

/// The client's plan of its `backend` cluster, from its config dump.
fn backend_plan(client: &DataPlane) -> Option<serde_json::Value> {
    let dump: serde_json::Value = serde_json::from_str(&client.admin("/config_dump")?).ok()?;
    Some(dump["clusters"]["backend"].clone()).filter(|c| !c.is_null())
}

fn zone_has(cp: &ControlPlane, plural: &str, display: &str) -> bool {
    cp.kumactl_ok(&["get", plural, "-o", "json"])
        .contains(display)
}

/// A sidecar of an HTTP `backend` instance whose app listens on `app`.
fn backend_sidecar(zone: &ControlPlane, dir: &Path, name: &str, app: u16) -> DataPlane {
    let inbound = format!(
        "  inbound:\n  - port: {}\n    servicePort: {app}\n    tags:\n      kuma.io/service: backend\n      kuma.io/protocol: http\n",
        free_port()
    );
    start_loopback_sidecar(zone, dir, name, &inbound)
}

/// The client sidecar `web-1` with an outbound to `backend`; the outbound's port.
fn web_client(zone: &ControlPlane, dir: &Path) -> (DataPlane, u16) {
    let outbound = free_port();
    let networking = format!(
        "  inbound:\n  - port: {}\n    servicePort: {}\n    tags:\n      kuma.io/service: web\n  outbound:\n  - port: {outbound}\n    tags:\n      kuma.io/service: backend\n",
        free_port(),
        free_port()
    );
    (
        start_loopback_sidecar(zone, dir, "web-1", &networking),
        outbound,
    )
}

/// A global CP and zone `zone-1` in `dir`, with an mTLS Mesh `default` that reached the zone
/// (its default circuit breaker is there).
fn global_and_zone(dir: &Path) -> (ControlPlane, ControlPlane) {
    let kds = free_port();
    let hosts = host_dirs(dir, &["global", "zone-1"]);
    let global = start_global(&hosts[0], kds, &[]);
    let zone1 = zone(&hosts[1], "zone-1", &global, kds);
    apply_ok(
        &global,
        dir,
        "mesh.yaml",
        "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n",
    );
    wait_for(
        "the default circuit breaker in the zone",
        PROPAGATION,
        || {
            zone_has(
                &zone1,
                "meshcircuitbreakers",
                "mesh-circuit-breaker-all-default",
            )
            .then_some(())
        },
    );
    (global, zone1)
}

#[test]
fn a_circuit_breaker_applied_on_global_limits_a_zones_sidecar() {
    let root = tempfile::tempdir().expect("tmp");
    let dir = root.path();
    let (global, zone1) = global_and_zone(dir);

    let slow = EchoServer::answering("slow", 200, Duration::from_secs(2));
    let app = slow.port;
    let _backend = backend_sidecar(&zone1, dir, "backend-1", app);
    let (client, outbound) = web_client(&zone1, dir);
    // The default policy's passive health is on the client's backend cluster.
    wait_for("the default outlier detection", PROPAGATION, || {
        let od = backend_plan(&client)?["outlier"].clone();
        (od["consecutive_local_origin_failure"] == 1).then_some(())
    });
    wait_for("a first answer", PROPAGATION, || {
        request(outbound).ok().filter(|(s, _)| *s == 200)
    });

    apply_ok(&global, dir, "breaker.yaml", BREAKER);
    wait_for("the limits in the client's plan", PROPAGATION, || {
        let limits = backend_plan(&client)?["limits"].clone();
        (limits["max_connections"] == 1 && limits["max_pending_requests"] == 1).then_some(())
    });

    // Two requests take the connection and the pending place; the third overflows at once.
    let before = slow.served();
    let first = std::thread::spawn(move || request(outbound));
    wait_for("the first request at the app", PROPAGATION, || {
        (slow.served() > before).then_some(())
    });
    let second = std::thread::spawn(move || request(outbound));
    wait_for("the second request waiting", PROPAGATION, || {
        (client.stat("cluster.backend.upstream_cx_overflow") >= 1).then_some(())
    });
    let started = std::time::Instant::now();
    let third = request(outbound).expect("an answer");
    assert_eq!(third, (503, Some("true".into())), "Envoy's overflow answer");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the overflow is answered at once, not after the backend's 2 s"
    );
    assert_eq!(
        client.stat("cluster.backend.upstream_rq_pending_overflow"),
        1
    );
    assert_eq!(first.join().expect("thread").map(|r| r.0), Ok(200));
    assert_eq!(second.join().expect("thread").map(|r| r.0), Ok(200));
    assert_eq!(
        slow.served(),
        before + 2,
        "the overflowing request never reached the app"
    );
}

#[test]
fn a_health_check_applied_on_global_moves_traffic_off_a_failing_instance() {
    let root = tempfile::tempdir().expect("tmp");
    let dir = root.path();
    let (global, zone1) = global_and_zone(dir);
    let (one, two) = (EchoServer::start("one"), EchoServer::start("two"));
    let _one = backend_sidecar(&zone1, dir, "backend-1", one.port);
    let _two = backend_sidecar(&zone1, dir, "backend-2", two.port);
    let (client, outbound) = web_client(&zone1, dir);
    wait_for("both instances answering", PROPAGATION, || {
        let _ = request(outbound);
        (one.served() > 0 && two.served() > 0).then_some(())
    });

    apply_ok(&global, dir, "health-check.yaml", HEALTH_CHECK);
    wait_for("the check in the client's plan", PROPAGATION, || {
        let check = backend_plan(&client)?["health_check"].clone();
        (check["unhealthy_threshold"] == 2).then_some(())
    });
    let stat = |name: &str| client.stat(&format!("cluster.backend.health_check.{name}"));
    wait_for("both instances passing their probes", PROPAGATION, || {
        (stat("success") >= 2 && stat("healthy") == 2).then_some(())
    });

    two.set_health(503);
    wait_for("instance two unhealthy", PROPAGATION, || {
        (stat("healthy") == 1).then_some(())
    });
    let (before1, before2) = (one.served(), two.served());
    for _ in 0..20 {
        assert_eq!(request(outbound).map(|r| r.0), Ok(200));
    }
    assert_eq!(two.served(), before2, "no request reached instance two");
    assert_eq!(one.served(), before1 + 20, "instance one served them all");

    two.set_health(200);
    wait_for("instance two healthy again", PROPAGATION, || {
        (stat("healthy") == 2).then_some(())
    });
    wait_for("instance two serving again", PROPAGATION, || {
        let _ = request(outbound);
        (two.served() > before2).then_some(())
    });
    assert!(stat("failure") >= 1);
}
