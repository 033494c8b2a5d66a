//! MeshRetry's configurer (Kuma plugin order 1400; fact sheet §2.3). An outbound whose
//! service has a `to` rule gets, by what its listener runs: for an HTTP connection manager,
//! `retry_policy` on every route from the `http` section (the `grpc` one for
//! `kuma.io/protocol: grpc`); for a TCP proxy, `max_connect_attempts` from `tcp`. `numRetries: 0`
//! generates no retry policy. `retryOn` maps to Envoy's words, status codes and methods, with
//! Kuma's defaults when unset.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::retry_policy::{
    RateLimitedRetryBackOff, ResetHeader as RateLimitedResetHeader, ResetHeaderFormat,
    RetryBackOff, RetryHostPredicate, RetryPriority,
    retry_host_predicate::ConfigType as PredicateConfig,
    retry_priority::ConfigType as PriorityConfig,
};
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, RetryPolicy};
use envoy_types::pb::envoy::extensions::retry::host::omit_host_metadata::v3::OmitHostMetadataConfig;
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher};
use envoy_types::pb::google::protobuf::{Struct, UInt32Value, Value as PbValue, value::Kind};
use envoy_types::util::pack_any;
use meshzone_model::policies::mesh_retry::{
    self, BackOff, GrpcRetry, HeaderMatchType, HostPredicate, HttpRetry, HttpRetryOn,
    RateLimitedBackOff, ResetFormat, RetryConf,
};

use super::filters::{NetFilter, duration_or, edit_filters, pb, route_actions, typed};
use crate::generate::{ListenerOrigin, ProxyInput, Resources};

/// `retry_on` when an `http` section leaves `retryOn` unset.
pub const HTTP_DEFAULT_RETRY_ON: &str = "gateway-error,connect-failure,refused-stream";
/// `retry_on` when a `grpc` section leaves `retryOn` unset.
pub const GRPC_DEFAULT_RETRY_ON: &str =
    "cancelled,connect-failure,gateway-error,refused-stream,reset,resource-exhausted,unavailable";

const DEFAULT_BASE: Duration = Duration::from_millis(25);

fn back_off(b: Option<&BackOff>) -> Option<RetryBackOff> {
    let b = b?;
    let base = duration_or(b.base_interval.as_ref(), DEFAULT_BASE);
    Some(RetryBackOff {
        base_interval: Some(pb(base)),
        max_interval: b
            .max_interval
            .as_ref()
            .map(|m| pb(duration_or(Some(m), base * 10))),
    })
}

fn rate_limited(r: Option<&RateLimitedBackOff>) -> Option<RateLimitedRetryBackOff> {
    let r = r?;
    Some(RateLimitedRetryBackOff {
        reset_headers: r
            .reset_headers
            .iter()
            .flatten()
            .map(|h| RateLimitedResetHeader {
                name: h.name.clone(),
                format: match h.format {
                    ResetFormat::Seconds => ResetHeaderFormat::Seconds,
                    ResetFormat::UnixTimestamp => ResetHeaderFormat::UnixTimestamp,
                } as i32,
            })
            .collect(),
        max_interval: r
            .max_interval
            .as_ref()
            .map(|m| pb(duration_or(Some(m), Duration::from_secs(300)))),
    })
}

fn exact(value: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(MatchPattern::Exact(value.to_string())),
        ..Default::default()
    }
}

fn header_matcher(h: &mesh_retry::HeaderMatcher) -> HeaderMatcher {
    let value = h.value.clone().unwrap_or_default();
    let (specifier, invert) = match h.match_type.unwrap_or(HeaderMatchType::Exact) {
        HeaderMatchType::Exact => (HeaderMatchSpecifier::StringMatch(exact(&value)), false),
        HeaderMatchType::Prefix => (
            HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::Prefix(value)),
                ..Default::default()
            }),
            false,
        ),
        HeaderMatchType::RegularExpression => (
            HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::SafeRegex(RegexMatcher {
                    regex: value,
                    ..Default::default()
                })),
                ..Default::default()
            }),
            false,
        ),
        HeaderMatchType::Present => (HeaderMatchSpecifier::PresentMatch(true), false),
        HeaderMatchType::Absent => (HeaderMatchSpecifier::PresentMatch(true), true),
    };
    HeaderMatcher {
        name: h.name.clone(),
        header_match_specifier: Some(specifier),
        invert_match: invert,
        ..Default::default()
    }
}

fn typed_extension<T: prost::Name>(name: &str, config: T) -> TypedExtensionConfig {
    TypedExtensionConfig {
        name: name.to_string(),
        typed_config: Some(pack_any(config)),
    }
}

/// The retry policy of an `http` section; `None` for `numRetries: 0`.
pub(crate) fn http_policy(h: &HttpRetry) -> Option<RetryPolicy> {
    if h.num_retries == Some(0) {
        return None;
    }
    let mut on: Vec<&str> = Vec::new();
    let mut codes = Vec::new();
    let mut methods = Vec::new();
    for entry in h.retry_on.iter().flatten() {
        match mesh_retry::http_retry_on(entry) {
            Some(HttpRetryOn::Condition(c)) => on.push(c),
            Some(HttpRetryOn::Status(code)) => codes.push(code),
            Some(HttpRetryOn::Method(m)) => methods.push(m),
            None => {}
        }
    }
    if !codes.is_empty() {
        on.push("retriable-status-codes");
    }
    let retry_on = match &h.retry_on {
        None => HTTP_DEFAULT_RETRY_ON.to_string(),
        Some(_) => on.join(","),
    };
    let mut request_headers: Vec<HeaderMatcher> = methods
        .iter()
        .map(|m| HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(exact(m))),
            ..Default::default()
        })
        .collect();
    request_headers.extend(
        h.retriable_request_headers
            .iter()
            .flatten()
            .map(header_matcher),
    );
    let mut predicates = Vec::new();
    let mut priority = None;
    for s in h.host_selection.iter().flatten() {
        match s.predicate {
            HostPredicate::OmitPreviousHosts => predicates.push(RetryHostPredicate {
                name: "envoy.retry_host_predicates.previous_hosts".into(),
                config_type: Some(PredicateConfig::TypedConfig(pack_any(
                    PreviousHostsPredicate::default(),
                ))),
            }),
            HostPredicate::OmitHostsWithTags => {
                let fields = s
                    .tags
                    .iter()
                    .flatten()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            PbValue {
                                kind: Some(Kind::StringValue(v.clone())),
                            },
                        )
                    })
                    .collect();
                predicates.push(RetryHostPredicate {
                    name: "envoy.retry_host_predicates.omit_host_metadata".into(),
                    config_type: Some(PredicateConfig::TypedConfig(pack_any(
                        OmitHostMetadataConfig {
                            metadata_match: Some(Metadata {
                                filter_metadata: [("envoy.lb".to_string(), Struct { fields })]
                                    .into_iter()
                                    .collect(),
                                ..Default::default()
                            }),
                        },
                    ))),
                });
            }
            HostPredicate::OmitPreviousPriorities => {
                let e = typed_extension(
                    "envoy.retry_priorities.previous_priorities",
                    PreviousPrioritiesConfig {
                        update_frequency: s.update_frequency.unwrap_or(1).clamp(1, i32::MAX as i64)
                            as i32,
                    },
                );
                priority = Some(RetryPriority {
                    name: e.name,
                    config_type: e.typed_config.map(PriorityConfig::TypedConfig),
                });
            }
        }
    }
    Some(RetryPolicy {
        retry_on,
        num_retries: h.num_retries.map(|value| UInt32Value { value }),
        per_try_timeout: h
            .per_try_timeout
            .as_ref()
            .map(|d| pb(duration_or(Some(d), Duration::ZERO))),
        retry_back_off: back_off(h.back_off.as_ref()),
        rate_limited_retry_back_off: rate_limited(h.rate_limited_back_off.as_ref()),
        retriable_status_codes: codes,
        retriable_headers: h
            .retriable_response_headers
            .iter()
            .flatten()
            .map(header_matcher)
            .collect(),
        retriable_request_headers: request_headers,
        retry_host_predicate: predicates,
        retry_priority: priority,
        host_selection_retry_max_attempts: h.host_selection_max_attempts.unwrap_or(0),
        ..Default::default()
    })
}

/// The retry policy of a `grpc` section; `None` for `numRetries: 0`.
pub(crate) fn grpc_policy(g: &GrpcRetry) -> Option<RetryPolicy> {
    if g.num_retries == Some(0) {
        return None;
    }
    let retry_on = match &g.retry_on {
        None => GRPC_DEFAULT_RETRY_ON.to_string(),
        Some(on) => on.iter().map(|o| o.envoy()).collect::<Vec<_>>().join(","),
    };
    Some(RetryPolicy {
        retry_on,
        num_retries: g.num_retries.map(|value| UInt32Value { value }),
        per_try_timeout: g
            .per_try_timeout
            .as_ref()
            .map(|d| pb(duration_or(Some(d), Duration::ZERO))),
        retry_back_off: back_off(g.back_off.as_ref()),
        rate_limited_retry_back_off: rate_limited(g.rate_limited_back_off.as_ref()),
        ..Default::default()
    })
}

pub(crate) fn configure(input: &ProxyInput<'_>, resources: &mut Resources) {
    for generated in &mut resources.listeners {
        let ListenerOrigin::Outbound { service } = &generated.origin else {
            continue;
        };
        let Some(rule) = input.policies.retry.to_rule(service) else {
            continue;
        };
        let Some(conf) = typed::<RetryConf>(&rule.conf) else {
            continue;
        };
        let grpc = input.protocols.get(service).map(String::as_str) == Some("grpc");
        let policy = if grpc {
            conf.grpc.as_ref().and_then(grpc_policy)
        } else {
            conf.http.as_ref().and_then(http_policy)
        };
        edit_filters(&mut generated.listener, |f| match f {
            NetFilter::Hcm(hcm) => {
                if let Some(policy) = &policy {
                    for action in route_actions(hcm) {
                        action.retry_policy = Some(policy.clone());
                    }
                }
            }
            NetFilter::Tcp(tcp) => {
                if let Some(n) = conf.tcp.as_ref().and_then(|t| t.max_connect_attempt) {
                    tcp.max_connect_attempts = Some(UInt32Value { value: n });
                }
            }
        });
    }
}
