//! MeshHTTPRoute and MeshTCPRoute's Envoy output: route tables and weighted splits on
//! outbounds, subset clusters, pinned by golden JSON (`testdata/xds/mesh-{http,tcp}-route.golden.json`,
//! `UPDATE_GOLDEN=1` rewrites them), accepted by Envoy 1.40 (`envoy --mode validate`; the test
//! fails, not skips, without Envoy), and decoded back by the proxy (kuma-dp's plan) in Kuma's
//! order.

mod support;

use meshzone_model::specs::tags;
use std::collections::BTreeMap;

use meshzone_model::Spec;
use meshzone_model::policy::{PolicyRules, Rule, TagMatcher};
use meshzone_model::specs::SERVICE_TAG;
use meshzone_xds::decode::routes::{PathMatch, PathRewrite, RouteActionPlan};
use meshzone_xds::decode::{ProxyConfig, SanMatch, WeightedClusterPlan};
use meshzone_xds::generate::{EndpointInfo, ProxyInput, Resources, TlsMaterial, base_resources};
use meshzone_xds::names::TypeUrl;
use meshzone_xds::policy::backend_refs::{subset_cluster, subset_sni};
use meshzone_xds::policy::{ProxyPolicies, configure};
use serde_json::json;
use support::{assert_envoy_accepts, assert_golden, json_by_name};

use meshzone_model::testdata::resource_fixture as fixture;

fn endpoint(address: &str, zone: &str, version: &str, priority: u32) -> EndpointInfo {
    EndpointInfo {
        address: address.into(),
        port: 10001,
        weight: 1,
        zone: Some(zone.into()),
        priority,
        tags: tags(&[
            (SERVICE_TAG, "backend"),
            ("kuma.io/zone", zone),
            ("version", version),
        ]),
        via_egress: false,
    }
}

/// A `to` rule for one service, as the engine gives it.
fn to_rule(service: &str, rules: serde_json::Value) -> PolicyRules {
    PolicyRules {
        to_rules: vec![Rule {
            matchers: vec![TagMatcher {
                key: SERVICE_TAG.into(),
                value: service.into(),
                not: false,
            }],
            conf: json!({ "rules": rules }),
            origin: vec![],
        }],
        ..Default::default()
    }
}

/// The fixture sidecar (outbounds `backend`, http, and `db`, tcp) with these policies, typed.
fn generated(policies: &ProxyPolicies) -> Resources {
    let mesh = fixture("mesh.yaml");
    let dp = fixture("dataplane.yaml");
    let (Spec::Mesh(mesh_spec), Spec::Dataplane(dp_spec)) = (&mesh.spec, &dp.spec) else {
        panic!("fixtures");
    };
    let endpoints = BTreeMap::from([
        (
            "backend".to_string(),
            vec![
                endpoint("10.0.0.5", "zone-1", "v1", 0),
                endpoint("10.0.0.6", "zone-1", "v2", 0),
                // A remote ingress offering both versions: one endpoint per tag set.
                endpoint("10.0.1.100", "zone-2", "v1", 1),
                endpoint("10.0.1.100", "zone-2", "v2", 1),
            ],
        ),
        (
            "db".to_string(),
            vec![EndpointInfo {
                address: "10.0.0.7".into(),
                port: 5432,
                weight: 1,
                zone: None,
                priority: 0,
                tags: tags(&[(SERVICE_TAG, "db")]),
                via_egress: false,
            }],
        ),
        (
            "db-dr".to_string(),
            vec![EndpointInfo {
                address: "10.0.0.8".into(),
                port: 5432,
                weight: 1,
                zone: None,
                priority: 0,
                tags: tags(&[(SERVICE_TAG, "db-dr")]),
                via_egress: false,
            }],
        ),
    ]);
    let protocols = BTreeMap::from([("backend".to_string(), "http".to_string())]);
    let material = TlsMaterial {
        identity_cert_pem: "IDENTITY CERT".into(),
        identity_key_pem: "IDENTITY KEY".into(),
        ca_cert_pem: "CA CERT".into(),
    };
    let input = ProxyInput {
        transparent: None,
        mesh: "default",
        mesh_spec,
        dataplane: dp_spec,
        endpoints: &endpoints,
        tls: Some(&material),
        protocols: &protocols,
        proxyless: false,
        policies,
        external_services: &Default::default(),
    };
    let mut resources = base_resources(&input);
    configure(&input, &mut resources);
    resources
}

/// The generated listeners, clusters and load assignments in Envoy's JSON, by name.
fn envoy_json(resources: &Resources) -> serde_json::Value {
    let snapshot = resources.clone().into_snapshot();
    json!({
        "listeners": json_by_name(&snapshot, TypeUrl::Listener),
        "clusters": json_by_name(&snapshot, TypeUrl::Cluster),
        "endpoints": json_by_name(&snapshot, TypeUrl::ClusterLoadAssignment),
    })
}

fn decoded(resources: &Resources) -> ProxyConfig {
    let snapshot = resources.clone().into_snapshot();
    let (config, errors) = ProxyConfig::from_snapshot(&snapshot);
    assert!(
        errors.is_empty(),
        "the proxy refuses our own output: {errors:?}"
    );
    config
}

fn canary_routes() -> ProxyPolicies {
    ProxyPolicies {
        http_route: to_rule(
            "backend",
            json!([
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "default": {
                        "backendRefs": [
                            {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v1"}, "weight": 90},
                            {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2"}, "weight": 10}
                        ],
                        "filters": [
                            {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [{"name": "x-split", "value": "90-10"}]}},
                            {"type": "RequestMirror", "requestMirror": {"percentage": 5, "backendRef": {"kind": "MeshServiceSubset", "name": "backend", "tags": {"kuma.io/zone": "zone-2"}}}}
                        ]
                    }
                },
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/api/"}, "headers": [{"type": "Exact", "name": "x-canary", "value": "1"}]}],
                    "default": {
                        "backendRefs": [{"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2"}}],
                        "filters": [
                            {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-via", "value": "mesh"}], "remove": ["x-debug"]}},
                            {"type": "URLRewrite", "urlRewrite": {"hostname": "api.internal", "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}}
                        ]
                    }
                },
                {
                    "matches": [
                        {"path": {"type": "Exact", "value": "/login"}, "method": "POST"},
                        {"path": {"type": "RegularExpression", "value": "/img/[a-z]+\\.png"}, "queryParams": [{"type": "RegularExpression", "name": "size", "value": "[0-9]+"}]}
                    ],
                    "default": {
                        "filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "hostname": "login.example", "statusCode": 301}}]
                    }
                }
            ]),
        ),
        ..Default::default()
    }
}

#[test]
fn http_routes_golden_envoy_json_that_envoy_accepts() {
    let resources = generated(&canary_routes());
    assert_golden("mesh-http-route.golden.json", &envoy_json(&resources));
    assert_envoy_accepts("mesh-http-route", &resources);
}

/// The harness can fail: Envoy refuses a route to a cluster it does not have.
#[test]
#[should_panic(expected = "Envoy rejects")]
fn envoy_refuses_a_route_to_a_missing_cluster() {
    let mut resources = generated(&canary_routes());
    let v2 = subset_cluster("backend", &tags(&[("version", "v2")]));
    resources.clusters.retain(|c| c.name != v2);
    assert_envoy_accepts("mesh-http-route-broken", &resources);
}

#[test]
fn http_routes_follow_kumas_order_and_end_with_the_service() {
    let config = decoded(&generated(&canary_routes()));
    let listener = &config.listeners["outbound:127.0.0.1:20012"];
    let paths: Vec<(String, usize)> = listener
        .routes
        .iter()
        .map(|r| {
            let path = match &r.matches.path {
                PathMatch::Exact(p) => format!("={p}"),
                PathMatch::Prefix(p) => format!("^{p}"),
                PathMatch::Regex(p) => format!("~{p}"),
            };
            (path, r.matches.headers.len())
        })
        .collect();
    assert_eq!(
        paths,
        [
            // Exact first (longer value first among them), the PathPrefix /api's two routes
            // (a header), then the prefix /, then the regex; the rule with PathPrefix / is the
            // catch-all itself, so none is added.
            ("=/login".to_string(), 1),
            ("=/api".to_string(), 1),
            ("^/api/".to_string(), 1),
            ("^/".to_string(), 0),
            ("~/img/[a-z]+\\.png".to_string(), 0),
        ]
        .iter()
        .map(|(p, h)| (p.clone(), *h))
        .collect::<Vec<_>>()
    );
    assert_eq!(paths.len(), listener.routes.len());
    let v1 = subset_cluster("backend", &tags(&[("version", "v1")]));
    let v2 = subset_cluster("backend", &tags(&[("version", "v2")]));
    let RouteActionPlan::Forward(split) = &listener.routes[3].action else {
        panic!("the split forwards");
    };
    assert_eq!(
        split.clusters,
        [
            WeightedClusterPlan {
                cluster: v1.clone(),
                weight: 90
            },
            WeightedClusterPlan {
                cluster: v2.clone(),
                weight: 10
            }
        ]
    );
    assert_eq!(split.mirrors.len(), 1);
    assert_eq!(split.mirrors[0].per_million, 50_000);
    let RouteActionPlan::Forward(canary) = &listener.routes[2].action else {
        panic!("the canary forwards");
    };
    assert_eq!(canary.clusters[0].cluster, v2);
    assert_eq!(
        canary.path_rewrite,
        Some(PathRewrite::Prefix("/v2/".into()))
    );
    assert!(matches!(
        listener.routes[0].action,
        RouteActionPlan::Redirect(_)
    ));

    // Subset clusters: their own endpoints, their own SNI, the service's identity.
    let v2_cluster = &config.clusters[&v2];
    let tls = v2_cluster.tls.as_ref().expect("mTLS");
    assert_eq!(
        tls.sni.as_deref(),
        Some(subset_sni("backend", &tags(&[("version", "v2")]), "default").as_str())
    );
    assert_eq!(
        tls.peer,
        [SanMatch::Exact("spiffe://default/backend".into())]
    );
    let addresses = |cluster: &str| -> Vec<String> {
        config
            .cluster_endpoints(cluster)
            .iter()
            .map(|e| format!("{}/{}", e.address, e.weight))
            .collect()
    };
    assert_eq!(addresses(&v2), ["10.0.0.6:10001/1", "10.0.1.100:10001/1"]);
    assert_eq!(addresses(&v1), ["10.0.0.5:10001/1", "10.0.1.100:10001/1"]);
    let zone2 = subset_cluster("backend", &tags(&[("kuma.io/zone", "zone-2")]));
    assert_eq!(addresses(&zone2), ["10.0.1.100:10001/2"]);
    // The service's own cluster has the ingress once, weighing both tag sets.
    assert_eq!(
        addresses("backend"),
        ["10.0.0.5:10001/1", "10.0.0.6:10001/1", "10.0.1.100:10001/2"]
    );
}

#[test]
fn a_catch_all_is_added_unless_a_rule_is_one() {
    let only_header = ProxyPolicies {
        http_route: to_rule(
            "backend",
            json!([{
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}, "headers": [{"type": "Present", "name": "x-a"}]}],
                "default": {"backendRefs": [{"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2"}}]}
            }]),
        ),
        ..Default::default()
    };
    let config = decoded(&generated(&only_header));
    let routes = &config.listeners["outbound:127.0.0.1:20012"].routes;
    assert_eq!(routes.len(), 2, "{routes:?}");
    assert_eq!(routes[1].matches.path, PathMatch::Prefix("/".into()));
    assert!(routes[1].matches.headers.is_empty());
    let RouteActionPlan::Forward(f) = &routes[1].action else {
        panic!("forwards");
    };
    assert_eq!(f.clusters[0].cluster, "backend");
}

#[test]
fn tcp_routes_split_connections_and_lose_to_http_routes() {
    let db_split = to_rule(
        "db",
        json!([{"default": {"backendRefs": [
            {"kind": "MeshService", "name": "db", "weight": 80},
            {"kind": "MeshService", "name": "db-dr", "weight": 20}
        ]}}]),
    );
    let backend_v2 = to_rule(
        "backend",
        json!([{"default": {"backendRefs": [
            {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2"}}
        ]}}]),
    );
    let mut tcp = db_split.clone();
    tcp.to_rules.extend(backend_v2.to_rules.clone());
    let policies = ProxyPolicies {
        tcp_route: tcp,
        ..Default::default()
    };
    let resources = generated(&policies);
    assert_golden("mesh-tcp-route.golden.json", &envoy_json(&resources));
    assert_envoy_accepts("mesh-tcp-route", &resources);
    let config = decoded(&resources);
    let db = &config.listeners["outbound:127.0.0.2:20013"];
    assert_eq!(
        db.weighted,
        [
            WeightedClusterPlan {
                cluster: "db".into(),
                weight: 80
            },
            WeightedClusterPlan {
                cluster: "db-dr".into(),
                weight: 20
            }
        ]
    );
    assert!(
        config.clusters.contains_key("db-dr"),
        "a backend gets a cluster"
    );
    // An HTTP outbound with only a TCP route becomes TCP, to its backend.
    let backend = &config.listeners["outbound:127.0.0.1:20012"];
    assert!(!backend.http);
    assert_eq!(
        backend.cluster, "backend",
        "the plan still names the service"
    );
    assert_eq!(
        backend.weighted,
        [WeightedClusterPlan {
            cluster: subset_cluster("backend", &tags(&[("version", "v2")])),
            weight: 1
        }]
    );

    // With a MeshHTTPRoute as well, the HTTP route wins on the HTTP outbound.
    let both = ProxyPolicies {
        http_route: canary_routes().http_route,
        tcp_route: policies.tcp_route.clone(),
        ..Default::default()
    };
    let config = decoded(&generated(&both));
    let backend = &config.listeners["outbound:127.0.0.1:20012"];
    assert!(backend.http);
    assert_eq!(backend.routes.len(), 5);
    assert_eq!(
        config.listeners["outbound:127.0.0.2:20013"].weighted.len(),
        2
    );
}

#[test]
fn without_route_policies_the_output_is_unchanged() {
    let plain = generated(&ProxyPolicies::default());
    let config = decoded(&plain);
    let backend = &config.listeners["outbound:127.0.0.1:20012"];
    assert_eq!(backend.routes.len(), 1);
    assert_eq!(backend.cluster, "backend");
    assert!(
        config.listeners["outbound:127.0.0.2:20013"]
            .weighted
            .is_empty()
    );
}
