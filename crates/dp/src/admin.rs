//! Admin server on 127.0.0.1: `/ready`, `/stats`, `/stats/prometheus`, `/config_dump`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;

use crate::runtime::Runtime;
use crate::stats::Stats;

#[derive(Clone)]
struct Admin {
    stats: Arc<Stats>,
    runtime: watch::Receiver<Arc<Runtime>>,
    ready: watch::Receiver<bool>,
    started: std::time::Instant,
}

pub fn router(
    stats: Arc<Stats>,
    runtime: watch::Receiver<Arc<Runtime>>,
    ready: watch::Receiver<bool>,
) -> Router {
    Router::new()
        .route("/ready", get(ready_handler))
        .route(
            "/stats",
            get(|State(a): State<Admin>| async move { a.stats.text_with(cluster_stats(&a)) }),
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
        .with_state(Admin {
            stats,
            runtime,
            ready,
            started: std::time::Instant::now(),
        })
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
