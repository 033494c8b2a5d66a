//! Reading a Prometheus text exposition the way a scraper does: over real HTTP, then by series.

use std::time::Duration;

/// The body and `Content-Type` of `GET http://127.0.0.1:<port><path>`.
pub fn scrape(port: u16, path: &str) -> Result<(String, String), String> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("{path}: HTTP {}", resp.status()));
    }
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = resp.text().map_err(|e| e.to_string())?;
    Ok((body, content_type))
}

/// One sample line: `(name, labels as (key, value) pairs, value)`.
pub type Series = (String, Vec<(String, String)>, f64);

/// The series of an exposition.
pub fn series(text: &str) -> Vec<Series> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().ok()?,
            };
            let (name, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.strip_suffix('}')?)),
                None => (head, Vec::new()),
            };
            Some((name.to_string(), labels, value))
        })
        .collect()
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key.trim_start_matches(',').to_string(), value));
        rest = &after[end..];
    }
    out
}

/// Sum of the series named `name` whose labels include every pair of `labels`; `None` when no
/// series matches.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = series(text)
        .into_iter()
        .filter(|(n, ls, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| v)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

/// The metric names a PromQL expression reads: identifiers outside label matchers, strings,
/// ranges and grouping clauses that are neither functions nor keywords.
pub fn promql_metric_names(expr: &str) -> std::collections::BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = std::collections::BTreeSet::new();
    let (mut i, mut skip_group) = (0, false);
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                let mut quote = None;
                while i < chars.len() && (quote.is_some() || chars[i] != close) {
                    match (quote, chars[i]) {
                        (Some(_), '\\') => i += 1,
                        (Some(q), ch) if ch == q => quote = None,
                        (None, ch @ ('"' | '\'' | '`')) => quote = Some(ch),
                        _ => {}
                    }
                    i += 1;
                }
                i += 1;
            }
            '(' if skip_group => {
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                skip_group = false;
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j] == ' ' {
                    j += 1;
                }
                let next: String = chars[j..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                    .collect();
                // `sum by (…) (…)`: an aggregation whose grouping comes first.
                let call = chars.get(j) == Some(&'(') || next == "by" || next == "without";
                if KEYWORDS.contains(&word.as_str()) {
                    skip_group = call;
                } else if !call && chars.get(start.wrapping_sub(1)) != Some(&'$') {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_metrics_a_query_reads() {
        let names = promql_metric_names(
            "histogram_quantile(0.99, sum by (le, zone_name) (rate(kds_delta_generation_bucket{instance=~\"$instance\",a=\"b}\"}[$__rate_interval]))) / sum without(x) (leader) > 0 and on(instance) cp_info",
        );
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            ["cp_info", "kds_delta_generation_bucket", "leader"]
        );
    }

    #[test]
    fn reads_series_with_escaped_labels() {
        let text = "# TYPE a counter\na{x=\"1\",y=\"q\\\"z\"} 3\na{x=\"2\"} 4\nb 1.5\nh_bucket{le=\"+Inf\"} 2\n";
        assert_eq!(value(text, "a", &[]), Some(7.0));
        assert_eq!(value(text, "a", &[("y", "q\"z")]), Some(3.0));
        assert_eq!(value(text, "b", &[]), Some(1.5));
        assert_eq!(value(text, "h_bucket", &[("le", "+Inf")]), Some(2.0));
        assert_eq!(value(text, "c", &[]), None);
    }
}
