//! Prometheus metrics under the exact names other tools query (Kuma's dashboards read
//! `xds_requests_received`, Envoy's read `envoy_cluster_upstream_rq_xx`): a [`Registry`] of
//! families, lock-free [`Counter`], [`Gauge`] and [`Histogram`] handles, and the classic text
//! exposition (format 0.0.4), which adds no `_total` suffix. See `docs/adr/0006-metrics.md`.
//!
//! A handle is resolved once from its [`Family`] (a short lock) and then only touches atomics;
//! callers on a hot path keep the handle. It does no I/O. Besides the generic parts it holds
//! one set of names, [`DiscoveryMetrics`], which Kuma shares between its xDS and KDS servers.

mod discovery;
mod encode;
mod handles;
pub mod process;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

pub use discovery::{Confirmation, DiscoveryMetrics};
pub use encode::{CONTENT_TYPE, Exposition, exported_names, parse_type_lines};
pub use handles::{Counter, Gauge, GaugeGuard, Histogram, HistogramSnapshot};

/// Bucket bounds in seconds for request durations (client_golang's defaults, which Kuma's API
/// server histogram uses).
pub const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Bucket bounds in milliseconds for config generation and delivery, which Kuma observes in ms.
pub const MILLISECONDS_BUCKETS: &[f64] = &[
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
];

/// Envoy's default histogram bounds (milliseconds for `*_time`, `*_ms`).
pub const ENVOY_BUCKETS: &[f64] = &[
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// What kind of series a family holds (the exposition's `# TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One handle type of a family: how to make a child, and what it reads.
pub trait Metric: Clone + Send + Sync + 'static {
    const KIND: Kind;
    /// A fresh child; `bounds` is only read by histograms.
    fn make(bounds: &'static [f64]) -> Self;
    #[doc(hidden)]
    fn write(&self, name: &str, labels: &str, out: &mut String);
}

/// A metric name with label names; each distinct list of label values is one child handle.
pub struct Family<M> {
    inner: Arc<FamilyInner<M>>,
}

impl<M> Clone for Family<M> {
    fn clone(&self) -> Self {
        Family {
            inner: self.inner.clone(),
        }
    }
}

impl<M> std::fmt::Debug for Family<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Family")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

struct FamilyInner<M> {
    name: String,
    help: String,
    label_names: &'static [&'static str],
    bounds: &'static [f64],
    const_labels: Vec<(String, String)>,
    children: Mutex<BTreeMap<Vec<String>, M>>,
}

impl<M: Metric> Family<M> {
    /// The handle for these label values (in the order of the label names), created at zero on
    /// first use. Missing values are empty, extra ones are dropped.
    pub fn with(&self, values: &[&str]) -> M {
        let mut key: Vec<String> = values
            .iter()
            .take(self.inner.label_names.len())
            .map(|v| v.to_string())
            .collect();
        key.resize(self.inner.label_names.len(), String::new());
        let bounds = self.inner.bounds;
        self.children()
            .entry(key)
            .or_insert_with(|| M::make(bounds))
            .clone()
    }

    /// Forgets the child for these label values (a zone that left, a cluster that was removed),
    /// so the exposition stays bounded by what exists.
    pub fn remove(&self, values: &[&str]) {
        let key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        self.children().remove(&key);
    }

    /// Keeps only the children `keep` accepts (by label values).
    pub fn retain(&self, mut keep: impl FnMut(&[String]) -> bool) {
        self.children().retain(|k, _| keep(k));
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn children(&self) -> MutexGuard<'_, BTreeMap<Vec<String>, M>> {
        self.inner
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// Something the registry can write out.
trait Collect: Send + Sync {
    fn name(&self) -> &str;
    fn kind(&self) -> Kind;
    fn write(&self, out: &mut String);
}

impl<M: Metric> Collect for Family<M> {
    fn name(&self) -> &str {
        &self.inner.name
    }
    fn kind(&self) -> Kind {
        M::KIND
    }
    fn write(&self, out: &mut String) {
        let f = &self.inner;
        encode::header(&f.name, &f.help, M::KIND, out);
        for (values, child) in self.children().iter() {
            let labels = encode::labels(
                f.const_labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .chain(
                        f.label_names
                            .iter()
                            .copied()
                            .zip(values.iter().map(String::as_str)),
                    ),
            );
            child.write(&f.name, &labels, out);
        }
    }
}

/// The families of one process (or one test). Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Registry {
    families: Arc<Mutex<Vec<Arc<dyn Collect>>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("families", &self.lock().len())
            .finish()
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// A family of counters, registered under `name` exactly.
    pub fn counter_family(
        &self,
        name: &str,
        help: &str,
        labels: &'static [&'static str],
    ) -> Family<Counter> {
        self.family(name, help, labels, &[], Vec::new())
    }

    pub fn gauge_family(
        &self,
        name: &str,
        help: &str,
        labels: &'static [&'static str],
    ) -> Family<Gauge> {
        self.family(name, help, labels, &[], Vec::new())
    }

    pub fn histogram_family(
        &self,
        name: &str,
        help: &str,
        labels: &'static [&'static str],
        bounds: &'static [f64],
    ) -> Family<Histogram> {
        self.family(name, help, labels, bounds, Vec::new())
    }

    /// A single counter without labels.
    pub fn counter(&self, name: &str, help: &str) -> Counter {
        self.counter_family(name, help, &[]).with(&[])
    }

    /// A single gauge without labels.
    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        self.gauge_family(name, help, &[]).with(&[])
    }

    /// A single gauge whose every sample carries these constant labels (`cp_info`).
    pub fn info_gauge(&self, name: &str, help: &str, const_labels: &[(&str, &str)]) -> Gauge {
        let labels = const_labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.family::<Gauge>(name, help, &[], &[], labels).with(&[])
    }

    pub fn histogram(&self, name: &str, help: &str, bounds: &'static [f64]) -> Histogram {
        self.histogram_family(name, help, &[], bounds).with(&[])
    }

    fn family<M: Metric>(
        &self,
        name: &str,
        help: &str,
        label_names: &'static [&'static str],
        bounds: &'static [f64],
        const_labels: Vec<(String, String)>,
    ) -> Family<M> {
        debug_assert!(encode::valid_name(name), "metric name {name:?}");
        debug_assert!(label_names.iter().all(|l| encode::valid_name(l)));
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{name}: bounds");
        let family = Family {
            inner: Arc::new(FamilyInner {
                name: name.to_string(),
                help: help.to_string(),
                label_names,
                bounds,
                const_labels,
                children: Mutex::default(),
            }),
        };
        let mut families = self.lock();
        // Registering a name twice would print it twice; the later one replaces the earlier.
        families.retain(|f| f.name() != name);
        families.push(Arc::new(family.clone()));
        family
    }

    /// The classic text exposition of every family, in registration order. A family without
    /// children still prints its `# HELP` and `# TYPE`, so a scrape lists every name.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        self.encode_into(&mut out);
        out
    }

    pub fn encode_into(&self, out: &mut String) {
        for f in self.lock().iter() {
            f.write(out);
        }
    }

    /// Every family's name and kind, in registration order.
    pub fn families(&self) -> Vec<(String, Kind)> {
        self.lock()
            .iter()
            .map(|f| (f.name().to_string(), f.kind()))
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Arc<dyn Collect>>> {
        self.families.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests;
