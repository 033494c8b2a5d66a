//! The route table of one HTTP listener and the weighted split of a TCP listener, compiled from
//! the decoded plan: pure matching (path, method and other headers, query parameters, in plan
//! order), the request and response filters, redirects, and a deterministic smooth weighted
//! round robin over a route's clusters (a 90/10 split is 90/10 over every 1000 requests, to the
//! request). No I/O here; `http.rs` forwards.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use meshzone_xds::decode::WeightedClusterPlan;
use meshzone_xds::decode::routes::{
    HeaderAdd, HeaderAppend, HeaderModPlan, MirrorPlan, PathMatch, PathRewrite, RedirectPlan,
    RouteActionPlan, RoutePlan, ValueMatch,
};
use regex::Regex;

/// A pattern that must match the whole value, as Envoy's `safe_regex` does.
fn whole(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| format!("regex {pattern:?}: {e}"))
}

/// A value condition with its regex compiled.
#[derive(Debug)]
enum Matcher {
    Plan(ValueMatch),
    Regex(Regex),
}

impl Matcher {
    fn new(m: &ValueMatch) -> Result<Self, String> {
        Ok(match m {
            ValueMatch::Regex(p) => Matcher::Regex(whole(p)?),
            other => Matcher::Plan(other.clone()),
        })
    }

    /// Whether a value (None: absent) satisfies the condition.
    fn matches(&self, value: Option<&str>) -> bool {
        let fold = |v: &str, ignore_case: bool| {
            if ignore_case {
                v.to_ascii_lowercase()
            } else {
                v.to_string()
            }
        };
        match (self, value) {
            (Matcher::Plan(ValueMatch::Present(want)), v) => v.is_some() == *want,
            (_, None) => false,
            (Matcher::Regex(r), Some(v)) => r.is_match(v),
            (Matcher::Plan(m), Some(v)) => match m {
                ValueMatch::Exact { value, ignore_case } => {
                    fold(v, *ignore_case) == fold(value, *ignore_case)
                }
                ValueMatch::Prefix { value, ignore_case } => {
                    fold(v, *ignore_case).starts_with(&fold(value, *ignore_case))
                }
                ValueMatch::Suffix { value, ignore_case } => {
                    fold(v, *ignore_case).ends_with(&fold(value, *ignore_case))
                }
                ValueMatch::Contains { value, ignore_case } => {
                    fold(v, *ignore_case).contains(&fold(value, *ignore_case))
                }
                ValueMatch::Regex(_) | ValueMatch::Present(_) => false,
            },
        }
    }
}

/// What a route looks at in a request.
pub struct RequestView<'a> {
    pub method: &'a str,
    /// The path without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub authority: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

impl RequestView<'_> {
    /// A header's value as Envoy sees it: pseudo headers from the request line, several values
    /// joined with `,`.
    fn header(&self, name: &str) -> Option<String> {
        match name {
            ":method" => return Some(self.method.to_string()),
            ":path" => {
                return Some(match self.query {
                    Some(q) => format!("{}?{q}", self.path),
                    None => self.path.to_string(),
                });
            }
            ":authority" => return self.authority.map(str::to_string),
            _ => {}
        }
        let values: Vec<&str> = self
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }

    /// The first value of a query parameter (`Some("")` for a bare `?name`).
    fn query_param(&self, name: &str) -> Option<&str> {
        self.query?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }
}

/// Deterministic smooth weighted round robin (nginx's): every pick adds each weight to its
/// entry's credit, takes the largest credit and subtracts the total from it. Over any run of
/// `total` picks each entry is picked exactly `weight` times, evenly spread.
#[derive(Debug)]
pub struct Split {
    clusters: Vec<WeightedClusterPlan>,
    credit: Mutex<Vec<i64>>,
}

impl Split {
    pub fn new(clusters: &[WeightedClusterPlan]) -> Self {
        Split {
            clusters: clusters.to_vec(),
            credit: Mutex::new(vec![0; clusters.len()]),
        }
    }

    pub fn pick(&self) -> &str {
        if let [one] = self.clusters.as_slice() {
            return &one.cluster;
        }
        let mut credit = self.credit.lock().unwrap_or_else(|p| p.into_inner());
        let total: i64 = self.clusters.iter().map(|c| i64::from(c.weight)).sum();
        let mut best = 0;
        for (i, c) in self.clusters.iter().enumerate() {
            credit[i] += i64::from(c.weight);
            if credit[i] > credit[best] {
                best = i;
            }
        }
        credit[best] -= total;
        self.clusters.get(best).map_or("", |c| c.cluster.as_str())
    }
}

/// Whether the n-th request (from 0) is mirrored at `per_million`: deterministic, so exactly
/// that share of every million requests (and of every 100 at a whole percentage) is copied.
fn mirrored(n: u64, per_million: u32) -> bool {
    let p = u64::from(per_million);
    (n + 1) * p / 1_000_000 > n * p / 1_000_000
}

/// A mirror of a route and its request counter.
#[derive(Debug)]
pub struct Mirror {
    pub cluster: String,
    per_million: u32,
    seen: AtomicU64,
}

impl Mirror {
    fn new(m: &MirrorPlan) -> Self {
        Mirror {
            cluster: m.cluster.clone(),
            per_million: m.per_million,
            seen: AtomicU64::new(0),
        }
    }

    /// Whether this request gets a copy.
    pub fn take(&self) -> bool {
        mirrored(self.seen.fetch_add(1, Ordering::Relaxed), self.per_million)
    }
}

/// One route, compiled.
#[derive(Debug)]
pub struct Route {
    pub plan: RoutePlan,
    path_regex: Option<Regex>,
    headers: Vec<(String, Matcher, bool)>,
    query: Vec<(String, Matcher)>,
    rewrite_regex: Option<(Regex, String)>,
    pub split: Option<Split>,
    pub mirrors: Vec<Mirror>,
    /// The retry policy's `retriable_request_headers` (none: every request may be retried).
    retriable_headers: Vec<(String, Matcher, bool)>,
}

/// Envoy's `\1` substitution groups in Rust's `${1}` form.
fn substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(d)) if d.is_ascii_digit() => {
                out.push_str(&format!("${{{d}}}"));
                chars.next();
            }
            ('$', _) => out.push_str("$$"),
            _ => out.push(c),
        }
    }
    out
}

impl Route {
    pub fn new(plan: &RoutePlan) -> Result<Self, String> {
        let m = &plan.matches;
        let path_regex = match &m.path {
            PathMatch::Regex(p) => Some(whole(p)?),
            _ => None,
        };
        let (split, mirrors, rewrite_regex) = match &plan.action {
            RouteActionPlan::Forward(f) => (
                Some(Split::new(&f.clusters)),
                f.mirrors.iter().map(Mirror::new).collect(),
                match &f.path_rewrite {
                    Some(PathRewrite::Regex {
                        pattern,
                        substitution: s,
                    }) => Some((
                        Regex::new(pattern).map_err(|e| format!("regex {pattern:?}: {e}"))?,
                        substitution(s),
                    )),
                    _ => None,
                },
            ),
            RouteActionPlan::Redirect(_) => (None, Vec::new(), None),
        };
        Ok(Route {
            plan: plan.clone(),
            path_regex,
            headers: m
                .headers
                .iter()
                .map(|h| Ok((h.name.clone(), Matcher::new(&h.matcher)?, h.invert)))
                .collect::<Result<_, String>>()?,
            query: m
                .query
                .iter()
                .map(|q| Ok((q.name.clone(), Matcher::new(&q.matcher)?)))
                .collect::<Result<_, String>>()?,
            rewrite_regex,
            split,
            mirrors,
            retriable_headers: match &plan.action {
                RouteActionPlan::Forward(f) => f
                    .retry
                    .iter()
                    .flat_map(|r| &r.retriable_request_headers)
                    .map(|h| Ok((h.name.clone(), Matcher::new(&h.matcher)?, h.invert)))
                    .collect::<Result<_, String>>()?,
                RouteActionPlan::Redirect(_) => Vec::new(),
            },
        })
    }

    /// Whether the retry policy may retry this request: it matches one of the retriable
    /// request headers (`:method` included), or there are none.
    pub fn retry_allowed(&self, req: &RequestView<'_>) -> bool {
        self.retriable_headers.is_empty()
            || self
                .retriable_headers
                .iter()
                .any(|(name, m, invert)| m.matches(req.header(name).as_deref()) != *invert)
    }

    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        let path_ok = match (&self.plan.matches.path, &self.path_regex) {
            (_, Some(r)) => r.is_match(req.path),
            (PathMatch::Exact(p), None) => req.path == p,
            (PathMatch::Prefix(p), None) => req.path.starts_with(p.as_str()),
            (PathMatch::Regex(_), None) => false,
        };
        path_ok
            && self
                .headers
                .iter()
                .all(|(name, m, invert)| m.matches(req.header(name).as_deref()) != *invert)
            && self
                .query
                .iter()
                .all(|(name, m)| m.matches(req.query_param(name)))
    }

    /// The path (query kept) to send upstream after the route's rewrite.
    pub fn rewritten_path(&self, path: &str, query: Option<&str>) -> String {
        let new_path = match &self.plan.action {
            RouteActionPlan::Forward(f) => match (&f.path_rewrite, &self.rewrite_regex) {
                (_, Some((r, sub))) => r.replace_all(path, sub.as_str()).into_owned(),
                (Some(PathRewrite::Prefix(p)), None) => self.replace_prefix(path, p),
                _ => path.to_string(),
            },
            RouteActionPlan::Redirect(_) => path.to_string(),
        };
        match query {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path,
        }
    }

    /// Replaces what the route matched: the prefix, or (exact and regex paths) the whole path.
    fn replace_prefix(&self, path: &str, with: &str) -> String {
        let rest = match &self.plan.matches.path {
            PathMatch::Prefix(p) => path.get(p.len()..).unwrap_or(""),
            PathMatch::Exact(_) | PathMatch::Regex(_) => "",
        };
        format!("{with}{rest}")
    }

    /// The `Location` of a redirect route for a request.
    pub fn redirect_location(&self, r: &RedirectPlan, req: &RequestView<'_>) -> String {
        let scheme = r.scheme.as_deref().unwrap_or("http");
        let original = req.authority.unwrap_or("");
        let authority = match (&r.host, r.port) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.clone(),
            (None, Some(p)) => {
                let host = original.rsplit_once(':').map_or(original, |(h, _)| h);
                format!("{host}:{p}")
            }
            (None, None) => original.to_string(),
        };
        let path = match (&r.path, &r.prefix_rewrite) {
            (Some(p), _) => p.clone(),
            (None, Some(prefix)) => self.replace_prefix(req.path, prefix),
            (None, None) => req.path.to_string(),
        };
        let query = match req.query {
            Some(q) if !r.strip_query && !path.contains('?') => format!("?{q}"),
            _ => String::new(),
        };
        format!("{scheme}://{authority}{path}{query}")
    }
}

/// Applies a route's header filter: adds, then removes.
pub fn modify_headers(m: &HeaderModPlan, headers: &mut HeaderMap) {
    for HeaderAdd {
        name,
        value,
        append,
    } in &m.add
    {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            continue;
        };
        match append {
            HeaderAppend::Append => {
                headers.append(name, value);
            }
            HeaderAppend::AddIfAbsent => {
                if !headers.contains_key(&name) {
                    headers.insert(name, value);
                }
            }
            HeaderAppend::Overwrite => {
                headers.insert(name, value);
            }
        }
    }
    for name in &m.remove {
        headers.remove(name.as_str());
    }
}

/// The routes of one HTTP listener, tried in order.
#[derive(Debug)]
pub struct RouteTable {
    pub routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(plans: &[RoutePlan]) -> Result<Self, String> {
        Ok(RouteTable {
            routes: plans.iter().map(Route::new).collect::<Result<_, _>>()?,
        })
    }

    /// The first route whose match holds; None answers 404, as Envoy does.
    pub fn find(&self, req: &RequestView<'_>) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(req))
    }
}

#[cfg(test)]
pub(crate) mod tests;
