//! MeshCircuitBreaker (reference §2.5): connection limits and outlier detection for the
//! selected proxies' outbounds. Each `to[]` item names a destination (Mesh or a MeshService)
//! with `default: {connectionLimits, outlierDetection}`. Kuma also has `from`/`rules` (inbound
//! limits); this mesh takes `to` only, so `from` is refused as an unknown field.

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
pub struct MeshCircuitBreaker {
    /// The client proxies whose outbounds get the limits; `{kind: Mesh}` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<To<McbConf>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct McbConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_limits: Option<ConnectionLimits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectionLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_pools: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_external_and_local_errors: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_panic_threshold: Option<Percentage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detectors: Option<Detectors>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Detectors {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_failures: Option<Consecutive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_failures: Option<Consecutive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_origin_failures: Option<Consecutive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<SuccessRate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_percentage: Option<FailurePercentage>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Consecutive {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SuccessRate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_hosts: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_volume: Option<i64>,
    /// A decimal string (`"1.9"`); Envoy takes it × 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standard_deviation_factor: Option<Percentage>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FailurePercentage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_hosts: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_volume: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<i64>,
}

impl MeshCircuitBreaker {
    /// The default policy created with a new Mesh (see `initial_policies`): Kuma's connection
    /// limits (1024 connections, pending and requests, 3 retries) and, unlike Kuma, an outlier
    /// detection that keeps this mesh's passive failover: one refused or timed-out connection
    /// ejects an endpoint for 10 s, every endpoint may be ejected, no other detector.
    pub fn default_for_mesh() -> Self {
        MeshCircuitBreaker {
            target_ref: Some(TargetRef::mesh()),
            to: vec![To {
                target_ref: TargetRef::mesh(),
                default: McbConf {
                    connection_limits: Some(ConnectionLimits {
                        max_connections: Some(1024),
                        max_connection_pools: None,
                        max_pending_requests: Some(1024),
                        max_requests: Some(1024),
                        max_retries: Some(3),
                    }),
                    outlier_detection: Some(OutlierDetection {
                        disabled: Some(false),
                        interval: Some("10s".into()),
                        base_ejection_time: Some("10s".into()),
                        max_ejection_percent: Some(100),
                        split_external_and_local_errors: Some(true),
                        healthy_panic_threshold: None,
                        detectors: Some(Detectors {
                            local_origin_failures: Some(Consecutive {
                                consecutive: Some(1),
                            }),
                            ..Detectors::default()
                        }),
                    }),
                },
            }],
        }
    }
}

fn check_conf(c: &McbConf, path: &str, v: &mut Violations) {
    if c.connection_limits.is_none() && c.outlier_detection.is_none() {
        v.push(
            path,
            "must have at least one defined: connectionLimits, outlierDetection",
        );
    }
    if let Some(l) = &c.connection_limits {
        let path = format!("{path}.connectionLimits");
        let fields = [
            ("maxConnections", l.max_connections),
            ("maxConnectionPools", l.max_connection_pools),
            ("maxPendingRequests", l.max_pending_requests),
            ("maxRequests", l.max_requests),
            ("maxRetries", l.max_retries),
        ];
        if fields.iter().all(|(_, n)| n.is_none()) {
            v.push(
                path.clone(),
                "must have at least one defined: maxConnections, maxConnectionPools, maxPendingRequests, maxRequests, maxRetries",
            );
        }
        for (name, n) in fields {
            check_positive(n, &format!("{path}.{name}"), v);
        }
    }
    if let Some(o) = &c.outlier_detection {
        let path = format!("{path}.outlierDetection");
        if *o == OutlierDetection::default() {
            v.push(
                path.clone(),
                "must have at least one defined: disabled, interval, baseEjectionTime, maxEjectionPercent, splitExternalAndLocalErrors, healthyPanicThreshold, detectors",
            );
        }
        check_duration(o.interval.as_ref(), true, &format!("{path}.interval"), v);
        check_duration(
            o.base_ejection_time.as_ref(),
            true,
            &format!("{path}.baseEjectionTime"),
            v,
        );
        check_int_percent(
            o.max_ejection_percent,
            &format!("{path}.maxEjectionPercent"),
            v,
        );
        check_percentage(
            o.healthy_panic_threshold.as_ref(),
            &format!("{path}.healthyPanicThreshold"),
            v,
        );
        if let Some(d) = &o.detectors {
            check_detectors(d, &format!("{path}.detectors"), v);
        }
    }
}

fn check_detectors(d: &Detectors, path: &str, v: &mut Violations) {
    if *d == Detectors::default() {
        v.push(
            path,
            "must have at least one defined: totalFailures, gatewayFailures, localOriginFailures, successRate, failurePercentage",
        );
    }
    for (name, c) in [
        ("totalFailures", &d.total_failures),
        ("gatewayFailures", &d.gateway_failures),
        ("localOriginFailures", &d.local_origin_failures),
    ] {
        if let Some(c) = c {
            check_positive(c.consecutive, &format!("{path}.{name}.consecutive"), v);
        }
    }
    if let Some(s) = &d.success_rate {
        let path = format!("{path}.successRate");
        check_positive(s.minimum_hosts, &format!("{path}.minimumHosts"), v);
        check_positive(s.request_volume, &format!("{path}.requestVolume"), v);
        if let Some(f) = &s.standard_deviation_factor
            && f.value().is_none_or(|f| f <= 0.0)
        {
            v.push(
                format!("{path}.standardDeviationFactor"),
                "must be a number greater than 0 (e.g. \"1.9\")",
            );
        }
    }
    if let Some(f) = &d.failure_percentage {
        let path = format!("{path}.failurePercentage");
        check_positive(f.minimum_hosts, &format!("{path}.minimumHosts"), v);
        check_positive(f.request_volume, &format!("{path}.requestVolume"), v);
        check_int_percent(f.threshold, &format!("{path}.threshold"), v);
    }
}

impl PolicyKind for MeshCircuitBreaker {
    const TYPE: ResourceType = ResourceType::MeshCircuitBreaker;

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
