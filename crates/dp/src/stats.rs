//! Counters of the proxy, named like Envoy's where an equivalent exists
//! (`listener.<name>.downstream_cx_total`, `cluster.<name>.upstream_cx_connect_fail`, …).

use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct Stats {
    counters: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    pub fn add(&self, name: impl Into<String>, n: u64) {
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        *c.entry(name.into()).or_default() += n;
    }

    pub fn inc(&self, name: impl Into<String>) {
        self.add(name, 1);
    }

    /// Gauges go up and down; stored as counters that are decremented.
    pub fn dec(&self, name: &str) {
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = c.get_mut(name) {
            *v = v.saturating_sub(1);
        }
    }

    /// `name: value` lines, sorted (Envoy's `/stats` text form).
    #[cfg(test)]
    pub fn text(&self) -> String {
        self.text_with(Vec::new())
    }

    /// `name: value` lines, sorted (Envoy's `/stats` text form): the counters plus `extra` values kept elsewhere (per-cluster health checks).
    pub fn text_with(&self, extra: Vec<(String, u64)>) -> String {
        self.merged(extra)
            .iter()
            .map(|(k, v)| format!("{k}: {v}\n"))
            .collect()
    }

    /// Prometheus text exposition (names sanitized, prefixed `kuma_dp_`) of the counters plus
    /// `extra`.
    pub fn prometheus_with(&self, extra: Vec<(String, u64)>) -> String {
        let mut out = String::new();
        for (k, v) in self.merged(extra) {
            let name: String = k
                .chars()
                .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '_' })
                .collect();
            out.push_str(&format!("kuma_dp_{name} {v}\n"));
        }
        out
    }

    fn merged(&self, extra: Vec<(String, u64)>) -> BTreeMap<String, u64> {
        let mut all = self
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        all.extend(extra);
        all
    }
}
