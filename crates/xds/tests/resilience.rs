//! MeshCircuitBreaker and MeshHealthCheck's Envoy output on outbound clusters, through the
//! engine from policy documents: pinned by golden JSON (`testdata/xds/mesh-circuit-breaker.golden.json`,
//! `mesh-health-check.golden.json`; `UPDATE_GOLDEN=1` rewrites them), accepted by Envoy 1.40
//! (`envoy --mode validate`), and decoded back into kuma-dp's plan (circuit breakers) or
//! refused with the field path (active health checks, which kuma-dp does not run yet).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use meshzone_model::policies::mesh_circuit_breaker::MeshCircuitBreaker;
use meshzone_model::policy::{Policy, ProxyDescription, rules_for_proxy};
use meshzone_model::specs::{DataplaneSpec, MeshSpec};
use meshzone_xds::decode::{CheckerPlan, LimitsPlan, ProxyConfig, RatePlan};
use meshzone_xds::generate::{EndpointInfo, ProxyInput, Resources, TlsMaterial, base_resources};
use meshzone_xds::names::TypeUrl;
use meshzone_xds::policy::{ProxyPolicies, configure};
use serde_json::json;

fn mesh() -> MeshSpec {
    serde_json::from_value(json!({
        "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}
    }))
    .expect("mesh")
}

/// A web sidecar with outbounds to backend (http), db (tcp) and grpc-api (grpc).
fn dataplane() -> DataplaneSpec {
    serde_json::from_value(json!({
        "networking": {
            "address": "10.0.0.1",
            "inbound": [{"port": 10001, "servicePort": 20001, "tags": {"kuma.io/service": "web"}}],
            "outbound": [
                {"port": 30001, "tags": {"kuma.io/service": "backend"}},
                {"port": 30002, "tags": {"kuma.io/service": "db"}},
                {"port": 30003, "tags": {"kuma.io/service": "grpc-api"}}
            ]
        }
    }))
    .expect("dataplane")
}

fn policy(name: &str, spec: serde_json::Value) -> Policy {
    Policy::new(
        name,
        "default",
        serde_json::from_value(spec).expect("policy spec"),
    )
}

fn generated(policies: &ProxyPolicies) -> Resources {
    let mesh_spec = mesh();
    let dp = dataplane();
    let endpoint = |address: &str| EndpointInfo {
        address: address.into(),
        port: 10001,
        weight: 1,
        zone: None,
        priority: 0,
        tags: Default::default(),
        via_egress: false,
    };
    let endpoints = BTreeMap::from([
        (
            "backend".to_string(),
            vec![endpoint("10.0.0.5"), endpoint("10.0.0.6")],
        ),
        ("db".to_string(), vec![endpoint("10.0.0.7")]),
        ("grpc-api".to_string(), vec![endpoint("10.0.0.8")]),
    ]);
    let protocols = BTreeMap::from([
        ("backend".to_string(), "http".to_string()),
        ("grpc-api".to_string(), "grpc".to_string()),
    ]);
    let material = TlsMaterial {
        identity_cert_pem: "IDENTITY CERT".into(),
        identity_key_pem: "IDENTITY KEY".into(),
        ca_cert_pem: "CA CERT".into(),
    };
    let input = ProxyInput {
        mesh: "default",
        mesh_spec: &mesh_spec,
        dataplane: &dp,
        endpoints: &endpoints,
        tls: Some(&material),
        protocols: &protocols,
        proxyless: false,
        transparent: None,
        policies,
        external_services: &Default::default(),
    };
    let mut resources = base_resources(&input);
    configure(&input, &mut resources);
    resources
}

fn rules(policies: &[Policy]) -> meshzone_model::policy::PolicyRules {
    let proxy = ProxyDescription::of_dataplane("default", &dataplane());
    rules_for_proxy(&proxy, policies, &BTreeMap::new()).expect("rules")
}

fn clusters_json(resources: &Resources) -> serde_json::Value {
    support::json_by_name(&resources.clone().into_snapshot(), TypeUrl::Cluster)
}

/// The mesh default plus a stricter policy for backend.
fn breakers() -> ProxyPolicies {
    let default = serde_json::to_value(MeshCircuitBreaker::default_for_mesh()).expect("json");
    ProxyPolicies {
        circuit_breaker: rules(&[
            policy("mesh-circuit-breaker-all-default", default),
            policy(
                "backend-breaker",
                json!({"targetRef": {"kind": "Mesh"}, "to": [{
                    "targetRef": {"kind": "MeshService", "name": "backend"},
                    "default": {
                        "connectionLimits": {"maxConnections": 2, "maxPendingRequests": 1, "maxRequests": 4, "maxRetries": 1},
                        "outlierDetection": {
                            "interval": "5s", "baseEjectionTime": "30s", "maxEjectionPercent": 50,
                            "splitExternalAndLocalErrors": true, "healthyPanicThreshold": 30,
                            "detectors": {
                                "totalFailures": {"consecutive": 3},
                                "gatewayFailures": {"consecutive": 2},
                                "localOriginFailures": {"consecutive": 1},
                                "successRate": {"minimumHosts": 2, "requestVolume": 10, "standardDeviationFactor": "1.9"},
                                "failurePercentage": {"minimumHosts": 2, "requestVolume": 10, "threshold": 85}
                            }
                        }
                    }
                }]}),
            ),
        ]),
        ..Default::default()
    }
}

#[test]
fn circuit_breakers_golden_envoy_accepts_and_kuma_dp_decodes_them() {
    let resources = generated(&breakers());
    let json = clusters_json(&resources);
    support::assert_golden("mesh-circuit-breaker.golden.json", &json);
    assert_eq!(
        json["backend"]["circuitBreakers"]["thresholds"][0]["trackRemaining"],
        json!(true)
    );
    assert_eq!(
        json["backend"]["outlierDetection"]["successRateStdevFactor"],
        json!(1900)
    );
    assert_eq!(
        json["db"]["outlierDetection"]["consecutiveLocalOriginFailure"],
        json!(1),
        "the mesh default on every other outbound"
    );
    support::assert_envoy_accepts("mesh-circuit-breaker", &resources);

    let (config, errors) = ProxyConfig::from_snapshot(&resources.clone().into_snapshot());
    assert!(errors.is_empty(), "kuma-dp refuses our output: {errors:?}");
    let backend = &config.clusters["backend"];
    assert_eq!(
        backend.limits,
        LimitsPlan {
            max_connections: 2,
            max_pending_requests: 1,
            max_requests: 4,
            max_retries: 1
        }
    );
    assert_eq!(backend.panic_threshold, 3000);
    let od = backend.outlier.as_ref().expect("outlier detection");
    assert_eq!(od.interval, Duration::from_secs(5));
    assert_eq!(od.base_ejection_time, Duration::from_secs(30));
    assert_eq!(
        od.max_ejection_time,
        Duration::from_secs(300),
        "Envoy's default cap"
    );
    assert_eq!(od.max_ejection_percent, 50);
    assert_eq!(
        (
            od.consecutive_5xx,
            od.consecutive_gateway_failure,
            od.consecutive_local_origin_failure
        ),
        (Some(3), Some(2), Some(1))
    );
    assert_eq!(
        od.success_rate,
        Some(RatePlan {
            minimum_hosts: 2,
            request_volume: 10,
            threshold: 1900
        })
    );
    assert_eq!(
        od.failure_percentage,
        Some(RatePlan {
            minimum_hosts: 2,
            request_volume: 10,
            threshold: 85
        })
    );
    let db = config.clusters["db"]
        .outlier
        .as_ref()
        .expect("default policy");
    assert_eq!(
        (
            db.consecutive_5xx,
            db.consecutive_local_origin_failure,
            db.max_ejection_percent
        ),
        (None, Some(1), 100)
    );
    assert_eq!(db.base_ejection_time, Duration::from_secs(10));
}

#[test]
fn without_a_circuit_breaker_outbounds_have_no_outlier_detection() {
    let resources = generated(&ProxyPolicies::default());
    let json = clusters_json(&resources);
    for c in ["backend", "db", "grpc-api"] {
        assert!(
            json[c].get("outlierDetection").is_none(),
            "{c}: {}",
            json[c]
        );
        assert!(json[c].get("circuitBreakers").is_none(), "{c}");
    }
    let (config, errors) = ProxyConfig::from_snapshot(&resources.into_snapshot());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(config.clusters["backend"].outlier, None);
    assert_eq!(config.clusters["backend"].limits, LimitsPlan::default());
}

fn health_checks() -> ProxyPolicies {
    ProxyPolicies {
        health_check: rules(&[policy(
            "health",
            json!({"targetRef": {"kind": "Mesh"}, "to": [{
                "targetRef": {"kind": "Mesh"},
                "default": {
                    "interval": "2s", "timeout": "1s", "unhealthyThreshold": 2, "healthyThreshold": 1,
                    "intervalJitter": "100ms", "noTrafficInterval": "5s", "healthyPanicThreshold": 40,
                    "failTrafficOnPanic": true,
                    "http": {"path": "/health", "expectedStatuses": [200, 204],
                             "requestHeadersToAdd": {"set": [{"name": "x-probe", "value": "mesh"}]}},
                    "tcp": {"send": "PING", "receive": ["PONG"]},
                    "grpc": {"serviceName": "api", "authority": "grpc-api.mesh"}
                }
            }]}),
        )]),
        ..Default::default()
    }
}

#[test]
fn health_checks_follow_the_outbound_protocol_and_envoy_accepts_them() {
    let resources = generated(&health_checks());
    let json = clusters_json(&resources);
    support::assert_golden("mesh-health-check.golden.json", &json);
    let check = |c: &str| json[c]["healthChecks"][0].clone();
    assert_eq!(
        check("backend")["httpHealthCheck"]["path"],
        json!("/health")
    );
    assert_eq!(
        check("backend")["httpHealthCheck"]["expectedStatuses"],
        json!([{"start": 200, "end": 201}, {"start": 204, "end": 205}])
    );
    assert_eq!(
        check("db")["tcpHealthCheck"],
        json!({"send": {"text": "50494E47"}, "receive": [{"text": "504F4E47"}]})
    );
    assert_eq!(
        check("grpc-api")["grpcHealthCheck"]["serviceName"],
        json!("api")
    );
    assert_eq!(
        json["backend"]["commonLbConfig"]["healthyPanicThreshold"]["value"],
        json!(40.0)
    );
    support::assert_envoy_accepts("mesh-health-check", &resources);

    // kuma-dp runs every one of them: no NACK, and each cluster's plan carries its check.
    let (config, errors) = ProxyConfig::from_snapshot(&resources.into_snapshot());
    assert!(errors.is_empty(), "{errors:?}");
    let plan = |c: &str| config.clusters[c].health_check.clone().expect(c);
    assert!(matches!(plan("backend").checker, CheckerPlan::Http(_)));
    assert!(matches!(plan("db").checker, CheckerPlan::Tcp(_)));
    assert!(matches!(plan("grpc-api").checker, CheckerPlan::Grpc(_)));
    assert_eq!(plan("backend").unhealthy_threshold, 2);
    assert!(config.clusters["backend"].fail_traffic_on_panic);
}
