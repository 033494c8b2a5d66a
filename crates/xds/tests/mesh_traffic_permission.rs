//! MeshTrafficPermission's Envoy output: RBAC filters on every inbound chain, pinned by golden
//! JSON (`testdata/xds/mtp-*.golden.json`, `UPDATE_GOLDEN=1` rewrites them) and accepted by
//! Envoy 1.40 (`envoy --mode validate`; the test fails, not skips, without Envoy).

mod support;

use std::collections::BTreeMap;

use meshzone_model::policy::{Policy, ProxyDescription, rules_for_proxy};
use meshzone_model::specs::{DataplaneSpec, MeshSpec};
use meshzone_xds::generate::{EndpointInfo, ProxyInput, Resources, TlsMaterial, base_resources};
use meshzone_xds::names::TypeUrl;
use meshzone_xds::policy::{ProxyPolicies, configure};
use serde_json::json;

fn mesh(mode: Option<&str>) -> MeshSpec {
    serde_json::from_value(json!({
        "mtls": {
            "enabledBackend": "ca-1",
            "backends": [{"name": "ca-1", "type": "builtin", "mode": mode}]
        }
    }))
    .expect("mesh")
}

/// A TCP inbound (backend), an HTTP inbound (web) and one no permission selects (admin).
fn dataplane() -> DataplaneSpec {
    serde_json::from_value(json!({
        "networking": {
            "address": "10.0.0.1",
            "inbound": [
                {"port": 10001, "servicePort": 20001,
                 "tags": {"kuma.io/service": "backend", "kuma.io/zone": "zone-1"}},
                {"port": 10002, "servicePort": 20002,
                 "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http", "kuma.io/zone": "zone-1"}},
                {"port": 10003, "servicePort": 20003,
                 "tags": {"kuma.io/service": "admin", "kuma.io/zone": "zone-1"}}
            ],
            "outbound": [{"port": 30001, "tags": {"kuma.io/service": "db"}}]
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

/// The permissions of the reference's §2.1 example on backend, and allow-all on web, through
/// the engine.
fn policies(dp: &DataplaneSpec) -> ProxyPolicies {
    let proxy = ProxyDescription::of_dataplane("default", dp);
    let policies = [
        policy(
            "backend-clients",
            json!({
                "targetRef": {"kind": "MeshService", "name": "backend"},
                "from": [
                    {"targetRef": {"kind": "Mesh"}, "default": {"action": "Deny"}},
                    {"targetRef": {"kind": "MeshSubset", "tags": {"kuma.io/service": "orders"}},
                     "default": {"action": "Allow"}},
                    {"targetRef": {"kind": "MeshSubset", "tags": {"kuma.io/zone": "us-east", "team": "audit"}},
                     "default": {"action": "AllowWithShadowDeny"}}
                ]
            }),
        ),
        policy(
            "web-from-anyone",
            json!({
                "targetRef": {"kind": "MeshService", "name": "web"},
                "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]
            }),
        ),
    ];
    ProxyPolicies {
        traffic_permission: rules_for_proxy(&proxy, &policies, &BTreeMap::new()).expect("rules"),
        ..Default::default()
    }
}

/// Base resources and configured resources of the proxy, for a mesh in `mode`.
fn generated(mode: Option<&str>, mtls: bool) -> (Resources, Resources) {
    let mesh_spec = mesh(mode);
    let dp = dataplane();
    let policies = policies(&dp);
    let endpoints = BTreeMap::from([(
        "db".to_string(),
        vec![EndpointInfo {
            address: "10.0.0.9".into(),
            port: 5432,
            weight: 1,
            zone: None,
            priority: 0,
            tags: Default::default(),
            via_egress: false,
        }],
    )]);
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
        tls: mtls.then_some(&material),
        protocols: &BTreeMap::new(),
        proxyless: false,
        transparent: None,
        policies: &policies,
        external_services: &Default::default(),
    };
    let base = base_resources(&input);
    let mut configured = base.clone();
    configure(&input, &mut configured);
    (base, configured)
}

fn listeners_json(resources: &Resources) -> serde_json::Value {
    support::json_by_name(&resources.clone().into_snapshot(), TypeUrl::Listener)
}

#[test]
fn strict_mtls_listeners_match_the_golden_file_and_envoy_accepts_them() {
    let (base, configured) = generated(None, true);
    let json = listeners_json(&configured);
    support::assert_golden("mtp-listeners.golden.json", &json);
    // Only inbound listeners change; clusters, endpoints and secrets do not.
    assert_eq!(
        listeners_json(&base)["outbound:127.0.0.1:30001"],
        json["outbound:127.0.0.1:30001"]
    );
    assert_eq!(base.clusters, configured.clusters);
    assert_eq!(base.secrets, configured.secrets);
    support::assert_envoy_accepts("mtp-strict", &configured);
}

#[test]
fn permissive_plaintext_chain_gets_the_same_rbac_and_envoy_accepts_it() {
    let (_, configured) = generated(Some("PERMISSIVE"), true);
    let json = listeners_json(&configured);
    support::assert_golden("mtp-permissive-listeners.golden.json", &json);
    for inbound in ["inbound:10.0.0.1:10001", "inbound:10.0.0.1:10003"] {
        let chains = json[inbound]["filterChains"].as_array().expect("chains");
        assert_eq!(chains.len(), 2, "{inbound}: TLS and plaintext chains");
        assert_eq!(
            chains[0]["filters"][0], chains[1]["filters"][0],
            "{inbound}: same RBAC on both chains"
        );
        assert_eq!(
            chains[1]["filters"][0]["name"],
            "envoy.filters.network.rbac"
        );
    }
    support::assert_envoy_accepts("mtp-permissive", &configured);
}

#[test]
fn without_mtls_the_policy_has_no_effect() {
    let (base, configured) = generated(None, false);
    assert_eq!(base, configured);
    assert!(!listeners_json(&configured).to_string().contains("rbac"));
}

#[test]
fn the_envoy_check_fails_on_a_listener_envoy_rejects() {
    use meshzone_xds::envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
    use meshzone_xds::envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
    let (_, mut configured) = generated(None, true);
    // The HTTP RBAC filter's config where a network filter belongs.
    let filter = &mut configured.listeners[0].listener.filter_chains[0].filters[0];
    filter.config_type = Some(ConfigType::TypedConfig(
        meshzone_xds::envoy_types::util::pack_any(Rbac::default()),
    ));
    let rejected = std::panic::catch_unwind(|| {
        support::assert_envoy_accepts("mtp-broken", &configured);
    });
    let message = rejected.expect_err("Envoy must reject it");
    let message = message.downcast_ref::<String>().expect("panic message");
    assert!(message.contains("Envoy rejects mtp-broken"), "{message}");
}
