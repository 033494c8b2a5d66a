//! The classic Prometheus text exposition (0.0.4), and reading its `# TYPE` lines back.

use std::collections::BTreeSet;
use std::fmt::Write;

use crate::Kind;

/// The `Content-Type` of [`crate::Registry::encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(crate) fn header(name: &str, help: &str, kind: Kind, out: &mut String) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {}", kind.as_str());
}

/// `a="x",b="y"` (no braces), values escaped.
pub(crate) fn labels<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut s = String::new();
    for (k, v) in pairs {
        if !s.is_empty() {
            s.push(',');
        }
        s.push_str(k);
        s.push_str("=\"");
        escape_value(v, &mut s);
        s.push('"');
    }
    s
}

fn escape_value(v: &str, out: &mut String) {
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

pub(crate) fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &str,
    le: Option<&str>,
    value: &str,
) {
    out.push_str(name);
    out.push_str(suffix);
    match (labels.is_empty(), le) {
        (true, None) => {}
        (true, Some(le)) => {
            let _ = write!(out, "{{le=\"{le}\"}}");
        }
        (false, None) => {
            let _ = write!(out, "{{{labels}}}");
        }
        (false, Some(le)) => {
            let _ = write!(out, "{{{labels},le=\"{le}\"}}");
        }
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

/// A float as Prometheus writes one: `+Inf`, `0.005`, `1`, `2.5`.
pub(crate) fn float(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else if v.is_nan() {
        "NaN".into()
    } else {
        format!("{v}")
    }
}

pub(crate) fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// The `(name, kind)` of every `# TYPE` line of an exposition; unknown kinds are skipped.
pub fn parse_type_lines(text: &str) -> Vec<(String, Kind)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| {
            let (name, kind) = rest.split_once(' ')?;
            let kind = match kind.trim() {
                "counter" => Kind::Counter,
                "gauge" => Kind::Gauge,
                "histogram" => Kind::Histogram,
                _ => return None,
            };
            Some((name.to_string(), kind))
        })
        .collect()
}

/// Every series name a query may use against an exposition: counters and gauges by name,
/// histograms as `_bucket`, `_sum` and `_count`.
pub fn exported_names(text: &str) -> BTreeSet<String> {
    parse_type_lines(text)
        .into_iter()
        .flat_map(|(name, kind)| match kind {
            Kind::Histogram => vec![
                format!("{name}_bucket"),
                format!("{name}_sum"),
                format!("{name}_count"),
            ],
            _ => vec![name],
        })
        .collect()
}

/// Writes an exposition family by family, for callers that keep their own handles (kuma-dp's
/// Envoy-named stats, whose names are known only at run time).
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family: every sample written until the next call belongs to it.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) {
        header(name, help, kind, &mut self.out);
    }

    pub fn value(&mut self, name: &str, labels: &[(&str, &str)], value: i64) {
        let labels = self::labels(labels.iter().copied());
        sample(&mut self.out, name, "", &labels, None, &value.to_string());
    }

    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &crate::HistogramSnapshot) {
        let labels = self::labels(labels.iter().copied());
        for (bound, n) in &h.buckets {
            sample(
                &mut self.out,
                name,
                "_bucket",
                &labels,
                Some(&float(*bound)),
                &n.to_string(),
            );
        }
        sample(&mut self.out, name, "_sum", &labels, None, &float(h.sum));
        sample(
            &mut self.out,
            name,
            "_count",
            &labels,
            None,
            &h.count.to_string(),
        );
    }

    pub fn finish(self) -> String {
        self.out
    }
}
