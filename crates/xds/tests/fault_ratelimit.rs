//! MeshFaultInjection and MeshRateLimit's Envoy output: fault filters (with the caller header
//! written from the peer certificate), the HTTP local rate limit per route and the network
//! connection limit, pinned by golden JSON (`testdata/xds/fault-ratelimit-listeners.golden.json`,
//! `UPDATE_GOLDEN=1` rewrites it), accepted by Envoy 1.40 (`envoy --mode validate`), and decoded
//! by kuma-dp's decoder into the plan it enforces.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use meshzone_model::policy::{Policy, ProxyDescription, rules_for_proxy};
use meshzone_model::specs::{DataplaneSpec, MeshSpec};
use meshzone_xds::decode::{HeaderContains, Injected, ProxyConfig};
use meshzone_xds::generate::{ProxyInput, Resources, TlsMaterial, base_resources};
use meshzone_xds::names::TypeUrl;
use meshzone_xds::policy::{ProxyPolicies, configure};
use serde_json::json;

fn mesh() -> MeshSpec {
    serde_json::from_value(json!({
        "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}
    }))
    .expect("mesh")
}

/// An HTTP inbound (web), a TCP inbound (db) and one no policy selects (admin).
fn dataplane() -> DataplaneSpec {
    serde_json::from_value(json!({
        "networking": {
            "address": "10.0.0.1",
            "inbound": [
                {"port": 10001, "servicePort": 20001,
                 "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http"}},
                {"port": 10002, "servicePort": 20002, "tags": {"kuma.io/service": "db"}},
                {"port": 10003, "servicePort": 20003,
                 "tags": {"kuma.io/service": "admin", "kuma.io/protocol": "http"}}
            ]
        }
    }))
    .expect("dataplane")
}

fn policy(name: &str, spec: serde_json::Value) -> Policy {
    Policy::new(name, "default", serde_json::from_value(spec).expect("spec"))
}

fn policies(dp: &DataplaneSpec) -> ProxyPolicies {
    let proxy = ProxyDescription::of_dataplane("default", dp);
    let rules = |p: &[Policy]| rules_for_proxy(&proxy, p, &BTreeMap::new()).expect("rules");
    ProxyPolicies {
        traffic_permission: rules(&[policy(
            "allow-all",
            json!({"from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]}),
        )]),
        fault_injection: rules(&[policy(
            "web-faults",
            json!({
                "targetRef": {"kind": "MeshService", "name": "web"},
                "from": [
                    {"targetRef": {"kind": "Mesh"},
                     "default": {"http": [{"delay": {"value": "250ms", "percentage": "12.5"}}]}},
                    {"targetRef": {"kind": "MeshSubset", "tags": {"kuma.io/service": "frontend", "team": "a"}},
                     "default": {"http": [
                        {"abort": {"httpStatus": 503, "percentage": 30}},
                        {"responseBandwidth": {"limit": "1mbps", "percentage": 100}}]}}
                ]
            }),
        )]),
        rate_limit: rules(&[
            policy(
                "limits",
                json!({
                    "targetRef": {"kind": "MeshSubset", "tags": {"kuma.io/service": "web"}},
                    "from": [{"targetRef": {"kind": "Mesh"}, "default": {"local": {
                        "http": {"requestRate": {"num": 5, "interval": "1m"},
                                 "onRateLimit": {"status": 423, "headers": {
                                    "add": [{"name": "x-limited", "value": "yes"}],
                                    "set": [{"name": "retry-after", "value": "60"}]}}},
                        "tcp": {"connectionRate": {"num": 2, "interval": "10s"}}}}}]
                }),
            ),
            policy(
                "db-connections",
                json!({
                    "targetRef": {"kind": "MeshService", "name": "db"},
                    "from": [{"targetRef": {"kind": "Mesh"}, "default": {"local": {
                        "tcp": {"connectionRate": {"num": 3, "interval": "1s"}}}}}]
                }),
            ),
        ]),
        ..Default::default()
    }
}

fn generated() -> Resources {
    let mesh_spec = mesh();
    let dp = dataplane();
    let policies = policies(&dp);
    let material = TlsMaterial {
        identity_cert_pem: "IDENTITY CERT".into(),
        identity_key_pem: "IDENTITY KEY".into(),
        ca_cert_pem: "CA CERT".into(),
    };
    let input = ProxyInput {
        mesh: "default",
        mesh_spec: &mesh_spec,
        dataplane: &dp,
        endpoints: &BTreeMap::new(),
        tls: Some(&material),
        protocols: &BTreeMap::new(),
        proxyless: false,
        transparent: None,
        policies: &policies,
        external_services: &Default::default(),
    };
    let mut resources = base_resources(&input);
    configure(&input, &mut resources);
    resources
}

#[test]
fn listeners_match_the_golden_file_and_envoy_accepts_them() {
    let resources = generated();
    let json = support::json_by_name(&resources.clone().into_snapshot(), TypeUrl::Listener);
    support::assert_golden("fault-ratelimit-listeners.golden.json", &json);
    let names = |inbound: &str| -> Vec<String> {
        let hcm = &json[inbound]["filterChains"][0]["filters"]
            .as_array()
            .expect("filters")
            .iter()
            .find(|f| f["name"] == "envoy.filters.network.http_connection_manager")
            .expect("hcm")["typedConfig"];
        hcm["httpFilters"]
            .as_array()
            .expect("http filters")
            .iter()
            .map(|f| f["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    // Kuma's order: RBAC (prepended by MeshTrafficPermission), the caller header, one fault
    // per http[] entry of each rule (2 for the tagged subset, then 1 for each of the 3 other
    // client subsets), the rate limit, the router.
    assert_eq!(
        names("inbound:10.0.0.1:10001"),
        [
            "envoy.filters.http.rbac",
            "envoy.filters.http.header_mutation",
            "envoy.filters.http.fault",
            "envoy.filters.http.fault",
            "envoy.filters.http.fault",
            "envoy.filters.http.fault",
            "envoy.filters.http.fault",
            "envoy.filters.http.local_ratelimit",
            "envoy.filters.http.router"
        ]
    );
    assert_eq!(
        names("inbound:10.0.0.1:10003"),
        ["envoy.filters.http.rbac", "envoy.filters.http.router"]
    );
    support::assert_envoy_accepts("fault-ratelimit", &resources);
}

#[test]
fn kuma_dp_decodes_what_it_enforces() {
    let (config, errors) = ProxyConfig::from_snapshot(&generated().into_snapshot());
    assert!(errors.is_empty(), "{errors:?}");
    let web = &config.listeners["inbound:10.0.0.1:10001"];
    let plan = &web.inbound_http;
    assert_eq!(
        plan.caller_header.as_deref(),
        Some("x-meshzone-caller-sans")
    );
    // The tagged subset's rule (its http[] replaces the Mesh item's: JSON Merge Patch replaces
    // arrays), then the rules of the other clients (a tag negated), which get the Mesh delay.
    assert_eq!(plan.faults.len(), 5, "{plan:?}");
    let caller = |contains: &str, invert: bool| HeaderContains {
        name: "x-meshzone-caller-sans".into(),
        contains: contains.into(),
        invert,
    };
    let frontend_a = [
        caller(",spiffe://default/frontend,", false),
        caller(",kuma://team/a,", false),
    ];
    assert_eq!(plan.faults[0].headers, frontend_a);
    assert_eq!(plan.faults[1].headers, frontend_a);
    assert_eq!(
        plan.faults[0].abort,
        Some(Injected {
            value: 503,
            per_million: 300_000
        })
    );
    assert_eq!(
        plan.faults[1].response_kib_per_second,
        Some(Injected {
            value: 1000,
            per_million: 1_000_000
        })
    );
    for f in &plan.faults[2..] {
        assert!(f.headers.iter().any(|h| h.invert), "{f:?}");
        assert_eq!(
            f.delay,
            Some(Injected {
                value: Duration::from_millis(250),
                per_million: 125_000
            })
        );
        assert!(f.abort.is_none() && f.response_kib_per_second.is_none());
    }
    let limit = plan.rate_limit.as_ref().expect("HTTP limit");
    assert_eq!(
        (
            limit.bucket.max_tokens,
            limit.bucket.tokens_per_fill,
            limit.bucket.fill_interval
        ),
        (5, 5, Duration::from_secs(60))
    );
    assert_eq!(limit.status, 423);
    assert_eq!(limit.response_headers.add.len(), 2);
    let web_cx = web
        .connection_limit
        .as_ref()
        .expect("web's connection limit");
    assert_eq!(web_cx.bucket.max_tokens, 2);
    let db = &config.listeners["inbound:10.0.0.1:10002"];
    assert!(db.inbound_http.is_empty());
    let db_cx = db.connection_limit.as_ref().expect("db's connection limit");
    assert_eq!(
        (
            db_cx.stat_prefix.as_str(),
            db_cx.bucket.max_tokens,
            db_cx.bucket.fill_interval
        ),
        ("tcp_rate_limit", 3, Duration::from_secs(1))
    );
    let admin = &config.listeners["inbound:10.0.0.1:10003"];
    assert!(admin.inbound_http.is_empty() && admin.connection_limit.is_none());
}
