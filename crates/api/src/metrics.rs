//! Request counters of the API, exported on the diagnostics server's `/metrics`.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub status_code: u16,
}

/// Counters kept by the API. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
}

impl ApiMetrics {
    /// Creates the counters and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = ApiMetrics::default();
        registry.register(
            "api_server_http_requests",
            "REST API requests by method and status code",
            m.requests.clone(),
        );
        m
    }
}

pub async fn count_requests(State(m): State<ApiMetrics>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let resp = next.run(req).await;
    m.requests
        .get_or_create(&RequestLabels {
            method,
            status_code: resp.status().as_u16(),
        })
        .inc();
    resp
}
