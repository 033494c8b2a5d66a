//! Several kuma-cp instances on one Postgres store: which one leads, which are alive.
//!
//! One instance holds the lease `kuma-cp-leader` (5 s, renewed every second, as Kuma's pglock
//! settings) and runs the leader-only components (`Supervisor::leader_only`); every instance
//! writes a heartbeat. The leader fences itself: it stops leading when its last successful
//! renewal was sent more than `lease - heartbeat` ago, which is before the database can let the
//! lease lapse and hand it to another instance, so two instances never lead at once while their
//! clocks run at the same rate. Writes of leader-only components that race anyway are caught by
//! the store's optimistic concurrency (a stale version is refused).
//!
//! On another store (SQLite, memory) there is one instance: it always leads.

use std::sync::Arc;
use std::time::Duration;

use meshzone_store::postgres::PostgresBackend;
use meshzone_store::postgres::lease::LeaseState;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

/// The lease's name in the `leases` table.
pub const LEASE: &str = "kuma-cp-leader";

#[derive(Debug, Clone, Copy)]
pub struct ElectionTimings {
    /// How long a taken lease lasts without renewal.
    pub lease: Duration,
    /// How often the leader renews it, every instance tries to take it and beats its heartbeat.
    pub heartbeat: Duration,
}

impl Default for ElectionTimings {
    fn default() -> Self {
        ElectionTimings {
            lease: Duration::from_secs(5),
            heartbeat: Duration::from_secs(1),
        }
    }
}

impl ElectionTimings {
    /// An instance whose heartbeat is older than this is dead.
    pub fn alive_within(&self) -> Duration {
        self.lease * 3
    }
}

/// Whether this instance leads (a `watch` that leader-only tasks follow).
pub struct Leadership {
    tx: Arc<watch::Sender<bool>>,
    gauge: meshzone_metrics::Gauge,
}

impl Leadership {
    pub fn new(registry: &meshzone_metrics::Registry, leading: bool) -> Self {
        let gauge = registry.gauge("leader", "1 when this instance is the leader");
        gauge.set(i64::from(leading));
        Leadership {
            tx: Arc::new(watch::channel(leading).0),
            gauge,
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    fn set(&self, leading: bool) {
        self.gauge.set(i64::from(leading));
        self.tx.send_if_modified(|now| {
            let changed = *now != leading;
            *now = leading;
            changed
        });
    }

    fn is_leading(&self) -> bool {
        *self.tx.borrow()
    }
}

/// Takes or keeps the lease and beats the heartbeat, every `heartbeat`, until dropped.
pub async fn campaign(
    backend: PostgresBackend,
    instance_id: String,
    leadership: Arc<Leadership>,
    timings: ElectionTimings,
) -> Result<(), String> {
    // Lead until this moment (the self-fence), if at all.
    let mut lead_until: Option<Instant> = None;
    loop {
        let asked = Instant::now();
        // A renewal that hangs must not keep a leader leading past its fence.
        let budget = lead_until
            .map(|t| t.saturating_duration_since(asked))
            .unwrap_or(timings.lease)
            .max(timings.heartbeat / 4);
        match tokio::time::timeout(
            budget,
            backend.try_lease(LEASE, &instance_id, timings.lease),
        )
        .await
        {
            Ok(Ok(LeaseState::Held { term })) => {
                if !leadership.is_leading() {
                    info!(
                        term,
                        instance = instance_id,
                        "this instance is now the leader"
                    );
                }
                lead_until = Some(asked + timings.lease.saturating_sub(timings.heartbeat));
                leadership.set(true);
            }
            Ok(Ok(LeaseState::HeldBy { holder })) => {
                if leadership.is_leading() {
                    warn!(leader = holder, "another instance took the lead");
                }
                lead_until = None;
                leadership.set(false);
            }
            Ok(Err(e)) => warn!(error = %e, "cannot take or renew the leader lease"),
            Err(_) => warn!(after = ?budget, "taking or renewing the leader lease timed out"),
        }
        if lead_until.is_some_and(|t| Instant::now() >= t) {
            warn!("could not renew the leader lease in time: stopping the leader-only components");
            lead_until = None;
            leadership.set(false);
        }
        if let Err(e) = backend.heartbeat(&instance_id).await {
            warn!(error = %e, "cannot record this instance's heartbeat");
        }
        let next = asked + timings.heartbeat;
        match lead_until {
            Some(fence) if fence < next => {
                tokio::time::sleep_until(fence).await;
            }
            _ => tokio::time::sleep_until(next).await,
        }
    }
}

/// Which control-plane instances are dead, for closing the subscriptions they left open: on a
/// store of its own an instance is the only one (every other id is a previous run); on Postgres
/// the ones without a recent heartbeat.
pub async fn dead_instances(
    backend: Option<&PostgresBackend>,
    own: &str,
    timings: ElectionTimings,
) -> Result<impl Fn(&str) -> bool + use<>, String> {
    let live = match backend {
        None => Vec::new(),
        Some(b) => b
            .live_instances(timings.alive_within())
            .await
            .map_err(|e| e.to_string())?,
    };
    let own = own.to_string();
    Ok(move |id: &str| id != own && !live.iter().any(|l| l == id))
}
