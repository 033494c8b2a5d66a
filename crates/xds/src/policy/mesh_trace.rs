//! MeshTrace's configurer (Kuma's `meshtrace/plugin`, reference §2.11, order 700). The proxy-wide
//! conf gives every HTTP connection manager of the proxy's inbound and outbound listeners a
//! `tracing` block, and the proxy one collector cluster:
//!
//! - `tracing`: `overall_sampling`, `client_sampling`, `random_sampling` (only the ones set;
//!   Envoy's default is 100 %), the user's custom tags (literal or request header with default),
//!   then Kuma's `kuma.mesh` and `kuma.zone` literals, `spawn_upstream_span: false` (the sidecar
//!   and its application are one hop), and the provider: `envoy.tracers.zipkin`
//!   (`ZipkinConfig`: the URL's path and `host:port`, 128-bit ids, shared span context, JSON or
//!   proto v2), `envoy.tracers.opentelemetry` (gRPC to the collector cluster, `service_name` the
//!   proxy's `kuma.io/service`) or `envoy.tracers.datadog`.
//! - The listeners get `traffic_direction` (INBOUND / OUTBOUND): Envoy names its spans and
//!   picks their kind (SERVER / CLIENT) from it.
//! - The cluster `meshtrace:zipkin` / `meshtrace:opentelemetry` (HTTP/2) / `meshtrace:datadog`:
//!   STATIC for an IP address, STRICT_DNS for a host name (Envoy resolves it; kuma-dp refuses
//!   such a cluster), TLS for an `https` Zipkin URL.
//!
//! An empty `backends` list turns tracing off.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
use envoy_types::pb::envoy::config::core::v3::GrpcService;
use envoy_types::pb::envoy::config::trace::v3::tracing::Http as TracingProvider;
use envoy_types::pb::envoy::config::trace::v3::tracing::http::ConfigType as ProviderConfig;
use envoy_types::pb::envoy::config::trace::v3::zipkin_config::CollectorEndpointVersion;
use envoy_types::pb::envoy::config::trace::v3::{DatadogConfig, OpenTelemetryConfig, ZipkinConfig};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use envoy_types::pb::envoy::r#type::tracing::v3::CustomTag;
use envoy_types::pb::envoy::r#type::tracing::v3::custom_tag::{
    Header as HeaderTag, Literal, Type as TagType,
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;
use meshzone_model::policies::Percentage;
use meshzone_model::policies::mesh_trace::{
    Backend, BackendType, TraceConf, collector_url, host_port,
};
use meshzone_model::specs::{SERVICE_TAG, ZONE_TAG};

use super::inbound_http::edit_hcm;
use crate::generate::clusters::app_cluster;
use crate::generate::common::{Protocol, transport_socket};
use crate::generate::{ListenerOrigin, ProxyInput, Resources};

pub const ZIPKIN_PROVIDER: &str = "envoy.tracers.zipkin";
pub const OPENTELEMETRY_PROVIDER: &str = "envoy.tracers.opentelemetry";
pub const DATADOG_PROVIDER: &str = "envoy.tracers.datadog";
pub const ZIPKIN_CLUSTER: &str = "meshtrace:zipkin";
pub const OPENTELEMETRY_CLUSTER: &str = "meshtrace:opentelemetry";
pub const DATADOG_CLUSTER: &str = "meshtrace:datadog";

/// Where the proxy's spans go: the provider config and the collector cluster.
struct Provider {
    provider: TracingProvider,
    cluster: Cluster,
}

/// The collector cluster at `host:port`: STATIC for an IP, STRICT_DNS for a name.
fn collector_cluster(name: &str, host: &str, port: u16, http2: bool) -> Cluster {
    let protocol = if http2 {
        Protocol::Http2
    } else {
        Protocol::Http1
    };
    let mut cluster = app_cluster(name, host, u32::from(port), protocol);
    if host.parse::<std::net::IpAddr>().is_err() {
        cluster.cluster_discovery_type =
            Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32));
    }
    cluster
}

fn provider(backend: &Backend, service: &str) -> Option<Provider> {
    match backend.backend_type {
        BackendType::Zipkin => {
            let z = backend.zipkin.as_ref()?;
            let url = collector_url(&z.url)?;
            let version = match z.api_version.as_deref() {
                Some("httpProto") => CollectorEndpointVersion::HttpProto,
                _ => CollectorEndpointVersion::HttpJson,
            };
            let mut cluster = collector_cluster(ZIPKIN_CLUSTER, &url.host, url.port, false);
            if url.tls {
                // SNI names a host; an IP address is not sent as one.
                let sni = match url.host.parse::<std::net::IpAddr>() {
                    Ok(_) => String::new(),
                    Err(_) => url.host.clone(),
                };
                cluster.transport_socket = Some(transport_socket(pack_any(UpstreamTlsContext {
                    sni,
                    ..Default::default()
                })));
            }
            let config = ZipkinConfig {
                collector_cluster: ZIPKIN_CLUSTER.into(),
                collector_endpoint: url.path,
                trace_id_128bit: z.trace_id_128bit.unwrap_or(false),
                shared_span_context: Some(BoolValue {
                    value: z.shared_span_context.unwrap_or(true),
                }),
                collector_endpoint_version: version as i32,
                collector_hostname: url.authority,
                ..Default::default()
            };
            Some(Provider {
                provider: TracingProvider {
                    name: ZIPKIN_PROVIDER.into(),
                    config_type: Some(ProviderConfig::TypedConfig(pack_any(config))),
                },
                cluster,
            })
        }
        BackendType::OpenTelemetry => {
            let o = backend.open_telemetry.as_ref()?;
            let (host, port) = host_port(&o.endpoint)?;
            let config = OpenTelemetryConfig {
                grpc_service: Some(GrpcService {
                    target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                        cluster_name: OPENTELEMETRY_CLUSTER.into(),
                        ..Default::default()
                    })),
                    ..Default::default()
                }),
                service_name: service.into(),
                ..Default::default()
            };
            Some(Provider {
                provider: TracingProvider {
                    name: OPENTELEMETRY_PROVIDER.into(),
                    config_type: Some(ProviderConfig::TypedConfig(pack_any(config))),
                },
                cluster: collector_cluster(OPENTELEMETRY_CLUSTER, &host, port, true),
            })
        }
        BackendType::Datadog => {
            let d = backend.datadog.as_ref()?;
            let url = collector_url(&d.url)?;
            let config = DatadogConfig {
                collector_cluster: DATADOG_CLUSTER.into(),
                service_name: service.into(),
                ..Default::default()
            };
            Some(Provider {
                provider: TracingProvider {
                    name: DATADOG_PROVIDER.into(),
                    config_type: Some(ProviderConfig::TypedConfig(pack_any(config))),
                },
                cluster: collector_cluster(DATADOG_CLUSTER, &url.host, url.port, false),
            })
        }
    }
}

fn percent(p: Option<&Percentage>) -> Option<Percent> {
    p.and_then(Percentage::value).map(|value| Percent { value })
}

fn literal(tag: &str, value: &str) -> CustomTag {
    CustomTag {
        tag: tag.into(),
        r#type: Some(TagType::Literal(Literal {
            value: value.into(),
        })),
    }
}

/// The user's tags, then Kuma's `kuma.mesh` and `kuma.zone` (a user tag of that name wins).
fn custom_tags(conf: &TraceConf, mesh: &str, zone: Option<&str>) -> Vec<CustomTag> {
    let mut tags: Vec<CustomTag> = conf
        .tags
        .iter()
        .flatten()
        .filter_map(|t| match (&t.literal, &t.header) {
            (Some(value), _) => Some(literal(&t.name, value)),
            (None, Some(h)) => Some(CustomTag {
                tag: t.name.clone(),
                r#type: Some(TagType::RequestHeader(HeaderTag {
                    name: h.name.clone(),
                    default_value: h.default.clone().unwrap_or_default(),
                })),
            }),
            (None, None) => None,
        })
        .collect();
    let builtin = [("kuma.mesh", Some(mesh)), ("kuma.zone", zone)];
    for (name, value) in builtin {
        if let Some(value) = value
            && !tags.iter().any(|t| t.tag == name)
        {
            tags.push(literal(name, value));
        }
    }
    tags
}

/// The proxy's merged conf; `None` when no MeshTrace selects it.
fn proxy_conf(input: &ProxyInput<'_>) -> Option<TraceConf> {
    let rule = input.policies.trace.proxy_rule.as_ref()?;
    serde_json::from_value(rule.conf.clone()).ok()
}

/// The configurer: `tracing` on every inbound and outbound HTTP connection manager, plus the
/// collector cluster (see the module doc).
pub fn configure(input: &ProxyInput<'_>, resources: &mut Resources) {
    let Some(conf) = proxy_conf(input) else {
        return;
    };
    let Some(backend) = conf.backends.as_ref().and_then(|b| b.first()) else {
        return;
    };
    let inbounds = &input.dataplane.networking.inbound;
    let service = inbounds
        .first()
        .and_then(|i| i.tags.get(SERVICE_TAG))
        .map(String::as_str)
        .unwrap_or("unknown");
    let zone = inbounds
        .first()
        .and_then(|i| i.tags.get(ZONE_TAG))
        .map(String::as_str);
    let Some(Provider { provider, cluster }) = provider(backend, service) else {
        return;
    };
    let sampling = conf.sampling.clone().unwrap_or_default();
    let tracing = Tracing {
        client_sampling: percent(sampling.client.as_ref()),
        random_sampling: percent(sampling.random.as_ref()),
        overall_sampling: percent(sampling.overall.as_ref()),
        custom_tags: custom_tags(&conf, input.mesh, zone),
        provider: Some(provider),
        spawn_upstream_span: Some(BoolValue { value: false }),
        ..Default::default()
    };
    let mut traced = false;
    for generated in &mut resources.listeners {
        let direction = match generated.origin {
            ListenerOrigin::Inbound { .. } => TrafficDirection::Inbound,
            ListenerOrigin::Outbound { .. } | ListenerOrigin::VirtualOutbound { .. } => {
                TrafficDirection::Outbound
            }
            _ => continue,
        };
        let mut http = false;
        for chain in &mut generated.listener.filter_chains {
            http |= edit_hcm(chain, |hcm| hcm.tracing = Some(tracing.clone()));
        }
        if http {
            generated.listener.traffic_direction = direction as i32;
            traced = true;
        }
    }
    if traced {
        resources.clusters.push(cluster);
    }
}
