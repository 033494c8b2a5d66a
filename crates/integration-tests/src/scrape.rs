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

#[cfg(test)]
mod tests {
    use super::*;

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
