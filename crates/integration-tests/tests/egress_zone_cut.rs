//! Kuma #8297, counted (issue 11): a zone egress keeps each remote zone's health, so that one
//! failing zone does not take every remote zone away from the sidecars behind it. Hosts in
//! network namespaces (`meshzone_integration_tests::lab`): global, three zone CPs, an `echo`
//! service with one instance in each zone (zone-1's and zone-3's behind their ingresses), and in
//! zone-2 a zone egress (the mesh has `routing.zoneEgress`) and two clients configured by
//! zone-2's CP: a kuma-dp sidecar and an Envoy 1.40 sidecar. Each client sees two endpoints:
//! the local instance and its egress, which carries both remote zones. Locality awareness is
//! off, so requests spread over all three zones.
//!
//! Every scenario runs bounded, steady load (`loadgen`) from both clients, cuts the egress from
//! zone-1's ingress with an iptables DROP on the ingress host (no FIN, no RST), heals, and
//! keeps the load on. The policies are top-level `Mesh` ones, which is what a zone egress takes
//! (MeshHealthCheck as a TCP connect check of each remote ingress, MeshTimeout's connection
//! timeout); the sidecars leave their egress endpoint out of their own active checks.
//! - **health check + circuit breaker + connect timeout, no retry**: the egress itself moves
//!   the cut zone's share to zone-3 (a connect that times out goes on to the next ingress, and
//!   the check takes zone-1 out): the failed requests add up to at most one second of load;
//! - **… + MeshRetry**: no request fails.
//!
//! In both, zone-3 must keep taking the egress's traffic during the cut: its share of the
//! requests started from two health-check intervals after the cut until the heal is at least
//! half the egress's share (zone-1's and zone-3's) before the cut. A client that ejected its
//! egress (#8297) would send everything to its local instance instead. `MESHZONE_EGRESS_CUT_REPORT` names a file for the JSON report.

use std::time::Duration;

use meshzone_integration_tests::cut::{self, Client, Schedule};
use meshzone_integration_tests::lab::{Lab, mtls_mesh, wait_for_or};
use meshzone_integration_tests::{ok, wait_for};
use serde_json::json;

/// Requests per second of each client: "one second worth" of failures is this many.
const RATE: u64 = 40;
const TIMEOUT_MS: u64 = 3000;
const BEFORE: Duration = Duration::from_secs(2);
const CUT: Duration = Duration::from_secs(5);
const AFTER: Duration = Duration::from_secs(3);
/// The health-check interval of the MeshHealthCheck below.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
const CONVERGE: Duration = Duration::from_secs(60);

const GLOBAL: &str = "198.18.0.1";
const ZONE_2: &str = "198.18.2.0/24";
const OUTBOUND: u16 = cut::ECHO_OUTBOUND;

const CLIENTS: [Client; 2] = cut::ZONE_2_CLIENTS;

const SCHEDULE: Schedule = Schedule {
    rate: RATE,
    timeout_ms: TIMEOUT_MS,
    before: BEFORE,
    cut: CUT,
    after: AFTER,
};

/// The instances' names: what each answers.
const Z1: &str = "z1-a";
const Z2: &str = "z2-a";
const Z3: &str = "z3-a";

const ALLOW_ALL: &str = "type: MeshTrafficPermission
name: allow-all
mesh: default
spec:
  targetRef: {kind: Mesh}
  from:
  - targetRef: {kind: Mesh}
    default: {action: Allow}
";

const HEALTH_BREAKER_TIMEOUT: &str = "type: MeshHealthCheck
name: echo-health
mesh: default
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: echo}
    default:
      interval: 1s
      timeout: 500ms
      unhealthyThreshold: 1
      healthyThreshold: 1
      http:
        path: /
        expectedStatuses: [200]
---
type: MeshCircuitBreaker
name: echo-breaker
mesh: default
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: echo}
    default:
      connectionLimits: {maxRetries: 100}
      outlierDetection:
        interval: 1s
        baseEjectionTime: 1s
        maxEjectionPercent: 50
        splitExternalAndLocalErrors: true
        detectors:
          localOriginFailures: {consecutive: 1}
          gatewayFailures: {consecutive: 3}
---
type: MeshLoadBalancingStrategy
name: echo-spread
mesh: default
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: echo}
    default:
      localityAwareness:
        disabled: true
---
type: MeshTimeout
name: echo-connect
mesh: default
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: echo}
    default:
      connectionTimeout: 500ms
";

const RETRY: &str = "type: MeshRetry
name: echo-retry
mesh: default
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: echo}
    default:
      http:
        numRetries: 3
        perTryTimeout: 1s
        backOff: {baseInterval: 25ms, maxInterval: 100ms}
        retryOn: [5xx, GatewayError, Reset, ConnectFailure]
        hostSelection:
        - predicate: OmitPreviousHosts
";

struct Scenario {
    name: &'static str,
    adds: &'static str,
    types: &'static [&'static str],
    /// Per client (kuma-dp, Envoy): the config-dump texts that show the policies arrived.
    arrived: [&'static [&'static str]; 2],
    max_failed: u64,
}

const SCENARIOS: [Scenario; 2] = [
    Scenario {
        name: "health check + circuit breaker + connect timeout",
        adds: HEALTH_BREAKER_TIMEOUT,
        types: &[
            "meshhealthchecks",
            "meshcircuitbreakers",
            "meshloadbalancingstrategies",
            "meshtimeouts",
        ],
        arrived: [
            &["health_check", "no_active_health_check"],
            &[
                "health_checks",
                "outlier_detection",
                "\"connect_timeout\": \"0.500s\"",
            ],
        ],
        max_failed: RATE,
    },
    Scenario {
        name: "health check + circuit breaker + connect timeout + retry",
        adds: RETRY,
        types: &["meshretries"],
        arrived: [&["num_retries"], &["retry_policy"]],
        max_failed: 0,
    },
];

fn dataplane(name: &str, ip: &str, inbound: &str) -> String {
    format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: {ip}\n  inbound:\n{inbound}"
    )
}

const ECHO_INBOUND: &str = "  - port: 10011\n    servicePort: 8080\n    tags:\n      kuma.io/service: echo\n      kuma.io/protocol: http\n";

/// Waits until the egress's route cluster checks the remote ingresses.
fn wait_egress_checks(lab: &Lab) {
    let last = std::cell::RefCell::new(String::new());
    wait_for_or(
        "the egress's health check of the remote ingresses",
        &last,
        || {
            let dump = cut::config_dump(lab, "z2-egress", 9901);
            let ok = dump.contains("echo.default.mesh") && dump.contains("health_check");
            *last.borrow_mut() = dump;
            ok.then_some(())
        },
    );
}

#[test]
fn the_egress_keeps_each_remote_zone_and_a_cut_zone_takes_only_its_own_share() {
    let mut lab = Lab::new();
    for (host, ip) in [
        ("global", GLOBAL),
        ("z1-cp", "198.18.1.1"),
        ("z1-ing", "198.18.1.2"),
        ("z1-app", "198.18.1.10"),
        ("z2-cp", "198.18.2.1"),
        ("z2-egress", "198.18.2.3"),
        ("z2-app", "198.18.2.10"),
        ("z2-client", "198.18.2.20"),
        ("z2-envoy", "198.18.2.21"),
        ("z3-cp", "198.18.3.1"),
        ("z3-ing", "198.18.3.2"),
        ("z3-app", "198.18.3.10"),
    ] {
        lab.host(host, ip);
    }

    // ---- Set-up: global, three zones, an mTLS mesh through the egress without default
    // policies, proxies.
    lab.global_cp_with(&[("KUMA_DEFAULTS_SKIP_MESH", "true")]);
    for z in ["1", "2", "3"] {
        lab.zone_cp(z, GLOBAL, &[]);
    }
    for host in ["global", "z1-cp", "z2-cp", "z3-cp"] {
        lab.configure_kumactl(host);
    }
    wait_for("three zones Online", CONVERGE, || {
        let o = lab.kumactl("global", &["get", "zones"]);
        (String::from_utf8_lossy(&o.stdout).matches("Online").count() == 3).then_some(())
    });
    let mesh = mtls_mesh("routing:\n  zoneEgress: true\nskipCreatingInitialPolicies: ['*']\n");
    let file = lab.file("global", "mesh.yaml", &mesh);
    ok(&lab.kumactl("global", &["apply", "-f", &file]));
    cut::apply_on_global(&lab, ALLOW_ALL);
    wait_for("the mesh on zone-2", CONVERGE, || {
        lab.curl(
            "z2-cp",
            &["http://127.0.0.1:5681/meshes/default/meshtrafficpermissions"],
        )
        .ok()
        .filter(|b| b.contains("allow-all"))
    });
    lab.zone_ingress("1", "z1-ing", "198.18.1.2");
    lab.zone_ingress("3", "z3-ing", "198.18.3.2");
    let token = ok(&lab.kumactl(
        "global",
        &[
            "generate",
            "zone-token",
            "--zone=zone-2",
            "--scope",
            "egress",
        ],
    ));
    lab.zone_proxy(
        "z2-egress",
        "egress-2",
        "egress",
        "2",
        token.trim(),
        "type: ZoneEgress\nname: zoneegress-2\nnetworking:\n  address: 198.18.2.3\n  port: 10002\n",
        &[],
    );
    for (host, z, ip, name) in [
        ("z1-app", "1", "198.18.1.10", Z1),
        ("z2-app", "2", "198.18.2.10", Z2),
        ("z3-app", "3", "198.18.3.10", Z3),
    ] {
        lab.echo_app(host, ip, name);
        lab.sidecar(host, z, name, &dataplane(name, ip, ECHO_INBOUND), &[]);
    }
    cut::start_zone_2_clients(&mut lab);
    let url = format!("http://127.0.0.1:{OUTBOUND}/");
    let instances = [Z1, Z2, Z3];
    cut::wait_answered_by(&lab, &CLIENTS, &url, &instances, CONVERGE);

    // ---- The scenarios, each adding policies on global.
    let mut report = Vec::new();
    let mut broken = Vec::new();
    for s in &SCENARIOS {
        cut::apply_on_global(&lab, s.adds);
        cut::wait_arrived(
            &lab, "z2-cp", s.types, &CLIENTS, &s.arrived, s.name, CONVERGE,
        );
        wait_egress_checks(&lab);
        cut::wait_answered_by(&lab, &CLIENTS, &url, &instances, CONVERGE);
        let seen = cut::run(&lab, &CLIENTS, &url, &SCHEDULE, |op| {
            lab.iptables("z1-ing", &[op, "INPUT", "-s", ZONE_2, "-j", "DROP"]);
        });
        for (Client { who, .. }, seen) in CLIENTS.iter().zip(&seen) {
            let failed = seen.failed();
            // Before the cut the egress's share is zone-1's and zone-3's together (how it
            // splits them follows which ingress each pooled connection landed on).
            let (z1_before, _) = seen.share(Z1, seen.start, seen.cut);
            let (z3_before, _) = seen.share(Z3, seen.start, seen.cut);
            let egress_before = z1_before + z3_before;
            let settled = seen.cut + 2 * HEALTH_INTERVAL.as_millis();
            let (z3_during, during_n) = seen.share(Z3, settled, seen.heal);
            let (z1_during, _) = seen.share(Z1, settled, seen.heal);
            let recover = seen.recover_ms(Z1);
            eprintln!(
                "[{}] {who}: {} requests, {failed} failed ({}); egress share {egress_before:.2} before the cut (zone-3 {z3_before:.2}), zone-3 {z3_during:.2} during it ({during_n} requests), zone-1 {z1_during:.2} during it; zone-1 answered again {recover:?} ms after the heal",
                s.name, seen.load["requests"], seen.load["reasons"],
            );
            if failed > s.max_failed {
                broken.push(format!(
                    "[{}] {who}: {failed} requests failed (at most {}): {}",
                    s.name, s.max_failed, seen.load["reasons"]
                ));
            }
            if egress_before <= 0.0 || z3_during < egress_before / 2.0 {
                broken.push(format!(
                    "[{}] {who}: the egress took {egress_before:.2} of the requests before the cut, zone-3 only {z3_during:.2} during it: the client lost its egress",
                    s.name
                ));
            }
            report.push(json!({
                "scenario": s.name,
                "client": who,
                "requests": seen.load["requests"],
                "failed": failed,
                "reasons": seen.load["reasons"],
                "egress_share_before": egress_before,
                "zone_3_share_before": z3_before,
                "zone_3_share_during": z3_during,
                "zone_1_share_during": z1_during,
                "recover_ms": recover,
                "max_failed": s.max_failed,
            }));
        }
    }
    if let Ok(path) = std::env::var("MESHZONE_EGRESS_CUT_REPORT") {
        let doc = json!({
            "rate_per_client": RATE,
            "cut_ms": CUT.as_millis(),
            "health_interval_ms": HEALTH_INTERVAL.as_millis(),
            "rows": report,
        });
        std::fs::write(&path, doc.to_string()).expect("report");
    }
    assert!(broken.is_empty(), "promises broken:\n{}", broken.join("\n"));
}
