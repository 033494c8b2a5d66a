//! MeshRetry, MeshTimeout and MeshLoadBalancingStrategy applied on global take effect in a
//! zone's kuma-dp client sidecar: real kuma-cp processes (global + zone-1), kuma-dp sidecars in
//! front of small HTTP apps, mTLS, and a mesh without default policies, so that each behaviour
//! is seen first without its policy and then with it:
//! - `backend` has one instance answering 503 and one answering 200: without a retry policy
//!   the 503s reach the caller; with MeshRetry (`5xx`) every request is answered 200, because
//!   a retry goes to the other endpoint;
//! - `slow` answers after 3 s: without a timeout policy the caller gets the 200; with
//!   MeshTimeout (`requestTimeout: 500ms`) it gets 504 before the app answered;
//! - `echo` has three instances: round robin spreads one user's requests over them; with
//!   MeshLoadBalancingStrategy RingHash on the `x-user` header each user sticks to one, and
//!   with RingHash on the source IP each client address (curl `--interface 127.0.0.N`) does.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use meshzone_integration_tests::{
    ControlPlane, DataPlane, EchoServer, apply_ok, free_port, host_dirs, http_request,
    start_global, start_loopback_sidecar, wait_for, zone,
};

const PROPAGATION: Duration = Duration::from_secs(30);

const MESH: &str = "type: Mesh
name: default
skipCreatingInitialPolicies: ['*']
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
";

const ALLOW_ALL: &str = "type: MeshTrafficPermission
name: allow-all
mesh: default
spec:
  targetRef: {kind: Mesh}
  from:
  - targetRef: {kind: Mesh}
    default: {action: Allow}
";

const RETRY: &str = "type: MeshRetry
name: backend-retry
mesh: default
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: backend}
    default:
      http:
        numRetries: 2
        retryOn: [5xx]
        backOff: {baseInterval: 10ms, maxInterval: 50ms}
";

const TIMEOUT: &str = "type: MeshTimeout
name: slow-timeout
mesh: default
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: slow}
    default:
      http:
        requestTimeout: 500ms
";

/// The same strategy, hashing the client's address instead of a header.
const RING_HASH_SOURCE_IP: &str = "type: MeshLoadBalancingStrategy
name: echo-ring-hash
mesh: default
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: echo}
    default:
      loadBalancer:
        type: RingHash
        ringHash:
          hashPolicies:
          - type: Connection
            connection: {sourceIP: true}
";

/// The body of one GET through `port` from the local address `source` (curl `--interface`).
fn from_source(port: u16, source: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "5", "--interface", source])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("curl");
    assert!(out.status.success(), "curl from {source}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const RING_HASH: &str = "type: MeshLoadBalancingStrategy
name: echo-ring-hash
mesh: default
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: echo}
    default:
      loadBalancer:
        type: RingHash
        ringHash:
          hashPolicies:
          - type: Header
            header: {name: x-user}
";

/// The delay of the `slow` app.
const SLOW: Duration = Duration::from_secs(3);

/// A server sidecar of `service` in front of `app`.
fn instance(
    cp: &ControlPlane,
    dir: &Path,
    name: &str,
    service: &str,
    app: &EchoServer,
) -> DataPlane {
    start_loopback_sidecar(
        cp,
        dir,
        name,
        &format!(
            "  inbound:\n  - port: {}\n    servicePort: {}\n    tags:\n      kuma.io/service: {service}\n      kuma.io/protocol: http\n",
            free_port(),
            app.port
        ),
    )
}

/// `n` requests through `port` with `headers`: the (status, body) of each, or the error.
fn requests(port: u16, n: usize, headers: &[(&str, &str)]) -> Vec<Result<(u16, String), String>> {
    (0..n)
        .map(|_| {
            http_request(port, "/", headers).map(|(status, body)| (status, body.trim().into()))
        })
        .collect()
}

fn dump_has(client: &DataPlane, text: &str) -> Option<()> {
    client.admin("/config_dump")?.contains(text).then_some(())
}

#[test]
fn retries_timeouts_and_ring_hash_applied_on_global_act_in_a_zones_kuma_dp() {
    let root = tempfile::tempdir().expect("tmp");
    let dir = root.path();
    let kds = free_port();
    let hosts = host_dirs(dir, &["global", "zone-1"]);
    // No default Mesh: the test's own has no initial policies (no default retry or timeout).
    let global = start_global(&hosts[0], kds, &[("KUMA_DEFAULTS_SKIP_MESH", "true")]);
    let zone1 = zone(&hosts[1], "zone-1", &global, kds);
    apply_ok(&global, dir, "mesh.yaml", MESH);
    apply_ok(&global, dir, "allow.yaml", ALLOW_ALL);
    wait_for("the permission in the zone", PROPAGATION, || {
        zone1
            .kumactl_ok(&["get", "meshtrafficpermissions", "-o", "json"])
            .contains("allow-all")
            .then_some(())
    });

    let ok_app = EchoServer::start("ok");
    let failing_app = EchoServer::answering("failing", 503, Duration::ZERO);
    let slow_app = EchoServer::answering("slow", 200, SLOW);
    let echo_apps: Vec<EchoServer> = ["echo-a", "echo-b", "echo-c"]
        .iter()
        .map(|n| EchoServer::start(n))
        .collect();
    let mut proxies = vec![
        instance(&zone1, dir, "backend-ok", "backend", &ok_app),
        instance(&zone1, dir, "backend-failing", "backend", &failing_app),
        instance(&zone1, dir, "slow-1", "slow", &slow_app),
    ];
    for app in &echo_apps {
        proxies.push(instance(&zone1, dir, &app.name, "echo", app));
    }
    let (to_backend, to_slow, to_echo) = (free_port(), free_port(), free_port());
    let client = start_loopback_sidecar(
        &zone1,
        dir,
        "web-1",
        &format!(
            "  inbound:\n  - port: {}\n    servicePort: {}\n    tags:\n      kuma.io/service: web\n  outbound:\n  - port: {to_backend}\n    tags:\n      kuma.io/service: backend\n  - port: {to_slow}\n    tags:\n      kuma.io/service: slow\n  - port: {to_echo}\n    tags:\n      kuma.io/service: echo\n",
            free_port(),
            free_port()
        ),
    );

    // ---- MeshRetry: before it, the failing instance's 503s reach the caller.
    wait_for("backend answered by both instances", PROPAGATION, || {
        let seen = requests(to_backend, 8, &[]);
        (seen.contains(&Ok((200, "ok".into()))) && seen.contains(&Ok((503, "failing".into()))))
            .then_some(())
    });
    apply_ok(&global, dir, "retry.yaml", RETRY);
    wait_for("the retry policy in the client's plan", PROPAGATION, || {
        dump_has(&client, "num_retries")
    });
    let failing_before = failing_app.served();
    let answers = requests(to_backend, 40, &[]);
    let not_ok: Vec<_> = answers
        .iter()
        .filter(|a| **a != Ok((200, "ok".into())))
        .collect();
    assert!(
        not_ok.is_empty(),
        "with retries every request is answered by the healthy instance: {not_ok:?}"
    );
    assert!(
        failing_app.served() > failing_before,
        "first tries still went to the failing instance and were retried elsewhere"
    );
    assert!(client.stat("cluster.backend.upstream_rq_retry") > 0);

    // ---- MeshTimeout: before it, the slow app's answer arrives after its delay.
    let started = Instant::now();
    assert_eq!(
        http_request(to_slow, "/", &[]).map(|(s, b)| (s, b.trim().to_string())),
        Ok((200, "slow".into())),
        "without a timeout policy the slow answer comes"
    );
    assert!(started.elapsed() >= SLOW);
    apply_ok(&global, dir, "timeout.yaml", TIMEOUT);
    wait_for("the timeout in force", PROPAGATION, || {
        http_request(to_slow, "/", &[])
            .ok()
            .filter(|(s, _)| *s == 504)
    });
    let served_before = slow_app.served();
    let started = Instant::now();
    let (status, body) = http_request(to_slow, "/", &[]).expect("an answer");
    assert_eq!((status, body.as_str()), (504, "upstream request timeout"));
    assert!(
        started.elapsed() < SLOW,
        "the 504 came before the app's answer ({:?})",
        started.elapsed()
    );
    assert_eq!(
        slow_app.served(),
        served_before + 1,
        "the request did reach the app"
    );

    // ---- MeshLoadBalancingStrategy RingHash: before it, one user is spread over instances.
    let instances_of = |user: &str| -> BTreeSet<String> {
        requests(to_echo, 12, &[("x-user", user)])
            .into_iter()
            .map(|a| match a {
                Ok((200, body)) => body,
                other => panic!("echo did not answer: {other:?}"),
            })
            .collect()
    };
    wait_for("echo answered by its three instances", PROPAGATION, || {
        (instances_of("alice").len() == 3).then_some(())
    });
    apply_ok(&global, dir, "ring-hash.yaml", RING_HASH);
    wait_for("the ring hash in the client's plan", PROPAGATION, || {
        dump_has(&client, "RingHash")
    });
    let mut chosen = BTreeSet::new();
    for i in 0..12 {
        let user = format!("user-{i}");
        let seen = instances_of(&user);
        assert_eq!(seen.len(), 1, "{user} sticks to one instance: {seen:?}");
        chosen.extend(seen);
    }
    assert!(
        chosen.len() >= 2,
        "different users land on different instances: {chosen:?}"
    );

    // RingHash on the source IP: each client address sticks to one instance.
    apply_ok(&global, dir, "ring-hash-source.yaml", RING_HASH_SOURCE_IP);
    wait_for(
        "the source-IP hash in the client's plan",
        PROPAGATION,
        || dump_has(&client, "SourceIp"),
    );
    let mut by_source = BTreeSet::new();
    for n in 1..=12 {
        let source = format!("127.0.0.{n}");
        let seen: BTreeSet<String> = (0..6).map(|_| from_source(to_echo, &source)).collect();
        assert_eq!(seen.len(), 1, "{source} sticks to one instance: {seen:?}");
        by_source.extend(seen);
    }
    assert!(
        by_source.len() >= 2,
        "different sources land on different instances: {by_source:?}"
    );
    drop(proxies);
}
