//! The API's request metric under Kuma's name, exported on the diagnostics server's `/metrics`:
//! `api_server_http_request_duration_seconds{handler,method,code}`. `handler` is the route
//! pattern (`/meshes/{mesh}/{ws}/{name}`), so the series are bounded by the routes.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use meshzone_metrics::{Family, Histogram, Registry, SECONDS_BUCKETS};

/// Metrics kept by the API. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct ApiMetrics {
    durations: Family<Histogram>,
}

impl Default for ApiMetrics {
    /// Metrics that go nowhere (tests).
    fn default() -> Self {
        Self::register(&Registry::new())
    }
}

impl ApiMetrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &Registry) -> Self {
        ApiMetrics {
            durations: registry.histogram_family(
                "api_server_http_request_duration_seconds",
                "Seconds the API server took to answer, by route pattern, method and status code",
                &["handler", "method", "code"],
                SECONDS_BUCKETS,
            ),
        }
    }
}

pub async fn count_requests(State(m): State<ApiMetrics>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let handler = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    m.durations
        .with(&[&handler, &method, resp.status().as_str()])
        .observe_secs(started.elapsed());
    resp
}
