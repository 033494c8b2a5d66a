//! The resilience fields of a cluster as a plan kuma-dp runs: `circuit_breakers` (connection
//! limits), `outlier_detection` (every detector, on or off) and `common_lb_config` (the panic
//! threshold). Anything kuma-dp would do differently from Envoy is refused with its field path.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::cluster::CommonLbConfig;
use envoy_types::pb::envoy::config::cluster::v3::cluster::common_lb_config::LocalityConfigSpecifier;
use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, OutlierDetection};
use envoy_types::pb::envoy::config::core::v3::RoutingPriority;
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use serde::Serialize;

/// A refused field: its path below the cluster and why.
pub(super) type Refusal = (String, String);

fn refuse(field: impl Into<String>, what: impl Into<String>) -> Refusal {
    (field.into(), what.into())
}

/// Connection limits of a cluster (`circuit_breakers.thresholds[DEFAULT]`); unset fields are
/// Envoy's defaults, which apply without any `circuit_breakers` too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LimitsPlan {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

impl Default for LimitsPlan {
    fn default() -> Self {
        LimitsPlan {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
        }
    }
}

/// Passive health as Envoy's `outlier_detection` gives it; a detector is `Some` when enforced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutlierPlan {
    /// How often rates are computed and ejection counts decay.
    pub interval: Duration,
    /// An ejection lasts `base_ejection_time × ejections so far`, at most `max_ejection_time`.
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
    /// Connection failures count apart from HTTP statuses (otherwise they count as 503s).
    pub split_local_origin: bool,
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway_failure: Option<u32>,
    /// Only with `split_local_origin`.
    pub consecutive_local_origin_failure: Option<u32>,
    pub success_rate: Option<RatePlan>,
    pub failure_percentage: Option<RatePlan>,
}

/// A rate detector: hosts with at least `request_volume` requests in an interval count, and
/// only when at least `minimum_hosts` do. `threshold`: the stdev factor × 1000 (success rate)
/// or the failure percentage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RatePlan {
    pub minimum_hosts: u32,
    pub request_volume: u32,
    pub threshold: u32,
}

/// `healthy_panic_threshold` in hundredths of a percent (Envoy's default 50 %).
pub const DEFAULT_PANIC_THRESHOLD: u32 = 5000;

pub(super) fn limits(cb: Option<&CircuitBreakers>) -> Result<LimitsPlan, Refusal> {
    let mut plan = LimitsPlan::default();
    let Some(cb) = cb else { return Ok(plan) };
    if !cb.per_host_thresholds.is_empty() {
        return Err(refuse(
            "circuit_breakers.per_host_thresholds",
            "not enforced by kuma-dp",
        ));
    }
    for (i, t) in cb.thresholds.iter().enumerate() {
        let at = |f: &str| format!("circuit_breakers.thresholds[{i}].{f}");
        if t.priority != RoutingPriority::Default as i32 {
            return Err(refuse(
                at("priority"),
                "kuma-dp has no HIGH priority traffic: only DEFAULT thresholds are enforced",
            ));
        }
        if t.retry_budget.is_some() {
            return Err(refuse(at("retry_budget"), "not enforced by kuma-dp"));
        }
        // `track_remaining`: stats. `max_connection_pools`: kuma-dp keeps one pool per
        // cluster, so every limit of at least 1 holds (0 would refuse all traffic).
        if t.max_connection_pools
            .as_ref()
            .is_some_and(|v| v.value == 0)
        {
            return Err(refuse(
                at("max_connection_pools"),
                "0 is not enforced by kuma-dp",
            ));
        }
        let v = |x: &Option<UInt32Value>, d: u32| x.as_ref().map_or(d, |v| v.value);
        plan = LimitsPlan {
            max_connections: v(&t.max_connections, plan.max_connections),
            max_pending_requests: v(&t.max_pending_requests, plan.max_pending_requests),
            max_requests: v(&t.max_requests, plan.max_requests),
            max_retries: v(&t.max_retries, plan.max_retries),
        };
    }
    Ok(plan)
}

fn std_duration(d: &PbDuration, at: String) -> Result<Duration, Refusal> {
    let secs = u64::try_from(d.seconds).map_err(|_| refuse(at.clone(), "must not be negative"))?;
    let nanos = u32::try_from(d.nanos).map_err(|_| refuse(at, "must not be negative"))?;
    Ok(Duration::new(secs, nanos))
}

/// The outlier detection of a cluster; every enforcing value must be 0 or 100 (kuma-dp
/// enforces a detector always or never).
pub(super) fn outlier(od: &OutlierDetection) -> Result<OutlierPlan, Refusal> {
    let at = |f: &str| format!("outlier_detection.{f}");
    let u = |x: &Option<UInt32Value>, d: u32| x.as_ref().map_or(d, |v| v.value);
    let dur = |x: &Option<PbDuration>, f: &str, d: u64| match x {
        Some(x) => std_duration(x, at(f)),
        None => Ok(Duration::from_secs(d)),
    };
    let on = |x: &Option<UInt32Value>, f: &str, d: u32| match u(x, d) {
        0 => Ok(false),
        100 => Ok(true),
        n => Err(refuse(
            at(f),
            format!("{n}: kuma-dp enforces a detector always (100) or never (0)"),
        )),
    };
    if !od.monitors.is_empty() {
        return Err(refuse(at("monitors"), "not enforced by kuma-dp"));
    }
    if od.always_eject_one_host.as_ref().is_some_and(|b| b.value) {
        return Err(refuse(
            at("always_eject_one_host"),
            "not enforced by kuma-dp",
        ));
    }
    if od.detect_degraded_hosts.as_ref().is_some_and(|b| b.value) {
        return Err(refuse(
            at("detect_degraded_hosts"),
            "not enforced by kuma-dp",
        ));
    }
    if od
        .max_ejection_time_jitter
        .as_ref()
        .is_some_and(|j| j.seconds != 0 || j.nanos != 0)
    {
        return Err(refuse(
            at("max_ejection_time_jitter"),
            "not enforced by kuma-dp",
        ));
    }
    // `successful_active_health_check_uneject_host`: kuma-dp lets an active check's success
    // lift an ejection, Envoy's default; the other choice is refused.
    if od
        .successful_active_health_check_uneject_host
        .as_ref()
        .is_some_and(|b| !b.value)
    {
        return Err(refuse(
            at("successful_active_health_check_uneject_host"),
            "false is not enforced by kuma-dp (a passed active check lifts an ejection)",
        ));
    }
    let split = od.split_external_local_origin_errors;
    let success_rate = on(&od.enforcing_success_rate, "enforcing_success_rate", 100)?;
    let local_success_rate = on(
        &od.enforcing_local_origin_success_rate,
        "enforcing_local_origin_success_rate",
        100,
    )?;
    let failure_pct = on(
        &od.enforcing_failure_percentage,
        "enforcing_failure_percentage",
        0,
    )?;
    let local_failure_pct = on(
        &od.enforcing_failure_percentage_local_origin,
        "enforcing_failure_percentage_local_origin",
        0,
    )?;
    if split && success_rate != local_success_rate {
        return Err(refuse(
            at("enforcing_local_origin_success_rate"),
            "kuma-dp enforces success rate for both error kinds or neither (equal to enforcing_success_rate)",
        ));
    }
    if split && failure_pct != local_failure_pct {
        return Err(refuse(
            at("enforcing_failure_percentage_local_origin"),
            "kuma-dp enforces failure percentage for both error kinds or neither (equal to enforcing_failure_percentage)",
        ));
    }
    let base = dur(&od.base_ejection_time, "base_ejection_time", 30)?;
    let max = match &od.max_ejection_time {
        Some(m) => std_duration(m, at("max_ejection_time"))?,
        None => Duration::from_secs(300).max(base),
    };
    let local = on(
        &od.enforcing_consecutive_local_origin_failure,
        "enforcing_consecutive_local_origin_failure",
        100,
    )?;
    Ok(OutlierPlan {
        interval: dur(&od.interval, "interval", 10)?,
        base_ejection_time: base,
        max_ejection_time: max,
        max_ejection_percent: u(&od.max_ejection_percent, 10).min(100),
        split_local_origin: split,
        consecutive_5xx: on(
            &od.enforcing_consecutive_5xx,
            "enforcing_consecutive_5xx",
            100,
        )?
        .then(|| u(&od.consecutive_5xx, 5)),
        consecutive_gateway_failure: on(
            &od.enforcing_consecutive_gateway_failure,
            "enforcing_consecutive_gateway_failure",
            0,
        )?
        .then(|| u(&od.consecutive_gateway_failure, 5)),
        consecutive_local_origin_failure: (split && local)
            .then(|| u(&od.consecutive_local_origin_failure, 5)),
        success_rate: success_rate.then(|| RatePlan {
            minimum_hosts: u(&od.success_rate_minimum_hosts, 5),
            request_volume: u(&od.success_rate_request_volume, 100),
            threshold: u(&od.success_rate_stdev_factor, 1900),
        }),
        failure_percentage: failure_pct.then(|| RatePlan {
            minimum_hosts: u(&od.failure_percentage_minimum_hosts, 5),
            request_volume: u(&od.failure_percentage_request_volume, 50),
            threshold: u(&od.failure_percentage_threshold, 85),
        }),
    })
}

/// What kuma-dp reads from `common_lb_config`: the panic threshold (hundredths of a percent)
/// and `fail_traffic_on_panic`.
pub(super) fn common_lb(c: Option<&CommonLbConfig>) -> Result<(u32, bool), Refusal> {
    let Some(c) = c else {
        return Ok((DEFAULT_PANIC_THRESHOLD, false));
    };
    let at = |f: &str| format!("common_lb_config.{f}");
    let fail_on_panic = match &c.locality_config_specifier {
        None => false,
        Some(LocalityConfigSpecifier::ZoneAwareLbConfig(z)) => {
            if z.routing_enabled.is_some() || z.min_cluster_size.is_some() {
                return Err(refuse(
                    at("zone_aware_lb_config"),
                    "only fail_traffic_on_panic is enforced by kuma-dp",
                ));
            }
            z.fail_traffic_on_panic
        }
        // Read by `balancing` (locality weights); Kuma ignores `failTrafficOnPanic` with it.
        Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_)) => false,
    };
    let checks: [(&str, bool); 5] = [
        ("update_merge_window", c.update_merge_window.is_some()),
        (
            "ignore_new_hosts_until_first_hc",
            c.ignore_new_hosts_until_first_hc,
        ),
        (
            "close_connections_on_host_set_change",
            c.close_connections_on_host_set_change,
        ),
        (
            "consistent_hashing_lb_config",
            c.consistent_hashing_lb_config.is_some(),
        ),
        ("override_host_status", c.override_host_status.is_some()),
    ];
    if let Some((f, _)) = checks.iter().find(|(_, set)| *set) {
        return Err(refuse(at(f), "not enforced by kuma-dp"));
    }
    let threshold = match &c.healthy_panic_threshold {
        None => DEFAULT_PANIC_THRESHOLD,
        Some(p) if (0.0..=100.0).contains(&p.value) => (p.value * 100.0).round() as u32,
        Some(p) => {
            return Err(refuse(
                at("healthy_panic_threshold"),
                format!("{}: must be in [0, 100]", p.value),
            ));
        }
    };
    Ok((threshold, fail_on_panic))
}
