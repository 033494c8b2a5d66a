//! MeshTimeout and MeshRetry's Envoy output, from real policy resources through the engine:
//! the mesh defaults (`mesh-timeout-all`, `mesh-retry-all`) plus a policy for one service,
//! pinned by golden JSON (`testdata/xds/mesh-timeout-retry.golden.json`, `UPDATE_GOLDEN=1`
//! rewrites it), accepted by Envoy 1.40 (`envoy --mode validate`), and decoded by the proxy
//! into the plan kuma-dp enforces.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use meshzone_model::policies::MeshPolicies;
use meshzone_model::specs::{DataplaneSpec, MeshSpec};
use meshzone_model::{Resource, ResourceType};
use meshzone_xds::decode::routes::RouteActionPlan;
use meshzone_xds::decode::{ProxyConfig, RateLimitedBackOffPlan, ResetFormat};
use meshzone_xds::generate::{EndpointInfo, ProxyInput, Resources, base_resources};
use meshzone_xds::names::TypeUrl;
use meshzone_xds::policy::{ProxyPolicies, configure};
use serde_json::json;
use support::{assert_envoy_accepts, assert_golden, json_by_name};

fn resource(v: serde_json::Value) -> Resource {
    let r = Resource::from_value(v).expect("parses");
    meshzone_model::validate(&r).expect("valid");
    r
}

/// An HTTP inbound (web), outbounds to backend (http), payments (grpc) and db (tcp).
fn dataplane() -> Resource {
    resource(
        json!({"type": "Dataplane", "mesh": "default", "name": "web-1", "networking": {
        "address": "10.0.0.1",
        "inbound": [{"port": 10001, "servicePort": 20001,
            "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http"}}],
        "outbound": [
            {"port": 30001, "tags": {"kuma.io/service": "backend"}},
            {"port": 30002, "tags": {"kuma.io/service": "payments"}},
            {"port": 30003, "tags": {"kuma.io/service": "db"}}
        ]}}),
    )
}

/// The mesh's initial policies and `backend-strict` for backend.
fn policies(dp: &Resource) -> ProxyPolicies {
    let mut resources = meshzone_model::policies::initial_policies("default", &MeshSpec::default());
    resources.push(resource(json!({"type": "MeshTimeout", "mesh": "default", "name": "backend-strict",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
            "default": {"connectionTimeout": "2s", "http": {"requestTimeout": "1s", "maxStreamDuration": "30s", "requestHeadersTimeout": "500ms"}}}]}})));
    resources.push(resource(json!({"type": "MeshRetry", "mesh": "default", "name": "backend-retry",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
            "default": {"tcp": {"maxConnectAttempt": 3}, "http": {"numRetries": 2, "perTryTimeout": "300ms",
                "backOff": {"baseInterval": "10ms", "maxInterval": "100ms"},
                "retryOn": ["5xx", "Reset", "503", "HttpMethodGet"],
                "retriableRequestHeaders": [{"name": "x-idempotent", "type": "Present"}],
                "hostSelection": [{"predicate": "OmitPreviousHosts"}],
                "rateLimitedBackOff": {"resetHeaders": [{"name": "Retry-After", "format": "Seconds"},
                    {"name": "X-RateLimit-Reset", "format": "UnixTimestamp"}], "maxInterval": "20s"}}}}]}})));
    let mesh = MeshPolicies::from_resources(&resources);
    let mut rules = mesh.dataplane_rules(dp, Some("zone-1")).expect("rules");
    let mut take = |rt| rules.remove(&rt).unwrap_or_default();
    ProxyPolicies {
        timeout: take(ResourceType::MeshTimeout),
        retry: take(ResourceType::MeshRetry),
        ..Default::default()
    }
}

fn generated() -> Resources {
    let dp = dataplane();
    let meshzone_model::Spec::Dataplane(spec) = &dp.spec else {
        panic!("dataplane");
    };
    let spec: &DataplaneSpec = spec;
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
        ("payments".to_string(), vec![endpoint("10.0.0.7")]),
        ("db".to_string(), vec![endpoint("10.0.0.8")]),
    ]);
    let protocols = BTreeMap::from([
        ("backend".to_string(), "http".to_string()),
        ("payments".to_string(), "grpc".to_string()),
    ]);
    let policies = policies(&dp);
    let mesh_spec = MeshSpec::default();
    let input = ProxyInput {
        transparent: None,
        mesh: "default",
        mesh_spec: &mesh_spec,
        dataplane: spec,
        endpoints: &endpoints,
        tls: None,
        protocols: &protocols,
        proxyless: false,
        policies: &policies,
        external_services: &Default::default(),
    };
    let mut resources = base_resources(&input);
    configure(&input, &mut resources);
    resources
}

#[test]
fn timeouts_and_retries_golden_envoy_json_that_envoy_accepts() {
    let resources = generated();
    let snapshot = resources.clone().into_snapshot();
    assert_golden(
        "mesh-timeout-retry.golden.json",
        &json!({
            "listeners": json_by_name(&snapshot, TypeUrl::Listener),
            "clusters": json_by_name(&snapshot, TypeUrl::Cluster),
        }),
    );
    assert_envoy_accepts("mesh-timeout-retry", &resources);
}

#[test]
fn the_proxy_decodes_what_it_enforces() {
    let snapshot = generated().into_snapshot();
    let (config, errors) = ProxyConfig::from_snapshot(&snapshot);
    assert!(errors.is_empty(), "refused: {errors:?}");
    let ms = Duration::from_millis;
    let s = Duration::from_secs;

    let backend = &config.clusters["backend"].timeouts;
    assert_eq!((backend.connect, backend.idle), (s(2), s(3600)));
    assert_eq!(backend.max_stream_duration, Some(s(30)));
    assert_eq!(config.clusters["db"].timeouts.connect, s(5));
    // The inbound's application cluster: the `from` defaults.
    assert_eq!(config.clusters["localhost:20001"].timeouts.connect, s(10));
    assert_eq!(config.clusters["localhost:20001"].timeouts.idle, s(7200));

    let listener = |port: u16| {
        config
            .listeners
            .values()
            .find(|l| l.address.port() == port)
            .expect("listener")
    };
    let forward = |port: u16| match &listener(port).routes[0].action {
        RouteActionPlan::Forward(f) => f.clone(),
        other => panic!("{other:?}"),
    };
    let b = forward(30001);
    assert_eq!(b.timeouts.request, Some(s(1)));
    assert_eq!(b.timeouts.stream_idle, Some(s(1800)));
    assert_eq!(listener(30001).timeouts.request_headers, Some(ms(500)));
    let retry = b.retry.expect("backend retries");
    assert_eq!(retry.num_retries, 2);
    assert_eq!(retry.per_try_timeout, Some(ms(300)));
    assert_eq!((retry.base_interval, retry.max_interval), (ms(10), ms(100)));
    assert!(retry.on.status_5xx && retry.on.reset && retry.on.retriable_status_codes);
    assert!(!retry.on.gateway_error);
    assert_eq!(retry.retriable_status_codes, [503]);
    assert_eq!(
        retry.retriable_request_headers.len(),
        2,
        "GET and x-idempotent"
    );
    assert!(retry.omit_previous_hosts);
    assert_eq!(
        retry.rate_limited,
        Some(Box::new(RateLimitedBackOffPlan {
            reset_headers: vec![
                ("retry-after".into(), ResetFormat::Seconds),
                ("x-ratelimit-reset".into(), ResetFormat::UnixTimestamp),
            ],
            max_interval: s(20),
        }))
    );

    // payments is gRPC: the default grpc section.
    let p = forward(30002).retry.expect("payments retries");
    assert_eq!(p.num_retries, 5);
    assert!(p.on.grpc_unavailable && p.on.grpc_resource_exhausted && p.on.connect_failure);
    // db is TCP: connect attempts and the idle timeout.
    assert_eq!(listener(30003).timeouts.max_connect_attempts, 5);
    assert_eq!(listener(30003).timeouts.tcp_idle, Some(s(3600)));
    // The inbound: request timeout 0 (off), stream idle 1h.
    let inbound = forward(10001);
    assert_eq!(inbound.timeouts.request, None);
    assert_eq!(inbound.timeouts.stream_idle, Some(s(3600)));
    assert!(inbound.retry.is_none());
}

/// `max_connection_duration` (MeshTimeout `http.maxConnectionDuration`) is decoded; what
/// kuma-dp cannot do is refused with its field path.
#[test]
fn connection_duration_is_decoded_and_unenforced_fields_are_refused_by_name() {
    use envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions as Common;
    let with_common = |change: fn(&mut Common)| {
        let mut resources = generated();
        let backend = resources
            .clusters
            .iter_mut()
            .find(|c| c.name == "backend")
            .expect("backend cluster");
        let key = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
        let any = backend.typed_extension_protocol_options[key].clone();
        let mut options: envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions =
            prost::Message::decode(any.value.as_slice()).expect("options");
        if let Some(c) = options.common_http_protocol_options.as_mut() {
            change(c);
        }
        backend
            .typed_extension_protocol_options
            .insert(key.into(), envoy_types::util::pack_any(options));
        ProxyConfig::from_snapshot(&resources.into_snapshot())
    };
    let (config, errors) = with_common(|c| {
        c.max_connection_duration = Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 60,
            nanos: 0,
        })
    });
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        config.clusters["backend"].timeouts.max_connection_duration,
        Some(std::time::Duration::from_secs(60))
    );

    let (_, errors) = with_common(|c| {
        c.max_headers_count = Some(envoy_types::pb::google::protobuf::UInt32Value { value: 10 })
    });
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].to_string().contains(
            "common_http_protocol_options: only idle_timeout, max_stream_duration and max_connection_duration are enforced"
        ),
        "{}",
        errors[0]
    );
}
