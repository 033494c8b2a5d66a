//! MeshMetric's configurer (reference §2.11, order 1500). Each Prometheus backend of the
//! proxy's merged conf becomes a listener named `_kuma:metrics:prometheus:<clientId>`
//! ([`METRICS_LISTENER_PREFIX`]; `default` when the backend has no clientId) on the Dataplane's
//! address and the backend's port:
//!
//! - Envoy serves it: an HTTP connection manager whose one route matches the backend's path
//!   exactly and sends it, rewritten to `/stats/prometheus`, to the static cluster of the same
//!   name, the proxy's Envoy admin on `127.0.0.1:<networking.admin.port>` (9901 by default).
//!   Envoy applies neither the profiles nor `applications` (in Kuma, kuma-dp does that beside
//!   Envoy); it serves every stat.
//! - kuma-dp serves it itself: the listener's metadata [`METRICS_METADATA`] carries the merged
//!   conf (`conf`, the JSON of
//!   [`meshzone_model::policies::mesh_metric::MetricConf`]) and the path, and kuma-dp's decoder
//!   reads that instead of the route (`crate::decode::metrics`).

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfigType;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::route::Action as RouteActionKind;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value};
use envoy_types::util::pack_any;
use meshzone_model::policies::mesh_metric::{BackendType, MetricConf};

use crate::generate::clusters::app_cluster;
use crate::generate::common::{Protocol, socket};
use crate::generate::listeners::http_connection_manager;
use crate::generate::{GeneratedListener, ListenerOrigin, ProxyInput, Resources};

/// Names every MeshMetric Prometheus listener (and its admin cluster): `<prefix><clientId>`.
pub const METRICS_LISTENER_PREFIX: &str = "_kuma:metrics:prometheus:";
/// The listener metadata key holding `{conf, path}` for kuma-dp.
pub const METRICS_METADATA: &str = "io.kuma.meshmetric";
/// Envoy's admin port when the Dataplane names none (Kuma's default).
pub const DEFAULT_ADMIN_PORT: u32 = 9901;

/// A JSON value as a protobuf `Value` (numbers become doubles, as in any Struct).
pub fn json_to_value(v: &serde_json::Value) -> Value {
    let kind = match v {
        serde_json::Value::Null => value::Kind::NullValue(0),
        serde_json::Value::Bool(b) => value::Kind::BoolValue(*b),
        serde_json::Value::Number(n) => value::Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => value::Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => value::Kind::ListValue(ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(o) => value::Kind::StructValue(Struct {
            fields: o
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }),
    };
    Value { kind: Some(kind) }
}

/// Envoy's connection manager: the exact `path` goes to the admin's `/stats/prometheus`.
fn hcm(name: &str, path: &str) -> HttpConnectionManager {
    let mut hcm = http_connection_manager(name, name);
    if let Some(RouteSpecifier::RouteConfig(rc)) = &mut hcm.route_specifier {
        for route in rc.virtual_hosts.iter_mut().flat_map(|vh| &mut vh.routes) {
            if let Some(m) = &mut route.r#match {
                m.path_specifier = Some(PathSpecifier::Path(path.to_string()));
            }
            if let Some(RouteActionKind::Route(action)) = &mut route.action {
                action.prefix_rewrite = "/stats/prometheus".into();
            }
        }
    }
    hcm
}

/// The proxy's merged conf; `None` when no MeshMetric selects it.
fn proxy_conf(input: &ProxyInput<'_>) -> Option<(MetricConf, serde_json::Value)> {
    let rule = input.policies.metric.proxy_rule.as_ref()?;
    let conf = serde_json::from_value(rule.conf.clone()).ok()?;
    Some((conf, rule.conf.clone()))
}

/// The configurer: one listener and one admin cluster per Prometheus backend.
pub fn configure(input: &ProxyInput<'_>, resources: &mut Resources) {
    let Some((conf, raw)) = proxy_conf(input) else {
        return;
    };
    let networking = &input.dataplane.networking;
    let admin_port = networking
        .admin
        .as_ref()
        .map(|a| a.port)
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_ADMIN_PORT);
    for backend in conf.backends.iter().flatten() {
        if backend.backend_type != BackendType::Prometheus {
            continue;
        }
        let Some(prometheus) = &backend.prometheus else {
            continue;
        };
        let client_id = prometheus.client_id.as_deref().unwrap_or("default");
        let name = format!("{METRICS_LISTENER_PREFIX}{client_id}");
        let path = prometheus.path_or_default();
        let metadata = Struct {
            fields: [
                ("conf".to_string(), json_to_value(&raw)),
                ("path".to_string(), json_to_value(&path.into())),
            ]
            .into_iter()
            .collect(),
        };
        let listener = Listener {
            name: name.clone(),
            address: Some(socket(&networking.address, prometheus.port_or_default())),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(FilterConfigType::TypedConfig(pack_any(hcm(&name, path)))),
                }],
                ..Default::default()
            }],
            metadata: Some(Metadata {
                filter_metadata: [(METRICS_METADATA.to_string(), metadata)]
                    .into_iter()
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        resources.listeners.push(GeneratedListener {
            origin: ListenerOrigin::Metrics {
                client_id: client_id.to_string(),
            },
            listener,
        });
        resources
            .clusters
            .push(app_cluster(&name, "127.0.0.1", admin_port, Protocol::Http1));
    }
}
