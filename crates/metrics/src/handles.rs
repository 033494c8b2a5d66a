//! The handles: each is an `Arc` of atomics, cloned into whoever updates it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::{Kind, Metric, encode};

/// A value that only goes up.
#[derive(Clone, Default, Debug)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Metric for Counter {
    const KIND: Kind = Kind::Counter;
    fn make(_: &'static [f64]) -> Self {
        Self::default()
    }
    fn write(&self, name: &str, labels: &str, out: &mut String) {
        encode::sample(out, name, "", labels, None, &self.get().to_string());
    }
}

/// A value that goes up and down.
#[derive(Clone, Default, Debug)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Adds one now and takes it away when the guard is dropped (a stream, a connection).
    pub fn track(&self) -> GaugeGuard {
        self.inc();
        GaugeGuard(self.clone())
    }
}

/// Holds one unit of a [`Gauge`] while it lives.
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metric for Gauge {
    const KIND: Kind = Kind::Gauge;
    fn make(_: &'static [f64]) -> Self {
        Self::default()
    }
    fn write(&self, name: &str, labels: &str, out: &mut String) {
        encode::sample(out, name, "", labels, None, &self.get().to_string());
    }
}

/// Observations counted into fixed buckets, with their count and sum.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<HistogramCore>);

#[derive(Debug)]
struct HistogramCore {
    bounds: &'static [f64],
    /// One per bound plus one for `+Inf`; not cumulative (the encoder sums them).
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    /// `f64` bits.
    sum: AtomicU64,
}

/// A histogram's state at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, cumulative count)`, ending with `f64::INFINITY`.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram(Arc::new(HistogramCore {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0f64.to_bits()),
        }))
    }

    pub fn observe(&self, v: f64) {
        let h = &self.0;
        // The first bucket whose upper bound is at least `v` (`le` is inclusive).
        let i = h.bounds.partition_point(|b| *b < v);
        h.buckets[i].fetch_add(1, Ordering::Relaxed);
        h.count.fetch_add(1, Ordering::Relaxed);
        let _ = h
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }

    /// Observes a duration in seconds.
    pub fn observe_secs(&self, d: std::time::Duration) {
        self.observe(d.as_secs_f64());
    }

    /// Observes a duration in milliseconds (Kuma's `*_generation` and `*_delivery`, Envoy's
    /// `*_time` and `*_ms`).
    pub fn observe_ms(&self, d: std::time::Duration) {
        self.observe(d.as_secs_f64() * 1000.0);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let h = &self.0;
        let mut total = 0;
        let buckets = h
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(h.buckets.iter())
            .map(|(b, n)| {
                total += n.load(Ordering::Relaxed);
                (b, total)
            })
            .collect();
        HistogramSnapshot {
            buckets,
            // The count is the `+Inf` bucket, so the two always agree in one scrape.
            count: total,
            sum: f64::from_bits(h.sum.load(Ordering::Relaxed)),
        }
    }
}

impl Metric for Histogram {
    const KIND: Kind = Kind::Histogram;
    fn make(bounds: &'static [f64]) -> Self {
        Self::new(bounds)
    }
    fn write(&self, name: &str, labels: &str, out: &mut String) {
        let s = self.snapshot();
        for (bound, n) in &s.buckets {
            encode::sample(
                out,
                name,
                "_bucket",
                labels,
                Some(&encode::float(*bound)),
                &n.to_string(),
            );
        }
        encode::sample(out, name, "_sum", labels, None, &encode::float(s.sum));
        encode::sample(out, name, "_count", labels, None, &s.count.to_string());
    }
}
