//! Passive health (Envoy's outlier detection) of one cluster, as its plan asks
//! (`OutlierPlan`): consecutive 5xx, gateway failures (502/503/504) and local-origin failures
//! (refused, reset or timed-out connections) eject an endpoint when their count is reached;
//! success rate and failure percentage are computed every interval over the endpoints with
//! enough requests. An ejection lasts `base_ejection_time × ejections so far`, at most
//! `max_ejection_time`; each interval an endpoint is not ejected takes one off its count, as
//! Envoy does. No more than `max_ejection_percent` of the endpoints are ejected at once.
//! Without split local-origin errors, a connection failure counts as a 503. kuma-dp also lifts
//! an ejection as soon as a connection to the endpoint works again (it is still tried last,
//! when every other endpoint failed). The state is kept across plan updates of its cluster.
//!
//! Pure over an explicit `now`; the data path passes `Instant::now()`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use meshzone_xds::decode::{EndpointPlan, OutlierPlan, RatePlan};

/// What one attempt to use an endpoint gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The connection was refused, reset or timed out.
    LocalFailure,
    /// A connection was made (TCP: the last word; HTTP: a status follows).
    Connected { last: bool },
    /// The upstream answered with this status.
    Status(u16),
}

#[derive(Debug, Default, Clone)]
struct Host {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    consecutive_local: u32,
    ejected_until: Option<Instant>,
    ejections: u32,
    /// This interval's outcomes: external (HTTP statuses) and local origin (connections).
    external: (u32, u32),
    local: (u32, u32),
}

#[derive(Debug, Default)]
struct State {
    hosts: HashMap<SocketAddr, Host>,
    next_sweep: Option<Instant>,
}

/// The passive health of one cluster's endpoints, and beside it their active checks.
#[derive(Default)]
pub struct Health {
    state: Mutex<State>,
    /// Hosts that may be ejected: lets the common case (none) skip the lock.
    ejected: AtomicUsize,
    /// Active health checks (`health_check.rs`).
    pub active: crate::health_check::ActiveHealth,
}

/// Why an endpoint was ejected (what the stats count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ejection {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
    ConsecutiveLocalOriginFailure,
    SuccessRate,
    FailurePercentage,
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the endpoint is ejected at `now`.
    pub fn is_ejected(&self, endpoint: SocketAddr, now: Instant) -> bool {
        if self.ejected.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let s = self.lock();
        s.hosts
            .get(&endpoint)
            .and_then(|h| h.ejected_until)
            .is_some_and(|until| until > now)
    }

    /// Whether the data path should avoid the endpoint: ejected, or failing active checks.
    pub fn is_unhealthy(&self, endpoint: SocketAddr, now: Instant) -> bool {
        self.is_ejected(endpoint, now) || self.active.is_failed(endpoint)
    }

    /// Lifts an ejection (a passed active check does, as in Envoy).
    pub fn lift_ejection(&self, endpoint: SocketAddr) {
        if self.ejected.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut s = self.lock();
        if let Some(h) = s.hosts.get_mut(&endpoint) {
            h.ejected_until = None;
        }
        self.recount(&s);
    }

    /// Ejects an endpoint until `until` (tests).
    #[cfg(test)]
    pub fn eject_until(&self, endpoint: SocketAddr, until: Instant) {
        let mut s = self.lock();
        s.hosts.entry(endpoint).or_default().ejected_until = Some(until);
        self.recount(&s);
    }

    fn recount(&self, s: &State) {
        let n = s
            .hosts
            .values()
            .filter(|h| h.ejected_until.is_some())
            .count();
        self.ejected.store(n, Ordering::Relaxed);
    }

    /// Records one outcome for `endpoint` of a cluster with `endpoints` and outlier detection
    /// `plan` (none: nothing is ejected, but a working connection still lifts an ejection).
    /// Returns the ejections it caused.
    pub fn record(
        &self,
        plan: Option<&OutlierPlan>,
        endpoints: &[EndpointPlan],
        endpoint: SocketAddr,
        outcome: Outcome,
        now: Instant,
    ) -> Vec<(SocketAddr, Ejection)> {
        let Some(plan) = plan else {
            if matches!(outcome, Outcome::Connected { .. })
                && self.ejected.load(Ordering::Relaxed) > 0
            {
                let mut s = self.lock();
                if let Some(h) = s.hosts.get_mut(&endpoint) {
                    h.ejected_until = None;
                }
                self.recount(&s);
            }
            return Vec::new();
        };
        let mut s = self.lock();
        let mut out = sweep(&mut s, plan, endpoints, now);
        // Without split errors, a connection failure is a 503 and a final connection a 200.
        let outcome = match outcome {
            Outcome::LocalFailure if !plan.split_local_origin => Outcome::Status(503),
            Outcome::Connected { last: true } if !plan.split_local_origin => Outcome::Status(200),
            o => o,
        };
        let h = s.hosts.entry(endpoint).or_default();
        let mut trip = None;
        match outcome {
            Outcome::LocalFailure => {
                h.local.1 += 1;
                h.consecutive_local += 1;
                if plan
                    .consecutive_local_origin_failure
                    .is_some_and(|n| h.consecutive_local >= n)
                {
                    trip = Some(Ejection::ConsecutiveLocalOriginFailure);
                }
            }
            Outcome::Connected { .. } => {
                if plan.split_local_origin {
                    h.local.0 += 1;
                    h.consecutive_local = 0;
                }
                // A working connection lifts an ejection (kuma-dp tried it as a last resort).
                h.ejected_until = None;
            }
            Outcome::Status(code) => {
                if (500..600).contains(&code) {
                    h.external.1 += 1;
                    if (502..=504).contains(&code) {
                        h.consecutive_gateway += 1;
                    } else {
                        h.consecutive_gateway = 0;
                    }
                    h.consecutive_5xx += 1;
                    if plan.consecutive_5xx.is_some_and(|n| h.consecutive_5xx >= n) {
                        trip = Some(Ejection::Consecutive5xx);
                    } else if plan
                        .consecutive_gateway_failure
                        .is_some_and(|n| h.consecutive_gateway >= n)
                    {
                        trip = Some(Ejection::ConsecutiveGatewayFailure);
                    }
                } else {
                    h.external.0 += 1;
                    h.consecutive_5xx = 0;
                    h.consecutive_gateway = 0;
                }
            }
        }
        if let Some(why) = trip
            && eject(&mut s, plan, endpoints, endpoint, now)
        {
            out.push((endpoint, why));
        }
        self.recount(&s);
        out
    }

    /// Runs the interval's work if it is due (rates, ejection counts); the data path runs
    /// it through `record`, tests directly.
    #[cfg(test)]
    pub fn sweep(
        &self,
        plan: &OutlierPlan,
        endpoints: &[EndpointPlan],
        now: Instant,
    ) -> Vec<(SocketAddr, Ejection)> {
        let mut s = self.lock();
        let out = sweep(&mut s, plan, endpoints, now);
        self.recount(&s);
        out
    }
}

/// Ejects `endpoint` unless that would eject more than `max_ejection_percent` of `endpoints`.
fn eject(
    s: &mut State,
    plan: &OutlierPlan,
    endpoints: &[EndpointPlan],
    endpoint: SocketAddr,
    now: Instant,
) -> bool {
    let total = endpoints.len().max(1);
    let ejected = endpoints
        .iter()
        .filter(|e| e.address != endpoint)
        .filter(|e| {
            s.hosts
                .get(&e.address)
                .and_then(|h| h.ejected_until)
                .is_some_and(|u| u > now)
        })
        .count();
    if (ejected + 1) * 100 > plan.max_ejection_percent as usize * total {
        return false;
    }
    let h = s.hosts.entry(endpoint).or_default();
    if h.ejected_until.is_some_and(|u| u > now) {
        return false;
    }
    h.ejections += 1;
    let time = plan
        .base_ejection_time
        .saturating_mul(h.ejections)
        .min(plan.max_ejection_time.max(plan.base_ejection_time));
    h.ejected_until = Some(now + time);
    h.consecutive_5xx = 0;
    h.consecutive_gateway = 0;
    h.consecutive_local = 0;
    true
}

/// (ok, failed) of one host for one kind of errors.
type Counts = fn(&Host) -> (u32, u32);

/// Every interval: expired ejections end, hosts not ejected take one off their ejection count,
/// and the rate detectors judge the interval's requests, which then start over.
fn sweep(
    s: &mut State,
    plan: &OutlierPlan,
    endpoints: &[EndpointPlan],
    now: Instant,
) -> Vec<(SocketAddr, Ejection)> {
    let due = match s.next_sweep {
        None => {
            s.next_sweep = Some(now + plan.interval);
            false
        }
        Some(t) => t <= now,
    };
    if !due {
        return Vec::new();
    }
    s.next_sweep = Some(now + plan.interval);
    s.hosts
        .retain(|a, _| endpoints.iter().any(|e| e.address == *a));
    for h in s.hosts.values_mut() {
        if h.ejected_until.is_some_and(|u| u <= now) {
            h.ejected_until = None;
        } else if h.ejected_until.is_none() {
            h.ejections = h.ejections.saturating_sub(1);
        }
    }
    let mut verdicts = Vec::new();
    // (ok, failed) per host: external and local-origin separately when split, else together.
    let kinds: Vec<Counts> = if plan.split_local_origin {
        vec![|h| h.external, |h| h.local]
    } else {
        vec![|h| (h.external.0 + h.local.0, h.external.1 + h.local.1)]
    };
    for counts in kinds {
        let sample: Vec<(SocketAddr, (u32, u32))> = s
            .hosts
            .iter()
            .filter(|(_, h)| h.ejected_until.is_none())
            .map(|(a, h)| (*a, counts(h)))
            .collect();
        if let Some(rate) = &plan.success_rate {
            verdicts.extend(
                success_rate(rate, &sample)
                    .into_iter()
                    .map(|a| (a, Ejection::SuccessRate)),
            );
        }
        if let Some(rate) = &plan.failure_percentage {
            verdicts.extend(
                failure_percentage(rate, &sample)
                    .into_iter()
                    .map(|a| (a, Ejection::FailurePercentage)),
            );
        }
    }
    for h in s.hosts.values_mut() {
        h.external = (0, 0);
        h.local = (0, 0);
    }
    let mut out = Vec::new();
    for (a, why) in verdicts {
        if !out.iter().any(|(x, _)| *x == a) && eject(s, plan, endpoints, a, now) {
            out.push((a, why));
        }
    }
    out
}

/// Envoy's success-rate detector: among hosts with at least `request_volume` requests (and
/// only when at least `minimum_hosts` have them), those below mean − factor × stdev.
pub fn success_rate(rate: &RatePlan, sample: &[(SocketAddr, (u32, u32))]) -> Vec<SocketAddr> {
    let rates: Vec<(SocketAddr, f64)> = sample
        .iter()
        .filter(|(_, (ok, bad))| ok + bad >= rate.request_volume.max(1))
        .map(|(a, (ok, bad))| (*a, 100.0 * f64::from(*ok) / f64::from(ok + bad)))
        .collect();
    if rates.len() < rate.minimum_hosts.max(1) as usize {
        return Vec::new();
    }
    let n = rates.len() as f64;
    let mean = rates.iter().map(|(_, r)| r).sum::<f64>() / n;
    let var = rates.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
    let limit = mean - var.sqrt() * f64::from(rate.threshold) / 1000.0;
    rates
        .into_iter()
        .filter(|(_, r)| *r < limit)
        .map(|(a, _)| a)
        .collect()
}

/// Envoy's failure-percentage detector: hosts (with enough requests, enough of them) whose
/// share of failures is at least `threshold` percent.
pub fn failure_percentage(rate: &RatePlan, sample: &[(SocketAddr, (u32, u32))]) -> Vec<SocketAddr> {
    let hosts: Vec<(SocketAddr, f64)> = sample
        .iter()
        .filter(|(_, (ok, bad))| ok + bad >= rate.request_volume.max(1))
        .map(|(a, (ok, bad))| (*a, 100.0 * f64::from(*bad) / f64::from(ok + bad)))
        .collect();
    if hosts.len() < rate.minimum_hosts.max(1) as usize {
        return Vec::new();
    }
    hosts
        .into_iter()
        .filter(|(_, f)| *f >= f64::from(rate.threshold))
        .map(|(a, _)| a)
        .collect()
}

#[cfg(test)]
mod tests;
