//! The metrics Kuma keeps for each discovery service (`pkg/util/xds/stats_callbacks.go`), under
//! a prefix: `xds` for the DP server, `kds_delta` for KDS.

use crate::{Counter, Family, Gauge, Histogram, MILLISECONDS_BUCKETS, Registry};

/// `<ds>_streams_active`, `<ds>_requests_received{type_url,confirmation}`,
/// `<ds>_responses_sent{type_url}` and `<ds>_delivery` (ms from sending a version to its ACK).
#[derive(Clone, Debug)]
pub struct DiscoveryMetrics {
    pub streams_active: Gauge,
    requests_received: Family<Counter>,
    responses_sent: Family<Counter>,
    pub delivery: Histogram,
}

/// Whether a peer accepted what it was sent (the `confirmation` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation {
    Ack,
    Nack,
}

impl DiscoveryMetrics {
    pub fn register(registry: &Registry, prefix: &str) -> Self {
        DiscoveryMetrics {
            streams_active: registry.gauge(
                &format!("{prefix}_streams_active"),
                "Number of active connections between a server and a client",
            ),
            requests_received: registry.counter_family(
                &format!("{prefix}_requests_received"),
                "Number of confirmations requests from a client",
                &["type_url", "confirmation"],
            ),
            responses_sent: registry.counter_family(
                &format!("{prefix}_responses_sent"),
                "Number of responses sent by the server to a client",
                &["type_url"],
            ),
            delivery: registry.histogram(
                &format!("{prefix}_delivery"),
                "Milliseconds from sending a configuration until the client acknowledged it",
                MILLISECONDS_BUCKETS,
            ),
        }
    }

    pub fn request_received(&self, type_url: &str, confirmation: Confirmation) {
        let c = match confirmation {
            Confirmation::Ack => "ACK",
            Confirmation::Nack => "NACK",
        };
        self.requests_received.with(&[type_url, c]).inc();
    }

    pub fn response_sent(&self, type_url: &str) {
        self.responses_sent.with(&[type_url]).inc();
    }
}
