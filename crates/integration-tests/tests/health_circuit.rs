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
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use meshzone_integration_tests::{
    ControlPlane, DataPlane, apply_ok, free_port, host_dirs, start_global, start_sidecar, wait_for,
    zone,
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

/// An HTTP app: `/health` answers the status in the cell at once, any other path 200 with
/// `name` as the body `delay` after it arrived, counted. One thread per connection, keep-alive.
fn app(name: &'static str, delay: Duration) -> (u16, Arc<AtomicU16>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let health = Arc::new(AtomicU16::new(200));
    let hits = Arc::new(AtomicUsize::new(0));
    let (h, n) = (health.clone(), hits.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let (h, n) = (h.clone(), n.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while let Ok(read) = conn.read(&mut buf) {
                    if read == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..read]);
                    while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&got[..end]).into_owned();
                        got.drain(..end + 4);
                        let path = head.split(' ').nth(1).unwrap_or_default().to_string();
                        let status = if path == "/health" {
                            h.load(Ordering::SeqCst)
                        } else {
                            n.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(delay);
                            200
                        };
                        let answer = format!(
                            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n{name}",
                            name.len()
                        );
                        if conn.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (port, health, hits)
}

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

fn sidecar(cp: &ControlPlane, dir: &Path, name: &str, body: &str) -> DataPlane {
    let yaml = format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n{body}"
    );
    start_sidecar(cp, dir, name, &yaml)
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

    let (app, _, arrived) = app("slow", Duration::from_secs(2));
    let _backend = sidecar(
        &zone1,
        dir,
        "backend-1",
        &format!(
            "  inbound:\n  - port: {}\n    servicePort: {app}\n    tags:\n      kuma.io/service: backend\n      kuma.io/protocol: http\n",
            free_port()
        ),
    );
    let outbound = free_port();
    let client = sidecar(
        &zone1,
        dir,
        "web-1",
        &format!(
            "  inbound:\n  - port: {}\n    servicePort: {}\n    tags:\n      kuma.io/service: web\n  outbound:\n  - port: {outbound}\n    tags:\n      kuma.io/service: backend\n",
            free_port(),
            free_port()
        ),
    );
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
    let before = arrived.load(Ordering::SeqCst);
    let first = std::thread::spawn(move || request(outbound));
    wait_for("the first request at the app", PROPAGATION, || {
        (arrived.load(Ordering::SeqCst) > before).then_some(())
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
        arrived.load(Ordering::SeqCst),
        before + 2,
        "the overflowing request never reached the app"
    );
}

#[test]
fn a_health_check_applied_on_global_moves_traffic_off_a_failing_instance() {
    let root = tempfile::tempdir().expect("tmp");
    let dir = root.path();
    let (global, zone1) = global_and_zone(dir);
    let backend = |name: &str, app: u16| {
        format!(
            "  inbound:\n  - port: {}\n    servicePort: {app}\n    tags:\n      kuma.io/service: backend\n      kuma.io/protocol: http\n      instance: {name}\n",
            free_port()
        )
    };
    let (app1, _, hits1) = app("one", Duration::ZERO);
    let (app2, health2, hits2) = app("two", Duration::ZERO);
    let _one = sidecar(&zone1, dir, "backend-1", &backend("one", app1));
    let _two = sidecar(&zone1, dir, "backend-2", &backend("two", app2));
    let outbound = free_port();
    let client = sidecar(
        &zone1,
        dir,
        "web-1",
        &format!(
            "  inbound:\n  - port: {}\n    servicePort: {}\n    tags:\n      kuma.io/service: web\n  outbound:\n  - port: {outbound}\n    tags:\n      kuma.io/service: backend\n",
            free_port(),
            free_port()
        ),
    );
    wait_for("both instances answering", PROPAGATION, || {
        let _ = request(outbound);
        (hits1.load(Ordering::SeqCst) > 0 && hits2.load(Ordering::SeqCst) > 0).then_some(())
    });

    apply_ok(&global, dir, "health-check.yaml", HEALTH_CHECK);
    wait_for("the check in the client's plan", PROPAGATION, || {
        let check = backend_plan(&client)?["health_check"].clone();
        (check["unhealthy_threshold"] == 2).then_some(())
    });
    wait_for("both instances passing their probes", PROPAGATION, || {
        (client.stat("cluster.backend.health_check.success") >= 2
            && client.stat("cluster.backend.health_check.healthy") == 2)
            .then_some(())
    });

    health2.store(503, Ordering::SeqCst);
    wait_for("instance two unhealthy", PROPAGATION, || {
        (client.stat("cluster.backend.health_check.healthy") == 1).then_some(())
    });
    let (before1, before2) = (hits1.load(Ordering::SeqCst), hits2.load(Ordering::SeqCst));
    for _ in 0..20 {
        assert_eq!(request(outbound).map(|r| r.0), Ok(200));
    }
    assert_eq!(
        hits2.load(Ordering::SeqCst),
        before2,
        "no request reached instance two"
    );
    assert_eq!(
        hits1.load(Ordering::SeqCst),
        before1 + 20,
        "instance one served them all"
    );

    health2.store(200, Ordering::SeqCst);
    wait_for("instance two healthy again", PROPAGATION, || {
        (client.stat("cluster.backend.health_check.healthy") == 2).then_some(())
    });
    wait_for("instance two serving again", PROPAGATION, || {
        let _ = request(outbound);
        (hits2.load(Ordering::SeqCst) > before2).then_some(())
    });
    assert!(client.stat("cluster.backend.health_check.failure") >= 1);
}
