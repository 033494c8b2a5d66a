//! The inbound HTTP filters of MeshFaultInjection and MeshRateLimit, and the network
//! connection limit, as plans kuma-dp enforces (`policy::inbound_http` explains the caller
//! header). Only the shapes kuma-dp evaluates are accepted; any other field is a decode error
//! naming it, so the control plane gets a NACK instead of a proxy that ignores a fault or a
//! limit.
//!
//! - `header_mutation`: exactly one request mutation writing a header to
//!   `,%DOWNSTREAM_PEER_URI_SAN%,` (overwrite) → [`InboundHttpPlan::caller_header`].
//! - `fault`: abort by HTTP status, fixed delay, fixed response rate limit, each with a
//!   percentage; `headers` only `contains` string matches (treating a missing header as empty).
//! - `local_ratelimit` (HTTP): the filter-level config only names its `stat_prefix`; the limit
//!   is the per-route config of a single-route table (a bucket per route, as Envoy keeps it),
//!   enabled and enforced for 100 %.
//! - `local_ratelimit` (network): `stat_prefix` and a token bucket.

#![allow(deprecated)] // the deprecated `append` is named so that it can be refused

use std::time::Duration;

use envoy_types::pb::envoy::config::common::mutation_rules::v3::header_mutation::Action as MutationAction;
use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_rate_limit::LimitType;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
use envoy_types::pb::envoy::extensions::filters::http::header_mutation::v3::HeaderMutation;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit as HttpLocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::local_ratelimit::v3::LocalRateLimit as NetworkLocalRateLimit;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, TokenBucket};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use serde::Serialize;

use super::routes::{HeaderModPlan, header_mods, refuse_rest};
use super::unpack;
use crate::policy::inbound_http::CALLER_HEADER_VALUE;

/// What an inbound HTTP connection manager does to each request before routing it, in this
/// order: write the caller header, run the faults, take a rate-limit token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InboundHttpPlan {
    /// The HTTP connection manager's `stat_prefix` (faults count `http.<it>.fault.*`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stat_prefix: String,
    /// The header set to `,<peer URI SAN>,…,` (`,,` without a certificate), replacing the
    /// client's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller_header: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<FaultPlan>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<HttpRateLimitPlan>,
}

impl InboundHttpPlan {
    pub fn is_empty(&self) -> bool {
        self.caller_header.is_none() && self.faults.is_empty() && self.rate_limit.is_none()
    }
}

/// One fault filter: for requests whose headers all match, each fault at its share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultPlan {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderContains>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<Injected<Duration>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort: Option<Injected<u16>>,
    /// The response body's rate in KiB/s (Envoy's `limit_kbps`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_kib_per_second: Option<Injected<u64>>,
}

/// A fault's value and the share of matching requests it hits, per million.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Injected<T> {
    pub value: T,
    pub per_million: u32,
}

/// A request header that must (or, `invert`, must not) contain `contains`; a missing header
/// counts as empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderContains {
    pub name: String,
    pub contains: String,
    pub invert: bool,
}

impl HeaderContains {
    pub fn matches(&self, value: Option<&str>) -> bool {
        value.unwrap_or("").contains(&self.contains) != self.invert
    }
}

/// `max_tokens`, refilled by `tokens_per_fill` every `fill_interval`; starts full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TokenBucketPlan {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_interval: Duration,
}

/// An HTTP local rate limit: a request without a token is answered `status` with body
/// `local_rate_limited` and `response_headers`; counted under
/// `<stat_prefix>.http_local_rate_limit.{enabled,enforced,rate_limited,ok}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpRateLimitPlan {
    pub stat_prefix: String,
    pub bucket: TokenBucketPlan,
    pub status: u16,
    #[serde(skip_serializing_if = "HeaderModPlan::is_empty")]
    pub response_headers: HeaderModPlan,
}

/// A connection limit: a connection without a token is closed at once; counted under
/// `local_ratelimit.<stat_prefix>.rate_limited`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionLimitPlan {
    pub stat_prefix: String,
    pub bucket: TokenBucketPlan,
}

fn duration(d: Option<&PbDuration>, path: &str) -> Result<Duration, String> {
    let d = d.ok_or_else(|| format!("{path}: missing"))?;
    let secs = u64::try_from(d.seconds).map_err(|_| format!("{path}: negative"))?;
    let nanos = u32::try_from(d.nanos).map_err(|_| format!("{path}: negative"))?;
    Ok(Duration::new(secs, nanos))
}

fn per_million(p: Option<&FractionalPercent>, path: &str) -> Result<u32, String> {
    // Envoy: an unset percentage means 100 %.
    let Some(p) = p else { return Ok(1_000_000) };
    let scale = match DenominatorType::try_from(p.denominator) {
        Ok(DenominatorType::Hundred) => 10_000,
        Ok(DenominatorType::TenThousand) => 100,
        Ok(DenominatorType::Million) => 1,
        Err(_) => return Err(format!("{path}.denominator: unknown")),
    };
    Ok(p.numerator.saturating_mul(scale).min(1_000_000))
}

fn bucket(b: Option<&TokenBucket>, path: &str) -> Result<TokenBucketPlan, String> {
    let b = b.ok_or_else(|| format!("{path}: missing"))?;
    let fill_interval = duration(b.fill_interval.as_ref(), &format!("{path}.fill_interval"))?;
    if fill_interval.is_zero() {
        return Err(format!("{path}.fill_interval: must be positive"));
    }
    Ok(TokenBucketPlan {
        max_tokens: b.max_tokens,
        tokens_per_fill: b.tokens_per_fill.as_ref().map_or(1, |v| v.value),
        fill_interval,
    })
}

/// `envoy.filters.http.header_mutation`: the caller header's name.
pub(super) fn caller_header(cfg: &Any, path: &str) -> Result<String, String> {
    let f: HeaderMutation = unpack(cfg).map_err(|e| format!("{path}: {e}"))?;
    let shape = || {
        format!(
            "{path}: kuma-dp enforces only one request mutation overwriting a header with {CALLER_HEADER_VALUE:?}"
        )
    };
    let mutations = f.mutations.clone().unwrap_or_default();
    let mut rest = f;
    rest.mutations = None;
    refuse_rest(&rest, path, "mutations")?;
    let [rule] = mutations.request_mutations.as_slice() else {
        return Err(shape());
    };
    let mut others = mutations.clone();
    others.request_mutations.clear();
    refuse_rest(&others, &format!("{path}.mutations"), "request_mutations")?;
    match &rule.action {
        Some(MutationAction::Append(o))
            if o.append_action == HeaderAppendAction::OverwriteIfExistsOrAdd as i32
                && !o.keep_empty_value
                && o.append.is_none() =>
        {
            match &o.header {
                Some(h) if h.value == CALLER_HEADER_VALUE && h.raw_value.is_empty() => {
                    Ok(h.key.to_ascii_lowercase())
                }
                _ => Err(shape()),
            }
        }
        _ => Err(shape()),
    }
}

fn header_contains(m: &HeaderMatcher, path: &str) -> Result<HeaderContains, String> {
    if !m.treat_missing_header_as_empty {
        return Err(format!(
            "{path}.treat_missing_header_as_empty: kuma-dp needs true"
        ));
    }
    let contains = match &m.header_match_specifier {
        Some(HeaderMatchSpecifier::StringMatch(s)) if !s.ignore_case => match &s.match_pattern {
            Some(MatchPattern::Contains(c)) => c.clone(),
            _ => {
                return Err(format!(
                    "{path}.string_match: only contains is enforced by kuma-dp"
                ));
            }
        },
        _ => {
            return Err(format!(
                "{path}: only a case-sensitive string_match contains is enforced by kuma-dp"
            ));
        }
    };
    Ok(HeaderContains {
        name: m.name.to_ascii_lowercase(),
        contains,
        invert: m.invert_match,
    })
}

/// `envoy.filters.http.fault`.
pub(super) fn fault(cfg: &Any, path: &str) -> Result<FaultPlan, String> {
    let f: HttpFault = unpack(cfg).map_err(|e| format!("{path}: {e}"))?;
    let mut rest = f.clone();
    rest.abort = None;
    rest.delay = None;
    rest.response_rate_limit = None;
    rest.headers.clear();
    refuse_rest(
        &rest,
        path,
        "abort (http_status), delay (fixed_delay), response_rate_limit (fixed_limit), headers",
    )?;
    let abort = match &f.abort {
        None => None,
        Some(a) => {
            let at = format!("{path}.abort");
            if !a.response_body.is_empty() {
                return Err(format!("{at}.response_body: not supported by kuma-dp"));
            }
            let status = match a.error_type {
                Some(ErrorType::HttpStatus(s)) => u16::try_from(s)
                    .ok()
                    .filter(|s| (200..600).contains(s))
                    .ok_or_else(|| format!("{at}.http_status: {s} is not an HTTP status"))?,
                _ => return Err(format!("{at}: only http_status is enforced by kuma-dp")),
            };
            Some(Injected {
                value: status,
                per_million: per_million(a.percentage.as_ref(), &format!("{at}.percentage"))?,
            })
        }
    };
    let delay = match &f.delay {
        None => None,
        Some(d) => {
            let at = format!("{path}.delay");
            let value = match &d.fault_delay_secifier {
                Some(FaultDelaySecifier::FixedDelay(v)) => {
                    duration(Some(v), &format!("{at}.fixed_delay"))?
                }
                _ => return Err(format!("{at}: only fixed_delay is enforced by kuma-dp")),
            };
            Some(Injected {
                value,
                per_million: per_million(d.percentage.as_ref(), &format!("{at}.percentage"))?,
            })
        }
    };
    let response = match &f.response_rate_limit {
        None => None,
        Some(r) => {
            let at = format!("{path}.response_rate_limit");
            let value = match &r.limit_type {
                Some(LimitType::FixedLimit(l)) if l.limit_kbps > 0 => l.limit_kbps,
                _ => {
                    return Err(format!(
                        "{at}: only a positive fixed_limit is enforced by kuma-dp"
                    ));
                }
            };
            Some(Injected {
                value,
                per_million: per_million(r.percentage.as_ref(), &format!("{at}.percentage"))?,
            })
        }
    };
    let headers = f
        .headers
        .iter()
        .enumerate()
        .map(|(i, m)| header_contains(m, &format!("{path}.headers[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(FaultPlan {
        headers,
        delay,
        abort,
        response_kib_per_second: response,
    })
}

/// The HTTP `local_ratelimit` filter's own config: only a `stat_prefix` (the limit is per
/// route).
pub(super) fn http_rate_limit_filter(cfg: &Any, path: &str) -> Result<(), String> {
    let f: HttpLocalRateLimit = unpack(cfg).map_err(|e| format!("{path}: {e}"))?;
    let mut rest = f;
    rest.stat_prefix.clear();
    refuse_rest(
        &rest,
        path,
        "stat_prefix (kuma-dp enforces the limit of the route's typed_per_filter_config)",
    )
}

fn all_of(p: Option<&RuntimeFractionalPercent>, path: &str) -> Result<(), String> {
    let Some(p) = p else {
        return Err(format!("{path}: missing (Envoy would not limit)"));
    };
    if per_million(p.default_value.as_ref(), &format!("{path}.default_value"))? != 1_000_000
        || p.default_value.is_none()
    {
        return Err(format!("{path}.default_value: kuma-dp enforces 100 % only"));
    }
    Ok(())
}

/// A route's `typed_per_filter_config` for the HTTP `local_ratelimit` filter.
pub(super) fn http_rate_limit_route(cfg: &Any, path: &str) -> Result<HttpRateLimitPlan, String> {
    let f: HttpLocalRateLimit = unpack(cfg).map_err(|e| format!("{path}: {e}"))?;
    let mut rest = f.clone();
    rest.stat_prefix.clear();
    rest.status = None;
    rest.token_bucket = None;
    rest.filter_enabled = None;
    rest.filter_enforced = None;
    rest.response_headers_to_add.clear();
    refuse_rest(
        &rest,
        path,
        "stat_prefix, status, token_bucket, filter_enabled, filter_enforced, response_headers_to_add",
    )?;
    if f.stat_prefix.is_empty() {
        return Err(format!("{path}.stat_prefix: required"));
    }
    all_of(f.filter_enabled.as_ref(), &format!("{path}.filter_enabled"))?;
    all_of(
        f.filter_enforced.as_ref(),
        &format!("{path}.filter_enforced"),
    )?;
    let status = match &f.status {
        None => 429,
        Some(s) => u16::try_from(s.code)
            .ok()
            .filter(|c| (200..600).contains(c))
            .ok_or_else(|| format!("{path}.status.code: {} is not enforced", s.code))?,
    };
    Ok(HttpRateLimitPlan {
        stat_prefix: f.stat_prefix.clone(),
        bucket: bucket(f.token_bucket.as_ref(), &format!("{path}.token_bucket"))?,
        status,
        response_headers: header_mods(
            &f.response_headers_to_add,
            Vec::new(),
            &format!("{path}.response_headers_to_add"),
        )?,
    })
}

/// `envoy.filters.network.local_ratelimit`.
pub(super) fn connection_limit(cfg: &Any, path: &str) -> Result<ConnectionLimitPlan, String> {
    let f: NetworkLocalRateLimit = unpack(cfg).map_err(|e| format!("{path}: {e}"))?;
    let mut rest = f.clone();
    rest.stat_prefix.clear();
    rest.token_bucket = None;
    refuse_rest(&rest, path, "stat_prefix, token_bucket")?;
    if f.stat_prefix.is_empty() {
        return Err(format!("{path}.stat_prefix: required"));
    }
    Ok(ConnectionLimitPlan {
        stat_prefix: f.stat_prefix.clone(),
        bucket: bucket(f.token_bucket.as_ref(), &format!("{path}.token_bucket"))?,
    })
}
