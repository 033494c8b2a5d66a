//! MeshTrafficPermission on kuma-dp's inbound side: the decoded RBAC plan of a listener judged
//! against the peer certificate's URI SANs (`spiffe://…`, `kuma://<tag>/<value>`; none for a
//! plaintext peer).
//!
//! - TCP: judged once, after the handshake and before the application is dialled; a denied
//!   connection is closed with no byte sent on.
//! - HTTP: judged per request, by the newest configuration; a denied request gets Envoy's 403
//!   `RBAC: access denied`.
//! - Counted like Envoy: `<stat_prefix>rbac.allowed`, `.denied`, `.shadow_denied`.
//!
//! Better than Envoy (envoy#14504, where a connection allowed once lives on after a deny):
//! every live inbound connection is kept in a [`Registry`] with its peer's SANs, and every
//! accepted update re-judges them; a connection whose client the new configuration denies is
//! closed (TCP, HTTP/1.1 keep-alive and HTTP/2 alike), counted as
//! `listener.<name>.rbac.closed_on_update`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use meshzone_xds::decode::{ProxyConfig, RbacPlan, Verdict};
use tokio::sync::{Notify, watch};

use crate::runtime::Runtime;
use crate::stats::Stats;

/// The decision for a peer on a listener with this plan; no plan allows everyone.
pub fn judge(plan: Option<&RbacPlan>, sans: &[String]) -> Verdict {
    match plan {
        None => Verdict {
            allowed: true,
            shadow_denied: false,
        },
        Some(p) => p.evaluate(sans),
    }
}

/// Counts one decision under the plan's stats prefix (nothing without a plan).
pub fn count(stats: &Stats, plan: Option<&RbacPlan>, verdict: Verdict) {
    let Some(plan) = plan else { return };
    let prefix = &plan.stat_prefix;
    if verdict.allowed {
        stats.inc(format!("{prefix}rbac.allowed"));
    } else {
        stats.inc(format!("{prefix}rbac.denied"));
    }
    if verdict.shadow_denied {
        stats.inc(format!("{prefix}rbac.shadow_denied"));
    }
}

/// The plan that judges a listener's connections now: the newest configuration's, or, for a
/// listener it no longer has (the connection lives on), the one the connection started with.
fn current<'a>(
    config: &'a ProxyConfig,
    listener: &str,
    started: Option<&'a RbacPlan>,
) -> Option<&'a RbacPlan> {
    let chain = || {
        config
            .listeners
            .values()
            .find_map(|l| l.sni_terminated.values().find(|c| c.name == listener))
    };
    match config.listeners.get(listener).or_else(chain) {
        Some(l) => l.rbac.as_ref(),
        None => started,
    }
}

/// The URI SANs of a peer certificate (empty when it cannot be read).
pub fn peer_sans(cert: &[u8]) -> Vec<String> {
    meshzone_pki::cert_info_der(cert)
        .map(|i| i.uri_sans)
        .unwrap_or_default()
}

struct Live {
    listener: String,
    sans: Arc<[String]>,
    started: Option<RbacPlan>,
    close: Arc<Notify>,
}

/// Live inbound connections with their peers, re-judged on every accepted update.
#[derive(Default)]
pub struct Registry {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Live>>,
}

/// One live connection in the registry; dropping it removes it.
pub struct Registration {
    id: u64,
    registry: Arc<Registry>,
    close: Arc<Notify>,
    pub sans: Arc<[String]>,
}

impl Registration {
    /// Resolves when a configuration update denied this connection's client.
    pub async fn closed(&self) {
        self.close.notified().await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl Registry {
    /// Registers a connection, then judges it by the newest configuration (so an update that
    /// lands between the two is never missed: either it sees the entry or this sees it).
    pub fn admit(
        self: &Arc<Self>,
        listener: &str,
        sans: Vec<String>,
        started: Option<&RbacPlan>,
        latest: &watch::Receiver<Arc<Runtime>>,
    ) -> (Registration, Verdict, Option<RbacPlan>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        let sans: Arc<[String]> = sans.into();
        self.live.lock().unwrap_or_else(|e| e.into_inner()).insert(
            id,
            Live {
                listener: listener.to_string(),
                sans: sans.clone(),
                started: started.cloned(),
                close: close.clone(),
            },
        );
        let rt = latest.borrow().clone();
        let plan = current(&rt.config, listener, started).cloned();
        let verdict = judge(plan.as_ref(), &sans);
        let registration = Registration {
            id,
            registry: self.clone(),
            close,
            sans,
        };
        (registration, verdict, plan)
    }

    /// Re-judges every live connection by `config`; closes those whose client it denies.
    /// Returns how many were closed.
    pub fn reevaluate(&self, config: &ProxyConfig, stats: &Stats) -> usize {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let mut closed = 0;
        for l in live.values() {
            let plan = current(config, &l.listener, l.started.as_ref());
            if !judge(plan, &l.sans).allowed {
                l.close.notify_one();
                stats.inc(format!("listener.{}.rbac.closed_on_update", l.listener));
                closed += 1;
            }
        }
        closed
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// What an HTTP connection needs to judge each of its requests by the newest configuration.
#[derive(Clone)]
pub struct RequestGuard {
    pub listener: String,
    pub sans: Arc<[String]>,
    pub started: Option<RbacPlan>,
    pub latest: watch::Receiver<Arc<Runtime>>,
    /// The client's address, for source-IP hashing.
    pub peer: Option<std::net::IpAddr>,
    /// The connection's addresses, for access logs.
    pub downstream: crate::access_log::Downstream,
}

impl RequestGuard {
    /// Judges and counts one request.
    pub fn allows(&self, stats: &Stats) -> bool {
        let rt = self.latest.borrow().clone();
        let plan = current(&rt.config, &self.listener, self.started.as_ref());
        let verdict = judge(plan, &self.sans);
        count(stats, plan, verdict);
        verdict.allowed
    }
}

/// Envoy's answer to a request its HTTP RBAC filter denies.
pub const DENIED_BODY: &str = "RBAC: access denied";

#[cfg(test)]
pub(crate) mod tests;
