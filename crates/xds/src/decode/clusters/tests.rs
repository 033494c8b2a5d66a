//! Cluster and load-assignment decoding: what the generator emits is accepted; every field
//! kuma-dp does not enforce is refused, one case each, with its path in the message.

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    LbConfig, LbPolicy, RoundRobinLbConfig,
};
use envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::{ConfigSource, HealthStatus, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::Policy;
use envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::policy::DropOverload;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{LbEndpoint, LocalityLbEndpoints};
use envoy_types::pb::google::protobuf::{BoolValue, Struct, UInt32Value};
use envoy_types::util::pack_any;

use super::*;
use crate::generate::clusters::{eds_cluster, passthrough_cluster, zone_proxy_cluster};
use crate::generate::static_cluster;
use envoy_types::pb::google::protobuf::Duration;

#[derive(Clone, Copy, Debug)]
enum Base {
    Eds,
    /// An HTTP/2 application cluster of one endpoint.
    Static,
    Passthrough,
}

fn base(b: Base) -> Cluster {
    match b {
        Base::Eds => zone_proxy_cluster("web"),
        Base::Static => static_cluster("app", "127.0.0.1", 8080, true),
        Base::Passthrough => passthrough_cluster(),
    }
}

fn decode(c: &Cluster) -> Result<ClusterPlan, DecodeError> {
    decode_cluster(&pack_any(c.clone()))
}

fn secs(s: i64) -> Option<Duration> {
    Some(Duration {
        seconds: s,
        nanos: 0,
    })
}

fn u32v(v: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value: v })
}

fn matching_metadata(ns: &str) -> Option<Metadata> {
    Some(Metadata {
        filter_metadata: [(ns.to_string(), Struct::default())].into_iter().collect(),
        ..Default::default()
    })
}

fn od(c: &mut Cluster) -> &mut envoy_types::pb::envoy::config::cluster::v3::OutlierDetection {
    c.outlier_detection.as_mut().expect("outlier detection")
}

fn http_options(c: &mut Cluster) -> HttpProtocolOptions {
    unpack(&c.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS]).expect("http options")
}

fn set_http_options(c: &mut Cluster, o: HttpProtocolOptions) {
    c.typed_extension_protocol_options
        .insert(HTTP_PROTOCOL_OPTIONS.to_string(), pack_any(o));
}

fn with_http(c: &mut Cluster, edit: fn(&mut HttpProtocolOptions)) {
    let mut o = http_options(c);
    edit(&mut o);
    set_http_options(c, o);
}

fn lb_endpoint(c: &mut Cluster) -> &mut LbEndpoint {
    &mut c.load_assignment.as_mut().expect("cla").endpoints[0].lb_endpoints[0]
}

fn locality(c: &mut Cluster) -> &mut LocalityLbEndpoints {
    &mut c.load_assignment.as_mut().expect("cla").endpoints[0]
}

fn cla_policy(c: &mut Cluster) -> &mut Policy {
    c.load_assignment
        .as_mut()
        .expect("cla")
        .policy
        .get_or_insert_with(Default::default)
}

/// A connect-only TCP check every 2 s.
fn tcp_check() -> envoy_types::pb::envoy::config::core::v3::HealthCheck {
    use envoy_types::pb::envoy::config::core::v3::health_check::{HealthChecker, TcpHealthCheck};
    envoy_types::pb::envoy::config::core::v3::HealthCheck {
        timeout: secs(1),
        interval: secs(2),
        unhealthy_threshold: u32v(2),
        healthy_threshold: u32v(1),
        health_checker: Some(HealthChecker::TcpHealthCheck(TcpHealthCheck::default())),
        ..Default::default()
    }
}

#[test]
fn an_active_check_is_part_of_the_plan() {
    let mut c = base(Base::Eds);
    assert_eq!(decode(&c).expect("eds").health_check, None);
    c.health_checks = vec![tcp_check()];
    let plan = decode(&c).expect("checked").health_check.expect("a check");
    assert_eq!(plan.unhealthy_threshold, 2);
}

#[test]
fn generated_clusters_are_accepted() {
    let eds = decode(&base(Base::Eds)).expect("eds");
    assert!(eds.static_endpoints.is_none() && !eds.http2 && !eds.original_dst);
    let app = decode(&base(Base::Static)).expect("static");
    assert_eq!(app.static_endpoints.as_ref().map(Vec::len), Some(1));
    assert!(app.http2);
    assert!(
        decode(&base(Base::Passthrough))
            .expect("passthrough")
            .original_dst
    );
}

/// Shapes that mean the same as what kuma-dp does, spelled differently, pass.
#[test]
fn equivalent_spellings_are_accepted() {
    type Edit = fn(&mut Cluster);
    let cases: &[(&str, Base, Edit)] = &[
        ("default connect timeout unset", Base::Eds, |c| {
            c.connect_timeout = None
        }),
        ("no outlier detection: nothing is ejected", Base::Eds, |c| {
            c.outlier_detection = None
        }),
        ("every detector on", Base::Eds, |c| {
            let o = od(c);
            o.enforcing_consecutive_5xx = u32v(100);
            o.enforcing_consecutive_gateway_failure = u32v(100);
            o.enforcing_success_rate = u32v(100);
            o.enforcing_local_origin_success_rate = u32v(100);
            o.enforcing_failure_percentage = u32v(100);
            o.enforcing_failure_percentage_local_origin = u32v(100);
            o.interval = secs(1);
            o.max_ejection_time = None;
        }),
        (
            "circuit breaker thresholds at DEFAULT priority",
            Base::Eds,
            |c| {
                c.circuit_breakers = Some(envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers {
                thresholds: vec![envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds {
                    max_connections: u32v(2),
                    max_connection_pools: u32v(1),
                    track_remaining: true,
                    ..Default::default()
                }],
                ..Default::default()
            })
            },
        ),
        ("a panic threshold", Base::Eds, |c| {
            c.common_lb_config = Some(
                envoy_types::pb::envoy::config::cluster::v3::cluster::CommonLbConfig {
                    healthy_panic_threshold: Some(envoy_types::pb::envoy::r#type::v3::Percent {
                        value: 30.0,
                    }),
                    ..Default::default()
                },
            )
        }),
        ("service_name equal to the cluster name", Base::Eds, |c| {
            c.eds_cluster_config.as_mut().expect("eds").service_name = "web".into()
        }),
        ("annotating metadata", Base::Static, |c| {
            c.metadata = matching_metadata("io.kuma");
            lb_endpoint(c).metadata = matching_metadata("io.kuma");
        }),
        ("a HEALTHY endpoint", Base::Static, |c| {
            lb_endpoint(c).health_status = HealthStatus::Healthy as i32
        }),
        ("stats names", Base::Eds, |c| c.alt_stat_name = "w".into()),
        ("an active TCP check", Base::Eds, |c| {
            c.health_checks = vec![tcp_check()];
            c.ignore_health_on_host_removal = true;
        }),
    ];
    for (what, b, edit) in cases {
        let mut c = base(*b);
        edit(&mut c);
        assert!(decode(&c).is_ok(), "{what}: {:?}", decode(&c));
    }
}

#[test]
#[allow(deprecated)]
fn every_field_kuma_dp_does_not_enforce_is_refused_with_its_path() {
    type Edit = fn(&mut Cluster);
    let cases: &[(&str, Base, Edit)] = &[
        ("transport_socket_matches", Base::Eds, |c| {
            c.transport_socket_matches = vec![Default::default()]
        }),
        ("transport_socket_matcher", Base::Eds, |c| {
            c.transport_socket_matcher = Some(Default::default())
        }),
        ("eds_cluster_config", Base::Eds, |c| {
            c.eds_cluster_config = None
        }),
        ("eds_cluster_config.eds_config", Base::Eds, |c| {
            c.eds_cluster_config.as_mut().expect("eds").eds_config = Some(ConfigSource {
                config_source_specifier: Some(ConfigSourceSpecifier::PathConfigSource(
                    Default::default(),
                )),
                ..Default::default()
            })
        }),
        ("eds_cluster_config.service_name", Base::Eds, |c| {
            c.eds_cluster_config.as_mut().expect("eds").service_name = "other".into()
        }),
        ("eds_cluster_config", Base::Static, |c| {
            c.eds_cluster_config = eds_cluster("app").eds_cluster_config
        }),
        // Any positive connect timeout is kuma-dp's (MeshTimeout); 0 is not one.
        ("connect_timeout", Base::Eds, |c| {
            c.connect_timeout = secs(0)
        }),
        ("per_connection_buffer_limit_bytes", Base::Eds, |c| {
            c.per_connection_buffer_limit_bytes = u32v(1024)
        }),
        (
            "per_connection_buffer_high_watermark_timeout",
            Base::Eds,
            |c| c.per_connection_buffer_high_watermark_timeout = secs(1),
        ),
        ("lb_policy", Base::Eds, |c| {
            c.lb_policy = LbPolicy::ClusterProvided as i32
        }),
        ("lb_policy", Base::Static, |c| {
            c.lb_policy = LbPolicy::ClusterProvided as i32
        }),
        ("lb_policy", Base::Passthrough, |c| {
            c.lb_policy = LbPolicy::RoundRobin as i32
        }),
        ("load_assignment", Base::Eds, |c| {
            c.load_assignment = base(Base::Static).load_assignment
        }),
        // The check itself is `health_checks.rs`'s; a refusal there names its path here.
        ("health_checks[0].timeout", Base::Eds, |c| {
            c.health_checks = vec![Default::default()]
        }),
        ("health_checks", Base::Eds, |c| {
            c.health_checks = vec![tcp_check(), tcp_check()]
        }),
        ("health_checks", Base::Passthrough, |c| {
            c.health_checks = vec![tcp_check()]
        }),
        (
            "outlier_detection.successful_active_health_check_uneject_host",
            Base::Eds,
            |c| {
                od(c).successful_active_health_check_uneject_host = Some(BoolValue { value: false })
            },
        ),
        ("max_requests_per_connection", Base::Eds, |c| {
            c.max_requests_per_connection = u32v(1)
        }),
        ("upstream_http_protocol_options", Base::Eds, |c| {
            c.upstream_http_protocol_options = Some(Default::default())
        }),
        ("common_http_protocol_options", Base::Eds, |c| {
            c.common_http_protocol_options = Some(Default::default())
        }),
        ("http_protocol_options", Base::Eds, |c| {
            c.http_protocol_options = Some(Default::default())
        }),
        ("http2_protocol_options", Base::Eds, |c| {
            c.http2_protocol_options = Some(Default::default())
        }),
        ("outlier_detection", Base::Passthrough, |c| {
            c.outlier_detection = zone_proxy_cluster("x").outlier_detection
        }),
        (
            "outlier_detection.enforcing_consecutive_gateway_failure",
            Base::Eds,
            |c| od(c).enforcing_consecutive_gateway_failure = u32v(50),
        ),
        (
            "outlier_detection.enforcing_local_origin_success_rate",
            Base::Eds,
            |c| od(c).enforcing_local_origin_success_rate = u32v(100),
        ),
        (
            "outlier_detection.enforcing_failure_percentage",
            Base::Eds,
            |c| od(c).enforcing_failure_percentage = u32v(50),
        ),
        (
            "outlier_detection.max_ejection_time_jitter",
            Base::Eds,
            |c| od(c).max_ejection_time_jitter = secs(1),
        ),
        ("circuit_breakers.thresholds[0].priority", Base::Eds, |c| {
            c.circuit_breakers = Some(
                envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers {
                    thresholds: vec![
                        envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds {
                            priority:
                                envoy_types::pb::envoy::config::core::v3::RoutingPriority::High
                                    as i32,
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                },
            )
        }),
        ("circuit_breakers.per_host_thresholds", Base::Eds, |c| {
            c.circuit_breakers = Some(
                envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers {
                    per_host_thresholds: vec![Default::default()],
                    ..Default::default()
                },
            )
        }),
        ("common_lb_config.update_merge_window", Base::Eds, |c| {
            c.common_lb_config = Some(
                envoy_types::pb::envoy::config::cluster::v3::cluster::CommonLbConfig {
                    update_merge_window: secs(1),
                    ..Default::default()
                },
            )
        }),
        ("outlier_detection.monitors", Base::Eds, |c| {
            od(c).monitors = vec![Default::default()]
        }),
        ("outlier_detection.always_eject_one_host", Base::Eds, |c| {
            od(c).always_eject_one_host = Some(BoolValue { value: true })
        }),
        ("outlier_detection.detect_degraded_hosts", Base::Eds, |c| {
            od(c).detect_degraded_hosts = Some(BoolValue { value: true })
        }),
        ("upstream_bind_config", Base::Eds, |c| {
            c.upstream_bind_config = Some(Default::default())
        }),
        ("lb_subset_config", Base::Eds, |c| {
            c.lb_subset_config = Some(Default::default())
        }),
        ("metadata.filter_metadata[\"envoy.lb\"]", Base::Eds, |c| {
            c.metadata = matching_metadata("envoy.lb")
        }),
        (
            "metadata.typed_filter_metadata[\"envoy.transport_socket_match\"]",
            Base::Eds,
            |c| {
                c.metadata = Some(Metadata {
                    typed_filter_metadata: [(
                        "envoy.transport_socket_match".to_string(),
                        Any::default(),
                    )]
                    .into_iter()
                    .collect(),
                    ..Default::default()
                })
            },
        ),
        ("protocol_selection", Base::Eds, |c| {
            c.protocol_selection = ClusterProtocolSelection::UseDownstreamProtocol as i32
        }),
        ("upstream_connection_options", Base::Eds, |c| {
            c.upstream_connection_options = Some(Default::default())
        }),
        ("close_connections_on_host_health_failure", Base::Eds, |c| {
            c.close_connections_on_host_health_failure = true
        }),
        ("filters", Base::Eds, |c| {
            c.filters = vec![Default::default()]
        }),
        ("load_balancing_policy", Base::Eds, |c| {
            c.load_balancing_policy = Some(Default::default())
        }),
        ("lrs_server", Base::Eds, |c| {
            c.lrs_server = Some(Default::default())
        }),
        ("lrs_report_endpoint_metrics", Base::Eds, |c| {
            c.lrs_report_endpoint_metrics = vec!["cpu".into()]
        }),
        ("upstream_config", Base::Eds, |c| {
            c.upstream_config = Some(Default::default())
        }),
        ("preconnect_policy", Base::Eds, |c| {
            c.preconnect_policy = Some(Default::default())
        }),
        (
            "connection_pool_per_downstream_connection",
            Base::Eds,
            |c| c.connection_pool_per_downstream_connection = true,
        ),
        ("queuing_policies", Base::Eds, |c| {
            c.queuing_policies = Some(Default::default())
        }),
        ("round_robin_lb_config.slow_start_config", Base::Eds, |c| {
            c.lb_config = Some(LbConfig::RoundRobinLbConfig(RoundRobinLbConfig {
                slow_start_config: Some(Default::default()),
            }))
        }),
        (
            "typed_extension_protocol_options[\"envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions\"]",
            Base::Eds,
            |c| {
                c.typed_extension_protocol_options.insert(
                    "envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions".into(),
                    Any::default(),
                );
            },
        ),
        (
            "typed_extension_protocol_options[\"envoy.extensions.upstreams.http.v3.HttpProtocolOptions\"]",
            Base::Eds,
            |c| {
                c.typed_extension_protocol_options.insert(
                    HTTP_PROTOCOL_OPTIONS.into(),
                    pack_any(UInt32Value { value: 1 }),
                );
            },
        ),
        (
            // Idle timeout and stream duration are kuma-dp's (MeshTimeout); header limits are not.
            "typed_extension_protocol_options[\"envoy.extensions.upstreams.http.v3.HttpProtocolOptions\"].common_http_protocol_options",
            Base::Static,
            |c| {
                with_http(c, |o| {
                    o.common_http_protocol_options = Some(
                        envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions {
                            max_headers_count: u32v(10),
                            ..Default::default()
                        },
                    )
                })
            },
        ),
        (
            "typed_extension_protocol_options[\"envoy.extensions.upstreams.http.v3.HttpProtocolOptions\"].upstream_http_protocol_options",
            Base::Static,
            |c| {
                with_http(c, |o| {
                    o.upstream_http_protocol_options = Some(Default::default())
                })
            },
        ),
        (
            "typed_extension_protocol_options[\"envoy.extensions.upstreams.http.v3.HttpProtocolOptions\"].http_filters",
            Base::Static,
            |c| with_http(c, |o| o.http_filters = vec![Default::default()]),
        ),
        (
            "typed_extension_protocol_options[\"envoy.extensions.upstreams.http.v3.HttpProtocolOptions\"].header_validation_config",
            Base::Static,
            |c| with_http(c, |o| o.header_validation_config = Some(Default::default())),
        ),
        (
            "typed_extension_protocol_options[\"envoy.extensions.upstreams.http.v3.HttpProtocolOptions\"].outlier_detection",
            Base::Static,
            |c| with_http(c, |o| o.outlier_detection = Some(Default::default())),
        ),
        (
            "typed_extension_protocol_options[\"envoy.extensions.upstreams.http.v3.HttpProtocolOptions\"].request_mirror_policies",
            Base::Static,
            |c| with_http(c, |o| o.request_mirror_policies = vec![Default::default()]),
        ),
        (
            "typed_extension_protocol_options[\"envoy.extensions.upstreams.http.v3.HttpProtocolOptions\"].upstream_protocol_options",
            Base::Static,
            |c| {
                with_http(c, |o| {
                    // HTTP/1 with Envoy's defaults is kuma-dp's; other HTTP/1 settings are not.
                    o.upstream_protocol_options = Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                        ExplicitHttpConfig {
                            protocol_config: Some(ExplicitProtocol::HttpProtocolOptions(
                                envoy_types::pb::envoy::config::core::v3::Http1ProtocolOptions {
                                    accept_http_10: true,
                                    ..Default::default()
                                },
                            )),
                        },
                    ))
                })
            },
        ),
        (
            "typed_extension_protocol_options[\"envoy.extensions.upstreams.http.v3.HttpProtocolOptions\"].explicit_http_config.http2_protocol_options",
            Base::Static,
            |c| {
                with_http(c, |o| {
                    o.upstream_protocol_options = Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                        ExplicitHttpConfig {
                            protocol_config: Some(ExplicitProtocol::Http2ProtocolOptions(
                                Http2ProtocolOptions {
                                    max_concurrent_streams: u32v(1),
                                    ..Default::default()
                                },
                            )),
                        },
                    ))
                })
            },
        ),
        // The load assignment of a STATIC cluster.
        ("load_assignment.named_endpoints", Base::Static, |c| {
            c.load_assignment
                .as_mut()
                .expect("cla")
                .named_endpoints
                .insert("e".into(), Default::default());
        }),
        ("load_assignment.policy.drop_overloads", Base::Static, |c| {
            cla_policy(c).drop_overloads = vec![DropOverload::default()]
        }),
        (
            "load_assignment.policy.overprovisioning_factor",
            Base::Static,
            |c| cla_policy(c).overprovisioning_factor = u32v(0),
        ),
        (
            "load_assignment.policy.endpoint_stale_after",
            Base::Static,
            |c| cla_policy(c).endpoint_stale_after = secs(1),
        ),
        (
            "load_assignment.policy.weighted_priority_health",
            Base::Static,
            |c| cla_policy(c).weighted_priority_health = true,
        ),
        (
            "load_assignment.endpoints[0].metadata.filter_metadata[\"envoy.lb\"]",
            Base::Static,
            |c| locality(c).metadata = matching_metadata("envoy.lb"),
        ),
        (
            "load_assignment.endpoints[0].lb_config",
            Base::Static,
            |c| {
                locality(c).lb_config = Some(
                envoy_types::pb::envoy::config::endpoint::v3::locality_lb_endpoints::LbConfig::LoadBalancerEndpoints(
                    Default::default(),
                ),
            )
            },
        ),
        (
            "load_assignment.endpoints[0].lb_endpoints[0].health_status",
            Base::Static,
            |c| lb_endpoint(c).health_status = HealthStatus::Draining as i32,
        ),
        (
            "load_assignment.endpoints[0].lb_endpoints[0].health_status",
            Base::Static,
            |c| lb_endpoint(c).health_status = HealthStatus::Unhealthy as i32,
        ),
        (
            "load_assignment.endpoints[0].lb_endpoints[0].health_status",
            Base::Static,
            |c| lb_endpoint(c).health_status = HealthStatus::Degraded as i32,
        ),
        (
            "load_assignment.endpoints[0].lb_endpoints[0].metadata.filter_metadata[\"envoy.lb\"]",
            Base::Static,
            |c| lb_endpoint(c).metadata = matching_metadata("envoy.lb"),
        ),
        (
            "load_assignment.endpoints[0].lb_endpoints[0].endpoint",
            Base::Static,
            |c| lb_endpoint(c).host_identifier = Some(HostIdentifier::EndpointName("e".into())),
        ),
        (
            "load_assignment.endpoints[0].lb_endpoints[0].endpoint.health_check_config",
            Base::Static,
            |c| {
                if let Some(HostIdentifier::Endpoint(ep)) = &mut lb_endpoint(c).host_identifier {
                    ep.health_check_config = Some(
                        envoy_types::pb::envoy::config::endpoint::v3::endpoint::HealthCheckConfig {
                            port_value: 9000,
                            ..Default::default()
                        },
                    );
                }
            },
        ),
        (
            "load_assignment.endpoints[0].lb_endpoints[0].endpoint.additional_addresses",
            Base::Static,
            |c| {
                if let Some(HostIdentifier::Endpoint(ep)) = &mut lb_endpoint(c).host_identifier {
                    ep.additional_addresses = vec![Default::default()];
                }
            },
        ),
    ];
    for (path, b, edit) in cases {
        let mut c = base(*b);
        edit(&mut c);
        let e = decode(&c).expect_err(path);
        assert_eq!(e.name, c.name, "{path}");
        assert!(
            e.reason.starts_with(&format!("{path}: ")),
            "{path} ({b:?}): got {e}"
        );
    }
}

/// An EDS load assignment is checked like a static one, its paths rooted at the assignment.
#[test]
fn an_eds_assignment_is_refused_with_its_path() {
    let mut c = base(Base::Static);
    lb_endpoint(&mut c).health_status = HealthStatus::Timeout as i32;
    let mut cla = c.load_assignment.take().expect("cla");
    cla.cluster_name = "web".into();
    let e = decode_assignment(&pack_any(cla.clone())).expect_err("timeout status");
    assert_eq!(e.name, "web");
    assert!(
        e.reason
            .starts_with("endpoints[0].lb_endpoints[0].health_status: "),
        "{e}"
    );
    cla.endpoints[0].lb_endpoints[0].health_status = HealthStatus::Unknown as i32;
    let (name, endpoints) = decode_assignment(&pack_any(cla)).expect("unknown status");
    assert_eq!((name.as_str(), endpoints.len()), ("web", 1));
}
