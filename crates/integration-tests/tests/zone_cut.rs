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

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshzone_integration_tests::lab::{Lab, LoadGen, mtls_mesh};
use meshzone_integration_tests::{ok, wait_for};
use serde_json::{Value, json};

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
const OUTBOUND: u16 = 20012;
const ENVOY_ADMIN: u16 = 9902;

/// The two clients in zone-2: (who, host, admin port).
const CLIENTS: [(&str, &str, u16); 2] = [
    ("kuma-dp", "z2-client", 9901),
    ("Envoy", "z2-envoy", ENVOY_ADMIN),
];

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

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

/// What one client saw in one scenario.
struct Seen {
    load: Value,
    /// Unix ms of the load's start, the cut and the heal.
    start: u128,
    cut: u128,
    heal: u128,
}

impl Seen {
    /// `(start offset from the load's start, body)` of each answer.
    fn answers(&self) -> Vec<(u128, String)> {
        self.load["answers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| {
                Some((
                    u128::from(a[0].as_u64()?),
                    a[1].as_str().unwrap_or("").to_string(),
                ))
            })
            .collect()
    }

    /// Zone-1's share of the requests started in `[from, to)` (Unix ms), and how many started.
    fn zone_1_share(&self, from: u128, to: u128) -> (f64, u64) {
        let started = |at: u128| (from..to).contains(&(self.start + at));
        let answers = self.answers();
        let z1 = answers
            .iter()
            .filter(|(at, b)| started(*at) && b == "z1-a")
            .count();
        let failed = self.load["failures"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| started(u128::from(f["at_ms"].as_u64().unwrap_or(0))))
            .count();
        let all = answers.iter().filter(|(at, _)| started(*at)).count() + failed;
        let share = if all == 0 {
            0.0
        } else {
            z1 as f64 / all as f64
        };
        (share, all as u64)
    }

    fn failed(&self) -> u64 {
        self.load["failed"].as_u64().unwrap_or(u64::MAX) + self.load["lost"].as_u64().unwrap_or(0)
    }

    /// From the cut to the start of the last request that failed (traffic was re-routed then);
    /// 0 when none failed.
    fn reroute_ms(&self) -> u128 {
        self.load["failures"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| self.start + u128::from(f["at_ms"].as_u64().unwrap_or(0)))
            .max()
            .map_or(0, |last| last.saturating_sub(self.cut))
    }

    /// From the heal to the start of the first request zone-1 answered after it.
    fn recover_ms(&self) -> Option<u128> {
        self.answers()
            .iter()
            .filter(|(_, b)| b == "z1-a")
            .map(|(at, _)| self.start + at)
            .filter(|at| *at >= self.heal)
            .min()
            .map(|at| at - self.heal)
    }
}

fn dataplane(name: &str, ip: &str, inbound: &str) -> String {
    format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: {ip}\n  inbound:\n{inbound}"
    )
}

fn echo_inbound() -> &'static str {
    "  - port: 10011\n    servicePort: 8080\n    tags:\n      kuma.io/service: echo\n      kuma.io/protocol: http\n"
}

struct Cut {
    lab: Lab,
}

impl Cut {
    fn apply(&self, yaml: &str) {
        for (i, doc) in yaml.split("\n---\n").enumerate() {
            let file = self.lab.file("global", &format!("policy-{i}.yaml"), doc);
            ok(&self.lab.kumactl("global", &["apply", "-f", &file]));
        }
    }

    fn config_dump(&self, host: &str, admin: u16) -> String {
        self.lab
            .curl(host, &[&format!("http://127.0.0.1:{admin}/config_dump")])
            .unwrap_or_default()
    }

    /// Waits until `types` are listed on zone-2 and each client's configuration shows them.
    fn wait_arrived(&self, s: &Scenario) {
        for t in s.types {
            wait_for(&format!("{t} on zone-2"), CONVERGE, || {
                self.lab
                    .curl(
                        "z2-cp",
                        &[&format!("http://127.0.0.1:5681/meshes/default/{t}")],
                    )
                    .ok()
                    .and_then(|b| serde_json::from_str::<Value>(&b).ok())
                    .filter(|v| v["total"].as_u64().unwrap_or(0) > 0)
            });
        }
        for ((who, host, admin), needles) in CLIENTS.iter().zip(s.arrived) {
            wait_for(&format!("{} in {who}'s config", s.name), CONVERGE, || {
                let dump = self.config_dump(host, *admin);
                needles.iter().all(|n| dump.contains(n)).then_some(())
            });
        }
    }

    /// Waits until a handful of requests from every client all answer, from both zones.
    fn wait_both_zones(&self) {
        for (who, host, _) in CLIENTS {
            wait_for(&format!("{who} answered by both zones"), CONVERGE, || {
                let seen = self
                    .lab
                    .split(host, &format!("http://127.0.0.1:{OUTBOUND}/"), 16);
                (!seen.contains_key("FAILED")
                    && seen.contains_key("z1-a")
                    && seen.contains_key("z2-a"))
                .then_some(())
            });
        }
    }

    fn drop_rule(&self, op: &str) {
        self.lab
            .iptables("z1-ing", &[op, "INPUT", "-s", ZONE_2, "-j", "DROP"]);
    }

    /// Load from both clients, the cut and the heal; what each client saw.
    fn run(&self) -> Vec<Seen> {
        let secs = (BEFORE + CUT + AFTER).as_secs().to_string();
        let (rate, timeout) = (RATE.to_string(), TIMEOUT_MS.to_string());
        let url = format!("http://127.0.0.1:{OUTBOUND}/");
        let start = unix_ms();
        let gens: Vec<LoadGen> = CLIENTS
            .iter()
            .map(|(who, host, _)| {
                LoadGen::start(
                    &self.lab,
                    host,
                    who,
                    &["load", &url, &rate, &secs, &timeout],
                )
            })
            .collect();
        // The fault is placed inside the load's fixed schedule (an open loop): these sleeps
        // time the fault, they do not wait for anything.
        std::thread::sleep(BEFORE);
        let cut = unix_ms();
        self.drop_rule("-I");
        std::thread::sleep(CUT);
        self.drop_rule("-D");
        let heal = unix_ms();
        gens.into_iter()
            .map(|g| {
                let load = g.finish();
                let start = u128::from(load["start_unix_ms"].as_u64().unwrap_or(0)).max(start);
                Seen {
                    load,
                    start,
                    cut,
                    heal,
                }
            })
            .collect()
    }
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
    let mut c = Cut { lab };

    // ---- Set-up: global, two zones, an mTLS mesh without default policies, proxies.
    // No default Mesh: the test's own starts without initial policies (no default retry,
    // timeout or circuit breaker), so the first scenario has no resilience policy at all.
    c.lab
        .global_and_two_zones(GLOBAL, &[("KUMA_DEFAULTS_SKIP_MESH", "true")]);
    let mesh = mtls_mesh("skipCreatingInitialPolicies: ['*']\n");
    let file = c.lab.file("global", "mesh.yaml", &mesh);
    ok(&c.lab.kumactl("global", &["apply", "-f", &file]));
    c.apply(ALLOW_ALL);
    wait_for("the mesh on zone-2", CONVERGE, || {
        c.lab
            .curl(
                "z2-cp",
                &["http://127.0.0.1:5681/meshes/default/meshtrafficpermissions"],
            )
            .ok()
            .filter(|b| b.contains("allow-all"))
    });
    c.lab.zone_ingress("1", "z1-ing", Z1_INGRESS);
    for (host, z, ip, name) in [
        ("z1-app", "1", "198.18.1.10", "z1-a"),
        ("z2-app", "2", "198.18.2.10", "z2-a"),
    ] {
        c.lab.echo_app(host, ip, name);
        c.lab
            .sidecar(host, z, name, &dataplane(name, ip, echo_inbound()), &[]);
    }
    let client_inbound = |service: &str| {
        format!(
            "  - port: 10021\n    servicePort: 8081\n    tags:\n      kuma.io/service: {service}\n  outbound:\n  - port: {OUTBOUND}\n    tags:\n      kuma.io/service: echo\n"
        )
    };
    c.lab.sidecar(
        "z2-client",
        "2",
        "client-2",
        &dataplane("client-2", "198.18.2.20", &client_inbound("client-2")),
        &[],
    );
    c.lab.envoy_sidecar(
        "z2-envoy",
        "2",
        &json!({
            "type": "Dataplane", "mesh": "default", "name": "envoy-client-2",
            "networking": {
                "address": "198.18.2.21",
                "inbound": [{"port": 10021, "servicePort": 8081, "tags": {"kuma.io/service": "envoy-client-2"}}],
                "outbound": [{"port": OUTBOUND, "tags": {"kuma.io/service": "echo"}}]
            }
        }),
        ENVOY_ADMIN,
    );
    c.wait_both_zones();

    // ---- The scenarios, each adding policies on global.
    let mut report = Vec::new();
    let mut broken = Vec::new();
    for s in &SCENARIOS {
        if !s.adds.is_empty() {
            c.apply(s.adds);
        }
        c.wait_arrived(s);
        c.wait_both_zones();
        let seen = c.run();
        for ((who, _, _), seen) in CLIENTS.iter().zip(&seen) {
            let failed = seen.failed();
            let (before, _) = seen.zone_1_share(seen.start, seen.cut);
            let settled = seen.heal + 2 * HEALTH_INTERVAL.as_millis();
            let (after, after_n) = seen.zone_1_share(settled, u128::MAX);
            let recover = seen.recover_ms();
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
