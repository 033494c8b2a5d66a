//! An HTTP connection manager's `tracing` (MeshTrace) as the plan kuma-dp runs: the sampling
//! shares, the custom tags, the span kind (from the listener's `traffic_direction`, as Envoy
//! picks ingress/egress) and the provider — Zipkin (JSON v2 over HTTP, B3 headers) or
//! OpenTelemetry (OTLP/gRPC, W3C `traceparent`), each reached through its collector cluster.
//! Everything kuma-dp does not do is refused with its field path: other providers (Datadog),
//! Zipkin's proto encoding, split spans, B3-or-W3C trace context options, an OTLP HTTP service,
//! exporters, samplers and resource detectors, upstream spans, custom operation names,
//! environment and metadata tags, verbose annotations and path-length limits.

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
use envoy_types::pb::envoy::config::trace::v3::tracing::http::ConfigType as ProviderConfig;
use envoy_types::pb::envoy::config::trace::v3::zipkin_config::CollectorEndpointVersion;
use envoy_types::pb::envoy::config::trace::v3::{OpenTelemetryConfig, ZipkinConfig};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing;
use envoy_types::pb::envoy::r#type::tracing::v3::custom_tag::Type as TagType;
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use serde::Serialize;

/// Which side of a hop the proxy records: SERVER on inbounds, CLIENT on outbounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SpanKind {
    Server,
    Client,
}

/// The trace-context headers a provider reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Propagation {
    /// `x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled` (or one `b3`).
    B3,
    /// `traceparent` (and `tracestate`, passed on).
    W3c,
}

/// Sampling shares in parts per million (Envoy's default: all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SamplingPlan {
    pub overall: u32,
    pub client: u32,
    pub random: u32,
}

impl Default for SamplingPlan {
    fn default() -> Self {
        SamplingPlan {
            overall: 1_000_000,
            client: 1_000_000,
            random: 1_000_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum TagSource {
    Literal(String),
    /// The request header's value, `default` when absent (no tag when both are empty).
    Header {
        name: String,
        default: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TagPlan {
    pub name: String,
    pub source: TagSource,
}

/// Where spans go.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum ProviderPlan {
    Zipkin {
        cluster: String,
        /// The request path of reports (`/api/v2/spans`).
        path: String,
        /// Their `Host` header (the cluster's name when empty, as Envoy).
        hostname: String,
        trace_id_128bit: bool,
        /// The server span of a hop reuses its client's span id.
        shared_span_context: bool,
    },
    OpenTelemetry {
        cluster: String,
        service_name: String,
    },
}

impl ProviderPlan {
    pub fn cluster(&self) -> &str {
        match self {
            ProviderPlan::Zipkin { cluster, .. } | ProviderPlan::OpenTelemetry { cluster, .. } => {
                cluster
            }
        }
    }

    pub fn propagation(&self) -> Propagation {
        match self {
            ProviderPlan::Zipkin { .. } => Propagation::B3,
            ProviderPlan::OpenTelemetry { .. } => Propagation::W3c,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TracingPlan {
    pub kind: SpanKind,
    pub sampling: SamplingPlan,
    pub tags: Vec<TagPlan>,
    pub provider: ProviderPlan,
}

fn per_million(p: Option<&Percent>, at: &str) -> Result<u32, String> {
    match p {
        None => Ok(1_000_000),
        Some(p) if (0.0..=100.0).contains(&p.value) => Ok((p.value * 10_000.0).round() as u32),
        Some(p) => Err(format!("{at}: {} is not a percentage in [0, 100]", p.value)),
    }
}

fn unpack<T: Message + Name + Default>(any: &Any, at: &str) -> Result<T, String> {
    if any.type_url != T::type_url() {
        return Err(format!(
            "{at}: {} where {} was expected",
            any.type_url,
            T::type_url()
        ));
    }
    T::decode(any.value.as_slice()).map_err(|e| format!("{at}: {e}"))
}

fn zipkin(any: &Any, at: &str) -> Result<ProviderPlan, String> {
    let mut z: ZipkinConfig = unpack(any, at)?;
    if z.collector_endpoint_version != CollectorEndpointVersion::HttpJson as i32 {
        return Err(format!(
            "{at}.collector_endpoint_version: kuma-dp reports Zipkin v2 JSON (HTTP_JSON) only"
        ));
    }
    #[allow(deprecated)]
    let split = z.split_spans_for_request;
    if split {
        return Err(format!(
            "{at}.split_spans_for_request: not supported by kuma-dp"
        ));
    }
    if z.trace_context_option != 0 {
        return Err(format!(
            "{at}.trace_context_option: kuma-dp propagates B3 headers only"
        ));
    }
    if z.collector_cluster.is_empty() {
        return Err(format!("{at}.collector_cluster: must be set"));
    }
    let plan = ProviderPlan::Zipkin {
        cluster: std::mem::take(&mut z.collector_cluster),
        path: std::mem::take(&mut z.collector_endpoint),
        hostname: std::mem::take(&mut z.collector_hostname),
        trace_id_128bit: z.trace_id_128bit,
        shared_span_context: z.shared_span_context.is_none_or(|b| b.value),
    };
    Ok(plan)
}

fn opentelemetry(any: &Any, at: &str) -> Result<ProviderPlan, String> {
    let o: OpenTelemetryConfig = unpack(any, at)?;
    let refused = [
        ("http_service", o.http_service.is_some()),
        ("exporter", o.exporter.is_some()),
        ("resource_detectors", !o.resource_detectors.is_empty()),
        ("sampler", o.sampler.is_some()),
        ("max_cache_size", o.max_cache_size.is_some()),
    ];
    if let Some((field, _)) = refused.iter().find(|(_, set)| *set) {
        return Err(format!(
            "{at}.{field}: not supported by kuma-dp (it exports OTLP over gRPC to grpc_service.envoy_grpc)"
        ));
    }
    let grpc = o
        .grpc_service
        .as_ref()
        .ok_or_else(|| format!("{at}.grpc_service: must be set"))?;
    let cluster = match &grpc.target_specifier {
        Some(TargetSpecifier::EnvoyGrpc(e)) if !e.cluster_name.is_empty() => e.cluster_name.clone(),
        _ => {
            return Err(format!(
                "{at}.grpc_service: kuma-dp needs envoy_grpc with a cluster_name"
            ));
        }
    };
    Ok(ProviderPlan::OpenTelemetry {
        cluster,
        service_name: o.service_name,
    })
}

/// Decodes one connection manager's `tracing` at `at` (its path) on a listener whose
/// `traffic_direction` is `direction` (INBOUND: server spans; otherwise client, Envoy's egress).
pub fn plan(tracing: &Tracing, direction: i32, at: &str) -> Result<TracingPlan, String> {
    let at = format!("{at}.tracing");
    let sampling = SamplingPlan {
        overall: per_million(
            tracing.overall_sampling.as_ref(),
            &format!("{at}.overall_sampling"),
        )?,
        client: per_million(
            tracing.client_sampling.as_ref(),
            &format!("{at}.client_sampling"),
        )?,
        random: per_million(
            tracing.random_sampling.as_ref(),
            &format!("{at}.random_sampling"),
        )?,
    };
    let refused = [
        ("verbose", tracing.verbose),
        ("max_path_tag_length", tracing.max_path_tag_length.is_some()),
        (
            "spawn_upstream_span",
            tracing.spawn_upstream_span.is_some_and(|b| b.value),
        ),
        ("operation", !tracing.operation.is_empty()),
        ("upstream_operation", !tracing.upstream_operation.is_empty()),
    ];
    if let Some((field, _)) = refused.iter().find(|(_, set)| *set) {
        return Err(format!("{at}.{field}: not supported by kuma-dp"));
    }
    let tags = tracing
        .custom_tags
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let source = match &t.r#type {
                Some(TagType::Literal(l)) => TagSource::Literal(l.value.clone()),
                Some(TagType::RequestHeader(h)) => TagSource::Header {
                    name: h.name.to_ascii_lowercase(),
                    default: h.default_value.clone(),
                },
                _ => {
                    return Err(format!(
                        "{at}.custom_tags[{i}]: kuma-dp takes literal and request_header tags only"
                    ));
                }
            };
            Ok(TagPlan {
                name: t.tag.clone(),
                source,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let provider_at = format!("{at}.provider");
    let provider = tracing
        .provider
        .as_ref()
        .ok_or_else(|| format!("{provider_at}: must be set"))?;
    let Some(ProviderConfig::TypedConfig(config)) = &provider.config_type else {
        return Err(format!("{provider_at}: typed_config must be set"));
    };
    let config_at = format!("{provider_at}.typed_config");
    let provider = if config.type_url == ZipkinConfig::type_url() {
        zipkin(config, &config_at)?
    } else if config.type_url == OpenTelemetryConfig::type_url() {
        opentelemetry(config, &config_at)?
    } else {
        return Err(format!(
            "{config_at}: {} is not run by kuma-dp (Zipkin and OpenTelemetry are)",
            config.type_url
        ));
    };
    let kind = if direction == TrafficDirection::Inbound as i32 {
        SpanKind::Server
    } else {
        SpanKind::Client
    };
    Ok(TracingPlan {
        kind,
        sampling,
        tags,
        provider,
    })
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::trace::v3::DatadogConfig;
    use envoy_types::pb::envoy::config::trace::v3::tracing::Http;
    use envoy_types::pb::envoy::r#type::tracing::v3::CustomTag;
    use envoy_types::pb::envoy::r#type::tracing::v3::custom_tag::Environment;
    use envoy_types::pb::google::protobuf::BoolValue;
    use envoy_types::util::pack_any;

    use super::*;

    fn zipkin_tracing() -> Tracing {
        Tracing {
            overall_sampling: Some(Percent { value: 12.5 }),
            provider: Some(Http {
                name: "envoy.tracers.zipkin".into(),
                config_type: Some(ProviderConfig::TypedConfig(pack_any(ZipkinConfig {
                    collector_cluster: "meshtrace:zipkin".into(),
                    collector_endpoint: "/api/v2/spans".into(),
                    collector_endpoint_version: CollectorEndpointVersion::HttpJson as i32,
                    shared_span_context: Some(BoolValue { value: false }),
                    ..Default::default()
                }))),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_zipkin_tracing_block_becomes_its_plan() {
        let plan = plan(&zipkin_tracing(), TrafficDirection::Inbound as i32, "hcm").expect("plan");
        assert_eq!(plan.kind, SpanKind::Server);
        assert_eq!(
            plan.sampling,
            SamplingPlan {
                overall: 125_000,
                client: 1_000_000,
                random: 1_000_000
            }
        );
        assert_eq!(
            plan.provider,
            ProviderPlan::Zipkin {
                cluster: "meshtrace:zipkin".into(),
                path: "/api/v2/spans".into(),
                hostname: String::new(),
                trace_id_128bit: false,
                shared_span_context: false
            }
        );
        let unspecified = super::plan(&zipkin_tracing(), 0, "hcm").expect("plan");
        assert_eq!(unspecified.kind, SpanKind::Client);
    }

    #[test]
    fn what_kuma_dp_cannot_do_is_refused_at_its_path() {
        let with = |edit: &dyn Fn(&mut Tracing)| {
            let mut t = zipkin_tracing();
            edit(&mut t);
            plan(&t, 1, "hcm").expect_err("refused")
        };
        let set_zipkin = |edit: fn(&mut ZipkinConfig)| {
            let mut z = ZipkinConfig {
                collector_cluster: "c".into(),
                collector_endpoint_version: CollectorEndpointVersion::HttpJson as i32,
                ..Default::default()
            };
            edit(&mut z);
            let mut t = zipkin_tracing();
            t.provider = Some(Http {
                name: "envoy.tracers.zipkin".into(),
                config_type: Some(ProviderConfig::TypedConfig(pack_any(z))),
            });
            plan(&t, 1, "hcm").expect_err("refused")
        };
        for (got, want) in [
            (
                with(&|t| t.verbose = true),
                "hcm.tracing.verbose: not supported",
            ),
            (
                with(&|t| t.overall_sampling = Some(Percent { value: 120.0 })),
                "hcm.tracing.overall_sampling: 120",
            ),
            (
                with(&|t| t.spawn_upstream_span = Some(BoolValue { value: true })),
                "hcm.tracing.spawn_upstream_span",
            ),
            (
                with(&|t| {
                    t.custom_tags = vec![CustomTag {
                        tag: "e".into(),
                        r#type: Some(TagType::Environment(Environment::default())),
                    }]
                }),
                "hcm.tracing.custom_tags[0]: kuma-dp takes literal and request_header",
            ),
            (
                with(&|t| t.provider = None),
                "hcm.tracing.provider: must be set",
            ),
            (
                with(&|t| {
                    t.provider = Some(Http {
                        name: "envoy.tracers.datadog".into(),
                        config_type: Some(ProviderConfig::TypedConfig(pack_any(
                            DatadogConfig::default(),
                        ))),
                    })
                }),
                "hcm.tracing.provider.typed_config: type.googleapis.com/envoy.config.trace.v3.DatadogConfig is not run by kuma-dp",
            ),
            (
                set_zipkin(|z| {
                    z.collector_endpoint_version = CollectorEndpointVersion::HttpProto as i32
                }),
                "hcm.tracing.provider.typed_config.collector_endpoint_version",
            ),
            (
                set_zipkin(|z| {
                    #[allow(deprecated)]
                    {
                        z.split_spans_for_request = true;
                    }
                }),
                "hcm.tracing.provider.typed_config.split_spans_for_request",
            ),
            (
                set_zipkin(|z| z.collector_cluster.clear()),
                "hcm.tracing.provider.typed_config.collector_cluster: must be set",
            ),
            (
                with(&|t| {
                    t.provider = Some(Http {
                        name: "envoy.tracers.opentelemetry".into(),
                        config_type: Some(ProviderConfig::TypedConfig(pack_any(
                            OpenTelemetryConfig::default(),
                        ))),
                    })
                }),
                "hcm.tracing.provider.typed_config.grpc_service: must be set",
            ),
        ] {
            assert!(got.starts_with(want), "{got} does not start with {want}");
        }
    }
}
