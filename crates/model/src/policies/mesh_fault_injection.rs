//! MeshFaultInjection (reference §2.9): faults the selected proxies' inbounds inject into the
//! HTTP requests of the clients `from[].targetRef` picks. Each `default.http[]` entry may abort
//! (`httpStatus`), delay (`value`) or throttle the response body (`responseBandwidth.limit`),
//! each at its own percentage. `to` exists in Kuma only under a top-level MeshGateway, which
//! this mesh does not have, so it is refused.

use serde::{Deserialize, Serialize};

use super::duration::parse_non_negative as parse_duration;
use super::inbound_from::{Percentage, check_from, from_to_engine, required};
use super::{PolicyKind, check_top_level};
use crate::descriptor::ResourceType;
use crate::policy::{PolicySpec, TargetRef};
use crate::validate::Violations;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshFaultInjection {
    /// The proxies whose inbounds inject the faults; `{kind: Mesh}` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<FaultFrom>,
    /// Kuma: only with a top-level MeshGateway; refused here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultFrom {
    pub target_ref: TargetRef,
    pub default: FaultConf,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultConf {
    /// Replaced whole when confs merge (JSON Merge Patch replaces arrays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Vec<HttpFault>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpFault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_bandwidth: Option<ResponseBandwidth>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Abort {
    #[serde(default)]
    pub http_status: Option<i64>,
    #[serde(default)]
    pub percentage: Option<Percentage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Delay {
    /// A duration such as `2s` or `500ms`.
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub percentage: Option<Percentage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResponseBandwidth {
    /// `<n>bps`, `<n>kbps`, `<n>mbps` or `<n>gbps` (units case-insensitive).
    #[serde(default)]
    pub limit: Option<String>,
    #[serde(default)]
    pub percentage: Option<Percentage>,
}

/// A bandwidth limit in kbps, as Kuma converts it for Envoy's `limit_kbps` (`100kbps` → 100,
/// `1Mbps` → 1000, `1gbps` → 1 000 000, `8000bps` → 8); `None` when not `<digits><unit>` or
/// below 1 kbps.
pub fn limit_kbps(limit: &str) -> Option<u64> {
    let s = limit.trim().to_ascii_lowercase();
    let digits = s.find(|c: char| !c.is_ascii_digit())?;
    let n: u64 = s[..digits].parse().ok()?;
    let kbps = match &s[digits..] {
        "bps" => n / 1000,
        "kbps" => n,
        "mbps" => n.checked_mul(1000)?,
        "gbps" => n.checked_mul(1_000_000)?,
        _ => return None,
    };
    (kbps > 0).then_some(kbps)
}

fn check_http(fault: &HttpFault, path: &str, v: &mut Violations) {
    if fault.abort.is_none() && fault.delay.is_none() && fault.response_bandwidth.is_none() {
        v.push(
            path,
            "must have at least one defined: abort, delay, responseBandwidth",
        );
    }
    if let Some(a) = &fault.abort {
        let at = format!("{path}.abort");
        if let Some(s) = required(&a.http_status, &format!("{at}.httpStatus"), v)
            && !(100..=599).contains(s)
        {
            v.push(
                format!("{at}.httpStatus"),
                "must be in inclusive range [100, 599]",
            );
        }
        if let Some(p) = required(&a.percentage, &format!("{at}.percentage"), v) {
            p.check(&format!("{at}.percentage"), v);
        }
    }
    if let Some(d) = &fault.delay {
        let at = format!("{path}.delay");
        if let Some(value) = required(&d.value, &format!("{at}.value"), v)
            && parse_duration(value).is_none()
        {
            v.push(
                format!("{at}.value"),
                "must be a duration such as 2s or 500ms",
            );
        }
        if let Some(p) = required(&d.percentage, &format!("{at}.percentage"), v) {
            p.check(&format!("{at}.percentage"), v);
        }
    }
    if let Some(b) = &fault.response_bandwidth {
        let at = format!("{path}.responseBandwidth");
        if let Some(limit) = required(&b.limit, &format!("{at}.limit"), v)
            && limit_kbps(limit).is_none()
        {
            v.push(
                format!("{at}.limit"),
                "has to be in kbps/mbps/gbps units, at least 1kbps",
            );
        }
        if let Some(p) = required(&b.percentage, &format!("{at}.percentage"), v) {
            p.check(&format!("{at}.percentage"), v);
        }
    }
}

impl PolicyKind for MeshFaultInjection {
    const TYPE: ResourceType = ResourceType::MeshFaultInjection;

    fn validate(&self, v: &mut Violations) {
        check_top_level(self.target_ref.as_ref(), Self::TYPE, v);
        if self.to.is_some() {
            v.push(
                "spec.to",
                "must not be defined: to is only allowed with a top-level MeshGateway targetRef, and this mesh has no gateways",
            );
        }
        let from: Vec<_> = self
            .from
            .iter()
            .map(|f| (&f.target_ref, &f.default))
            .collect();
        check_from(&from, Self::TYPE, v, |conf: &FaultConf, path, v| {
            for (i, fault) in conf.http.iter().flatten().enumerate() {
                check_http(fault, &format!("{path}.http[{i}]"), v);
            }
        });
    }

    fn to_engine(&self) -> PolicySpec {
        from_to_engine(
            self.target_ref.as_ref(),
            self.from.iter().map(|f| (&f.target_ref, &f.default)),
        )
    }
}
