//! Diagnostics server (:5680): `/ready` (503 with the reason while starting, stopping, or while a
//! supervised task is down), `/healthy` and Prometheus `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use meshzone_lifecycle::Readiness;
use prometheus_client::registry::Registry;

#[derive(Clone)]
struct Diag {
    ready: Readiness,
    registry: Arc<Registry>,
}

pub fn router(ready: Readiness, registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/ready", get(ready_handler))
        .route("/healthy", get(|| async { "OK" }))
        .route("/metrics", get(metrics_handler))
        .with_state(Diag { ready, registry })
}

async fn ready_handler(State(d): State<Diag>) -> impl IntoResponse {
    match d.ready.check() {
        Ok(()) => (StatusCode::OK, "OK".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
    }
}

async fn metrics_handler(State(d): State<Diag>) -> impl IntoResponse {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &d.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            out,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
