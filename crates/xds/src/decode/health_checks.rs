//! A cluster's active health check (`Cluster.health_checks`) as a plan kuma-dp runs: the timing
//! (timeout, interval and its special cases, jitters, thresholds) and one checker: HTTP (path,
//! host, method, expected and retriable statuses, headers, HTTP/1 or HTTP/2), TCP (send and
//! fuzzy-matched receive payloads) or gRPC (`grpc.health.v1.Health/Check`). Anything kuma-dp
//! would do differently from Envoy is refused with its field path.
//!
//! Passed, with why: `reuse_connection` (kuma-dp opens a fresh connection for every probe; the
//! verdicts are the same, only the number of connections differs) and
//! `always_log_health_check_failures` / `_success` (they only shape event logs, and event
//! logging is refused).

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::health_check::payload::Payload as PayloadKind;
use envoy_types::pb::envoy::config::core::v3::health_check::{
    GrpcHealthCheck, HealthChecker, HttpHealthCheck, Payload, TcpHealthCheck,
};
use envoy_types::pb::envoy::config::core::v3::{HealthCheck, RequestMethod};
use envoy_types::pb::envoy::r#type::v3::{CodecClientType, Int64Range};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use serde::Serialize;

use super::resilience::Refusal;
use super::routes::{HeaderModPlan, header_mods, refuse_rest};

/// Envoy's `no_traffic_interval` when unset.
pub const DEFAULT_NO_TRAFFIC_INTERVAL: Duration = Duration::from_secs(60);

/// One active health check of a cluster's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheckPlan {
    /// A probe not answered within this is a (network) failure.
    pub timeout: Duration,
    pub interval: Duration,
    /// Each wait is lengthened by a random amount below this …
    pub interval_jitter: Duration,
    /// … and below this percentage of the interval.
    pub interval_jitter_percent: u32,
    /// The first probe waits a random amount below this.
    pub initial_jitter: Duration,
    /// While the cluster has never had traffic (Envoy's default 60 s).
    pub no_traffic_interval: Duration,
    /// While the cluster has never had traffic and the probe passed (default: the above).
    pub no_traffic_healthy_interval: Option<Duration>,
    /// After a failed probe (default: `interval`).
    pub unhealthy_interval: Option<Duration>,
    /// After a failed probe of a healthy endpoint not yet at the threshold (default:
    /// `unhealthy_interval`).
    pub unhealthy_edge_interval: Option<Duration>,
    /// After a passed probe of an unhealthy endpoint not yet at the threshold (default:
    /// `interval`).
    pub healthy_edge_interval: Option<Duration>,
    /// Consecutive network failures (connect, timeout, reset) that make an endpoint unhealthy;
    /// any other failure (a wrong status, NOT_SERVING) does at once, as in Envoy.
    pub unhealthy_threshold: u32,
    /// Consecutive passed probes that make an unhealthy endpoint healthy again.
    pub healthy_threshold: u32,
    pub checker: CheckerPlan,
}

/// What a probe sends and expects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum CheckerPlan {
    Http(HttpCheckPlan),
    Tcp(TcpCheckPlan),
    Grpc(GrpcCheckPlan),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpCheckPlan {
    /// The `Host`/`:authority`; none: the cluster's name (Envoy's default).
    pub host: Option<String>,
    pub path: String,
    /// `GET` unless set.
    pub method: String,
    /// Half-open `[start, end)` ranges of healthy statuses (Envoy's default: 200 only).
    pub expected_statuses: Vec<(u16, u16)>,
    /// Statuses that count towards the unhealthy threshold instead of failing at once.
    pub retriable_statuses: Vec<(u16, u16)>,
    pub headers: HeaderModPlan,
    /// HTTP/2 with prior knowledge instead of HTTP/1.1.
    pub http2: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcpCheckPlan {
    /// Sent after connecting (empty: nothing).
    pub send: Vec<u8>,
    /// Each must be found in what is read, in order, not necessarily contiguous; none: a
    /// connection alone passes.
    pub receive: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrpcCheckPlan {
    /// `HealthCheckRequest.service` (empty: the server as a whole).
    pub service_name: String,
    /// The `:authority`; none: the cluster's name.
    pub authority: Option<String>,
    /// Request metadata to add.
    pub metadata: HeaderModPlan,
}

fn refuse(field: impl Into<String>, what: impl Into<String>) -> Refusal {
    (field.into(), what.into())
}

/// A header decoder's `path: what` message as a refusal.
fn split(e: String) -> Refusal {
    match e.split_once(": ") {
        Some((f, w)) => refuse(f, w),
        None => refuse("health_checks[0]", e),
    }
}

fn duration(d: &PbDuration, at: &str) -> Result<Duration, Refusal> {
    let secs = u64::try_from(d.seconds).map_err(|_| refuse(at, "must not be negative"))?;
    let nanos = u32::try_from(d.nanos).map_err(|_| refuse(at, "must not be negative"))?;
    Ok(Duration::new(secs, nanos))
}

fn positive(d: Option<PbDuration>, at: &str) -> Result<Option<Duration>, Refusal> {
    match d {
        None => Ok(None),
        Some(d) => match duration(&d, at)? {
            Duration::ZERO => Err(refuse(at, "must be greater than 0")),
            d => Ok(Some(d)),
        },
    }
}

fn threshold(v: Option<UInt32Value>, at: &str) -> Result<u32, Refusal> {
    match v {
        None => Err(refuse(at, "required")),
        Some(UInt32Value { value: 0 }) => Err(refuse(at, "must be at least 1")),
        Some(UInt32Value { value }) => Ok(value),
    }
}

/// The health check of a cluster: none, or exactly one.
pub(super) fn health_check(checks: &[HealthCheck]) -> Result<Option<HealthCheckPlan>, Refusal> {
    let check = match checks {
        [] => return Ok(None),
        [one] => one,
        _ => {
            return Err(refuse(
                "health_checks",
                format!("{} checks: kuma-dp runs one per cluster", checks.len()),
            ));
        }
    };
    let at = |f: &str| format!("health_checks[0].{f}");
    let mut rest = check.clone();
    let timeout = positive(rest.timeout.take(), &at("timeout"))?
        .ok_or_else(|| refuse(at("timeout"), "required"))?;
    let interval = positive(rest.interval.take(), &at("interval"))?
        .ok_or_else(|| refuse(at("interval"), "required"))?;
    let jitter = |d: Option<PbDuration>, f: &str| match d {
        None => Ok(Duration::ZERO),
        Some(d) => duration(&d, &at(f)),
    };
    let initial_jitter = jitter(rest.initial_jitter.take(), "initial_jitter")?;
    let interval_jitter = jitter(rest.interval_jitter.take(), "interval_jitter")?;
    let interval_jitter_percent = std::mem::take(&mut rest.interval_jitter_percent);
    let unhealthy_threshold =
        threshold(rest.unhealthy_threshold.take(), &at("unhealthy_threshold"))?;
    let healthy_threshold = threshold(rest.healthy_threshold.take(), &at("healthy_threshold"))?;
    let no_traffic_interval =
        positive(rest.no_traffic_interval.take(), &at("no_traffic_interval"))?
            .unwrap_or(DEFAULT_NO_TRAFFIC_INTERVAL);
    let no_traffic_healthy_interval = positive(
        rest.no_traffic_healthy_interval.take(),
        &at("no_traffic_healthy_interval"),
    )?;
    let unhealthy_interval = positive(rest.unhealthy_interval.take(), &at("unhealthy_interval"))?;
    let unhealthy_edge_interval = positive(
        rest.unhealthy_edge_interval.take(),
        &at("unhealthy_edge_interval"),
    )?;
    let healthy_edge_interval = positive(
        rest.healthy_edge_interval.take(),
        &at("healthy_edge_interval"),
    )?;
    rest.reuse_connection = None;
    rest.always_log_health_check_failures = false;
    rest.always_log_health_check_success = false;
    #[allow(deprecated)]
    let refused: [(&str, bool, &str); 6] = [
        (
            "alt_port",
            rest.alt_port.is_some(),
            "not enforced by kuma-dp",
        ),
        (
            "event_log_path",
            !rest.event_log_path.is_empty(),
            "health check event logs are not written by kuma-dp",
        ),
        (
            "event_logger",
            !rest.event_logger.is_empty(),
            "health check event logs are not written by kuma-dp",
        ),
        (
            "event_service",
            rest.event_service.is_some(),
            "not enforced by kuma-dp",
        ),
        (
            "tls_options",
            rest.tls_options.is_some(),
            "probes use the cluster's own TLS settings",
        ),
        (
            "transport_socket_match_criteria",
            rest.transport_socket_match_criteria.is_some(),
            "kuma-dp has one transport socket per cluster",
        ),
    ];
    if let Some((f, _, why)) = refused.iter().find(|(_, set, _)| *set) {
        return Err(refuse(at(f), *why));
    }
    let checker = match rest.health_checker.take() {
        None => return Err(refuse(at("health_checker"), "required")),
        Some(HealthChecker::HttpHealthCheck(h)) => {
            CheckerPlan::Http(http(h, &at("http_health_check"))?)
        }
        Some(HealthChecker::TcpHealthCheck(t)) => {
            CheckerPlan::Tcp(tcp(t, &at("tcp_health_check"))?)
        }
        Some(HealthChecker::GrpcHealthCheck(g)) => {
            CheckerPlan::Grpc(grpc(g, &at("grpc_health_check"))?)
        }
        Some(HealthChecker::CustomHealthCheck(_)) => {
            return Err(refuse(
                at("custom_health_check"),
                "only HTTP, TCP and gRPC checks are run by kuma-dp",
            ));
        }
    };
    refuse_rest(&rest, "health_checks[0]", "the ones above").map_err(split)?;
    Ok(Some(HealthCheckPlan {
        timeout,
        interval,
        interval_jitter,
        interval_jitter_percent,
        initial_jitter,
        no_traffic_interval,
        no_traffic_healthy_interval,
        unhealthy_interval,
        unhealthy_edge_interval,
        healthy_edge_interval,
        unhealthy_threshold,
        healthy_threshold,
        checker,
    }))
}

fn statuses(ranges: &[Int64Range], at: &str) -> Result<Vec<(u16, u16)>, Refusal> {
    ranges
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let ok = 100 <= r.start && r.start < r.end && r.end <= 600;
            if !ok {
                return Err(refuse(
                    format!("{at}[{i}]"),
                    format!(
                        "[{}, {}): must be a range within [100, 600)",
                        r.start, r.end
                    ),
                ));
            }
            // Within [100, 600], so both fit.
            Ok((r.start as u16, r.end as u16))
        })
        .collect()
}

fn http(h: HttpHealthCheck, at: &str) -> Result<HttpCheckPlan, Refusal> {
    let f = |x: &str| format!("{at}.{x}");
    let mut rest = h;
    let host = Some(std::mem::take(&mut rest.host)).filter(|h| !h.is_empty());
    let path = std::mem::take(&mut rest.path);
    if path.is_empty() {
        return Err(refuse(f("path"), "required"));
    }
    if rest.send.is_some() {
        return Err(refuse(f("send"), "kuma-dp's HTTP probe has no body"));
    }
    if !rest.receive.is_empty() {
        return Err(refuse(
            f("receive"),
            "kuma-dp's HTTP probe checks the status only",
        ));
    }
    // Only used with `receive`.
    rest.response_buffer_size = None;
    let headers = header_mods(
        &std::mem::take(&mut rest.request_headers_to_add),
        std::mem::take(&mut rest.request_headers_to_remove),
        &f("request_headers_to_add"),
    )
    .map_err(split)?;
    let expected = std::mem::take(&mut rest.expected_statuses);
    let expected_statuses = match statuses(&expected, &f("expected_statuses"))? {
        s if s.is_empty() => vec![(200, 201)],
        s => s,
    };
    let retriable_statuses = statuses(
        &std::mem::take(&mut rest.retriable_statuses),
        &f("retriable_statuses"),
    )?;
    let http2 = match CodecClientType::try_from(std::mem::take(&mut rest.codec_client_type)) {
        Ok(CodecClientType::Http1) => false,
        Ok(CodecClientType::Http2) => true,
        _ => {
            return Err(refuse(
                f("codec_client_type"),
                "only HTTP1 and HTTP2 are spoken by kuma-dp",
            ));
        }
    };
    if rest.service_name_matcher.is_some() {
        return Err(refuse(f("service_name_matcher"), "not enforced by kuma-dp"));
    }
    let method = match RequestMethod::try_from(std::mem::take(&mut rest.method)) {
        Ok(RequestMethod::MethodUnspecified) => "GET".to_string(),
        Ok(RequestMethod::Connect) | Err(_) => {
            return Err(refuse(f("method"), "not a method a health check can use"));
        }
        Ok(m) => m.as_str_name().to_string(),
    };
    refuse_rest(&rest, at, "the ones above").map_err(split)?;
    Ok(HttpCheckPlan {
        host,
        path,
        method,
        expected_statuses,
        retriable_statuses,
        headers,
        http2,
    })
}

/// A payload's bytes: `text` is hex (Envoy's encoding), `binary` raw.
fn payload(p: &Payload, at: &str) -> Result<Vec<u8>, Refusal> {
    match &p.payload {
        Some(PayloadKind::Binary(b)) => Ok(b.clone()),
        Some(PayloadKind::Text(t)) => hex(t).ok_or_else(|| refuse(at, "text must be hex digits")),
        None => Err(refuse(at, "a payload needs text or binary")),
    }
}

fn hex(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(s, 16).ok()
        })
        .collect()
}

fn tcp(t: TcpHealthCheck, at: &str) -> Result<TcpCheckPlan, Refusal> {
    if t.proxy_protocol_config.is_some() {
        return Err(refuse(
            format!("{at}.proxy_protocol_config"),
            "not enforced by kuma-dp",
        ));
    }
    let send = match &t.send {
        None => Vec::new(),
        Some(p) => payload(p, &format!("{at}.send"))?,
    };
    let receive = t
        .receive
        .iter()
        .enumerate()
        .map(|(i, p)| payload(p, &format!("{at}.receive[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(TcpCheckPlan { send, receive })
}

fn grpc(g: GrpcHealthCheck, at: &str) -> Result<GrpcCheckPlan, Refusal> {
    let mut rest = g;
    let service_name = std::mem::take(&mut rest.service_name);
    let authority = Some(std::mem::take(&mut rest.authority)).filter(|a| !a.is_empty());
    let metadata = header_mods(
        &std::mem::take(&mut rest.initial_metadata),
        Vec::new(),
        &format!("{at}.initial_metadata"),
    )
    .map_err(split)?;
    refuse_rest(&rest, at, "service_name, authority, initial_metadata").map_err(split)?;
    Ok(GrpcCheckPlan {
        service_name,
        authority,
        metadata,
    })
}

#[cfg(test)]
mod tests;
