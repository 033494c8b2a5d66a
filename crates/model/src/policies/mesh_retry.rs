//! MeshRetry (reference §2.3): retries of the selected proxies' outbound requests (`http`,
//! `grpc`, by the outbound's protocol) and connection attempts (`tcp`). Only `to` (Mesh or a
//! MeshService).

use serde::{Deserialize, Serialize};

use super::mesh_timeout::check_duration;
use super::{PolicyKind, TOP_LEVEL_KINDS, check_target_ref, to_items};
use crate::descriptor::ResourceType;
use crate::policy::{PolicySpec, Section, TargetRef, TargetRefKind};
use crate::validate::Violations;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshRetry {
    /// The client proxies configured; `{kind: Mesh}` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<RetryTo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryTo {
    pub target_ref: TargetRef,
    #[serde(default)]
    pub default: RetryConf,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpRetry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRetry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcRetry>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpRetry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connect_attempt: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRetry {
    /// 0: no retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back_off: Option<BackOff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limited_back_off: Option<RateLimitedBackOff>,
    /// `5xx`, `GatewayError`, …, a status code (`"503"`), or `HttpMethod<Name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retriable_response_headers: Option<Vec<HeaderMatcher>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retriable_request_headers: Option<Vec<HeaderMatcher>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_selection: Option<Vec<HostSelection>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_selection_max_attempts: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcRetry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back_off: Option<BackOff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limited_back_off: Option<RateLimitedBackOff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<GrpcRetryOn>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackOff {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitedBackOff {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_headers: Option<Vec<ResetHeader>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResetHeader {
    pub name: String,
    pub format: ResetFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResetFormat {
    Seconds,
    UnixTimestamp,
}

/// Kuma's shared `HeaderMatch` (the one MeshHTTPRoute matches with).
pub use super::mesh_http_route::{HeaderMatch as HeaderMatcher, HeaderMatchType};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostSelection {
    pub predicate: HostPredicate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<crate::specs::Tags>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_frequency: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostPredicate {
    OmitPreviousHosts,
    OmitHostsWithTags,
    OmitPreviousPriorities,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GrpcRetryOn {
    Canceled,
    DeadlineExceeded,
    Internal,
    ResourceExhausted,
    Unavailable,
}

impl GrpcRetryOn {
    /// Envoy's `retry_on` word.
    pub fn envoy(self) -> &'static str {
        match self {
            GrpcRetryOn::Canceled => "cancelled",
            GrpcRetryOn::DeadlineExceeded => "deadline-exceeded",
            GrpcRetryOn::Internal => "internal",
            GrpcRetryOn::ResourceExhausted => "resource-exhausted",
            GrpcRetryOn::Unavailable => "unavailable",
        }
    }
}

/// What one `http.retryOn` entry means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpRetryOn {
    /// An Envoy `retry_on` condition.
    Condition(&'static str),
    /// A status code (`retriable_status_codes`).
    Status(u32),
    /// `HttpMethod<Name>`: a `:method` exact match in `retriable_request_headers`.
    Method(&'static str),
}

const HTTP_CONDITIONS: [(&str, &str); 8] = [
    ("5xx", "5xx"),
    ("GatewayError", "gateway-error"),
    ("Reset", "reset"),
    ("Retriable4xx", "retriable-4xx"),
    ("ConnectFailure", "connect-failure"),
    ("EnvoyRatelimited", "envoy-ratelimited"),
    ("RefusedStream", "refused-stream"),
    ("Http3PostConnectFailure", "http3-post-connect-failure"),
];

const METHODS: [&str; 9] = [
    "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE",
];

/// Parses one `http.retryOn` entry; `None` when it is none of Kuma's values.
pub fn http_retry_on(s: &str) -> Option<HttpRetryOn> {
    if let Some((_, envoy)) = HTTP_CONDITIONS.iter().find(|(k, _)| *k == s) {
        return Some(HttpRetryOn::Condition(envoy));
    }
    if let Some(m) = s.strip_prefix("HttpMethod") {
        // Kuma spells them `HttpMethodGet`, `HttpMethodPost`, …
        return METHODS
            .iter()
            .find(|x| format!("{}{}", &x[..1], x[1..].to_ascii_lowercase()) == m)
            .map(|x| HttpRetryOn::Method(x));
    }
    match s.parse::<u32>() {
        Ok(code) if (100..=599).contains(&code) => Some(HttpRetryOn::Status(code)),
        _ => None,
    }
}

const TO_KINDS: [TargetRefKind; 2] = [TargetRefKind::Mesh, TargetRefKind::MeshService];

/// The name of the MeshRetry created with a mesh.
pub fn default_name(mesh: &str) -> String {
    format!("mesh-retry-all-{mesh}")
}

impl MeshRetry {
    /// Kuma's `mesh-retry-all-<mesh>` (`pkg/defaults/mesh/meshretry.go`): TCP 5 connect
    /// attempts; HTTP and gRPC 5 retries, 16s per try, back-off 25ms..250ms.
    pub fn mesh_default() -> Self {
        let back_off = || {
            Some(BackOff {
                base_interval: Some("25ms".into()),
                max_interval: Some("250ms".into()),
            })
        };
        MeshRetry {
            target_ref: Some(TargetRef::mesh()),
            to: vec![RetryTo {
                target_ref: TargetRef::mesh(),
                default: RetryConf {
                    tcp: Some(TcpRetry {
                        max_connect_attempt: Some(5),
                    }),
                    http: Some(HttpRetry {
                        num_retries: Some(5),
                        per_try_timeout: Some("16s".into()),
                        back_off: back_off(),
                        ..Default::default()
                    }),
                    grpc: Some(GrpcRetry {
                        num_retries: Some(5),
                        per_try_timeout: Some("16s".into()),
                        back_off: back_off(),
                        ..Default::default()
                    }),
                },
            }],
        }
    }
}

fn check_back_off(b: Option<&BackOff>, path: &str, v: &mut Violations) {
    let Some(b) = b else { return };
    check_duration(
        b.base_interval.as_ref(),
        &format!("{path}.baseInterval"),
        true,
        v,
    );
    check_duration(
        b.max_interval.as_ref(),
        &format!("{path}.maxInterval"),
        true,
        v,
    );
    let parsed = |s: &Option<String>| s.as_deref().and_then(super::duration::parse_non_negative);
    if let (Some(base), Some(max)) = (parsed(&b.base_interval), parsed(&b.max_interval))
        && max < base
    {
        v.push(
            format!("{path}.maxInterval"),
            "must be greater than or equal to baseInterval",
        );
    }
}

fn check_rate_limited(r: Option<&RateLimitedBackOff>, path: &str, v: &mut Violations) {
    let Some(r) = r else { return };
    check_duration(
        r.max_interval.as_ref(),
        &format!("{path}.maxInterval"),
        true,
        v,
    );
    for (i, h) in r.reset_headers.iter().flatten().enumerate() {
        if h.name.is_empty() {
            v.push(
                format!("{path}.resetHeaders[{i}].name"),
                "must not be empty",
            );
        }
    }
}

fn check_headers(headers: Option<&Vec<HeaderMatcher>>, path: &str, v: &mut Violations) {
    for (i, h) in headers.into_iter().flatten().enumerate() {
        super::mesh_http_route::check_header_match(h, &format!("{path}[{i}]"), v);
    }
}

fn check_http(h: &HttpRetry, path: &str, v: &mut Violations) {
    check_duration(
        h.per_try_timeout.as_ref(),
        &format!("{path}.perTryTimeout"),
        true,
        v,
    );
    check_back_off(h.back_off.as_ref(), &format!("{path}.backOff"), v);
    check_rate_limited(
        h.rate_limited_back_off.as_ref(),
        &format!("{path}.rateLimitedBackOff"),
        v,
    );
    for (i, r) in h.retry_on.iter().flatten().enumerate() {
        if http_retry_on(r).is_none() {
            v.push(
                format!("{path}.retryOn[{i}]"),
                format!("{r:?} is not a retry condition: one of 5xx, GatewayError, Reset, Retriable4xx, ConnectFailure, EnvoyRatelimited, RefusedStream, Http3PostConnectFailure, HttpMethod<Name>, or a status code 100-599"),
            );
        }
    }
    check_headers(
        h.retriable_response_headers.as_ref(),
        &format!("{path}.retriableResponseHeaders"),
        v,
    );
    check_headers(
        h.retriable_request_headers.as_ref(),
        &format!("{path}.retriableRequestHeaders"),
        v,
    );
    for (i, s) in h.host_selection.iter().flatten().enumerate() {
        let at = format!("{path}.hostSelection[{i}]");
        match s.predicate {
            HostPredicate::OmitHostsWithTags if s.tags.as_ref().is_none_or(|t| t.is_empty()) => {
                v.push(format!("{at}.tags"), "must be set for OmitHostsWithTags")
            }
            HostPredicate::OmitPreviousPriorities if s.update_frequency.is_none_or(|f| f <= 0) => v
                .push(
                    format!("{at}.updateFrequency"),
                    "must be greater than 0 for OmitPreviousPriorities",
                ),
            _ => {}
        }
    }
    if h.host_selection_max_attempts.is_some_and(|n| n < 0) {
        v.push(
            format!("{path}.hostSelectionMaxAttempts"),
            "must not be negative",
        );
    }
}

fn check_grpc(g: &GrpcRetry, path: &str, v: &mut Violations) {
    check_duration(
        g.per_try_timeout.as_ref(),
        &format!("{path}.perTryTimeout"),
        true,
        v,
    );
    check_back_off(g.back_off.as_ref(), &format!("{path}.backOff"), v);
    check_rate_limited(
        g.rate_limited_back_off.as_ref(),
        &format!("{path}.rateLimitedBackOff"),
        v,
    );
}

impl PolicyKind for MeshRetry {
    const TYPE: ResourceType = ResourceType::MeshRetry;

    fn validate(&self, v: &mut Violations) {
        if let Some(tr) = &self.target_ref {
            check_target_ref(
                tr,
                Section::TopLevel,
                &TOP_LEVEL_KINDS,
                Self::TYPE,
                "spec.targetRef",
                v,
            );
        }
        if self.to.is_empty() {
            v.push("spec.to", "needs at least one item");
        }
        for (i, item) in self.to.iter().enumerate() {
            let path = format!("spec.to[{i}]");
            check_target_ref(
                &item.target_ref,
                Section::To,
                &TO_KINDS,
                Self::TYPE,
                &format!("{path}.targetRef"),
                v,
            );
            let conf = &item.default;
            let path = format!("{path}.default");
            if conf.tcp.is_none() && conf.http.is_none() && conf.grpc.is_none() {
                v.push(
                    path.clone(),
                    "at least one of 'tcp', 'http', 'grpc' must be set",
                );
            }
            if let Some(tcp) = &conf.tcp
                && tcp.max_connect_attempt == Some(0)
            {
                v.push(
                    format!("{path}.tcp.maxConnectAttempt"),
                    "must be greater than 0",
                );
            }
            if let Some(http) = &conf.http {
                check_http(http, &format!("{path}.http"), v);
            }
            if let Some(grpc) = &conf.grpc {
                check_grpc(grpc, &format!("{path}.grpc"), v);
            }
        }
    }

    fn to_engine(&self) -> PolicySpec {
        PolicySpec {
            target_ref: self.target_ref.clone(),
            to: to_items(self.to.iter().map(|t| (&t.target_ref, &t.default))),
            ..PolicySpec::default()
        }
    }
}
