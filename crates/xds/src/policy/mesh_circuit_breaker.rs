//! MeshCircuitBreaker's configurer (Kuma plugin order 1300), fact sheet §2.5: every outbound
//! cluster (a service's own and its route subsets `<service>_<h>`) whose service has a
//! `circuit_breaker` rule gets
//!
//! - `connectionLimits` → `circuit_breakers.thresholds[DEFAULT]` with `track_remaining`;
//! - `outlierDetection` (unless `disabled`) → `outlier_detection`: `interval`,
//!   `base_ejection_time`, `max_ejection_percent` and `split_external_local_origin_errors`
//!   only when set (Envoy's defaults otherwise), every detector's `enforcing_*` 100 when the
//!   detector is given and 0 when not, its thresholds when set;
//! - `outlierDetection.healthyPanicThreshold` → `common_lb_config.healthy_panic_threshold`.
//!
//! Without a rule an outbound cluster has none of these, as in Kuma (the base builder sets no
//! outlier detection on sidecar clusters; the mesh's default policy brings it).

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, OutlierDetection};
use envoy_types::pb::envoy::config::core::v3::RoutingPriority;
use envoy_types::pb::google::protobuf::UInt32Value;
use serde_json::Value;

use super::resilience::{duration, for_each_outbound_cluster, panic_threshold, u32_at};
use crate::generate::{ProxyInput, Resources};

fn thresholds(limits: &Value) -> CircuitBreakers {
    let n = |f: &str| u32_at(limits, f).map(|value| UInt32Value { value });
    CircuitBreakers {
        thresholds: vec![Thresholds {
            priority: RoutingPriority::Default as i32,
            max_connections: n("maxConnections"),
            max_pending_requests: n("maxPendingRequests"),
            max_requests: n("maxRequests"),
            max_retries: n("maxRetries"),
            max_connection_pools: n("maxConnectionPools"),
            track_remaining: true,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Envoy's `enforcing_*` for a detector: 100 when given, 0 (off) when not.
fn enforcing(detector: Option<&Value>) -> Option<UInt32Value> {
    Some(UInt32Value {
        value: if detector.is_some() { 100 } else { 0 },
    })
}

/// The outlier detection of an `outlierDetection` conf; `None` when disabled.
pub(crate) fn outlier_detection(od: &Value) -> Option<OutlierDetection> {
    if od.get("disabled").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    let detectors = od.get("detectors");
    let detector = |name: &str| {
        detectors
            .and_then(|d| d.get(name))
            .filter(|d| d.is_object())
    };
    let n = |d: Option<&Value>, f: &str| {
        d.and_then(|d| u32_at(d, f))
            .map(|value| UInt32Value { value })
    };
    let total = detector("totalFailures");
    let gateway = detector("gatewayFailures");
    let local = detector("localOriginFailures");
    let success = detector("successRate");
    let failure = detector("failurePercentage");
    let stdev = success
        .and_then(|s| s.get("standardDeviationFactor"))
        .and_then(|f| match f {
            Value::String(s) => s.trim().parse::<f64>().ok(),
            other => other.as_f64(),
        })
        .map(|f| UInt32Value {
            value: (f * 1000.0).round().clamp(0.0, f64::from(u32::MAX)) as u32,
        });
    Some(OutlierDetection {
        interval: od.get("interval").and_then(duration),
        base_ejection_time: od.get("baseEjectionTime").and_then(duration),
        max_ejection_percent: u32_at(od, "maxEjectionPercent").map(|value| UInt32Value { value }),
        split_external_local_origin_errors: od
            .get("splitExternalAndLocalErrors")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        consecutive_5xx: n(total, "consecutive"),
        enforcing_consecutive_5xx: enforcing(total),
        consecutive_gateway_failure: n(gateway, "consecutive"),
        enforcing_consecutive_gateway_failure: enforcing(gateway),
        consecutive_local_origin_failure: n(local, "consecutive"),
        enforcing_consecutive_local_origin_failure: enforcing(local),
        success_rate_minimum_hosts: n(success, "minimumHosts"),
        success_rate_request_volume: n(success, "requestVolume"),
        success_rate_stdev_factor: stdev,
        enforcing_success_rate: enforcing(success),
        enforcing_local_origin_success_rate: enforcing(success),
        failure_percentage_minimum_hosts: n(failure, "minimumHosts"),
        failure_percentage_request_volume: n(failure, "requestVolume"),
        failure_percentage_threshold: n(failure, "threshold"),
        enforcing_failure_percentage: enforcing(failure),
        enforcing_failure_percentage_local_origin: enforcing(failure),
        ..Default::default()
    })
}

fn apply(conf: &Value, cluster: &mut Cluster) {
    if let Some(limits) = conf.get("connectionLimits").filter(|l| l.is_object()) {
        cluster.circuit_breakers = Some(thresholds(limits));
    }
    if let Some(od) = conf.get("outlierDetection").filter(|o| o.is_object()) {
        cluster.outlier_detection = outlier_detection(od);
        if cluster.outlier_detection.is_some()
            && let Some(p) = od.get("healthyPanicThreshold").and_then(panic_threshold)
        {
            cluster
                .common_lb_config
                .get_or_insert_default()
                .healthy_panic_threshold = Some(p);
        }
    }
}

pub(crate) fn configure(input: &ProxyInput<'_>, resources: &mut Resources) {
    for_each_outbound_cluster(resources, |service, cluster| {
        if let Some(rule) = input.policies.circuit_breaker.to_rule(service) {
            apply(&rule.conf, cluster);
        }
    });
}
