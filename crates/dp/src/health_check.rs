//! Active health checking (Envoy's `Cluster.health_checks`, Kuma's MeshHealthCheck): for each
//! cluster whose plan has a check, one supervised task, owned by the cluster's runtime object,
//! probes every endpoint on its own timer (`probe.rs` moves the bytes) and records the verdicts
//! in the cluster's [`ActiveHealth`], which the data path reads when it picks an endpoint.
//!
//! As in Envoy: a network failure (connect, TLS, timeout, reset) counts towards
//! `unhealthy_threshold`, any other failure (a status not expected, NOT_SERVING) makes the
//! endpoint unhealthy at once unless the status is retriable; `healthy_threshold` consecutive
//! passes make it healthy again; the wait after a probe follows Envoy's interval choice
//! (`next_wait`) plus jitter. Unlike Envoy, an endpoint starts healthy (Envoy starts it
//! unhealthy until its first probe passes), so a new endpoint takes traffic at once; and the
//! probes of a cluster that has not had traffic yet (`no_traffic_interval`) are brought forward
//! as soon as it gets its first request.
//!
//! The state is kept across rebuilds of its cluster (it lives in the carried-over `Health`);
//! a rebuilt cluster's new task takes over and the old one stops at its next probe.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use meshzone_xds::decode::HealthCheckPlan;
use rustls::ClientConfig;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};

mod probe;

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// No answer: connect, TLS, timeout, reset or close (counts towards the threshold).
    NetworkFailure,
    /// An answer that is a retriable failure (counts towards the threshold).
    RetriableFailure,
    /// An answer that is a failure (unhealthy at once).
    Failure,
}

/// Whether a probe changed the endpoint's health (Envoy's `HealthTransition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Unchanged,
    Changed,
    /// Counting towards a threshold.
    ChangePending,
}

/// One endpoint's active-check state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HostCheck {
    pub failed: bool,
    passes: u32,
    failures: u32,
}

impl HostCheck {
    /// Records a verdict under the plan's thresholds (Envoy's `handleSuccess`/`handleFailure`).
    pub fn record(&mut self, verdict: Verdict, plan: &HealthCheckPlan) -> Transition {
        if verdict == Verdict::Pass {
            self.failures = 0;
            if !self.failed {
                return Transition::Unchanged;
            }
            self.passes += 1;
            if self.passes >= plan.healthy_threshold {
                self.failed = false;
                self.passes = 0;
                return Transition::Changed;
            }
            return Transition::ChangePending;
        }
        self.passes = 0;
        if self.failed {
            return Transition::Unchanged;
        }
        self.failures += 1;
        if verdict == Verdict::Failure || self.failures >= plan.unhealthy_threshold {
            self.failed = true;
            self.failures = 0;
            return Transition::Changed;
        }
        Transition::ChangePending
    }
}

/// The wait before the next probe, before jitter (Envoy's `HealthCheckerImplBase::interval`):
/// a cluster without traffic yet uses `no_traffic_interval` (or `no_traffic_healthy_interval`
/// after a pass); otherwise a failed probe waits `unhealthy_interval`
/// (`unhealthy_edge_interval` while a change is pending) and a passed one `interval`
/// (`healthy_edge_interval` while a change is pending).
pub fn next_wait(plan: &HealthCheckPlan, passed: bool, t: Transition, used: bool) -> Duration {
    let pending = t == Transition::ChangePending;
    if !used {
        return match plan.no_traffic_healthy_interval {
            Some(d) if passed && !pending => d,
            _ => plan.no_traffic_interval,
        };
    }
    let unhealthy = plan.unhealthy_interval.unwrap_or(plan.interval);
    match (passed, pending) {
        (false, true) => plan.unhealthy_edge_interval.unwrap_or(unhealthy),
        (false, false) => unhealthy,
        (true, true) => plan.healthy_edge_interval.unwrap_or(plan.interval),
        (true, false) => plan.interval,
    }
}

/// `base` plus Envoy's jitters: below `interval_jitter_percent` of `base` and below
/// `interval_jitter`; `fraction` draws uniformly from `[0, 1)`.
pub fn jittered(
    plan: &HealthCheckPlan,
    base: Duration,
    mut fraction: impl FnMut() -> f64,
) -> Duration {
    let mut d = base;
    if plan.interval_jitter_percent > 0 {
        d += base.mul_f64(f64::from(plan.interval_jitter_percent) / 100.0 * fraction());
    }
    if !plan.interval_jitter.is_zero() {
        d += plan.interval_jitter.mul_f64(fraction());
    }
    d
}

/// A uniform draw from `[0, 1)`.
fn fraction() -> f64 {
    f64::from(crate::faults::draw()) / 1_000_000.0
}

/// Envoy's `cluster.<name>.health_check.*` counters.
#[derive(Default)]
pub struct CheckCounters {
    pub attempt: AtomicU64,
    pub success: AtomicU64,
    pub failure: AtomicU64,
    pub network_failure: AtomicU64,
}

/// The active-check state of one cluster's endpoints, read by the data path.
#[derive(Default)]
pub struct ActiveHealth {
    hosts: Mutex<HashMap<SocketAddr, HostCheck>>,
    /// Endpoints that failed their checks: lets the common case (none) skip the lock.
    failed: AtomicUsize,
    /// Whether the cluster has had traffic (Envoy's "no traffic" intervals end then).
    used: AtomicBool,
    first_use: Notify,
    /// The checker task that owns the probes; older ones stop.
    generation: AtomicU64,
    pub counters: CheckCounters,
}

impl ActiveHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, HostCheck>> {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the endpoint failed its active checks.
    pub fn is_failed(&self, endpoint: SocketAddr) -> bool {
        if self.failed.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.lock().get(&endpoint).is_some_and(|h| h.failed)
    }

    /// Notes that the data path picked an endpoint of the cluster.
    pub fn mark_used(&self) {
        if !self.used.load(Ordering::Relaxed) && !self.used.swap(true, Ordering::Relaxed) {
            self.first_use.notify_waiters();
        }
    }

    fn is_used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }

    /// Records a verdict for an endpoint; returns the new state and the transition.
    pub fn record(
        &self,
        endpoint: SocketAddr,
        verdict: Verdict,
        plan: &HealthCheckPlan,
    ) -> (HostCheck, Transition) {
        let c = &self.counters;
        c.attempt.fetch_add(1, Ordering::Relaxed);
        match verdict {
            Verdict::Pass => c.success.fetch_add(1, Ordering::Relaxed),
            Verdict::NetworkFailure => {
                c.network_failure.fetch_add(1, Ordering::Relaxed);
                c.failure.fetch_add(1, Ordering::Relaxed)
            }
            Verdict::Failure | Verdict::RetriableFailure => {
                c.failure.fetch_add(1, Ordering::Relaxed)
            }
        };
        let mut hosts = self.lock();
        let host = hosts.entry(endpoint).or_default();
        let t = host.record(verdict, plan);
        let state = *host;
        self.recount(&hosts);
        (state, t)
    }

    /// Forgets endpoints the cluster no longer has.
    fn retain(&self, endpoints: &[SocketAddr]) {
        let mut hosts = self.lock();
        hosts.retain(|a, _| endpoints.contains(a));
        self.recount(&hosts);
    }

    fn recount(&self, hosts: &HashMap<SocketAddr, HostCheck>) {
        let n = hosts.values().filter(|h| h.failed).count();
        self.failed.store(n, Ordering::Relaxed);
    }

    /// How many of these endpoints pass their checks (the `health_check.healthy` gauge).
    pub fn healthy_count(&self, endpoints: &[SocketAddr]) -> usize {
        let hosts = self.lock();
        endpoints
            .iter()
            .filter(|a| !hosts.get(a).is_some_and(|h| h.failed))
            .count()
    }
}

/// Where and how a cluster's probes go.
pub struct Target {
    pub cluster: String,
    pub plan: HealthCheckPlan,
    /// The cluster's upstream mTLS and SNI (how a probe reaches a zone ingress, which routes
    /// it by SNI to an instance behind it).
    pub tls: Option<(Arc<ClientConfig>, Option<String>)>,
}

/// The running checker of one cluster; dropping it stops every probe.
pub struct Checker {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the checker of a cluster, outside a Tokio runtime (pure unit tests) nothing runs.
pub fn start(
    target: Target,
    endpoints: Vec<SocketAddr>,
    health: Arc<crate::runtime::Health>,
) -> Option<Checker> {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        warn!(
            cluster = target.cluster,
            "no runtime: active health checks do not run"
        );
        return None;
    };
    let generation = health.active.generation.fetch_add(1, Ordering::Relaxed) + 1;
    health.active.retain(&endpoints);
    let task = handle.spawn(supervise(Arc::new(target), endpoints, health, generation));
    Some(Checker { task })
}

/// One probing loop per endpoint; a loop that panics is logged and the others go on.
async fn supervise(
    target: Arc<Target>,
    endpoints: Vec<SocketAddr>,
    health: Arc<crate::runtime::Health>,
    generation: u64,
) {
    let mut loops = JoinSet::new();
    for endpoint in endpoints {
        loops.spawn(endpoint_loop(
            target.clone(),
            endpoint,
            health.clone(),
            generation,
        ));
    }
    while let Some(done) = loops.join_next().await {
        if let Err(e) = done
            && e.is_panic()
        {
            warn!(cluster = target.cluster, error = %e, "a health check loop panicked");
        }
    }
}

async fn endpoint_loop(
    target: Arc<Target>,
    endpoint: SocketAddr,
    health: Arc<crate::runtime::Health>,
    generation: u64,
) {
    let plan = &target.plan;
    let active = &health.active;
    tokio::time::sleep(plan.initial_jitter.mul_f64(fraction())).await;
    loop {
        if active.generation.load(Ordering::Relaxed) != generation {
            return;
        }
        let started = Instant::now();
        let verdict = probe::probe(&target, endpoint).await;
        let (state, t) = active.record(endpoint, verdict, plan);
        if verdict == Verdict::Pass {
            // A passed check lifts an outlier ejection (Envoy's
            // `successful_active_health_check_uneject_host`, on by default).
            health.lift_ejection(endpoint);
        }
        if t == Transition::Changed {
            info!(
                cluster = target.cluster,
                %endpoint,
                healthy = !state.failed,
                ?verdict,
                "active health check changed the endpoint's health"
            );
        }
        let passed = verdict == Verdict::Pass;
        // Registered before reading `used`, so a first request in between is not missed.
        let first_use = active.first_use.notified();
        tokio::pin!(first_use);
        first_use.as_mut().enable();
        let used = active.is_used();
        let wait = jittered(plan, next_wait(plan, passed, t, used), fraction);
        if used {
            tokio::time::sleep_until(started + wait).await;
            continue;
        }
        // Not used yet: when the first request comes, wait the used interval instead.
        tokio::select! {
            _ = tokio::time::sleep_until(started + wait) => {}
            _ = first_use => {
                let wait = jittered(plan, next_wait(plan, passed, t, true), fraction);
                tokio::time::sleep_until(started + wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod socket_tests;
