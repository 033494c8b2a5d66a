//! MeshMetric's Envoy output: one `_kuma:metrics:prometheus:<clientId>` listener per
//! Prometheus backend on the Dataplane's address and the backend's port, routing the exact
//! path to Envoy's admin `/stats/prometheus`, with the merged conf in its metadata; pinned by
//! golden JSON (`testdata/xds/mesh-metric.golden.json`, `UPDATE_GOLDEN=1` rewrites it),
//! accepted by Envoy 1.40 (`envoy --mode validate`), and decoded by kuma-dp's decoder into the
//! scrape endpoints it serves (not proxied listeners).

mod support;

use std::collections::BTreeMap;

use meshzone_model::policies::mesh_metric::ProfileName;
use meshzone_model::policy::{Policy, ProxyDescription, rules_for_proxy};
use meshzone_model::specs::{DataplaneSpec, MeshSpec};
use meshzone_xds::decode::ProxyConfig;
use meshzone_xds::generate::{ProxyInput, Resources, base_resources};
use meshzone_xds::names::TypeUrl;
use meshzone_xds::policy::{ProxyPolicies, configure};
use serde_json::json;

fn dataplane() -> DataplaneSpec {
    serde_json::from_value(json!({
        "networking": {
            "address": "10.0.0.1",
            "admin": {"port": 9902},
            "inbound": [{"port": 10001, "servicePort": 20001,
                "tags": {"kuma.io/service": "backend", "kuma.io/protocol": "http"}}]
        }
    }))
    .expect("dataplane")
}

fn generated(policies: &[serde_json::Value]) -> Resources {
    let mesh_spec = MeshSpec::default();
    let dp = dataplane();
    let proxy = ProxyDescription::of_dataplane("default", &dp);
    let policies: Vec<Policy> = policies
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            Policy::new(
                &format!("metric-{i}"),
                "default",
                serde_json::from_value(spec.clone()).expect("spec"),
            )
        })
        .collect();
    let policies = ProxyPolicies {
        metric: rules_for_proxy(&proxy, &policies, &BTreeMap::new()).expect("rules"),
        ..Default::default()
    };
    let input = ProxyInput {
        mesh: "default",
        mesh_spec: &mesh_spec,
        dataplane: &dp,
        endpoints: &BTreeMap::new(),
        tls: None,
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

fn two_policies() -> Resources {
    generated(&[
        json!({"targetRef": {"kind": "Mesh"}, "default": {
            "sidecar": {"profiles": {"appendProfiles": [{"name": "Basic"}],
                "exclude": [{"type": "Prefix", "match": "envoy_cluster_lb_"}]}},
            "applications": [{"name": "app", "path": "/metrics", "port": 20002}],
            "backends": [{"type": "Prometheus", "prometheus": {"clientId": "main", "port": 5670, "path": "/metrics"}},
                         {"type": "Prometheus", "prometheus": {"port": 5671}}]}}),
        // More specific: its profile is appended, its backends replace the first ones.
        json!({"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {
            "sidecar": {"profiles": {"appendProfiles": [{"name": "All"}]}},
            "backends": [{"type": "Prometheus", "prometheus": {"clientId": "main", "port": 5670, "path": "/stats"}},
                         {"type": "Prometheus", "prometheus": {"port": 5671}}]}}),
    ])
}

#[test]
fn output_matches_the_golden_file_and_envoy_accepts_it() {
    let resources = two_policies();
    let snapshot = resources.clone().into_snapshot();
    let json = json!({
        "listeners": support::json_by_name(&snapshot, TypeUrl::Listener),
        "clusters": support::json_by_name(&snapshot, TypeUrl::Cluster),
    });
    support::assert_golden("mesh-metric.golden.json", &json);
    support::assert_envoy_accepts("mesh-metric", &resources);

    let main = &json["listeners"]["_kuma:metrics:prometheus:main"];
    assert_eq!(main["address"]["socketAddress"]["address"], "10.0.0.1");
    assert_eq!(main["address"]["socketAddress"]["portValue"], 5670);
    let route = &main["filterChains"][0]["filters"][0]["typedConfig"]["routeConfig"]["virtualHosts"]
        [0]["routes"][0];
    assert_eq!(route["match"]["path"], "/stats");
    assert_eq!(route["route"]["prefixRewrite"], "/stats/prometheus");
    assert_eq!(route["route"]["cluster"], "_kuma:metrics:prometheus:main");
    let admin = &json["clusters"]["_kuma:metrics:prometheus:main"];
    assert_eq!(
        admin["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"]["socketAddress"]
            ["portValue"],
        9902
    );
    assert!(json["listeners"]["_kuma:metrics:prometheus:default"].is_object());
}

#[test]
fn kuma_dp_decodes_scrape_endpoints_with_the_merged_conf() {
    let (config, errors) = ProxyConfig::from_snapshot(&two_policies().into_snapshot());
    assert_eq!(errors, []);
    assert!(
        !config
            .listeners
            .keys()
            .any(|n| n.starts_with("_kuma:metrics")),
        "scrape endpoints are not proxied listeners: {:?}",
        config.listeners.keys()
    );
    let names: Vec<&str> = config.metrics.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "_kuma:metrics:prometheus:default",
            "_kuma:metrics:prometheus:main"
        ]
    );
    let main = &config.metrics["_kuma:metrics:prometheus:main"];
    assert_eq!(main.address, "10.0.0.1:5670".parse().expect("addr"));
    assert_eq!(main.path, "/stats");
    let profiles = main
        .conf
        .sidecar
        .as_ref()
        .and_then(|s| s.profiles.as_ref())
        .expect("profiles");
    let appended: Vec<ProfileName> = profiles
        .append_profiles
        .iter()
        .flatten()
        .map(|p| p.name)
        .collect();
    assert_eq!(appended, [ProfileName::Basic, ProfileName::All]);
    let apps = main.conf.applications.as_ref().expect("applications");
    assert_eq!(
        (apps[0].port, apps[0].path.as_deref()),
        (20002, Some("/metrics"))
    );
    let other = &config.metrics["_kuma:metrics:prometheus:default"];
    assert_eq!(
        (other.address.port(), other.path.as_str()),
        (5671, "/metrics")
    );
}

#[test]
fn no_policy_no_endpoint_and_a_bare_metrics_listener_is_refused() {
    let resources = generated(&[]);
    assert!(
        !resources
            .listeners
            .iter()
            .any(|l| l.listener.name.starts_with("_kuma:metrics"))
    );
    let mut resources = two_policies();
    for l in &mut resources.listeners {
        l.listener.metadata = None;
    }
    let (config, errors) = ProxyConfig::from_snapshot(&resources.into_snapshot());
    assert!(config.metrics.is_empty());
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].to_string().contains("io.kuma.meshmetric"),
        "{errors:?}"
    );
}
