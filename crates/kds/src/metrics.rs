//! KDS metrics under Kuma's names (`pkg/kds/server/metrics.go` and the `kds_delta` discovery
//! family): generation of each batch (ms), its errors, the zones connected to global, and the
//! resources a zone rejected.

use std::collections::BTreeSet;
use std::time::Duration;

use meshzone_metrics::{
    Confirmation, Counter, DiscoveryMetrics, Family, Gauge, Histogram, MILLISECONDS_BUCKETS,
    Registry,
};

#[derive(Clone, Debug)]
pub struct KdsMetrics {
    pub(crate) ds: DiscoveryMetrics,
    generation: Family<Histogram>,
    pub(crate) generation_errors: Counter,
    zone_active_connections: Family<Gauge>,
    nacks: Family<Counter>,
}

/// Why a batch was computed (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The full set, at the start of a stream or after falling behind.
    Resync,
    /// A change in the store.
    Event,
}

impl KdsMetrics {
    pub fn register(registry: &Registry) -> Self {
        KdsMetrics {
            ds: DiscoveryMetrics::register(registry, "kds_delta"),
            generation: registry.histogram_family(
                "kds_delta_generation",
                "Milliseconds to compute a KDS batch",
                &["reason", "result", "zone_name"],
                MILLISECONDS_BUCKETS,
            ),
            generation_errors: registry.counter(
                "kds_delta_generation_errors",
                "Number of KDS batches that could not be computed",
            ),
            zone_active_connections: registry.gauge_family(
                "kds_zone_active_connections",
                "Number of active KDS streams from each zone on global",
                &["zone_name"],
            ),
            nacks: registry.counter_family(
                "kds_nack_total",
                "Number of resources a zone rejected",
                &["zone_name", "resource_type"],
            ),
        }
    }

    /// Metrics that go nowhere (tests, tools).
    pub fn unregistered() -> Self {
        Self::register(&Registry::new())
    }

    pub(crate) fn generated(&self, zone: &str, reason: Reason, changed: bool, took: Duration) {
        let reason = match reason {
            Reason::Resync => "resync",
            Reason::Event => "event",
        };
        let result = if changed { "changed" } else { "no_changes" };
        self.generation
            .with(&[reason, result, zone])
            .observe_ms(took);
    }

    pub(crate) fn zone_connection(&self, zone: &str) -> Gauge {
        self.zone_active_connections.with(&[zone])
    }

    /// A batch of these types was sent.
    pub(crate) fn sent(&self, types: &BTreeSet<&'static str>) {
        for t in types {
            self.ds.response_sent(t);
        }
    }

    /// The peer answered a batch of `types`, rejecting the resources of `rejected` types.
    /// `zone` is set on global, where `kds_nack_total` counts each rejected resource.
    pub(crate) fn answered(
        &self,
        zone: Option<&str>,
        types: &BTreeSet<&'static str>,
        rejected: &[String],
    ) {
        for t in types {
            let confirmation = if rejected.iter().any(|r| r == t) {
                Confirmation::Nack
            } else {
                Confirmation::Ack
            };
            self.ds.request_received(t, confirmation);
        }
        if let Some(zone) = zone {
            for t in rejected {
                self.nacks.with(&[zone, t]).inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_count_per_type_and_nacks_per_resource_on_global() {
        let registry = Registry::new();
        let m = KdsMetrics::register(&registry);
        let types: BTreeSet<&'static str> = ["Mesh", "MeshTrafficPermission"].into();
        m.sent(&types);
        let rejected = vec![
            "MeshTrafficPermission".to_string(),
            "MeshTrafficPermission".to_string(),
        ];
        m.answered(Some("zone-1"), &types, &rejected);
        m.answered(None, &types, &[]);
        m.generated("zone-1", Reason::Resync, false, Duration::from_millis(3));
        let text = registry.encode();
        for line in [
            "kds_delta_responses_sent{type_url=\"Mesh\"} 1\n",
            "kds_delta_requests_received{type_url=\"Mesh\",confirmation=\"ACK\"} 2\n",
            "kds_delta_requests_received{type_url=\"MeshTrafficPermission\",confirmation=\"NACK\"} 1\n",
            "kds_delta_requests_received{type_url=\"MeshTrafficPermission\",confirmation=\"ACK\"} 1\n",
            "kds_nack_total{zone_name=\"zone-1\",resource_type=\"MeshTrafficPermission\"} 2\n",
            "kds_delta_generation_count{reason=\"resync\",result=\"no_changes\",zone_name=\"zone-1\"} 1\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
