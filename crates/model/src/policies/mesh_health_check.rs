//! MeshHealthCheck (reference §2.4): active health checks the selected proxies run against
//! the endpoints of their outbounds. Each `to[]` item names a destination (Mesh or a
//! MeshService) with timing fields and one check per kind (`http`, `tcp`, `grpc`); which one
//! runs depends on the outbound's protocol (`xds::policy::mesh_health_check`).

use serde::{Deserialize, Serialize};

use super::PolicyKind;
use super::resilience::{
    Percentage, To, check_duration, check_int_percent, check_percentage, check_positive, check_to,
    to_engine,
};
use crate::descriptor::ResourceType;
use crate::policy::{PolicySpec, TargetRef};
use crate::validate::Violations;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshHealthCheck {
    /// The client proxies that run the checks; `{kind: Mesh}` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<To<MhcConf>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MhcConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_jitter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_jitter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_jitter_percent: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_panic_threshold: Option<Percentage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_traffic_on_panic: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_traffic_interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_log_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub always_log_health_check_failures: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuse_connection: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcCheck>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_statuses: Option<Vec<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers_to_add: Option<HeadersToAdd>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeadersToAdd {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<Header>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<Header>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Bytes sent after connecting (as text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<String>,
    /// Texts that must all be found in the answer; none: a connection is enough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

fn check_conf(c: &MhcConf, path: &str, v: &mut Violations) {
    let at = |f: &str| format!("{path}.{f}");
    check_duration(c.interval.as_ref(), true, &at("interval"), v);
    check_duration(c.timeout.as_ref(), true, &at("timeout"), v);
    check_duration(c.initial_jitter.as_ref(), false, &at("initialJitter"), v);
    check_duration(c.interval_jitter.as_ref(), false, &at("intervalJitter"), v);
    check_duration(
        c.no_traffic_interval.as_ref(),
        true,
        &at("noTrafficInterval"),
        v,
    );
    check_positive(c.unhealthy_threshold, &at("unhealthyThreshold"), v);
    check_positive(c.healthy_threshold, &at("healthyThreshold"), v);
    check_int_percent(c.interval_jitter_percent, &at("intervalJitterPercent"), v);
    check_percentage(
        c.healthy_panic_threshold.as_ref(),
        &at("healthyPanicThreshold"),
        v,
    );
    if let Some(h) = &c.http {
        if let Some(p) = &h.path
            && !p.starts_with('/')
        {
            v.push(at("http.path"), "must start with '/'");
        }
        for (i, s) in h.expected_statuses.iter().flatten().enumerate() {
            if !(100..=599).contains(s) {
                v.push(
                    at(&format!("http.expectedStatuses[{i}]")),
                    "must be in inclusive range [100, 599]",
                );
            }
        }
        if let Some(hs) = &h.request_headers_to_add {
            for (list, headers) in [("set", &hs.set), ("add", &hs.add)] {
                for (i, header) in headers.iter().enumerate() {
                    if header.name.is_empty() {
                        v.push(
                            at(&format!("http.requestHeadersToAdd.{list}[{i}].name")),
                            "must not be empty",
                        );
                    }
                }
            }
        }
    }
}

impl PolicyKind for MeshHealthCheck {
    const TYPE: ResourceType = ResourceType::MeshHealthCheck;

    fn validate(&self, v: &mut Violations) {
        check_to(
            self.target_ref.as_ref(),
            &self.to,
            Self::TYPE,
            v,
            check_conf,
        );
    }

    fn to_engine(&self) -> PolicySpec {
        to_engine(self.target_ref.as_ref(), &self.to)
    }
}
