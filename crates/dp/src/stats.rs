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
    pub fn text(&self) -> String {
        let c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        c.iter().map(|(k, v)| format!("{k}: {v}\n")).collect()
    }

    /// Prometheus text exposition: names sanitized, prefixed `kuma_dp_`.
    pub fn prometheus(&self) -> String {
        let c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for (k, v) in c.iter() {
            let name: String = k
                .chars()
                .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '_' })
                .collect();
            out.push_str(&format!("kuma_dp_{name} {v}\n"));
        }
        out
    }
}
