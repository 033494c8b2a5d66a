//! Cross-zone traffic on loopback: a global CP, two zone CPs, a zone ingress per zone (real
//! `kuma-dp --proxy-type=ingress` processes), echo instances behind sidecars in both zones and a
//! client sidecar in zone-2. Requests go client → (egress) → zone-1 ingress → echo sidecar, mTLS
//! end to end. The multi-host version of this walk runs in network namespaces (`netns.rs`).

use std::path::Path;
use std::time::Duration;

use meshzone_integration_tests::{
    ControlPlane, DataPlane, EchoServer, Envoy, apply_ok, free_port, global_and_two_zones,
    http_get, start_sidecar, stat_sum_of, wait_for, wait_for_mtls_mesh, write_file,
    zone_token_file,
};

const SERVICE: &str = "echo-server_echo-example_svc_1010";

fn mesh(routing: &str) -> String {
    format!(
        "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n{routing}"
    )
}

/// A sidecar for an echo instance of `SERVICE`.
fn echo_proxy(cp: &ControlPlane, dir: &Path, name: &str, echo: &EchoServer) -> DataPlane {
    let yaml = format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {}\n    servicePort: {}\n    tags:\n      kuma.io/service: {SERVICE}\n",
        free_port(),
        echo.port
    );
    start_sidecar(cp, dir, name, &yaml)
}

/// A zone ingress on 127.0.0.1; it advertises itself by hostname (`localhost`), which other
/// zones' CPs resolve for their proxies.
fn ingress_yaml(name: &str, port: u16) -> String {
    format!(
        "type: ZoneIngress\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  port: {port}\n  advertisedAddress: localhost\n  advertisedPort: {port}\n"
    )
}

/// Zone `zone`'s ingress `name` on a free port (returned with it), with a zone token generated
/// on global; started, not yet ready.
fn start_ingress(
    global: &ControlPlane,
    cp: &ControlPlane,
    dir: &Path,
    zone: &str,
    name: &str,
) -> (DataPlane, u16) {
    let port = free_port();
    let file = write_file(dir, &format!("{name}.yaml"), &ingress_yaml(name, port));
    let token = zone_token_file(global, dir, zone, "ingress");
    (
        DataPlane::start_zone_proxy(cp, "ingress", &file, &token),
        port,
    )
}

/// A client sidecar `name` on 127.0.0.1 with one outbound, on `outbound`, to `service`.
fn client_yaml(name: &str, outbound: u16, service: &str) -> String {
    format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {}\n    servicePort: {}\n    tags:\n      kuma.io/service: client\n  outbound:\n  - port: {outbound}\n    tags:\n      kuma.io/service: {service}\n",
        free_port(),
        free_port()
    )
}

/// Names of the instances that answered `n` requests (one connection each); failures count as
/// "FAILED".
fn answers(port: u16, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for _ in 0..n {
        let who = http_get(port)
            .map(|b| b.trim().to_string())
            .unwrap_or_else(|_| "FAILED".into());
        *out.entry(who).or_insert(0) += 1;
    }
    out
}

#[test]
fn cross_zone_traffic_through_ingresses_egress_and_locality() {
    let root = tempfile::tempdir().expect("tmp");
    let dir = root.path();
    let (global, zone1, mut zone2) = global_and_two_zones(dir);
    apply_ok(&global, dir, "mesh.yaml", &mesh(""));
    wait_for_mtls_mesh(&[&zone1, &zone2]);

    // Zone ingresses, with zone tokens generated on global (scope ingress).
    let (mut ingress1, p1) = start_ingress(&global, &zone1, dir, "zone-1", "ingress-1");
    let (mut ingress2, _) = start_ingress(&global, &zone2, dir, "zone-2", "ingress-2");
    ingress1.wait_ready();
    ingress2.wait_ready();

    // A zone-2 ingress token does not open zone-1.
    let stray_file = write_file(
        dir,
        "ingress-x.yaml",
        &ingress_yaml("ingress-x", free_port()),
    );
    let mut stray = DataPlane::start_zone_proxy(
        &zone1,
        "ingress",
        &stray_file,
        &zone_token_file(&global, dir, "zone-2", "ingress"),
    );
    let (status, log) = stray.wait_exit(Duration::from_secs(20));
    assert!(
        !status.success(),
        "a token for another zone must be refused"
    );
    assert!(
        log.contains("zone-2"),
        "the refusal names the token's zone: {log}"
    );
    // Nor does a zone-1 token whose scope is only `egress`.
    let mut wrong_scope = DataPlane::start_zone_proxy(
        &zone1,
        "ingress",
        &stray_file,
        &zone_token_file(&global, dir, "zone-1", "egress"),
    );
    let (status, log) = wrong_scope.wait_exit(Duration::from_secs(20));
    assert!(
        !status.success(),
        "an egress-only token must not register an ingress"
    );
    assert!(log.contains("scope"), "the refusal names the scope: {log}");

    // Two echo instances in zone-1, one in zone-2, and a client in zone-2.
    let (e1a, e1b, e2a) = (
        EchoServer::start("zone-1-a"),
        EchoServer::start("zone-1-b"),
        EchoServer::start("zone-2-a"),
    );
    let _s1a = echo_proxy(&zone1, dir, "echo-1a", &e1a);
    let _s1b = echo_proxy(&zone1, dir, "echo-1b", &e1b);
    let s2a = echo_proxy(&zone2, dir, "echo-2a", &e2a);
    let outbound = free_port();
    let client = start_sidecar(
        &zone2,
        dir,
        "client-2",
        &client_yaml("client-2", outbound, SERVICE),
    );

    // A real Envoy 1.40 client sidecar in zone-2 too, configured only by zone-2's CP.
    let envoy_outbound = free_port();
    let envoy_client_dp = serde_json::json!({
        "type": "Dataplane", "mesh": "default", "name": "envoy-client-2",
        "networking": {"address": "127.0.0.1",
            "inbound": [{"port": free_port(), "servicePort": free_port(), "tags": {"kuma.io/service": "envoy-client"}}],
            "outbound": [{"port": envoy_outbound, "tags": {"kuma.io/service": SERVICE}}]},
    });
    let envoy_token =
        zone2.kumactl_ok(&["generate", "dataplane-token", "--name", "envoy-client-2"]);
    let mut envoy_client = Envoy::start(
        &zone2,
        dir,
        "envoy-client-2",
        &envoy_client_dp,
        envoy_token.trim(),
    );
    envoy_client.wait_ready();

    // The zone-1 ingress's available services reach zone-2, which adds it as an endpoint.
    let ingress_endpoint = format!("127.0.0.1:{p1}");
    wait_for(
        "zone-1 ingress among the client's endpoints",
        Duration::from_secs(30),
        || {
            client
                .admin("/config_dump")
                .filter(|d| d.contains(&ingress_endpoint))
        },
    );
    // The client's configuration as its zone CP sent it (config dump; no private key in it).
    let dump = zone2.kumactl_ok(&["inspect", "dataplane", "client-2", "--type", "config-dump"]);
    assert!(
        dump.contains(&ingress_endpoint) && dump.contains("\"outbound:127.0.0.1:"),
        "{dump}"
    );
    assert!(
        !dump.contains("PRIVATE KEY"),
        "a config dump must not show keys"
    );
    // The same from global: it asks zone-2 over KDS (what-users-hit #5).
    let from_global = global.kumactl_ok(&[
        "inspect",
        "dataplane",
        "zone-2.client-2",
        "--type",
        "config-dump",
    ]);
    assert!(from_global.contains(&ingress_endpoint), "{from_global}");
    let unknown = global.kumactl(&[
        "inspect",
        "dataplane",
        "zone-2.nope",
        "--type",
        "config-dump",
    ]);
    assert!(!unknown.status.success());

    // Global sees both ingresses Online (their insights come up over KDS).
    wait_for(
        "ingresses Online on global",
        Duration::from_secs(30),
        || {
            let inspect = global.kumactl_ok(&["inspect", "zoneingresses"]);
            let online = |name: &str| {
                inspect
                    .lines()
                    .any(|l| l.starts_with(name) && l.contains(" Online "))
            };
            (online("zone-1.ingress-1")
                && online("zone-2.ingress-2")
                && inspect.contains(&ingress_endpoint))
            .then_some(())
        },
    );

    // Weights: 2 instances in zone-1, 1 in zone-2 → 2:1.
    // Envoy balances by the same weights.
    let envoy_split = answers(envoy_outbound, 30);
    let envoy_remote =
        envoy_split.get("zone-1-a").unwrap_or(&0) + envoy_split.get("zone-1-b").unwrap_or(&0);
    assert!((18..=22).contains(&envoy_remote), "Envoy: {envoy_split:?}");
    let split = answers(outbound, 600);
    eprintln!("600 requests from zone-2: {split:?}");
    let remote =
        split.get("zone-1-a").copied().unwrap_or(0) + split.get("zone-1-b").copied().unwrap_or(0);
    let local = split.get("zone-2-a").copied().unwrap_or(0);
    assert_eq!(remote + local, 600, "every request answered: {split:?}");
    let share = remote as f64 / 600.0;
    assert!(
        (share - 2.0 / 3.0).abs() <= 2.0 / 3.0 * 0.10,
        "zone-1 should take 2/3 of the requests: {split:?}"
    );
    assert!(
        split.get("zone-1-a") > Some(&100) && split.get("zone-1-b") > Some(&100),
        "the ingress spreads over both instances: {split:?}"
    );
    assert!(ingress1.stat_sum("cluster.", ".upstream_cx_total") >= remote as u64);

    // The client's own stats and clusters, read from the proxy by its zone CP over the
    // proxy's admin stream, and from global through zone-2 (the GUI's traffic cards).
    for (cp, name) in [(&zone2, "client-2"), (&global, "zone-2.client-2")] {
        let stats = cp.kumactl_ok(&["inspect", "dataplane", name, "--type", "stats"]);
        let sent = stat_sum_of(&stats, "cluster.", ".upstream_cx_total");
        assert!(
            sent >= 600,
            "{name}: {sent} upstream connections in\n{stats}"
        );
        let clusters = cp.kumactl_ok(&["inspect", "dataplane", name, "--type", "clusters"]);
        assert!(
            clusters.contains(&format!("::{ingress_endpoint}::health_flags::healthy")),
            "{name}: the zone-1 ingress is a healthy endpoint in\n{clusters}"
        );
    }
    let ingress_stats =
        zone1.kumactl_ok(&["inspect", "zoneingress", "ingress-1", "--type", "stats"]);
    assert!(
        stat_sum_of(&ingress_stats, "cluster.", ".upstream_cx_total") >= remote as u64,
        "{ingress_stats}"
    );
    // Envoy has no admin stream: the refusal says where to read its stats.
    let envoy_stats = zone2.kumactl(&["inspect", "dataplane", "envoy-client-2", "--type", "stats"]);
    let why = String::from_utf8_lossy(&envoy_stats.stderr);
    assert!(
        !envoy_stats.status.success() && why.contains("opened no admin stream"),
        "{why}"
    );

    // The ingress refuses plaintext and unknown SNI, and counts it.
    let refused = format!("listener.inbound:127.0.0.1:{p1}.no_filter_chain_match");
    assert!(http_get(p1).is_err(), "plaintext must not pass the ingress");
    let curl = std::process::Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "5",
            "--resolve",
            &format!("nope.default.mesh:{p1}:127.0.0.1"),
            &format!("https://nope.default.mesh:{p1}/"),
        ])
        .output()
        .expect("curl");
    assert!(!curl.status.success(), "an unknown SNI must not pass");
    wait_for("refusals counted", Duration::from_secs(5), || {
        (ingress1.stat(&refused) >= 2).then_some(())
    });

    // Locality-aware: all local while the local instance is healthy…
    apply_ok(
        &global,
        dir,
        "mesh.yaml",
        &mesh("routing:\n  localityAwareLoadBalancing: true\n"),
    );
    wait_for("traffic stays in zone-2", Duration::from_secs(30), || {
        (answers(outbound, 20).get("zone-2-a") == Some(&20)).then_some(())
    });
    assert_eq!(answers(outbound, 100).get("zone-2-a"), Some(&100));
    // The Envoy sidecar keeps traffic local too (priorities from our EDS).
    wait_for(
        "Envoy keeps traffic in zone-2",
        Duration::from_secs(30),
        || (answers(envoy_outbound, 20).get("zone-2-a") == Some(&20)).then_some(()),
    );
    // …and both fail over to zone-1 when it is gone.
    drop(s2a);
    drop(e2a);
    let after = answers(outbound, 100);
    eprintln!("requests right after the local instance died: {after:?}");
    assert_eq!(
        after.get("FAILED"),
        None,
        "failover loses no request: {after:?}"
    );
    assert_eq!(after.get("zone-2-a"), None);
    // Envoy ejects the dead endpoint after its first refused connection (outlier detection from
    // our CDS). The ejection reaches its workers through the main thread, and tcp_proxy does not
    // retry, so the connections of the next moments fail; then traffic is in zone-1 (within a
    // second on an idle machine; the test waits longer on a busy one).
    let envoy_after = answers(envoy_outbound, 20);
    eprintln!("Envoy, right after the local instance died: {envoy_after:?}");
    let settling = std::time::Instant::now();
    let envoy_settled = wait_for(
        "Envoy fails over to zone-1",
        Duration::from_secs(15),
        || {
            let a = answers(envoy_outbound, 20);
            (!a.contains_key("FAILED")).then_some(a)
        },
    );
    eprintln!("Envoy, {:?} later: {envoy_settled:?}", settling.elapsed());
    assert_eq!(envoy_settled.get("FAILED"), None, "{envoy_settled:?}");
    assert_eq!(envoy_settled.get("zone-2-a"), None, "{envoy_settled:?}");
    let ejected = envoy_client.admin("/stats").unwrap_or_default();
    assert!(
        ejected.contains(&format!(
            "cluster.{SERVICE}.outlier_detection.ejections_enforced_consecutive_local_origin_failure: 1"
        )),
        "Envoy ejected the dead endpoint by outlier detection"
    );
    let (rejected, _) = envoy_client.rejected_and_accepted();
    assert!(rejected.is_empty(), "Envoy client rejected: {rejected:?}");

    // Disabling zone-1 removes its endpoints from zone-2; enabling brings them back.
    apply_ok(
        &global,
        dir,
        "zone-1.yaml",
        "type: Zone\nname: zone-1\nenabled: false\n",
    );
    wait_for("zone-1 endpoints gone", Duration::from_secs(30), || {
        client
            .admin("/config_dump")
            .filter(|d| !d.contains(&ingress_endpoint))
    });
    assert!(http_get(outbound).is_err(), "no endpoint is left in zone-2");
    apply_ok(
        &global,
        dir,
        "zone-1.yaml",
        "type: Zone\nname: zone-1\nenabled: true\n",
    );
    wait_for("traffic back to zone-1", Duration::from_secs(30), || {
        http_get(outbound).ok()
    });

    // Zone egress: with zoneEgress on, cross-zone traffic provably passes the egress.
    let egress_file = write_file(
        dir,
        "egress-2.yaml",
        &format!(
            "type: ZoneEgress\nname: egress-2\nnetworking:\n  address: 127.0.0.1\n  port: {}\n",
            free_port()
        ),
    );
    let mut egress = DataPlane::start_zone_proxy(
        &zone2,
        "egress",
        &egress_file,
        &zone_token_file(&global, dir, "zone-2", "egress"),
    );
    egress.wait_ready();
    apply_ok(
        &global,
        dir,
        "mesh.yaml",
        &mesh("routing:\n  localityAwareLoadBalancing: true\n  zoneEgress: true\n"),
    );
    let sni_cluster = format!("cluster.{SERVICE}.default.mesh.upstream_cx_total");
    wait_for(
        "traffic through the egress",
        Duration::from_secs(30),
        || {
            let _ = http_get(outbound);
            (egress.stat(&sni_cluster) > 0).then_some(())
        },
    );
    let before = egress.stat(&sni_cluster);
    let through = answers(outbound, 50);
    assert_eq!(through.get("FAILED"), None, "{through:?}");
    // TCP: one connection per request, each through the egress.
    assert_eq!(
        egress.stat(&sni_cluster),
        before + 50,
        "all 50 passed the egress"
    );

    // Real Envoy 1.40 as a second zone-1 ingress, configured only by our CP: it ACKs the
    // SNI-routing configuration and carries its share of the traffic.
    let envoy_port = free_port();
    let resource = serde_json::json!({
        "type": "ZoneIngress", "name": "envoy-ingress-1",
        "networking": {"address": "127.0.0.1", "port": envoy_port,
            "advertisedAddress": "127.0.0.1", "advertisedPort": envoy_port},
    });
    let token =
        std::fs::read_to_string(zone_token_file(&global, dir, "zone-1", "ingress")).expect("token");
    let mut envoy = Envoy::start_zone_proxy(&zone1, dir, "ingress", &resource, &token);
    envoy.wait_ready();
    let envoy_endpoint = format!("127.0.0.1:{envoy_port}");
    wait_for(
        "the Envoy ingress in the egress's routes",
        Duration::from_secs(30),
        || {
            egress
                .admin("/config_dump")
                .filter(|d| d.contains(&envoy_endpoint))
        },
    );
    let both = answers(outbound, 40);
    assert_eq!(both.get("FAILED"), None, "{both:?}");
    let envoy_stats = envoy.admin("/stats").unwrap_or_default();
    let via_envoy: u64 = envoy_stats
        .lines()
        .filter(|l| {
            l.starts_with(&format!(
                "cluster.{SERVICE}.default.mesh.upstream_cx_total: "
            ))
        })
        .filter_map(|l| l.rsplit(": ").next()?.parse::<u64>().ok())
        .sum();
    assert!(
        via_envoy >= 10,
        "Envoy ingress carried {via_envoy} of 40:\n{envoy_stats}"
    );
    let (rejected, accepted) = envoy.rejected_and_accepted();
    assert!(rejected.is_empty(), "Envoy rejected: {rejected:?}");
    assert!(accepted > 0);

    // Status on global follows KDS liveness: while zone-2's CP is gone, global shows its ingress
    // and its proxies Offline (not a stale Online); once it is back, Online again.
    let status_of = |cp: &ControlPlane, args: &[&str], name: &str| {
        cp.kumactl_ok(args)
            .lines()
            .find(|l| l.split_whitespace().any(|w| w == name))
            .map(|l| {
                if l.contains(" Online ") {
                    "Online"
                } else if l.contains(" Offline ") {
                    "Offline"
                } else {
                    "?"
                }
            })
            .unwrap_or("missing")
    };
    assert_eq!(
        status_of(&global, &["inspect", "zoneingresses"], "zone-2.ingress-2"),
        "Online"
    );
    zone2.kill9();
    wait_for(
        "zone-2's proxies Offline on global",
        Duration::from_secs(30),
        || {
            (status_of(&global, &["inspect", "zoneingresses"], "zone-2.ingress-2") == "Offline"
                && status_of(&global, &["inspect", "dataplanes"], "zone-2.client-2") == "Offline")
                .then_some(())
        },
    );
    assert_eq!(
        status_of(&global, &["inspect", "zoneingresses"], "zone-1.ingress-1"),
        "Online",
        "zone-1 is unaffected"
    );
    zone2.restart();
    wait_for(
        "zone-2's ingress Online again",
        Duration::from_secs(60),
        || {
            (status_of(&global, &["inspect", "zoneingresses"], "zone-2.ingress-2") == "Online")
                .then_some(())
        },
    );
}

/// An HTTP sidecar in mesh `default` for service `web`, its application on `app_port`.
fn web_proxy(cp: &ControlPlane, dir: &Path, name: &str, app_port: u16) -> DataPlane {
    let yaml = format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {}\n    servicePort: {app_port}\n    tags:\n      kuma.io/service: web\n      kuma.io/protocol: http\n",
        free_port()
    );
    start_sidecar(cp, dir, name, &yaml)
}

/// An instance that joined zone-1 before its application started costs zone-2's client no
/// request. The client's only endpoint is zone-1's ingress, which gives each connection to the
/// next instance (round robin): when the instance behind a connection answers that the request
/// reached no application, the client tries again on a new connection, which the ingress gives
/// to another instance. A MeshTimeout `maxConnectionDuration` of 1 ms makes every request open
/// a connection, so the requests (one at a time) meet the starting instance every other time.
/// The service lives only in zone-1, so zone-2 learns that it is HTTP from the ingress's
/// available services. The mesh's default MeshRetry is removed: this is the client's own try.
#[test]
fn a_starting_instance_behind_an_ingress_costs_no_request() {
    let root = tempfile::tempdir().expect("tmp");
    let dir = root.path();
    let (global, zone1, zone2) = global_and_two_zones(dir);
    apply_ok(&global, dir, "mesh.yaml", &mesh(""));
    wait_for_mtls_mesh(&[&zone1, &zone2]);
    apply_ok(
        &global,
        dir,
        "short-connections.yaml",
        "type: MeshTimeout\nmesh: default\nname: short-connections\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n  - targetRef:\n      kind: MeshService\n      name: web\n    default:\n      http:\n        maxConnectionDuration: 1ms\n",
    );
    // Without the mesh's default MeshRetry, which would hide the client's own try again.
    global.kumactl_ok(&[
        "delete",
        "meshretry",
        "mesh-retry-all-default",
        "--mesh",
        "default",
    ]);
    wait_for(
        "the default MeshRetry gone from zone-2",
        Duration::from_secs(20),
        || {
            let retries = zone2.kumactl_ok(&["get", "meshretries", "--mesh", "default"]);
            (!retries.contains("mesh-retry-all-default")).then_some(())
        },
    );
    let (mut ingress, _) = start_ingress(&global, &zone1, dir, "zone-1", "ingress-1");
    ingress.wait_ready();
    let up = EchoServer::start("up");
    let _up = web_proxy(&zone1, dir, "web-up", up.port);
    // Nothing listens on this port: the instance's application has not started.
    let starting = web_proxy(&zone1, dir, "web-starting", free_port());
    let outbound = free_port();
    let client = start_sidecar(
        &zone2,
        dir,
        "client-2",
        &client_yaml("client-2", outbound, "web"),
    );
    // HTTP (the retirement of connections is an HTTP client's) and the policy in force.
    wait_for(
        "short HTTP connections to web",
        Duration::from_secs(30),
        || {
            let answered = http_get(outbound).is_ok_and(|b| b.trim() == "up");
            (answered && client.stat("cluster.web.upstream_cx_max_duration_reached") > 0)
                .then_some(())
        },
    );
    let tried = || {
        let stats = starting.admin("/stats").unwrap_or_default();
        stats
            .lines()
            .any(|l| l.contains(".downstream_rq_5xx: ") && !l.ends_with(": 0"))
    };
    let mut requests = 0;
    wait_for(
        "the starting instance to be tried",
        Duration::from_secs(30),
        || {
            for _ in 0..10 {
                requests += 1;
                match http_get(outbound) {
                    Ok(body) => assert_eq!(body.trim(), "up", "request {requests}"),
                    Err(e) => panic!("request {requests} failed: {e}"),
                }
            }
            tried().then_some(())
        },
    );
    assert!(
        client.stat("cluster.web.upstream_rq_not_delivered_new_connection") > 0,
        "the client tried again on a new connection"
    );
}
