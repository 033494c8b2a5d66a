//! Diagnostics server (:5680): `/ready` (503 with the reason while starting, stopping, or while a
//! supervised task is down), `/healthy` and Prometheus `/metrics` under Kuma's exact names
//! (classic text format, ADR 0006).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use meshzone_lifecycle::Readiness;
use meshzone_metrics::{Family, Gauge, Registry};
use meshzone_model::ResourceType;
use meshzone_store::Store;
use tracing::warn;

/// What `/metrics` reads: the registry, and the store whose resources it counts at each scrape.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    resources_count: Family<Gauge>,
    store: Store,
}

impl Metrics {
    /// Registers the metrics this process keeps itself: `cp_info`, `resources_count`.
    pub fn register(registry: Registry, store: Store, info: &[(&str, &str)]) -> Self {
        registry
            .info_gauge("cp_info", "Static information about the CP instance", info)
            .set(1);
        // `leader` is kept by the election (`leader.rs`).
        let resources_count = registry.gauge_family(
            "resources_count",
            "Number of resources of each type in the store",
            &["resource_type", "tenant"],
        );
        Metrics {
            registry,
            resources_count,
            store,
        }
    }

    async fn count_resources(&self) {
        for rt in ResourceType::all() {
            match self.store.list(rt, None).await {
                Ok(all) => self
                    .resources_count
                    .with(&[rt.name(), ""])
                    .set(i64::try_from(all.len()).unwrap_or(i64::MAX)),
                Err(e) => {
                    warn!(resource_type = rt.name(), error = %e, "cannot count resources for /metrics")
                }
            }
        }
    }
}

#[derive(Clone)]
struct Diag {
    ready: Readiness,
    metrics: Metrics,
}

pub fn router(ready: Readiness, metrics: Metrics) -> Router {
    Router::new()
        .route("/ready", get(ready_handler))
        .route("/healthy", get(|| async { "OK" }))
        .route("/metrics", get(metrics_handler))
        .with_state(Diag { ready, metrics })
}

async fn ready_handler(State(d): State<Diag>) -> impl IntoResponse {
    match d.ready.check() {
        Ok(()) => (StatusCode::OK, "OK".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
    }
}

async fn metrics_handler(State(d): State<Diag>) -> impl IntoResponse {
    d.metrics.count_resources().await;
    let mut out = d.metrics.registry.encode();
    meshzone_metrics::process::append(&mut out);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, meshzone_metrics::CONTENT_TYPE)],
        out,
    )
}
