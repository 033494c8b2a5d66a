//! MeshCircuitBreaker and MeshHealthCheck: valid documents, each mistake at its path, the
//! default policy of a new Mesh.

use serde_json::json;

use super::tests::parse;
use super::*;

const MCB: &str = "
type: MeshCircuitBreaker
name: backend-breaker
mesh: default
spec:
  targetRef: {kind: Mesh}
  to:
    - targetRef: {kind: MeshService, name: backend}
      default:
        connectionLimits: {maxConnections: 2, maxConnectionPools: 4, maxPendingRequests: 1, maxRequests: 3, maxRetries: 1}
        outlierDetection:
          disabled: false
          interval: 5s
          baseEjectionTime: 30s
          maxEjectionPercent: 50
          splitExternalAndLocalErrors: true
          healthyPanicThreshold: '30.5'
          detectors:
            totalFailures: {consecutive: 3}
            gatewayFailures: {consecutive: 2}
            localOriginFailures: {consecutive: 1}
            successRate: {minimumHosts: 3, requestVolume: 10, standardDeviationFactor: '1.9'}
            failurePercentage: {minimumHosts: 2, requestVolume: 10, threshold: 85}
";

const MHC: &str = "
type: MeshHealthCheck
name: backend-health
mesh: default
spec:
  targetRef: {kind: MeshService, name: web}
  to:
    - targetRef: {kind: MeshService, name: backend}
      default:
        interval: 1.5s
        timeout: 500ms
        unhealthyThreshold: 2
        healthyThreshold: 1
        initialJitter: 0s
        intervalJitter: 100ms
        intervalJitterPercent: 10
        noTrafficInterval: 2s
        healthyPanicThreshold: 50
        failTrafficOnPanic: false
        reuseConnection: true
        http: {path: /health, expectedStatuses: [200, 204], requestHeadersToAdd: {set: [{name: x-probe, value: mesh}]}}
        tcp: {send: PING, receive: [PONG]}
        grpc: {serviceName: backend, authority: backend.mesh}
";

#[test]
fn valid_documents_round_trip_and_reach_the_engine_as_to_confs() {
    for (doc, rt) in [
        (MCB, ResourceType::MeshCircuitBreaker),
        (MHC, ResourceType::MeshHealthCheck),
    ] {
        let r = parse(doc).unwrap_or_else(|v| panic!("{rt}: {v}"));
        assert_eq!(r.resource_type(), rt);
        let out = r.to_value();
        assert_eq!(Resource::from_value(out).expect("round trip"), r);
        let p = to_engine_policy(&r).expect("a policy");
        assert_eq!(p.spec.to.len(), 1);
        crate::policy::validate_policy(&p.spec).expect("engine accepts it");
    }
    let mcb = to_engine_policy(&parse(MCB).expect("valid")).expect("policy");
    let conf = mcb.spec.to[0].default.as_ref().expect("conf");
    assert_eq!(
        conf.pointer("/outlierDetection/detectors/successRate/standardDeviationFactor"),
        Some(&json!("1.9"))
    );
    assert_eq!(
        conf.pointer("/connectionLimits/maxPendingRequests"),
        Some(&json!(1))
    );
    let mhc = to_engine_policy(&parse(MHC).expect("valid")).expect("policy");
    let conf = mhc.spec.to[0].default.as_ref().expect("conf");
    assert_eq!(conf.pointer("/tcp/receive/0"), Some(&json!("PONG")));
    assert_eq!(conf.pointer("/healthyPanicThreshold"), Some(&json!(50)));
}

fn edit(doc: &str, from: &str, to: &str) -> String {
    assert!(doc.contains(from), "test edit {from:?} not in document");
    doc.replacen(from, to, 1)
}

#[test]
fn each_mistake_is_reported_at_its_path() {
    let d = "spec.to[0].default";
    let od = "spec.to[0].default.outlierDetection";
    let cases: Vec<(&str, String, String, &str)> = vec![
        ("to MeshServiceSubset", edit(MCB, "targetRef: {kind: MeshService, name: backend}", "targetRef: {kind: MeshServiceSubset, name: backend, tags: {v: '1'}}"), "spec.to[0].targetRef.kind".into(), "not allowed"),
        ("no to", "type: MeshCircuitBreaker\nname: a\nmesh: default\nspec: {targetRef: {kind: Mesh}}\n".into(), "spec.to".into(), "at least one"),
        ("from is not taken", edit(MCB, "  to:\n", "  from: []\n  to:\n"), "spec.from".into(), "unknown field"),
        ("empty conf", "type: MeshCircuitBreaker\nname: a\nmesh: default\nspec: {to: [{targetRef: {kind: Mesh}, default: {}}]}\n".into(), d.into(), "at least one defined"),
        ("empty limits", edit(MCB, "{maxConnections: 2, maxConnectionPools: 4, maxPendingRequests: 1, maxRequests: 3, maxRetries: 1}", "{}"), format!("{d}.connectionLimits"), "at least one defined"),
        ("zero connections", edit(MCB, "maxConnections: 2", "maxConnections: 0"), format!("{d}.connectionLimits.maxConnections"), "greater than 0"),
        ("negative requests", edit(MCB, "maxRequests: 3", "maxRequests: -3"), format!("{d}.connectionLimits.maxRequests"), "greater than 0"),
        ("bad interval", edit(MCB, "interval: 5s", "interval: five"), format!("{od}.interval"), "not a non-negative duration"),
        // Kuma's durations are Go's: no days, no negative values.
        ("days", edit(MCB, "baseEjectionTime: 30s", "baseEjectionTime: 1d"), format!("{od}.baseEjectionTime"), "not a non-negative duration"),
        ("negative", edit(MCB, "interval: 5s", "interval: -5s"), format!("{od}.interval"), "not a non-negative duration"),
        ("zero ejection", edit(MCB, "baseEjectionTime: 30s", "baseEjectionTime: 0s"), format!("{od}.baseEjectionTime"), "greater than 0"),
        ("ejection percent", edit(MCB, "maxEjectionPercent: 50", "maxEjectionPercent: 101"), format!("{od}.maxEjectionPercent"), "[0, 100]"),
        ("panic threshold", edit(MCB, "healthyPanicThreshold: '30.5'", "healthyPanicThreshold: '130'"), format!("{od}.healthyPanicThreshold"), "[0, 100]"),
        ("panic threshold text", edit(MCB, "healthyPanicThreshold: '30.5'", "healthyPanicThreshold: half"), format!("{od}.healthyPanicThreshold"), "decimal string"),
        ("zero consecutive", edit(MCB, "totalFailures: {consecutive: 3}", "totalFailures: {consecutive: 0}"), format!("{od}.detectors.totalFailures.consecutive"), "greater than 0"),
        ("stdev factor", edit(MCB, "standardDeviationFactor: '1.9'", "standardDeviationFactor: 'x'"), format!("{od}.detectors.successRate.standardDeviationFactor"), "greater than 0"),
        ("failure threshold", edit(MCB, "threshold: 85", "threshold: 185"), format!("{od}.detectors.failurePercentage.threshold"), "[0, 100]"),
        ("unknown detector", edit(MCB, "totalFailures:", "allFailures:"), format!("{od}.detectors.allFailures"), "unknown field"),
        ("empty detectors", "type: MeshCircuitBreaker\nname: a\nmesh: default\nspec: {to: [{targetRef: {kind: Mesh}, default: {outlierDetection: {detectors: {}}}}]}\n".into(), format!("{od}.detectors"), "at least one defined"),
        ("hc to subset", edit(MHC, "targetRef: {kind: MeshService, name: backend}", "targetRef: {kind: MeshSubset, tags: {a: b}}"), "spec.to[0].targetRef.kind".into(), "not allowed"),
        ("hc interval", edit(MHC, "interval: 1.5s", "interval: 0s"), format!("{d}.interval"), "greater than 0"),
        ("hc timeout", edit(MHC, "timeout: 500ms", "timeout: soon"), format!("{d}.timeout"), "not a non-negative duration"),
        ("hc thresholds", edit(MHC, "unhealthyThreshold: 2", "unhealthyThreshold: 0"), format!("{d}.unhealthyThreshold"), "greater than 0"),
        ("hc jitter percent", edit(MHC, "intervalJitterPercent: 10", "intervalJitterPercent: 200"), format!("{d}.intervalJitterPercent"), "[0, 100]"),
        ("hc path", edit(MHC, "path: /health", "path: health"), format!("{d}.http.path"), "start with '/'"),
        ("hc status", edit(MHC, "expectedStatuses: [200, 204]", "expectedStatuses: [200, 700]"), format!("{d}.http.expectedStatuses[1]"), "[100, 599]"),
        ("hc header name", edit(MHC, "{name: x-probe, value: mesh}", "{name: '', value: mesh}"), format!("{d}.http.requestHeadersToAdd.set[0].name"), "not be empty"),
        ("hc unknown", edit(MHC, "tcp: {send: PING", "tcp: {payload: PING"), format!("{d}.tcp.payload"), "unknown field"),
    ];
    for (what, doc, field, message) in cases {
        let err = match parse(&doc) {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => e,
        };
        assert!(
            err.violations
                .iter()
                .any(|v| v.field == field && v.message.contains(message)),
            "{what}: wanted {field}: ..{message}.., got {err}"
        );
    }
}

#[test]
fn a_new_mesh_gets_the_default_circuit_breaker_unless_skipped() {
    // The circuit breaker among them (the other types have their own tests).
    let names = |skip: &[&str]| {
        let spec = crate::specs::MeshSpec {
            skip_creating_initial_policies: skip.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        initial_policies("prod", &spec)
            .iter()
            .filter(|r| {
                matches!(
                    r.resource_type(),
                    ResourceType::MeshTrafficPermission | ResourceType::MeshCircuitBreaker
                )
            })
            .map(|r| (r.resource_type(), r.meta.name.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&[]),
        [
            (ResourceType::MeshTrafficPermission, "allow-all-prod".into()),
            (
                ResourceType::MeshCircuitBreaker,
                "mesh-circuit-breaker-all-prod".into()
            ),
        ]
    );
    assert_eq!(
        names(&["MeshTrafficPermission"]),
        [(
            ResourceType::MeshCircuitBreaker,
            "mesh-circuit-breaker-all-prod".into()
        )]
    );
    assert!(names(&["*"]).is_empty());
    for r in initial_policies("prod", &Default::default()) {
        crate::validate(&r).unwrap_or_else(|v| panic!("{}: {v}", r.meta.name));
    }
}
