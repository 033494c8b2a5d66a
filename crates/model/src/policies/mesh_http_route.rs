//! MeshHTTPRoute (reference §2.7): HTTP routes on the selected proxies' outbounds. Each
//! `to[]` item names a destination service and carries `rules`: `matches` (path, method,
//! headers, query parameters) and a `default` with `filters` and weighted `backendRefs`.

use serde::{Deserialize, Serialize};

use super::{PolicyKind, check_route_targets, json, route_to_engine};
use crate::descriptor::ResourceType;
use crate::policy::{PolicySpec, RouteRule, TargetRef, TargetRefKind};
use crate::validate::Violations;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshHTTPRoute {
    /// The client proxies whose outbounds get the routes; `{kind: Mesh}` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<HttpRouteTo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteTo {
    pub target_ref: TargetRef,
    /// Only with a top-level MeshGateway, which this mesh has not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteRule {
    #[serde(default)]
    pub matches: Vec<HttpMatch>,
    #[serde(default)]
    pub default: HttpRouteConf,
}

/// One match; every condition in it must hold (the entries of `matches` are ORed).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Method>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<QueryParamMatch>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathMatch {
    #[serde(rename = "type")]
    pub match_type: PathMatchType,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathMatchType {
    Exact,
    PathPrefix,
    RegularExpression,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Connect,
    Delete,
    Get,
    Head,
    Options,
    Patch,
    Post,
    Put,
    Trace,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderMatch {
    /// Exact when absent.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub match_type: Option<HeaderMatchType>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeaderMatchType {
    Exact,
    Present,
    RegularExpression,
    Absent,
    Prefix,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct QueryParamMatch {
    #[serde(rename = "type")]
    pub match_type: QueryMatchType,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryMatchType {
    Exact,
    RegularExpression,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Vec<Filter>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_refs: Option<Vec<BackendRef>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Filter {
    #[serde(rename = "type")]
    pub filter_type: FilterType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RequestRedirect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_rewrite: Option<UrlRewrite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<RequestMirror>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FilterType {
    RequestHeaderModifier,
    ResponseHeaderModifier,
    RequestRedirect,
    URLRewrite,
    RequestMirror,
}

impl FilterType {
    /// The field holding this filter's object.
    fn field(self) -> &'static str {
        match self {
            FilterType::RequestHeaderModifier => "requestHeaderModifier",
            FilterType::ResponseHeaderModifier => "responseHeaderModifier",
            FilterType::RequestRedirect => "requestRedirect",
            FilterType::URLRewrite => "urlRewrite",
            FilterType::RequestMirror => "requestMirror",
        }
    }
}

/// The most entries each of `set`, `add` and `remove` may hold.
pub const MAX_HEADER_MODIFICATIONS: usize = 16;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderModifier {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HeaderValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderValue {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestRedirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<Scheme>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// 301, 302 (the default), 303, 307 or 308.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Http,
    Https,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UrlRewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    /// Gateways only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_to_backend_hostname: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathModifier {
    #[serde(rename = "type")]
    pub modifier_type: PathModifierType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathModifierType {
    ReplaceFullPath,
    ReplacePrefixMatch,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestMirror {
    /// Percent of requests mirrored (an integer or a decimal string); 100 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<serde_json::Value>,
    pub backend_ref: BackendRef,
}

/// A route destination: a service or a subset of its instances, with a relative weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendRef {
    pub kind: TargetRefKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<crate::specs::Tags>,
    /// Relative weight, 1 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
}

/// Checks one backendRef at `path`.
pub(crate) fn check_backend_ref(b: &BackendRef, path: &str, v: &mut Violations) {
    match b.kind {
        TargetRefKind::MeshService | TargetRefKind::MeshServiceSubset => {}
        ref other => v.push(
            format!("{path}.kind"),
            format!(
                "{other} is not allowed in a backendRef; allowed: MeshService, MeshServiceSubset"
            ),
        ),
    }
    if b.name.as_deref().is_none_or(str::is_empty) {
        v.push(format!("{path}.name"), "must be set");
    }
    match (&b.kind, &b.tags) {
        (TargetRefKind::MeshService, Some(_)) => v.push(
            format!("{path}.tags"),
            "must not be set with kind MeshService (use MeshServiceSubset)",
        ),
        (TargetRefKind::MeshServiceSubset, Some(tags)) => {
            for (key, value) in tags {
                if key.is_empty() {
                    v.push(format!("{path}.tags"), "tag key cannot be empty");
                } else if value.is_empty() {
                    v.push(format!("{path}.tags[{key:?}]"), "tag value cannot be empty");
                }
            }
        }
        _ => {}
    }
    if b.weight.is_some_and(|w| w < 0) {
        v.push(format!("{path}.weight"), "must be 0 or more");
    }
    if b.port.is_some_and(|p| p == 0 || p > 65535) {
        v.push(format!("{path}.port"), "must be a port between 1 and 65535");
    }
}

fn check_regex(pattern: &str, path: &str, v: &mut Violations) {
    if let Err(e) = regex::Regex::new(pattern) {
        let first = e.to_string();
        let last = first.lines().last().unwrap_or_default().trim().to_string();
        v.push(
            path,
            format!("{pattern:?} is not a valid regular expression: {last}"),
        );
    }
}

/// Checks one header match at `at` (also MeshRetry's retriable headers, Kuma's shared
/// `HeaderMatch`): a name, and a value exactly when the type compares one.
pub(crate) fn check_header_match(h: &HeaderMatch, at: &str, v: &mut Violations) {
    if h.name.is_empty() {
        v.push(format!("{at}.name"), "cannot be empty");
    }
    match h.match_type.unwrap_or(HeaderMatchType::Exact) {
        HeaderMatchType::Present | HeaderMatchType::Absent => {
            if h.value.is_some() {
                v.push(
                    format!("{at}.value"),
                    "must not be set with type Present or Absent",
                );
            }
        }
        HeaderMatchType::RegularExpression => match &h.value {
            Some(value) => check_regex(value, &format!("{at}.value"), v),
            None => v.push(format!("{at}.value"), "must be set"),
        },
        HeaderMatchType::Exact | HeaderMatchType::Prefix => {
            if h.value.is_none() {
                v.push(format!("{at}.value"), "must be set");
            }
        }
    }
}

fn check_match(m: &HttpMatch, path: &str, v: &mut Violations) {
    if let Some(p) = &m.path {
        let at = format!("{path}.path.value");
        match p.match_type {
            PathMatchType::Exact | PathMatchType::PathPrefix => {
                if !p.value.starts_with('/') {
                    v.push(at, "must start with '/'");
                }
            }
            PathMatchType::RegularExpression => check_regex(&p.value, &at, v),
        }
    }
    for (i, h) in m.headers.iter().enumerate() {
        check_header_match(h, &format!("{path}.headers[{i}]"), v);
    }
    for (i, q) in m.query_params.iter().enumerate() {
        let at = format!("{path}.queryParams[{i}]");
        if q.name.is_empty() {
            v.push(format!("{at}.name"), "cannot be empty");
        }
        if q.match_type == QueryMatchType::RegularExpression {
            check_regex(&q.value, &format!("{at}.value"), v);
        }
    }
}

fn check_header_modifier(m: &HeaderModifier, path: &str, v: &mut Violations) {
    for (field, len) in [
        ("set", m.set.len()),
        ("add", m.add.len()),
        ("remove", m.remove.len()),
    ] {
        if len > MAX_HEADER_MODIFICATIONS {
            v.push(
                format!("{path}.{field}"),
                format!("must have at most {MAX_HEADER_MODIFICATIONS} items, has {len}"),
            );
        }
    }
    for (field, list) in [("set", &m.set), ("add", &m.add)] {
        for (i, h) in list.iter().enumerate() {
            if h.name.is_empty() {
                v.push(format!("{path}.{field}[{i}].name"), "cannot be empty");
            }
        }
    }
    for (i, name) in m.remove.iter().enumerate() {
        if name.is_empty() {
            v.push(format!("{path}.remove[{i}]"), "cannot be empty");
        }
    }
}

fn check_path_modifier(p: &PathModifier, path: &str, v: &mut Violations) {
    let (needed, other, value) = match p.modifier_type {
        PathModifierType::ReplaceFullPath => (
            "replaceFullPath",
            "replacePrefixMatch",
            &p.replace_full_path,
        ),
        PathModifierType::ReplacePrefixMatch => (
            "replacePrefixMatch",
            "replaceFullPath",
            &p.replace_prefix_match,
        ),
    };
    match value {
        None => v.push(format!("{path}.{needed}"), "must be set"),
        Some(s) if !s.starts_with('/') => v.push(format!("{path}.{needed}"), "must start with '/'"),
        Some(_) => {}
    }
    let other_set = match p.modifier_type {
        PathModifierType::ReplaceFullPath => p.replace_prefix_match.is_some(),
        PathModifierType::ReplacePrefixMatch => p.replace_full_path.is_some(),
    };
    if other_set {
        v.push(
            format!("{path}.{other}"),
            format!("must not be set with type {needed}"),
        );
    }
}

fn check_percentage(p: &serde_json::Value, path: &str, v: &mut Violations) {
    let value = match p {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.parse::<f64>().ok(),
        _ => None,
    };
    match value {
        Some(x) if (0.0..=100.0).contains(&x) => {}
        _ => v.push(
            path,
            "must be a number (or decimal string) between 0 and 100",
        ),
    }
}

fn check_filter(f: &Filter, path: &str, v: &mut Violations) {
    let present = [
        (
            FilterType::RequestHeaderModifier,
            f.request_header_modifier.is_some(),
        ),
        (
            FilterType::ResponseHeaderModifier,
            f.response_header_modifier.is_some(),
        ),
        (FilterType::RequestRedirect, f.request_redirect.is_some()),
        (FilterType::URLRewrite, f.url_rewrite.is_some()),
        (FilterType::RequestMirror, f.request_mirror.is_some()),
    ];
    for (t, set) in present {
        if t == f.filter_type && !set {
            v.push(
                format!("{path}.{}", t.field()),
                format!("must be set with type {t:?}"),
            );
        } else if t != f.filter_type && set {
            v.push(
                format!("{path}.{}", t.field()),
                format!("must not be set with type {:?}", f.filter_type),
            );
        }
    }
    if let Some(m) = &f.request_header_modifier {
        check_header_modifier(m, &format!("{path}.requestHeaderModifier"), v);
    }
    if let Some(m) = &f.response_header_modifier {
        check_header_modifier(m, &format!("{path}.responseHeaderModifier"), v);
    }
    if let Some(r) = &f.request_redirect {
        let at = format!("{path}.requestRedirect");
        if let Some(code) = r.status_code
            && ![301, 302, 303, 307, 308].contains(&code)
        {
            v.push(
                format!("{at}.statusCode"),
                "must be one of 301, 302, 303, 307, 308",
            );
        }
        if r.port.is_some_and(|p| p == 0 || p > 65535) {
            v.push(format!("{at}.port"), "must be a port between 1 and 65535");
        }
        if let Some(p) = &r.path {
            check_path_modifier(p, &format!("{at}.path"), v);
        }
    }
    if let Some(u) = &f.url_rewrite {
        let at = format!("{path}.urlRewrite");
        if let Some(p) = &u.path {
            check_path_modifier(p, &format!("{at}.path"), v);
        }
        if u.host_to_backend_hostname == Some(true) {
            v.push(
                format!("{at}.hostToBackendHostname"),
                "only allowed with a top-level MeshGateway",
            );
        }
    }
    if let Some(m) = &f.request_mirror {
        let at = format!("{path}.requestMirror");
        if let Some(p) = &m.percentage {
            check_percentage(p, &format!("{at}.percentage"), v);
        }
        check_backend_ref(&m.backend_ref, &format!("{at}.backendRef"), v);
    }
}

impl PolicyKind for MeshHTTPRoute {
    const TYPE: ResourceType = ResourceType::MeshHTTPRoute;

    fn validate(&self, v: &mut Violations) {
        let targets = self.to.iter().map(|to| &to.target_ref);
        check_route_targets(self.target_ref.as_ref(), targets, Self::TYPE, v);
        for (i, to) in self.to.iter().enumerate() {
            let path = format!("spec.to[{i}]");
            if !to.hostnames.is_empty() {
                v.push(
                    format!("{path}.hostnames"),
                    "only allowed with a top-level MeshGateway",
                );
            }
            if to.rules.is_empty() {
                v.push(format!("{path}.rules"), "must have at least one item");
            }
            for (j, rule) in to.rules.iter().enumerate() {
                let path = format!("{path}.rules[{j}]");
                if rule.matches.is_empty() {
                    v.push(format!("{path}.matches"), "must have at least one item");
                }
                for (k, m) in rule.matches.iter().enumerate() {
                    check_match(m, &format!("{path}.matches[{k}]"), v);
                }
                for (k, f) in rule.default.filters.iter().flatten().enumerate() {
                    check_filter(f, &format!("{path}.default.filters[{k}]"), v);
                }
                for (k, b) in rule.default.backend_refs.iter().flatten().enumerate() {
                    check_backend_ref(b, &format!("{path}.default.backendRefs[{k}]"), v);
                }
            }
        }
    }

    fn to_engine(&self) -> PolicySpec {
        let to = self.to.iter().map(|to| {
            let rules = to.rules.iter().map(|r| RouteRule {
                matches: Some(json(&r.matches)),
                default: json(&r.default),
            });
            (&to.target_ref, rules.collect())
        });
        route_to_engine(self.target_ref.as_ref(), to)
    }
}
