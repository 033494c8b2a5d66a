//! MeshRateLimit (reference §2.10): local rate limits on the selected proxies' inbounds —
//! HTTP requests per interval (answered with `onRateLimit.status`, 429 by default, and its
//! headers) and TCP connections per interval. Kuma's configurer applies the conf that holds for
//! every client (the `from` rule of the empty tag set), so a limit is per inbound, not per
//! client. Kuma's `to` (outbound limits) is not supported here and is refused.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration::parse_non_negative as parse_duration;
use super::inbound_from::{check_from, from_to_engine, required};
use super::{PolicyKind, check_top_level};
use crate::descriptor::ResourceType;
use crate::policy::{PolicySpec, TargetRef};
use crate::validate::Violations;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshRateLimit {
    /// The proxies whose inbounds are limited; `{kind: Mesh}` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<RateLimitFrom>,
    /// Kuma's outbound limits; refused here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitFrom {
    pub target_ref: TargetRef,
    pub default: RateLimitConf,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalConf>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<LocalHttp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<LocalTcp>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalHttp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_rate: Option<Rate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_rate_limit: Option<OnRateLimit>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalTcp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_rate: Option<Rate>,
}

/// `num` requests (or connections) per `interval`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rate {
    #[serde(default)]
    pub num: Option<i64>,
    /// A duration, at least 50ms.
    #[serde(default)]
    pub interval: Option<String>,
}

impl Rate {
    /// `(num, interval)` of a valid rate.
    pub fn parsed(&self) -> Option<(u32, Duration)> {
        let num = u32::try_from(self.num?).ok().filter(|n| *n > 0)?;
        let interval = parse_duration(self.interval.as_deref()?)?;
        (interval >= MIN_INTERVAL).then_some((num, interval))
    }
}

/// Envoy's token bucket refuses a fill interval under 50 ms.
pub const MIN_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OnRateLimit {
    /// The status of a limited request; 429 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<HeaderModifier>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderModifier {
    /// Appended to the limited response.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<Header>,
    /// Set on the limited response (replacing a header of that name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<Header>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Header {
    pub name: String,
    pub value: String,
}

fn check_rate(rate: &Rate, path: &str, v: &mut Violations) {
    if let Some(num) = required(&rate.num, &format!("{path}.num"), v)
        && (*num <= 0 || u32::try_from(*num).is_err())
    {
        v.push(format!("{path}.num"), "must be greater than 0");
    }
    if let Some(interval) = required(&rate.interval, &format!("{path}.interval"), v) {
        match parse_duration(interval) {
            None => v.push(
                format!("{path}.interval"),
                "must be a duration such as 1s or 1m",
            ),
            Some(d) if d < MIN_INTERVAL => {
                v.push(format!("{path}.interval"), "must be at least 50ms")
            }
            Some(_) => {}
        }
    }
}

/// An HTTP header name Envoy and hyper both take: a lowercase token, not a pseudo-header.
fn header_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.!#$%&'*+^`|~".contains(&b)
        })
}

fn check_conf(conf: &RateLimitConf, path: &str, v: &mut Violations) {
    let at = format!("{path}.local");
    let Some(local) = required(&conf.local, &at, v) else {
        return;
    };
    if local.http.is_none() && local.tcp.is_none() {
        v.push(&at, "must have at least one defined: http, tcp");
    }
    if let Some(http) = &local.http {
        let at = format!("{at}.http");
        if http.disabled != Some(true)
            && let Some(rate) = required(&http.request_rate, &format!("{at}.requestRate"), v)
        {
            check_rate(rate, &format!("{at}.requestRate"), v);
        }
        if let Some(on) = &http.on_rate_limit {
            let at = format!("{at}.onRateLimit");
            if let Some(s) = on.status
                && !(100..=599).contains(&s)
            {
                v.push(
                    format!("{at}.status"),
                    "must be in inclusive range [100, 599]",
                );
            }
            if let Some(h) = &on.headers {
                for (list, headers) in [("add", &h.add), ("set", &h.set)] {
                    for (i, header) in headers.iter().enumerate() {
                        if !header_name_ok(&header.name) {
                            v.push(
                                format!("{at}.headers.{list}[{i}].name"),
                                "must be a lowercase HTTP header name",
                            );
                        }
                        if header.value.bytes().any(|b| b < 0x20 && b != b'\t') {
                            v.push(
                                format!("{at}.headers.{list}[{i}].value"),
                                "must not contain control characters",
                            );
                        }
                    }
                }
            }
        }
    }
    if let Some(tcp) = &local.tcp
        && tcp.disabled != Some(true)
    {
        let at = format!("{at}.tcp.connectionRate");
        if let Some(rate) = required(&tcp.connection_rate, &at, v) {
            check_rate(rate, &at, v);
        }
    }
}

impl PolicyKind for MeshRateLimit {
    const TYPE: ResourceType = ResourceType::MeshRateLimit;

    fn validate(&self, v: &mut Violations) {
        check_top_level(self.target_ref.as_ref(), Self::TYPE, v);
        if self.to.is_some() {
            v.push(
                "spec.to",
                "must not be defined: outbound rate limits are not supported, use from",
            );
        }
        let from: Vec<_> = self
            .from
            .iter()
            .map(|f| (&f.target_ref, &f.default))
            .collect();
        check_from(&from, Self::TYPE, v, check_conf);
    }

    fn to_engine(&self) -> PolicySpec {
        from_to_engine(
            self.target_ref.as_ref(),
            self.from.iter().map(|f| (&f.target_ref, &f.default)),
        )
    }
}
