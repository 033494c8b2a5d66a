//! MeshHTTPRoute's configurer (Kuma plugin order 100): an HTTP outbound (`kuma.io/protocol`
//! http, http2 or grpc) whose service has an `http_route` rule gets a real RouteConfiguration in
//! its HTTP connection manager, in Kuma's order (fact sheet §2.7):
//!
//! - each entry of a rule's `matches` is its own route; routes sort path Exact > PathPrefix >
//!   RegularExpression (longer value first), then with `method` first, then more headers, then
//!   more query parameters (stable otherwise);
//! - `PathPrefix /x` → `path: /x` and `prefix: /x/`; `PathPrefix /` → `prefix: /`; regex →
//!   `safe_regex`; method → a `:method` header matcher;
//! - filters → header modifiers, `redirect`, URL rewrite, `request_mirror_policies`;
//! - one backend → `cluster`, several → `weighted_clusters` (subsets get their own clusters);
//! - a catch-all `prefix: /` to the service itself ends the table, unless an identical match
//!   exists.

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, RuntimeFractionalPercent,
};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfigType;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::redirect_action::{
    PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::{
    ClusterSpecifier, HostRewriteSpecifier, RequestMirrorPolicy,
};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, RedirectAction, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost, WeightedCluster,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher,
};
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::google::protobuf::{Duration, UInt32Value};
use envoy_types::util::pack_any;
use prost::{Message, Name};
use serde_json::Value;

use super::backend_refs::{BackendRef, ensure_cluster, rule_backends, short_hash};
use crate::generate::common::{Protocol, protocol};
use crate::generate::{ListenerOrigin, ProxyInput, Resources};

/// Kuma's precedence of one `matches` entry: the sort key (lower first).
fn precedence(
    m: &Value,
) -> (
    u8,
    std::cmp::Reverse<usize>,
    bool,
    std::cmp::Reverse<usize>,
    std::cmp::Reverse<usize>,
) {
    let (rank, len) = match path_of(m) {
        (PathType::Exact, v) => (0, v.len()),
        (PathType::Prefix, v) => (1, v.len()),
        (PathType::Regex, v) => (2, v.len()),
    };
    let count = |key: &str| m.get(key).and_then(Value::as_array).map_or(0, Vec::len);
    (
        rank,
        std::cmp::Reverse(len),
        m.get("method").is_none(),
        std::cmp::Reverse(count("headers")),
        std::cmp::Reverse(count("queryParams")),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathType {
    Exact,
    Prefix,
    Regex,
}

/// A match's path (none: `PathPrefix /`).
fn path_of(m: &Value) -> (PathType, String) {
    let Some(p) = m.get("path") else {
        return (PathType::Prefix, "/".into());
    };
    let value = p
        .get("value")
        .and_then(Value::as_str)
        .unwrap_or("/")
        .to_string();
    let kind = match p.get("type").and_then(Value::as_str) {
        Some("Exact") => PathType::Exact,
        Some("RegularExpression") => PathType::Regex,
        _ => PathType::Prefix,
    };
    (kind, value)
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn string_matcher(pattern: MatchPattern) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    }
}

fn regex(r: &str) -> RegexMatcher {
    RegexMatcher {
        regex: r.to_string(),
        engine_type: None,
    }
}

fn header_matcher(h: &Value) -> Option<HeaderMatcher> {
    let name = str_of(h, "name")?.to_string();
    let value = str_of(h, "value").unwrap_or_default().to_string();
    let (specifier, invert) = match str_of(h, "type").unwrap_or("Exact") {
        "Exact" => (
            HeaderMatchSpecifier::StringMatch(string_matcher(MatchPattern::Exact(value))),
            false,
        ),
        "Prefix" => (
            HeaderMatchSpecifier::StringMatch(string_matcher(MatchPattern::Prefix(value))),
            false,
        ),
        "RegularExpression" => (
            HeaderMatchSpecifier::StringMatch(string_matcher(MatchPattern::SafeRegex(regex(
                &value,
            )))),
            false,
        ),
        "Present" => (HeaderMatchSpecifier::PresentMatch(true), false),
        "Absent" => (HeaderMatchSpecifier::PresentMatch(true), true),
        _ => return None,
    };
    Some(HeaderMatcher {
        name,
        header_match_specifier: Some(specifier),
        invert_match: invert,
        ..Default::default()
    })
}

fn query_matcher(q: &Value) -> Option<QueryParameterMatcher> {
    let name = str_of(q, "name")?.to_string();
    let value = str_of(q, "value").unwrap_or_default().to_string();
    let pattern = match str_of(q, "type").unwrap_or("Exact") {
        "Exact" => MatchPattern::Exact(value),
        "RegularExpression" => MatchPattern::SafeRegex(regex(&value)),
        _ => return None,
    };
    Some(QueryParameterMatcher {
        name,
        query_parameter_match_specifier: Some(QueryParameterMatchSpecifier::StringMatch(
            string_matcher(pattern),
        )),
    })
}

/// The Envoy path specifiers of one match, with how each replaces a matched prefix: Kuma's
/// `PathPrefix /x` is two routes (`path: /x`, `prefix: /x/`).
fn path_specifiers(m: &Value) -> Vec<(PathSpecifier, bool)> {
    match path_of(m) {
        (PathType::Exact, v) => vec![(PathSpecifier::Path(v), false)],
        (PathType::Regex, v) => vec![(PathSpecifier::SafeRegex(regex(&v)), false)],
        (PathType::Prefix, v) => {
            let trimmed = v.trim_end_matches('/');
            if trimmed.is_empty() {
                vec![(PathSpecifier::Prefix("/".into()), true)]
            } else {
                vec![
                    (PathSpecifier::Path(trimmed.to_string()), false),
                    (PathSpecifier::Prefix(format!("{trimmed}/")), true),
                ]
            }
        }
    }
}

/// A `ReplacePrefixMatch` value for a route: the `prefix: /x/` form keeps its slash.
fn prefix_replacement(replacement: &str, slash_prefix: bool) -> String {
    if slash_prefix {
        format!("{}/", replacement.trim_end_matches('/'))
    } else {
        replacement.to_string()
    }
}

fn header_options(modifier: &Value) -> (Vec<HeaderValueOption>, Vec<String>) {
    let mut add = Vec::new();
    for (key, action) in [
        ("set", HeaderAppendAction::OverwriteIfExistsOrAdd),
        ("add", HeaderAppendAction::AppendIfExistsOrAdd),
    ] {
        for h in modifier
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let (Some(name), Some(value)) = (str_of(h, "name"), str_of(h, "value")) {
                add.push(HeaderValueOption {
                    header: Some(HeaderValue {
                        key: name.to_string(),
                        value: value.to_string(),
                        ..Default::default()
                    }),
                    append_action: action as i32,
                    ..Default::default()
                });
            }
        }
    }
    let remove = modifier
        .get("remove")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    (add, remove)
}

fn percentage(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap_or(100.0),
        Value::String(s) => s.parse().unwrap_or(100.0),
        _ => 100.0,
    }
}

fn redirect(r: &Value, slash_prefix: bool) -> RedirectAction {
    let response_code = match r.get("statusCode").and_then(Value::as_u64) {
        Some(301) => RedirectResponseCode::MovedPermanently,
        Some(303) => RedirectResponseCode::SeeOther,
        Some(307) => RedirectResponseCode::TemporaryRedirect,
        Some(308) => RedirectResponseCode::PermanentRedirect,
        _ => RedirectResponseCode::Found,
    };
    let path = r.get("path");
    let path_rewrite_specifier = match path.and_then(|p| str_of(p, "type")) {
        Some("ReplaceFullPath") => path
            .and_then(|p| str_of(p, "replaceFullPath"))
            .map(|p| PathRewriteSpecifier::PathRedirect(p.to_string())),
        Some("ReplacePrefixMatch") => path
            .and_then(|p| str_of(p, "replacePrefixMatch"))
            .map(|p| PathRewriteSpecifier::PrefixRewrite(prefix_replacement(p, slash_prefix))),
        _ => None,
    };
    RedirectAction {
        host_redirect: str_of(r, "hostname").unwrap_or_default().to_string(),
        port_redirect: r
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(0),
        response_code: response_code as i32,
        scheme_rewrite_specifier: str_of(r, "scheme")
            .map(|s| SchemeRewriteSpecifier::SchemeRedirect(s.to_string())),
        path_rewrite_specifier,
        strip_query: false,
    }
}

/// The clusters a rule forwards to: its backendRefs (none given: the service itself).
fn forward_clusters(
    input: &ProxyInput<'_>,
    resources: &mut Resources,
    service: &str,
    default: &Value,
) -> Option<ClusterSpecifier> {
    let mut backends = rule_backends(default);
    if default
        .get("backendRefs")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        backends = vec![BackendRef {
            service: service.to_string(),
            tags: Default::default(),
            weight: 1,
        }];
    }
    backends.retain(|b| b.weight > 0);
    let clusters: Vec<(String, u32)> = backends
        .iter()
        .map(|b| (ensure_cluster(input, resources, b), b.weight))
        .collect();
    match clusters.as_slice() {
        [] => None,
        [(one, _)] => Some(ClusterSpecifier::Cluster(one.clone())),
        many => Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: many
                .iter()
                .map(|(name, weight)| ClusterWeight {
                    name: name.clone(),
                    weight: Some(UInt32Value { value: *weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })),
    }
}

/// The Envoy routes of one `matches` entry and its rule's `default`.
fn routes_of(
    input: &ProxyInput<'_>,
    resources: &mut Resources,
    service: &str,
    m: &Value,
    default: &Value,
) -> Vec<Route> {
    let mut headers: Vec<HeaderMatcher> = Vec::new();
    if let Some(method) = str_of(m, "method") {
        headers.push(HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(string_matcher(
                MatchPattern::Exact(method.to_string()),
            ))),
            ..Default::default()
        });
    }
    headers.extend(
        m.get("headers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(header_matcher),
    );
    let query: Vec<QueryParameterMatcher> = m
        .get("queryParams")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(query_matcher)
        .collect();
    let filters: Vec<&Value> = default
        .get("filters")
        .and_then(Value::as_array)
        .map(|f| f.iter().collect())
        .unwrap_or_default();
    let filter = |t: &str, key: &str| {
        filters
            .iter()
            .filter(|f| str_of(f, "type") == Some(t))
            .filter_map(|f| f.get(key))
            .collect::<Vec<_>>()
    };
    let mut request_add = Vec::new();
    let mut request_remove = Vec::new();
    for modifier in filter("RequestHeaderModifier", "requestHeaderModifier") {
        let (a, r) = header_options(modifier);
        request_add.extend(a);
        request_remove.extend(r);
    }
    let mut response_add = Vec::new();
    let mut response_remove = Vec::new();
    for modifier in filter("ResponseHeaderModifier", "responseHeaderModifier") {
        let (a, r) = header_options(modifier);
        response_add.extend(a);
        response_remove.extend(r);
    }
    let redirect_filter = filter("RequestRedirect", "requestRedirect")
        .into_iter()
        .next();
    let rewrite = filter("URLRewrite", "urlRewrite").into_iter().next();
    let mirrors: Vec<RequestMirrorPolicy> = filter("RequestMirror", "requestMirror")
        .into_iter()
        .filter_map(|m| {
            let backend = BackendRef::parse(m.get("backendRef")?)?;
            let pct = m
                .get("percentage")
                .map_or(100.0, percentage)
                .clamp(0.0, 100.0);
            Some(RequestMirrorPolicy {
                cluster: ensure_cluster(input, resources, &backend),
                runtime_fraction: Some(RuntimeFractionalPercent {
                    default_value: Some(FractionalPercent {
                        numerator: (pct * 10_000.0).round() as u32,
                        denominator: DenominatorType::Million as i32,
                    }),
                    runtime_key: String::new(),
                }),
                ..Default::default()
            })
        })
        .collect();
    let clusters = if redirect_filter.is_some() {
        None
    } else {
        match forward_clusters(input, resources, service, default) {
            Some(c) => Some(c),
            None => return Vec::new(),
        }
    };
    let name = format!("{service}-{}", short_hash(&m.to_string()));
    path_specifiers(m)
        .into_iter()
        .map(|(path, slash_prefix)| {
            let action = match (&redirect_filter, &clusters) {
                (Some(r), _) => Action::Redirect(redirect(r, slash_prefix)),
                (None, specifier) => {
                    let path_rewrite = rewrite.and_then(|r| r.get("path"));
                    let (prefix_rewrite, regex_rewrite) =
                        match path_rewrite.and_then(|p| str_of(p, "type")) {
                            Some("ReplacePrefixMatch") => (
                                path_rewrite
                                    .and_then(|p| str_of(p, "replacePrefixMatch"))
                                    .map(|p| prefix_replacement(p, slash_prefix))
                                    .unwrap_or_default(),
                                None,
                            ),
                            Some("ReplaceFullPath") => (
                                String::new(),
                                path_rewrite.and_then(|p| str_of(p, "replaceFullPath")).map(
                                    |full| RegexMatchAndSubstitute {
                                        pattern: Some(regex("^.*$")),
                                        substitution: full.to_string(),
                                    },
                                ),
                            ),
                            _ => (String::new(), None),
                        };
                    Action::Route(RouteAction {
                        cluster_specifier: specifier.clone(),
                        prefix_rewrite,
                        regex_rewrite,
                        host_rewrite_specifier: rewrite
                            .and_then(|r| str_of(r, "hostname"))
                            .map(|h| HostRewriteSpecifier::HostRewriteLiteral(h.to_string())),
                        request_mirror_policies: mirrors.clone(),
                        // No timeout until MeshTimeout sets one (kuma-dp has none either).
                        timeout: Some(Duration::default()),
                        ..Default::default()
                    })
                }
            };
            Route {
                name: name.clone(),
                r#match: Some(RouteMatch {
                    path_specifier: Some(path),
                    headers: headers.clone(),
                    query_parameters: query.clone(),
                    ..Default::default()
                }),
                request_headers_to_add: request_add.clone(),
                request_headers_to_remove: request_remove.clone(),
                response_headers_to_add: response_add.clone(),
                response_headers_to_remove: response_remove.clone(),
                action: Some(action),
                ..Default::default()
            }
        })
        .collect()
}

/// Whether a match is the catch-all itself (`PathPrefix /` and nothing else).
fn is_catch_all(m: &Value) -> bool {
    let only_path = m.as_object().is_some_and(|o| o.keys().all(|k| k == "path"));
    only_path && path_of(m) == (PathType::Prefix, "/".to_string())
}

/// The route table of an outbound to `service` from its merged `rules`.
pub(crate) fn route_configuration(
    input: &ProxyInput<'_>,
    resources: &mut Resources,
    service: &str,
    rules: &[Value],
) -> RouteConfiguration {
    let mut entries: Vec<(&Value, &Value)> = rules
        .iter()
        .flat_map(|rule| {
            let default = rule.get("default").unwrap_or(&Value::Null);
            rule.get("matches")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(move |m| (m, default))
        })
        .collect();
    entries.sort_by_key(|(m, _)| precedence(m));
    let mut routes: Vec<Route> = Vec::new();
    for (m, default) in &entries {
        routes.extend(routes_of(input, resources, service, m, default));
    }
    if !entries.iter().any(|(m, _)| is_catch_all(m)) {
        routes.push(Route {
            name: format!("{service}-catch-all"),
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            action: Some(Action::Route(RouteAction {
                cluster_specifier: Some(ClusterSpecifier::Cluster(service.to_string())),
                timeout: Some(Duration::default()),
                ..Default::default()
            })),
            ..Default::default()
        });
    }
    RouteConfiguration {
        name: service.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: service.to_string(),
            domains: vec!["*".into()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The merged `rules` of a route policy for `service`, if any.
pub(crate) fn rules_for<'a>(
    rules: &'a meshzone_model::policy::PolicyRules,
    service: &str,
) -> Option<&'a [Value]> {
    rules
        .to_rule(service)
        .and_then(|r| r.conf.get("rules"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .filter(|r| !r.is_empty())
}

pub(crate) fn configure(input: &ProxyInput<'_>, resources: &mut Resources) {
    for i in 0..resources.listeners.len() {
        let ListenerOrigin::Outbound { service } = &resources.listeners[i].origin else {
            continue;
        };
        let service = service.clone();
        if protocol(input.protocols.get(&service).map(String::as_str)) == Protocol::Tcp {
            continue;
        }
        let Some(rules) = rules_for(&input.policies.http_route, &service) else {
            continue;
        };
        let rc = route_configuration(input, resources, &service, rules);
        let listener = &mut resources.listeners[i].listener;
        for chain in &mut listener.filter_chains {
            for filter in &mut chain.filters {
                let Some(FilterConfigType::TypedConfig(any)) = &mut filter.config_type else {
                    continue;
                };
                if any.type_url != HttpConnectionManager::type_url() {
                    continue;
                }
                let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice()) else {
                    continue;
                };
                hcm.route_specifier = Some(RouteSpecifier::RouteConfig(rc.clone()));
                *any = pack_any(hcm);
            }
        }
    }
}

#[cfg(test)]
mod tests;
