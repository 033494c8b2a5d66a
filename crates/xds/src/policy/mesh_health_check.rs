//! MeshHealthCheck's configurer (Kuma plugin order 1200), fact sheet §2.4: every outbound
//! cluster (a service's own and its route subsets) whose service has a `health_check` rule
//! gets one `health_checks[]` entry: the timing fields (Kuma's defaults: interval 1m, timeout
//! 15s, unhealthy threshold 5, healthy threshold 1) and the check for the outbound's protocol
//! (`check_kind`): `http_health_check` (path, expected statuses as `[s, s+1)` ranges, request
//! headers, HTTP/2 codec for http2), `grpc_health_check` (service name, authority) or
//! `tcp_health_check` (send and receive as hex text). The check runs over the cluster's own
//! transport socket, so it carries the cluster's SNI and a zone ingress routes it to an
//! instance behind it. `failTrafficOnPanic` and `healthyPanicThreshold` go to
//! `common_lb_config` (MeshCircuitBreaker, later in the order, may override the threshold).

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::common_lb_config::{
    LocalityConfigSpecifier, ZoneAwareLbConfig,
};
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::health_check::payload::Payload as PayloadKind;
use envoy_types::pb::envoy::config::core::v3::health_check::{
    GrpcHealthCheck, HealthChecker, HttpHealthCheck, Payload, TcpHealthCheck,
};
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, HealthCheck, TypedExtensionConfig,
};
use envoy_types::pb::envoy::extensions::health_check::event_sinks::file::v3::HealthCheckEventFileSink;
use envoy_types::pb::envoy::r#type::v3::{CodecClientType, Int64Range};
use envoy_types::pb::google::protobuf::{BoolValue, Duration, UInt32Value};
use envoy_types::util::pack_any;
use serde_json::Value;

use super::resilience::{duration, for_each_outbound_cluster, panic_threshold, u32_at};
use crate::generate::common::{Protocol, protocol};
use crate::generate::{ProxyInput, Resources};

/// Which check runs for an outbound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CheckKind {
    Http,
    Grpc,
    Tcp,
}

fn enabled<'a>(conf: &'a Value, kind: &str) -> Option<&'a Value> {
    conf.get(kind)
        .filter(|k| k.is_object())
        .filter(|k| k.get("disabled").and_then(Value::as_bool) != Some(true))
}

/// Kuma's `selectHealthCheckType`: HTTP for an http/http2 outbound with `http`, gRPC for a
/// grpc one with `grpc`, otherwise TCP when `tcp` is given and not disabled.
pub(crate) fn check_kind(conf: &Value, protocol_tag: Option<&str>) -> Option<CheckKind> {
    match protocol_tag {
        Some("http" | "http2") if enabled(conf, "http").is_some() => {
            return Some(CheckKind::Http);
        }
        Some("grpc") if enabled(conf, "grpc").is_some() => return Some(CheckKind::Grpc),
        _ => {}
    }
    enabled(conf, "tcp").map(|_| CheckKind::Tcp)
}

fn secs(seconds: i64) -> Option<Duration> {
    Some(Duration { seconds, nanos: 0 })
}

/// Upper-case hex of a text, Envoy's `Payload.text`.
fn hex(text: &str) -> Payload {
    Payload {
        payload: Some(PayloadKind::Text(
            text.bytes().map(|b| format!("{b:02X}")).collect(),
        )),
    }
}

fn headers(http: &Value) -> Vec<HeaderValueOption> {
    let mut out = Vec::new();
    let Some(h) = http.get("requestHeadersToAdd") else {
        return out;
    };
    for (list, action) in [
        ("set", HeaderAppendAction::OverwriteIfExistsOrAdd),
        ("add", HeaderAppendAction::AppendIfExistsOrAdd),
    ] {
        for header in h.get(list).and_then(Value::as_array).into_iter().flatten() {
            let (Some(key), Some(value)) = (
                header.get("name").and_then(Value::as_str),
                header.get("value").and_then(Value::as_str),
            ) else {
                continue;
            };
            out.push(HeaderValueOption {
                header: Some(HeaderValue {
                    key: key.to_string(),
                    value: value.to_string(),
                    ..Default::default()
                }),
                append_action: action as i32,
                ..Default::default()
            });
        }
    }
    out
}

fn checker(conf: &Value, kind: CheckKind, protocol: Protocol) -> HealthChecker {
    match kind {
        CheckKind::Http => {
            let http = enabled(conf, "http").unwrap_or(&Value::Null);
            HealthChecker::HttpHealthCheck(HttpHealthCheck {
                path: http
                    .get("path")
                    .and_then(Value::as_str)
                    .unwrap_or("/")
                    .to_string(),
                expected_statuses: http
                    .get("expectedStatuses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_i64)
                    .map(|s| Int64Range {
                        start: s,
                        end: s + 1,
                    })
                    .collect(),
                request_headers_to_add: headers(http),
                codec_client_type: if protocol == Protocol::Http2 {
                    CodecClientType::Http2 as i32
                } else {
                    CodecClientType::Http1 as i32
                },
                ..Default::default()
            })
        }
        CheckKind::Grpc => {
            let grpc = enabled(conf, "grpc").unwrap_or(&Value::Null);
            let s = |f: &str| {
                grpc.get(f)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            HealthChecker::GrpcHealthCheck(GrpcHealthCheck {
                service_name: s("serviceName"),
                authority: s("authority"),
                ..Default::default()
            })
        }
        CheckKind::Tcp => {
            let tcp = enabled(conf, "tcp").unwrap_or(&Value::Null);
            HealthChecker::TcpHealthCheck(TcpHealthCheck {
                send: tcp.get("send").and_then(Value::as_str).map(hex),
                receive: tcp
                    .get("receive")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(hex)
                    .collect(),
                ..Default::default()
            })
        }
    }
}

/// The health check of a conf for an outbound speaking `protocol`; `None` when no kind applies.
pub(crate) fn health_check(conf: &Value, protocol_tag: Option<&str>) -> Option<HealthCheck> {
    let kind = check_kind(conf, protocol_tag)?;
    let protocol = protocol(protocol_tag);
    let d = |f: &str, default: Option<Duration>| conf.get(f).and_then(duration).or(default);
    let n = |f: &str, default: u32| {
        Some(UInt32Value {
            value: u32_at(conf, f).unwrap_or(default),
        })
    };
    Some(HealthCheck {
        interval: d("interval", secs(60)),
        timeout: d("timeout", secs(15)),
        initial_jitter: d("initialJitter", None),
        interval_jitter: d("intervalJitter", None),
        interval_jitter_percent: u32_at(conf, "intervalJitterPercent").unwrap_or(0),
        unhealthy_threshold: n("unhealthyThreshold", 5),
        healthy_threshold: n("healthyThreshold", 1),
        no_traffic_interval: d("noTrafficInterval", None),
        reuse_connection: conf
            .get("reuseConnection")
            .and_then(Value::as_bool)
            .map(|value| BoolValue { value }),
        always_log_health_check_failures: conf
            .get("alwaysLogHealthCheckFailures")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        event_logger: conf
            .get("eventLogPath")
            .and_then(Value::as_str)
            .map(|path| TypedExtensionConfig {
                name: "envoy.health_check.event_sinks.file".into(),
                typed_config: Some(pack_any(HealthCheckEventFileSink {
                    event_log_path: path.to_string(),
                })),
            })
            .into_iter()
            .collect(),
        health_checker: Some(checker(conf, kind, protocol)),
        ..Default::default()
    })
}

fn apply(conf: &Value, protocol_tag: Option<&str>, cluster: &mut Cluster) {
    let Some(check) = health_check(conf, protocol_tag) else {
        return;
    };
    cluster.health_checks.push(check);
    apply_panic(conf, cluster);
}

/// `healthyPanicThreshold` and `failTrafficOnPanic` of a conf, on the cluster that checks.
pub(crate) fn apply_panic(conf: &Value, cluster: &mut Cluster) {
    if let Some(p) = conf.get("healthyPanicThreshold").and_then(panic_threshold) {
        cluster
            .common_lb_config
            .get_or_insert_default()
            .healthy_panic_threshold = Some(p);
    }
    if conf.get("failTrafficOnPanic").and_then(Value::as_bool) == Some(true) {
        cluster
            .common_lb_config
            .get_or_insert_default()
            .locality_config_specifier = Some(LocalityConfigSpecifier::ZoneAwareLbConfig(
            ZoneAwareLbConfig {
                fail_traffic_on_panic: true,
                ..Default::default()
            },
        ));
    }
}

pub(crate) fn configure(input: &ProxyInput<'_>, resources: &mut Resources) {
    for_each_outbound_cluster(resources, |service, cluster| {
        if let Some(rule) = input.policies.health_check.to_rule(service) {
            let tag = input.protocols.get(service).map(String::as_str);
            apply(&rule.conf, tag, cluster);
        }
    });
}
