//! Timeouts and retries as plans kuma-dp runs (MeshTimeout, MeshRetry): a cluster's connect
//! timeout and HTTP connection settings, a listener's request-headers timeout, a TCP proxy's
//! idle timeout and connect attempts, a route's request and stream-idle timeouts and its retry
//! policy. Envoy's defaults are made explicit here (an unset route timeout is 15 s, an unset
//! route idle timeout is the connection manager's 5 min, an unset TCP idle timeout is 1 h), so
//! kuma-dp does what Envoy would. Fields kuma-dp does not enforce are refused by name.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions as CommonOptions;
use envoy_types::pb::envoy::config::route::v3::{RetryPolicy, RouteAction};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use prost::Name;
use serde::Serialize;

use super::routes::{HeaderMatchPlan, header_match};

/// Envoy's route timeout when `timeout` is unset.
pub const ENVOY_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Envoy's connection manager `stream_idle_timeout` default (a route without `idle_timeout`).
pub const ENVOY_STREAM_IDLE: Duration = Duration::from_secs(300);
/// Envoy's `tcp_proxy.idle_timeout` default.
pub const ENVOY_TCP_IDLE: Duration = Duration::from_secs(3600);
/// Envoy's upstream HTTP connection idle timeout default.
pub const ENVOY_UPSTREAM_IDLE: Duration = Duration::from_secs(3600);
/// Envoy's `connect_timeout` default.
pub const ENVOY_CONNECT: Duration = Duration::from_secs(5);
/// Envoy's back-off base when a retry policy has none.
pub const ENVOY_RETRY_BASE: Duration = Duration::from_millis(25);

/// How connections to a cluster's endpoints are made and kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterTimeouts {
    pub connect: Duration,
    /// An idle pooled HTTP connection is closed after this.
    pub idle: Duration,
    /// An upstream HTTP stream (one try) lasting longer is reset (504); `None`: no limit.
    pub max_stream_duration: Option<Duration>,
    /// A pooled upstream HTTP connection older than this is not reused; `None`: no limit.
    pub max_connection_duration: Option<Duration>,
}

impl Default for ClusterTimeouts {
    fn default() -> Self {
        ClusterTimeouts {
            connect: ENVOY_CONNECT,
            idle: ENVOY_UPSTREAM_IDLE,
            max_stream_duration: None,
            max_connection_duration: None,
        }
    }
}

/// A listener's timeouts and a TCP proxy's connection attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerTimeouts {
    /// HTTP: the request headers must arrive within this (HTTP/1; `None`: no limit).
    pub request_headers: Option<Duration>,
    /// TCP: a connection with no bytes either way for this long is closed (`None`: never).
    pub tcp_idle: Option<Duration>,
    /// TCP: endpoints tried when connecting fails (at least 1).
    pub max_connect_attempts: u32,
}

impl Default for ListenerTimeouts {
    fn default() -> Self {
        ListenerTimeouts {
            request_headers: None,
            tcp_idle: Some(ENVOY_TCP_IDLE),
            max_connect_attempts: 1,
        }
    }
}

/// A route's request timeouts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteTimeouts {
    /// The whole request, retries included, must be answered (headers) within this; else 504
    /// `upstream request timeout`. `None`: no limit.
    pub request: Option<Duration>,
    /// No byte of the response for this long ends the stream. `None`: no limit.
    pub stream_idle: Option<Duration>,
}

impl Default for RouteTimeouts {
    fn default() -> Self {
        RouteTimeouts {
            request: Some(ENVOY_ROUTE_TIMEOUT),
            stream_idle: Some(ENVOY_STREAM_IDLE),
        }
    }
}

/// Which failures a retry policy retries (Envoy's `retry_on` words).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetryOn {
    pub status_5xx: bool,
    pub gateway_error: bool,
    pub reset: bool,
    pub connect_failure: bool,
    pub refused_stream: bool,
    pub retriable_4xx: bool,
    pub retriable_status_codes: bool,
    /// gRPC: the `grpc-status` of a headers-only answer.
    pub grpc_cancelled: bool,
    pub grpc_deadline_exceeded: bool,
    pub grpc_internal: bool,
    pub grpc_resource_exhausted: bool,
    pub grpc_unavailable: bool,
}

/// A route's retry policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryPlan {
    pub on: RetryOn,
    /// Retries after the first try.
    pub num_retries: u32,
    /// Each try must be answered within this (`None`: only the route timeout).
    pub per_try_timeout: Option<Duration>,
    /// Jittered exponential back-off between tries: `base * 2^n`, at most `max`.
    pub base_interval: Duration,
    pub max_interval: Duration,
    pub retriable_status_codes: Vec<u16>,
    /// Only requests matching one of these are retried (none: every request).
    pub retriable_request_headers: Vec<HeaderMatchPlan>,
    /// `previous_hosts`: a retry goes to an endpoint not tried yet while one is left.
    pub omit_previous_hosts: bool,
    /// `rate_limited_retry_back_off`: an answer carrying one of these headers sets the pause.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limited: Option<Box<RateLimitedBackOffPlan>>,
}

/// Envoy's `rate_limited_retry_back_off` (MeshRetry `rateLimitedBackOff`): the first of the
/// reset headers that parses, to an interval no longer than `max_interval`, is the pause before
/// the retry; without one the exponential back-off applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RateLimitedBackOffPlan {
    /// Header names (lower case), tried in order, with how each one's value reads.
    pub reset_headers: Vec<(String, ResetFormat)>,
    pub max_interval: Duration,
}

/// How a reset header's value reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ResetFormat {
    /// Seconds to wait (`Retry-After: 2`).
    Seconds,
    /// The Unix time (seconds) to wait until (`X-RateLimit-Reset: 1700000000`).
    UnixTimestamp,
}

/// Envoy's default `rate_limited_retry_back_off.max_interval`.
const ENVOY_RATE_LIMITED_MAX: Duration = Duration::from_secs(300);

fn rate_limited_back_off(
    r: &envoy_types::pb::envoy::config::route::v3::retry_policy::RateLimitedRetryBackOff,
    path: &str,
) -> Result<RateLimitedBackOffPlan, String> {
    use envoy_types::pb::envoy::config::route::v3::retry_policy::ResetHeaderFormat;
    if r.reset_headers.is_empty() {
        return Err(format!("{path}.reset_headers: at least one is required"));
    }
    let reset_headers = r
        .reset_headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            if h.name.is_empty() {
                return Err(format!("{path}.reset_headers[{i}].name: empty"));
            }
            let format = match ResetHeaderFormat::try_from(h.format) {
                Ok(ResetHeaderFormat::Seconds) => ResetFormat::Seconds,
                Ok(ResetHeaderFormat::UnixTimestamp) => ResetFormat::UnixTimestamp,
                Err(_) => {
                    return Err(format!(
                        "{path}.reset_headers[{i}].format: unknown value {}",
                        h.format
                    ));
                }
            };
            Ok((h.name.to_ascii_lowercase(), format))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let max_interval = match &r.max_interval {
        None => ENVOY_RATE_LIMITED_MAX,
        Some(d) => {
            let d = std_duration(d).map_err(|e| format!("{path}.max_interval: {e}"))?;
            if d.is_zero() {
                return Err(format!("{path}.max_interval: must be greater than 0"));
            }
            d
        }
    };
    Ok(RateLimitedBackOffPlan {
        reset_headers,
        max_interval,
    })
}

fn std_duration(d: &PbDuration) -> Result<Duration, String> {
    let secs = u64::try_from(d.seconds).map_err(|_| "negative duration".to_string())?;
    let nanos = u32::try_from(d.nanos).map_err(|_| "negative duration".to_string())?;
    Ok(Duration::new(secs, nanos))
}

/// `None` for 0 (Envoy: disabled), else the duration.
fn nonzero(d: &PbDuration, path: &str) -> Result<Option<Duration>, String> {
    let d = std_duration(d).map_err(|e| format!("{path}: {e}"))?;
    Ok((!d.is_zero()).then_some(d))
}

/// Takes a route action's `timeout`, `idle_timeout` and `retry_policy` out of `a`.
pub(crate) fn route_resilience(
    a: &mut RouteAction,
    path: &str,
) -> Result<(RouteTimeouts, Option<RetryPlan>), String> {
    let mut timeouts = RouteTimeouts::default();
    if let Some(t) = a.timeout.take() {
        timeouts.request = nonzero(&t, &format!("{path}.timeout"))?;
    }
    if let Some(t) = a.idle_timeout.take() {
        timeouts.stream_idle = nonzero(&t, &format!("{path}.idle_timeout"))?;
    }
    let retry = match a.retry_policy.take() {
        None => None,
        Some(p) => Some(retry_plan(&p, &format!("{path}.retry_policy"))?),
    };
    Ok((timeouts, retry))
}

fn retry_plan(p: &RetryPolicy, path: &str) -> Result<RetryPlan, String> {
    let mut rest = p.clone();
    let mut on = RetryOn::default();
    for word in std::mem::take(&mut rest.retry_on)
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
    {
        let flag = match word {
            "5xx" => &mut on.status_5xx,
            "gateway-error" => &mut on.gateway_error,
            "reset" => &mut on.reset,
            "connect-failure" => &mut on.connect_failure,
            "refused-stream" => &mut on.refused_stream,
            "retriable-4xx" => &mut on.retriable_4xx,
            "retriable-status-codes" => &mut on.retriable_status_codes,
            "cancelled" => &mut on.grpc_cancelled,
            "deadline-exceeded" => &mut on.grpc_deadline_exceeded,
            "internal" => &mut on.grpc_internal,
            "resource-exhausted" => &mut on.grpc_resource_exhausted,
            "unavailable" => &mut on.grpc_unavailable,
            other => {
                return Err(format!(
                    "{path}.retry_on: {other:?} is not enforced by kuma-dp"
                ));
            }
        };
        *flag = true;
    }
    let num_retries = rest.num_retries.take().map_or(1, |n| n.value);
    let per_try_timeout = match rest.per_try_timeout.take() {
        None => None,
        Some(t) => nonzero(&t, &format!("{path}.per_try_timeout"))?,
    };
    let (base_interval, max_interval) = match rest.retry_back_off.take() {
        None => (ENVOY_RETRY_BASE, ENVOY_RETRY_BASE * 10),
        Some(b) => {
            let base = match &b.base_interval {
                Some(d) => std_duration(d).map_err(|e| format!("{path}.retry_back_off: {e}"))?,
                None => ENVOY_RETRY_BASE,
            };
            let max = match &b.max_interval {
                Some(d) => std_duration(d).map_err(|e| format!("{path}.retry_back_off: {e}"))?,
                None => base * 10,
            };
            (base, max.max(base))
        }
    };
    let retriable_status_codes = std::mem::take(&mut rest.retriable_status_codes)
        .into_iter()
        .map(|c| u16::try_from(c).map_err(|_| format!("{path}.retriable_status_codes: {c}")))
        .collect::<Result<Vec<_>, _>>()?;
    let headers = std::mem::take(&mut rest.retriable_request_headers);
    let retriable_request_headers = headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_match(h, &format!("{path}.retriable_request_headers[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut omit_previous_hosts = false;
    for (i, pred) in std::mem::take(&mut rest.retry_host_predicate)
        .iter()
        .enumerate()
    {
        use envoy_types::pb::envoy::config::route::v3::retry_policy::retry_host_predicate::ConfigType;
        let Some(ConfigType::TypedConfig(typed)) = &pred.config_type else {
            return Err(format!(
                "{path}.retry_host_predicate[{i}]: without a typed config"
            ));
        };
        if typed.type_url == PreviousHostsPredicate::type_url() {
            omit_previous_hosts = true;
        } else {
            return Err(format!(
                "{path}.retry_host_predicate[{i}]: {} is not enforced by kuma-dp (only previous_hosts)",
                pred.name
            ));
        }
    }
    // Host selection is retried by kuma-dp's endpoint order itself.
    rest.host_selection_retry_max_attempts = 0;
    let rate_limited = match rest.rate_limited_retry_back_off.take() {
        None => None,
        Some(r) => Some(Box::new(rate_limited_back_off(
            &r,
            &format!("{path}.rate_limited_retry_back_off"),
        )?)),
    };
    let fields: [(&str, bool); 5] = [
        ("retry_priority", rest.retry_priority.is_some()),
        (
            "retry_options_predicates",
            !rest.retry_options_predicates.is_empty(),
        ),
        ("retriable_headers", !rest.retriable_headers.is_empty()),
        ("retry_on (none)", on == RetryOn::default()),
        ("per_try_idle_timeout", rest.per_try_idle_timeout.is_some()),
    ];
    if let Some((field, _)) = fields.iter().find(|(_, set)| *set) {
        return Err(if *field == "retry_on (none)" {
            format!("{path}.retry_on: empty; kuma-dp retries nothing then (omit the policy)")
        } else {
            format!("{path}.{field}: not enforced by kuma-dp")
        });
    }
    Ok(RetryPlan {
        on,
        num_retries,
        per_try_timeout,
        base_interval,
        max_interval,
        retriable_status_codes,
        retriable_request_headers,
        omit_previous_hosts,
        rate_limited,
    })
}

/// Takes an HTTP connection manager's `request_headers_timeout` and
/// `common_http_protocol_options` out of `hcm` (only a downstream idle timeout of 0, which is
/// kuma-dp's: it never closes an idle downstream connection).
pub(crate) fn hcm_resilience(
    hcm: &mut HttpConnectionManager,
    at: &str,
) -> Result<Option<Duration>, String> {
    if let Some(common) = hcm.common_http_protocol_options.take() {
        let zero_idle = CommonOptions {
            idle_timeout: Some(PbDuration::default()),
            ..Default::default()
        };
        if common != zero_idle && common != CommonOptions::default() {
            return Err(format!(
                "{at}.common_http_protocol_options: only idle_timeout 0 is enforced by kuma-dp"
            ));
        }
    }
    match hcm.request_headers_timeout.take() {
        None => Ok(None),
        Some(t) => nonzero(&t, &format!("{at}.request_headers_timeout")),
    }
}

/// Takes a TCP proxy's `idle_timeout` and `max_connect_attempts` out of `tcp`.
pub(crate) fn tcp_resilience(tcp: &mut TcpProxy, at: &str) -> Result<ListenerTimeouts, String> {
    let mut out = ListenerTimeouts::default();
    if let Some(t) = tcp.idle_timeout.take() {
        out.tcp_idle = nonzero(&t, &format!("{at}.idle_timeout"))?;
    }
    if let Some(n) = tcp.max_connect_attempts.take() {
        if n.value == 0 {
            return Err(format!("{at}.max_connect_attempts: must be at least 1"));
        }
        out.max_connect_attempts = n.value;
    }
    Ok(out)
}

/// A cluster's `connect_timeout`.
pub(crate) fn connect_timeout(d: Option<&PbDuration>) -> Result<Duration, String> {
    match d {
        None => Ok(ENVOY_CONNECT),
        Some(d) => {
            let d = std_duration(d).map_err(|e| format!("connect_timeout: {e}"))?;
            if d.is_zero() {
                return Err("connect_timeout: must be greater than 0".into());
            }
            Ok(d)
        }
    }
}

/// The common HTTP options of a cluster's `HttpProtocolOptions`: `idle_timeout` (0: never),
/// `max_stream_duration` and `max_connection_duration` (0: none); anything else is refused.
pub(crate) fn cluster_http_options(
    common: &CommonOptions,
    at: &str,
    timeouts: &mut ClusterTimeouts,
) -> Result<(), String> {
    let mut rest = *common;
    if let Some(d) = rest.idle_timeout.take() {
        // 0 disables Envoy's idle timeout; kuma-dp then keeps connections for a day.
        timeouts.idle =
            nonzero(&d, &format!("{at}.idle_timeout"))?.unwrap_or(Duration::from_secs(86_400));
    }
    if let Some(d) = rest.max_stream_duration.take() {
        timeouts.max_stream_duration = nonzero(&d, &format!("{at}.max_stream_duration"))?;
    }
    if let Some(d) = rest.max_connection_duration.take() {
        timeouts.max_connection_duration = nonzero(&d, &format!("{at}.max_connection_duration"))?;
    }
    if rest != CommonOptions::default() {
        return Err(format!(
            "{at}: only idle_timeout, max_stream_duration and max_connection_duration are enforced by kuma-dp"
        ));
    }
    Ok(())
}
