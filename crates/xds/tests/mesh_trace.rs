//! MeshTrace's Envoy output: `tracing` on the inbound and outbound HTTP connection managers
//! (sampling, custom tags with Kuma's `kuma.mesh`/`kuma.zone`, the Zipkin or OpenTelemetry
//! provider) and the collector cluster, pinned by golden JSON (`testdata/xds/mesh-trace-*.golden.json`,
//! `UPDATE_GOLDEN=1` rewrites them), accepted by Envoy 1.40 (`envoy --mode validate`), and
//! decoded by kuma-dp's decoder into the tracing plan it runs.

mod support;

use std::collections::BTreeMap;

use meshzone_model::policy::{Policy, ProxyDescription, rules_for_proxy};
use meshzone_model::specs::{DataplaneSpec, MeshSpec};
use meshzone_xds::decode::ProxyConfig;
use meshzone_xds::decode::tracing::{Propagation, SpanKind, TagSource};
use meshzone_xds::generate::{EndpointInfo, ProxyInput, Resources, base_resources};
use meshzone_xds::names::TypeUrl;
use meshzone_xds::policy::{ProxyPolicies, configure};
use serde_json::json;

/// An HTTP inbound (backend) in zone-1 and an HTTP outbound to `db`, a TCP outbound to `cache`.
fn dataplane() -> DataplaneSpec {
    serde_json::from_value(json!({
        "networking": {
            "address": "10.0.0.1",
            "inbound": [{"port": 10001, "servicePort": 20001,
                "tags": {"kuma.io/service": "backend", "kuma.io/protocol": "http", "kuma.io/zone": "zone-1"}}],
            "outbound": [{"port": 30001, "tags": {"kuma.io/service": "db"}},
                         {"port": 30002, "tags": {"kuma.io/service": "cache"}}]
        }
    }))
    .expect("dataplane")
}

fn generated(backend: serde_json::Value) -> Resources {
    let mesh_spec = MeshSpec::default();
    let dp = dataplane();
    let proxy = ProxyDescription::of_dataplane("default", &dp);
    let policies = [
        Policy::new(
            "trace-all",
            "default",
            serde_json::from_value(json!({"targetRef": {"kind": "Mesh"}, "default": {
                "backends": [backend],
                "sampling": {"overall": 80, "client": "50.5"},
                "tags": [{"name": "team", "literal": "core"},
                         {"name": "env", "header": {"name": "x-env", "default": "prod"}}]}}))
            .expect("spec"),
        ),
        // A later policy changes only the random share (JSON Merge Patch keeps the rest).
        Policy::new(
            "trace-random",
            "default",
            serde_json::from_value(
                json!({"targetRef": {"kind": "MeshService", "name": "backend"},
                "default": {"sampling": {"random": 60}}}),
            )
            .expect("spec"),
        ),
    ];
    let policies = ProxyPolicies {
        trace: rules_for_proxy(&proxy, &policies, &BTreeMap::new()).expect("rules"),
        ..Default::default()
    };
    let protocols = BTreeMap::from([("db".to_string(), "http".to_string())]);
    let endpoint = |ip: &str| EndpointInfo {
        address: ip.into(),
        port: 8080,
        weight: 1,
        zone: None,
        priority: 0,
        tags: Default::default(),
        via_egress: false,
    };
    let endpoints = BTreeMap::from([
        ("db".to_string(), vec![endpoint("10.0.0.2")]),
        ("cache".to_string(), vec![endpoint("10.0.0.3")]),
    ]);
    let input = ProxyInput {
        mesh: "default",
        mesh_spec: &mesh_spec,
        dataplane: &dp,
        endpoints: &endpoints,
        tls: None,
        protocols: &protocols,
        proxyless: false,
        transparent: None,
        policies: &policies,
        external_services: &Default::default(),
    };
    let mut resources = base_resources(&input);
    configure(&input, &mut resources);
    resources
}

fn zipkin() -> serde_json::Value {
    json!({"type": "Zipkin", "zipkin": {"url": "http://127.0.0.1:9411/api/v2/spans", "traceId128bit": true}})
}

fn otel() -> serde_json::Value {
    json!({"type": "OpenTelemetry", "openTelemetry": {"endpoint": "127.0.0.1:4317"}})
}

fn check(name: &str, resources: &Resources) -> serde_json::Value {
    let snapshot = resources.clone().into_snapshot();
    let json = json!({
        "listeners": support::json_by_name(&snapshot, TypeUrl::Listener),
        "clusters": support::json_by_name(&snapshot, TypeUrl::Cluster),
    });
    support::assert_golden(&format!("mesh-trace-{name}.golden.json"), &json);
    support::assert_envoy_accepts(&format!("mesh-trace-{name}"), resources);
    json
}

#[test]
fn zipkin_output_matches_the_golden_file_and_envoy_accepts_it() {
    let json = check("zipkin", &generated(zipkin()));
    let tracing = |listener: &str| {
        json["listeners"][listener]["filterChains"][0]["filters"][0]["typedConfig"]["tracing"]
            .clone()
    };
    let inbound = tracing("inbound:10.0.0.1:10001");
    assert_eq!(inbound["provider"]["name"], "envoy.tracers.zipkin");
    assert_eq!(
        inbound["provider"]["typedConfig"]["collectorCluster"],
        "meshtrace:zipkin"
    );
    assert_eq!(inbound["overallSampling"]["value"], 80.0);
    assert_eq!(inbound["clientSampling"]["value"], 50.5);
    assert_eq!(inbound["randomSampling"]["value"], 60.0);
    assert_eq!(
        inbound["customTags"]
            .as_array()
            .expect("tags")
            .iter()
            .map(|t| t["tag"].as_str().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["team", "env", "kuma.mesh", "kuma.zone"]
    );
    assert_eq!(tracing("outbound:127.0.0.1:30001"), inbound);
    assert_eq!(
        json["listeners"]["inbound:10.0.0.1:10001"]["trafficDirection"],
        "INBOUND"
    );
    assert_eq!(
        json["listeners"]["outbound:127.0.0.1:30001"]["trafficDirection"],
        "OUTBOUND"
    );
    // A TCP outbound has no connection manager: no tracing, no direction.
    assert!(json["listeners"]["outbound:127.0.0.1:30002"]["trafficDirection"].is_null());
    assert_eq!(
        json["clusters"]["meshtrace:zipkin"]["type"], "STATIC",
        "{}",
        json["clusters"]
    );
}

#[test]
fn opentelemetry_output_matches_the_golden_file_and_envoy_accepts_it() {
    let json = check("opentelemetry", &generated(otel()));
    let tracing = &json["listeners"]["inbound:10.0.0.1:10001"]["filterChains"][0]["filters"][0]["typedConfig"]
        ["tracing"];
    assert_eq!(tracing["provider"]["name"], "envoy.tracers.opentelemetry");
    assert_eq!(
        tracing["provider"]["typedConfig"]["grpcService"]["envoyGrpc"]["clusterName"],
        "meshtrace:opentelemetry"
    );
    assert_eq!(tracing["provider"]["typedConfig"]["serviceName"], "backend");
    assert!(
        json["clusters"]["meshtrace:opentelemetry"]["typedExtensionProtocolOptions"]
            .to_string()
            .contains("http2ProtocolOptions")
    );
}

#[test]
fn a_host_name_collector_is_resolved_by_envoy_and_refused_by_kuma_dp() {
    let resources = generated(
        json!({"type": "Zipkin", "zipkin": {"url": "http://zipkin.observability:9411/api/v2/spans"}}),
    );
    let cluster = resources
        .clusters
        .iter()
        .find(|c| c.name == "meshtrace:zipkin")
        .expect("collector cluster");
    let json = support::json_of(&meshzone_xds::envoy_types::util::pack_any(cluster.clone()));
    assert_eq!(json["type"], "STRICT_DNS");
    support::assert_envoy_accepts("mesh-trace-dns", &resources);
    let (_, errors) = ProxyConfig::from_snapshot(&resources.into_snapshot());
    assert!(
        errors.iter().any(|e| e.name == "meshtrace:zipkin"),
        "{errors:?}"
    );
}

#[test]
fn kuma_dp_decodes_the_tracing_it_runs() {
    for (backend, propagation, cluster) in [
        (zipkin(), Propagation::B3, "meshtrace:zipkin"),
        (otel(), Propagation::W3c, "meshtrace:opentelemetry"),
    ] {
        let (config, errors) = ProxyConfig::from_snapshot(&generated(backend).into_snapshot());
        assert!(errors.is_empty(), "{errors:?}");
        let inbound = config.listeners["inbound:10.0.0.1:10001"]
            .tracing
            .as_ref()
            .expect("inbound tracing");
        assert_eq!(inbound.kind, SpanKind::Server);
        assert_eq!(inbound.provider.propagation(), propagation);
        assert_eq!(inbound.provider.cluster(), cluster);
        assert_eq!(
            (
                inbound.sampling.overall,
                inbound.sampling.client,
                inbound.sampling.random
            ),
            (800_000, 505_000, 600_000)
        );
        assert_eq!(inbound.tags.len(), 4);
        assert_eq!(
            inbound.tags[1].source,
            TagSource::Header {
                name: "x-env".into(),
                default: "prod".into()
            }
        );
        let outbound = config.listeners["outbound:127.0.0.1:30001"]
            .tracing
            .as_ref()
            .expect("outbound tracing");
        assert_eq!(outbound.kind, SpanKind::Client);
        assert!(
            config.listeners["outbound:127.0.0.1:30002"]
                .tracing
                .is_none()
        );
        assert!(config.clusters.contains_key(cluster), "{cluster}");
    }
}

#[test]
fn an_https_zipkin_collector_gets_tls_that_envoy_and_kuma_dp_take() {
    let resources = generated(
        json!({"type": "Zipkin", "zipkin": {"url": "https://127.0.0.1:9443/api/v2/spans"}}),
    );
    support::assert_envoy_accepts("mesh-trace-https", &resources);
    let (config, errors) = ProxyConfig::from_snapshot(&resources.into_snapshot());
    assert!(errors.is_empty(), "{errors:?}");
    let cluster = &config.clusters["meshtrace:zipkin"];
    let origination = cluster.origination.as_ref().expect("TLS originated");
    // An IP address is not sent as SNI.
    assert_eq!(origination.sni.as_deref().unwrap_or_default(), "");
}
