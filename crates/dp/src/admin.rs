//! Admin server on 127.0.0.1: `/ready`, `/stats`, `/stats/prometheus`, `/clusters`,
//! `/config_dump`. The control plane reads `/stats` and `/clusters` over the proxy admin stream
//! (`xds_client.rs`), from the same [`AdminView`].

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;

use crate::runtime::Runtime;
use crate::stats::Stats;

/// What the admin API shows: the proxy's stats, its running configuration and readiness.
#[derive(Clone)]
pub struct AdminView {
    stats: Arc<Stats>,
    runtime: watch::Receiver<Arc<Runtime>>,
    ready: watch::Receiver<bool>,
    started: std::time::Instant,
}

impl AdminView {
    pub fn new(
        stats: Arc<Stats>,
        runtime: watch::Receiver<Arc<Runtime>>,
        ready: watch::Receiver<bool>,
    ) -> Self {
        AdminView {
            stats,
            runtime,
            ready,
            started: std::time::Instant::now(),
        }
    }

    /// Envoy's text `/stats`: `name: value` lines.
    pub fn stats_text(&self) -> String {
        self.stats.text_with(cluster_stats(self))
    }

    /// Envoy's text `/clusters`: `<cluster>::<endpoint>::<field>::<value>` lines for each
    /// endpoint (health flags, weight, zone, priority), after a line naming each cluster.
    pub fn clusters_text(&self) -> String {
        let rt = self.runtime.borrow().clone();
        clusters_text(&rt, std::time::Instant::now())
    }
}

type Admin = AdminView;

pub fn router(view: AdminView) -> Router {
    Router::new()
        .route("/ready", get(ready_handler))
        .route(
            "/stats",
            get(|State(a): State<Admin>| async move { a.stats_text() }),
        )
        .route(
            "/clusters",
            get(|State(a): State<Admin>| async move { a.clusters_text() }),
        )
        .route(
            "/stats/prometheus",
            get(|State(a): State<Admin>| async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        meshzone_metrics::CONTENT_TYPE,
                    )],
                    a.stats.prometheus_with(cluster_stats(&a)),
                )
            }),
        )
        .route("/config_dump", get(config_dump))
        .with_state(view)
}

/// Envoy's `/clusters` text for the clusters in `rt`, sorted by name. An endpoint failing its
/// active check is `/failed_active_hc`, an ejected one `/failed_outlier_check`, both may show.
fn clusters_text(rt: &Runtime, now: std::time::Instant) -> String {
    use std::fmt::Write;
    let mut names: Vec<&String> = rt.clusters.keys().collect();
    names.sort();
    let mut out = String::new();
    for name in names {
        let c = &rt.clusters[name];
        let _ = writeln!(out, "{name}::observability_name::{name}");
        for e in c.endpoints() {
            let a = e.address;
            let mut flags = String::new();
            if c.health.active.healthy_count(&[a]) == 0 {
                flags.push_str("/failed_active_hc");
            }
            if c.health.is_ejected(a, now) {
                flags.push_str("/failed_outlier_check");
            }
            if flags.is_empty() {
                flags.push_str("healthy");
            }
            let zone = e.zone.as_deref().unwrap_or("");
            for (field, value) in [
                ("health_flags", flags),
                ("weight", e.weight.to_string()),
                ("region", String::new()),
                ("zone", zone.to_string()),
                ("sub_zone", String::new()),
                ("priority", e.priority.to_string()),
            ] {
                let _ = writeln!(out, "{name}::{a}::{field}::{value}");
            }
        }
    }
    out
}

/// Stats kept elsewhere: the clusters' active health checks, and Envoy's `server.live` and
/// `server.uptime` (seconds).
fn cluster_stats(a: &Admin) -> Vec<(String, u64)> {
    let rt = a.runtime.borrow().clone();
    extra_stats(&rt, *a.ready.borrow(), a.started)
}

/// The stats kept outside [`Stats`] (see `cluster_stats`), for the MeshMetric endpoints too.
pub(crate) fn extra_stats(
    rt: &Runtime,
    ready: bool,
    started: std::time::Instant,
) -> Vec<(String, u64)> {
    let server = [
        ("server.live".to_string(), u64::from(ready)),
        ("server.uptime".to_string(), started.elapsed().as_secs()),
    ];
    rt.clusters
        .values()
        .flat_map(|c| c.health_check_stats())
        .chain(rt.trace_counters.stats())
        .chain(server)
        .collect()
}

async fn ready_handler(State(a): State<Admin>) -> impl IntoResponse {
    if *a.ready.borrow() {
        (StatusCode::OK, "LIVE")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "NOT READY: waiting for configuration",
        )
    }
}

/// The configuration the proxy runs (private keys are never included).
async fn config_dump(State(a): State<Admin>) -> impl IntoResponse {
    let rt = a.runtime.borrow().clone();
    axum::Json(serde_json::to_value(&rt.config).unwrap_or_default())
}
