//! The proxy's stats under Envoy's names: `/stats` prints them dotted
//! (`cluster.<name>.upstream_rq_total: 5`), `/stats/prometheus` tags them as Envoy does
//! (`envoy_cluster_upstream_rq_total{envoy_cluster_name="<name>"} 5`, ADR 0006).
//!
//! The data path keeps handles: [`ClusterStats`], [`ListenerStats`] and [`HttpStats`] are
//! resolved once per cluster or listener build (see `runtime.rs`), so a request or connection
//! only touches atomics. Rare events (retries, overflows, RBAC, faults) go through
//! [`Stats::inc`], a short lock on a map of dotted names.

use std::collections::BTreeMap;
use std::sync::Mutex;

use meshzone_metrics::{Counter, ENVOY_BUCKETS, Exposition, Gauge, Histogram, Kind};

mod tags;

pub use tags::{Scope, Tagged, tag};

/// What a dotted name holds.
#[derive(Clone)]
enum Handle {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

#[derive(Default)]
pub struct Stats {
    /// Rare events, by dotted name.
    counters: Mutex<BTreeMap<String, u64>>,
    /// The data path's handles, by dotted name, with the scope and object they belong to.
    handles: Mutex<BTreeMap<String, (Scope, String, Handle)>>,
}

/// Where a cluster build keeps its [`ClusterStats`] once resolved, shared with its HTTP
/// connector (which counts the pooled connections).
pub type ClusterStatsSlot = std::sync::Arc<std::sync::OnceLock<ClusterStats>>;

/// One cluster's hot stats.
#[derive(Clone)]
pub struct ClusterStats {
    pub upstream_rq_total: Counter,
    /// `upstream_rq_1xx` … `upstream_rq_5xx`.
    upstream_rq_class: [Counter; 5],
    /// Milliseconds from sending a request to its response head.
    pub upstream_rq_time: Histogram,
    pub upstream_cx_total: Counter,
    pub upstream_cx_active: Gauge,
    pub upstream_cx_connect_fail: Counter,
    pub upstream_cx_connect_ms: Histogram,
    pub upstream_cx_tx_bytes_total: Counter,
    pub upstream_cx_rx_bytes_total: Counter,
}

impl ClusterStats {
    /// Counts a response of `status` to one try.
    pub fn answered(&self, status: u16, took: std::time::Duration) {
        if let Some(c) = class(status).and_then(|i| self.upstream_rq_class.get(i)) {
            c.inc();
        }
        self.upstream_rq_time.observe_ms(took);
    }
}

/// One listener's hot stats (`listener.<name>.*`).
#[derive(Clone)]
pub struct ListenerStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
}

/// One HTTP connection manager's hot stats (`http.<listener>.*`).
#[derive(Clone)]
pub struct HttpStats {
    pub downstream_rq_total: Counter,
    downstream_rq_class: [Counter; 5],
    pub downstream_rq_time: Histogram,
}

impl HttpStats {
    pub fn answered(&self, status: u16, took: std::time::Duration) {
        self.downstream_rq_total.inc();
        if let Some(c) = class(status).and_then(|i| self.downstream_rq_class.get(i)) {
            c.inc();
        }
        self.downstream_rq_time.observe_ms(took);
    }
}

/// Index of a status code's class (`2xx` → 1), if it has one.
fn class(status: u16) -> Option<usize> {
    usize::from(status / 100).checked_sub(1).filter(|i| *i < 5)
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The rare stats that are gauges (Envoy's names), besides every `*_active`.
pub const GAUGES: &[&str] = &[
    "server.live",
    "server.uptime",
    "control_plane.connected_state",
];

fn is_gauge(dotted: &str) -> bool {
    dotted.ends_with("_active") || GAUGES.contains(&dotted)
}

impl Stats {
    pub fn add(&self, name: impl Into<String>, n: u64) {
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        *c.entry(name.into()).or_default() += n;
    }

    pub fn inc(&self, name: impl Into<String>) {
        self.add(name, 1);
    }

    /// Sets one of the rare gauges ([`GAUGES`]).
    pub fn set(&self, name: &'static str, v: u64) {
        debug_assert!(GAUGES.contains(&name), "{name} is not a gauge");
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        c.insert(name.to_string(), v);
    }

    /// The handles of cluster `name` (the same ones on every call: a rebuilt cluster counts on).
    pub fn cluster(&self, name: &str) -> ClusterStats {
        let s = Scope::Cluster;
        ClusterStats {
            upstream_rq_total: self.counter(s, name, "upstream_rq_total"),
            upstream_rq_class: CLASSES.map(|c| self.counter(s, name, &format!("upstream_rq_{c}"))),
            upstream_rq_time: self.histogram(s, name, "upstream_rq_time"),
            upstream_cx_total: self.counter(s, name, "upstream_cx_total"),
            upstream_cx_active: self.gauge(s, name, "upstream_cx_active"),
            upstream_cx_connect_fail: self.counter(s, name, "upstream_cx_connect_fail"),
            upstream_cx_connect_ms: self.histogram(s, name, "upstream_cx_connect_ms"),
            upstream_cx_tx_bytes_total: self.counter(s, name, "upstream_cx_tx_bytes_total"),
            upstream_cx_rx_bytes_total: self.counter(s, name, "upstream_cx_rx_bytes_total"),
        }
    }

    pub fn listener(&self, name: &str) -> ListenerStats {
        let s = Scope::Listener;
        ListenerStats {
            downstream_cx_total: self.counter(s, name, "downstream_cx_total"),
            downstream_cx_active: self.gauge(s, name, "downstream_cx_active"),
        }
    }

    pub fn http(&self, name: &str) -> HttpStats {
        let s = Scope::Http;
        HttpStats {
            downstream_rq_total: self.counter(s, name, "downstream_rq_total"),
            downstream_rq_class: CLASSES
                .map(|c| self.counter(s, name, &format!("downstream_rq_{c}"))),
            downstream_rq_time: self.histogram(s, name, "downstream_rq_time"),
        }
    }

    fn counter(&self, scope: Scope, object: &str, stat: &str) -> Counter {
        match self.handle(scope, object, stat, || Handle::Counter(Counter::default())) {
            Handle::Counter(c) => c,
            _ => Counter::default(),
        }
    }

    fn gauge(&self, scope: Scope, object: &str, stat: &str) -> Gauge {
        match self.handle(scope, object, stat, || Handle::Gauge(Gauge::default())) {
            Handle::Gauge(g) => g,
            _ => Gauge::default(),
        }
    }

    fn histogram(&self, scope: Scope, object: &str, stat: &str) -> Histogram {
        let make = || Handle::Histogram(Histogram::new(ENVOY_BUCKETS));
        match self.handle(scope, object, stat, make) {
            Handle::Histogram(h) => h,
            _ => Histogram::new(ENVOY_BUCKETS),
        }
    }

    fn handle(
        &self,
        scope: Scope,
        object: &str,
        stat: &str,
        make: impl FnOnce() -> Handle,
    ) -> Handle {
        let dotted = format!("{}.{object}.{stat}", scope.prefix());
        let mut h = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        h.entry(dotted)
            .or_insert_with(|| (scope, object.to_string(), make()))
            .2
            .clone()
    }

    /// Forgets the stats of clusters and listeners the configuration no longer has, so what
    /// is exported stays bounded by what is configured (a cluster added again starts at zero,
    /// a counter reset Prometheus handles).
    pub fn retain_configured<'a>(
        &self,
        clusters: impl IntoIterator<Item = &'a str>,
        listeners: impl IntoIterator<Item = &'a str>,
    ) {
        let current: Vec<(Scope, &str)> = clusters
            .into_iter()
            .map(|c| (Scope::Cluster, c))
            .chain(
                listeners
                    .into_iter()
                    .flat_map(|l| [(Scope::Listener, l), (Scope::Http, l)]),
            )
            .collect();
        let configured = |scope: Scope, object: &str| current.contains(&(scope, object));
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (scope, object, _)| configured(*scope, object));
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|dotted, _| match tags::object_of(dotted, &current) {
                Some((scope, object)) => configured(scope, object),
                None => true,
            });
    }

    /// `name: value` lines, sorted (Envoy's `/stats` text form).
    #[cfg(test)]
    pub fn text(&self) -> String {
        self.text_with(Vec::new())
    }

    /// `name: value` lines, sorted (Envoy's `/stats` text form): the counters and gauges plus
    /// `extra` values kept elsewhere (per-cluster health checks). Histograms are left out.
    pub fn text_with(&self, extra: Vec<(String, u64)>) -> String {
        let mut all = self.plain(extra);
        for (name, (_, _, h)) in self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            match h {
                Handle::Counter(c) => drop(all.insert(name.clone(), c.get())),
                Handle::Gauge(g) => drop(all.insert(name.clone(), g.get().max(0).unsigned_abs())),
                Handle::Histogram(_) => {}
            }
        }
        all.iter().map(|(k, v)| format!("{k}: {v}\n")).collect()
    }

    /// Envoy's `/stats/prometheus`: every stat tagged as Envoy tags it (see [`tag`]), in the
    /// classic text format; histograms with Envoy's bucket bounds.
    pub fn prometheus_with(&self, extra: Vec<(String, u64)>) -> String {
        self.prometheus_filtered(extra, &|_| true, true)
    }

    /// [`Self::prometheus_with`] keeping only the families whose Prometheus name `keep`
    /// accepts (MeshMetric's profiles). Without `include_unused`, series never written are left
    /// out as Envoy's `usedonly` does: counters at zero and histograms with no sample (a gauge
    /// is always kept: zero is a value it is set to).
    pub fn prometheus_filtered(
        &self,
        extra: Vec<(String, u64)>,
        keep: &dyn Fn(&str) -> bool,
        include_unused: bool,
    ) -> String {
        let handles: Vec<(String, Scope, String, Handle)> = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, (s, o, h))| (k.clone(), *s, o.clone(), h.clone()))
            .collect();
        let known: Vec<(Scope, &str)> = handles
            .iter()
            .map(|(_, s, o, _)| (*s, o.as_str()))
            .collect();
        // Prometheus name → kind and samples.
        let mut families: BTreeMap<String, (Kind, Vec<Labelled>)> = BTreeMap::new();
        let mut put = |t: Tagged, kind: Kind, sample: Sample| {
            let unused = match (&kind, &sample) {
                (Kind::Counter, Sample::Value(0)) => true,
                (Kind::Histogram, Sample::Histogram(h)) => h.count == 0,
                _ => false,
            };
            if !keep(&t.name) || (unused && !include_unused) {
                return;
            }
            families
                .entry(t.name)
                .or_insert_with(|| (kind, Vec::new()))
                .1
                .push((t.labels, sample));
        };
        for (dotted, v) in self.plain(extra) {
            let kind = if is_gauge(&dotted) {
                Kind::Gauge
            } else {
                Kind::Counter
            };
            put(
                tag(&dotted, &known),
                kind,
                Sample::Value(i64::try_from(v).unwrap_or(i64::MAX)),
            );
        }
        for (dotted, _, _, h) in &handles {
            let t = tag(dotted, &known);
            match h {
                Handle::Counter(c) => put(
                    t,
                    Kind::Counter,
                    Sample::Value(i64::try_from(c.get()).unwrap_or(i64::MAX)),
                ),
                Handle::Gauge(g) => put(t, Kind::Gauge, Sample::Value(g.get())),
                Handle::Histogram(h) => put(t, Kind::Histogram, Sample::Histogram(h.snapshot())),
            }
        }
        let mut out = Exposition::new();
        for (name, (kind, samples)) in &families {
            out.family(name, "", *kind);
            for (labels, sample) in samples {
                let labels: Vec<(&str, &str)> =
                    labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                match sample {
                    Sample::Value(v) => out.value(name, &labels, *v),
                    Sample::Histogram(h) => out.histogram(name, &labels, h),
                }
            }
        }
        out.finish()
    }

    fn plain(&self, extra: Vec<(String, u64)>) -> BTreeMap<String, u64> {
        let mut all = self
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        all.extend(extra);
        all
    }
}

/// One series of a family: its labels and what it holds.
type Labelled = (Vec<(&'static str, String)>, Sample);

enum Sample {
    Value(i64),
    Histogram(meshzone_metrics::HistogramSnapshot),
}

#[cfg(test)]
mod tests;
