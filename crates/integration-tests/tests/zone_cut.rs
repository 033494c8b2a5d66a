//! The seed's "communication between 2 zones failing", counted (issue 11). Hosts in network
//! namespaces (`meshzone_integration_tests::lab`): global, two zone CPs, an `echo` service with
//! one instance in zone-1 (behind zone-1's ingress) and one in zone-2, and in zone-2 two clients
//! configured by zone-2's CP: a kuma-dp sidecar and an Envoy 1.40 sidecar. Locality awareness
//! is off, so each client spreads its requests over both zones by endpoint weight.
//!
//! Every scenario runs bounded, steady load (`loadgen`) from both clients through their
//! outbound, cuts zone-2 from zone-1's ingress with an iptables DROP on the ingress host
//! (packets vanish: no FIN, no RST), heals, and keeps the load on. The scenarios add policies
//! on global one after another:
//! - **no resilience policy** (the mesh skips its default policies; one allow-all
//!   MeshTrafficPermission): the failures are reported, not judged;
//! - **MeshHealthCheck + MeshCircuitBreaker + MeshLoadBalancingStrategy**: the requests that fail
//!   before traffic is re-routed add up to at most one second of load;
//! - **… + MeshRetry**: no request fails.
//!
//! In the policy scenarios the traffic must also return to zone-1 after the heal: zone-1's
//! share of the requests started from two health-check intervals after the heal is at least
//! half its share before the cut. Times (re-route, recovery) are measured and reported, not
//! judged; `MESHZONE_ZONE_CUT_REPORT` names a file for the JSON report, which
//! `bench/src/zone_cut.rs` tabulates.

use std::time::Duration;

use meshzone_integration_tests::cut::{self, Client, Schedule};
use meshzone_integration_tests::lab::{Lab, mtls_mesh};
use meshzone_integration_tests::{ok, wait_for};
use serde_json::json;

/// Requests per second of each client: "one second worth" of failures is this many.
const RATE: u64 = 40;
/// Per-request timeout of the load generator.
const TIMEOUT_MS: u64 = 3000;
/// Load before the cut, length of the cut, load after the heal.
const BEFORE: Duration = Duration::from_secs(2);
const CUT: Duration = Duration::from_secs(5);
const AFTER: Duration = Duration::from_secs(6);
/// The health-check interval of the MeshHealthCheck below.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
const CONVERGE: Duration = Duration::from_secs(60);

const GLOBAL: &str = "198.18.0.1";
const Z1_INGRESS: &str = "198.18.1.2";
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

const ALLOW_ALL: &str = "type: MeshTrafficPermission
name: allow-all
mesh: default
spec:
  targetRef: {kind: Mesh}
  from:
  - targetRef: {kind: Mesh}
    default: {action: Allow}
";

const HEALTH_AND_BREAKER: &str = "type: MeshHealthCheck
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
      # Envoy allows 3 concurrent retries by default: too few for a zone's share of the load.
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
        perTryTimeout: 500ms
        backOff: {baseInterval: 25ms, maxInterval: 100ms}
        retryOn: [5xx, GatewayError, Reset, ConnectFailure]
        hostSelection:
        - predicate: OmitPreviousHosts
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

/// One scenario: the policies it adds on global (with the types to wait for on zone-2), the
/// text each client's config dump must contain once they arrived, and whether its promises
/// are judged.
struct Scenario {
    name: &'static str,
    adds: &'static str,
    types: &'static [&'static str],
    /// Per client (kuma-dp, Envoy): the config-dump texts that show the policies arrived.
    arrived: [&'static [&'static str]; 2],
    /// At most this many failed requests per client; `None`: only reported.
    max_failed: Option<u64>,
}

const SCENARIOS: [Scenario; 3] = [
    Scenario {
        name: "no resilience policy",
        adds: "",
        types: &[],
        arrived: [&[], &[]],
        max_failed: None,
    },
    Scenario {
        name: "health check + circuit breaker + load balancing",
        adds: HEALTH_AND_BREAKER,
        types: &[
            "meshhealthchecks",
            "meshcircuitbreakers",
            "meshloadbalancingstrategies",
        ],
        arrived: [&["health_check"], &["health_checks", "outlier_detection"]],
        max_failed: Some(RATE),
    },
    Scenario {
        name: "health check + circuit breaker + load balancing + retry",
        adds: RETRY,
        types: &["meshretries", "meshtimeouts"],
        arrived: [
            &["num_retries"],
            &["retry_policy", "\"connect_timeout\": \"0.500s\""],
        ],
        max_failed: Some(0),
    },
];

fn dataplane(name: &str, ip: &str, inbound: &str) -> String {
    format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: {ip}\n  inbound:\n{inbound}"
    )
}

fn echo_inbound() -> &'static str {
    "  - port: 10011\n    servicePort: 8080\n    tags:\n      kuma.io/service: echo\n      kuma.io/protocol: http\n"
}

#[test]
fn a_cut_zone_is_severed_and_traffic_rerouted() {
    let mut lab = Lab::new();
    for (host, ip) in [
        ("global", GLOBAL),
        ("z1-cp", "198.18.1.1"),
        ("z1-ing", Z1_INGRESS),
        ("z1-app", "198.18.1.10"),
        ("z2-cp", "198.18.2.1"),
        ("z2-app", "198.18.2.10"),
        ("z2-client", "198.18.2.20"),
        ("z2-envoy", "198.18.2.21"),
    ] {
        lab.host(host, ip);
    }

    // ---- Set-up: global, two zones, an mTLS mesh without default policies, proxies.
    // No default Mesh: the test's own starts without initial policies (no default retry,
    // timeout or circuit breaker), so the first scenario has no resilience policy at all.
    lab.global_and_two_zones(GLOBAL, &[("KUMA_DEFAULTS_SKIP_MESH", "true")]);
    let mesh = mtls_mesh("skipCreatingInitialPolicies: ['*']\n");
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
    lab.zone_ingress("1", "z1-ing", Z1_INGRESS);
    for (host, z, ip, name) in [
        ("z1-app", "1", "198.18.1.10", "z1-a"),
        ("z2-app", "2", "198.18.2.10", "z2-a"),
    ] {
        lab.echo_app(host, ip, name);
        lab.sidecar(host, z, name, &dataplane(name, ip, echo_inbound()), &[]);
    }
    cut::start_zone_2_clients(&mut lab);
    let url = format!("http://127.0.0.1:{OUTBOUND}/");
    let instances = ["z1-a", "z2-a"];
    cut::wait_answered_by(&lab, &CLIENTS, &url, &instances, CONVERGE);

    // ---- The scenarios, each adding policies on global.
    let mut report = Vec::new();
    let mut broken = Vec::new();
    for s in &SCENARIOS {
        if !s.adds.is_empty() {
            cut::apply_on_global(&lab, s.adds);
        }
        cut::wait_arrived(
            &lab, "z2-cp", s.types, &CLIENTS, &s.arrived, s.name, CONVERGE,
        );
        cut::wait_answered_by(&lab, &CLIENTS, &url, &instances, CONVERGE);
        let seen = cut::run(&lab, &CLIENTS, &url, &SCHEDULE, |op| {
            lab.iptables("z1-ing", &[op, "INPUT", "-s", ZONE_2, "-j", "DROP"]);
        });
        for (Client { who, .. }, seen) in CLIENTS.iter().zip(&seen) {
            let failed = seen.failed();
            let (before, _) = seen.share("z1-a", seen.start, seen.cut);
            let settled = seen.heal + 2 * HEALTH_INTERVAL.as_millis();
            let (after, after_n) = seen.share("z1-a", settled, u128::MAX);
            let recover = seen.recover_ms("z1-a");
            eprintln!(
                "[{}] {who}: {} requests, {failed} failed ({}), re-routed {} ms after the cut, zone-1 answered again {recover:?} ms after the heal; zone-1 share {before:.2} before, {after:.2} after ({after_n} requests)",
                s.name,
                seen.load["requests"],
                seen.load["reasons"],
                seen.reroute_ms()
            );
            if let Some(max) = s.max_failed {
                if failed > max {
                    broken.push(format!(
                        "[{}] {who}: {failed} requests failed (at most {max}): {}",
                        s.name, seen.load["reasons"]
                    ));
                }
                if before <= 0.0 || after < before / 2.0 {
                    broken.push(format!(
                        "[{}] {who}: zone-1's share was {before:.2} before the cut and {after:.2} from {} ms after the heal",
                        s.name,
                        2 * HEALTH_INTERVAL.as_millis()
                    ));
                }
            }
            report.push(json!({
                "scenario": s.name,
                "client": who,
                "requests": seen.load["requests"],
                "failed": failed,
                "reasons": seen.load["reasons"],
                "reroute_ms": seen.reroute_ms(),
                "recover_ms": recover,
                "zone_1_share_before": before,
                "zone_1_share_after": after,
                "max_failed": s.max_failed,
            }));
        }
    }
    if let Ok(path) = std::env::var("MESHZONE_ZONE_CUT_REPORT") {
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
