//! The DP server's metrics under Kuma's names: the `xds_*` discovery family, plus
//! `xds_generation{proxy_type,result}` (ms) and `xds_generation_errors`.

use meshzone_metrics::{
    Counter, DiscoveryMetrics, Family, Histogram, MILLISECONDS_BUCKETS, Registry,
};

use crate::handshake::ProxyKind;

#[derive(Clone, Debug)]
pub struct XdsMetrics {
    pub(crate) ds: DiscoveryMetrics,
    generation: Family<Histogram>,
    pub(crate) generation_errors: Counter,
}

/// What one configuration computation ended with (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Generation {
    /// The first configuration of a stream.
    Generated,
    /// Differs from what the proxy had.
    Changed,
    /// Same as before: nothing is sent.
    Skip,
}

impl XdsMetrics {
    pub fn register(registry: &Registry) -> Self {
        XdsMetrics {
            ds: DiscoveryMetrics::register(registry, "xds"),
            generation: registry.histogram_family(
                "xds_generation",
                "Milliseconds to generate a proxy's xDS configuration",
                &["proxy_type", "result"],
                MILLISECONDS_BUCKETS,
            ),
            generation_errors: registry.counter(
                "xds_generation_errors",
                "Number of xDS configurations that could not be generated",
            ),
        }
    }

    /// Metrics that go nowhere (tests, tools).
    pub fn unregistered() -> Self {
        Self::register(&Registry::new())
    }

    pub(crate) fn generated(&self, kind: ProxyKind, result: Generation, took: std::time::Duration) {
        let proxy_type = match kind {
            ProxyKind::Dataplane => "dataplane",
            ProxyKind::Ingress => "ingress",
            ProxyKind::Egress => "egress",
        };
        let result = match result {
            Generation::Generated => "generated",
            Generation::Changed => "changed",
            Generation::Skip => "skip",
        };
        self.generation.with(&[proxy_type, result]).observe_ms(took);
    }
}
