//! The proxy side of routing: an HTTP connection manager's inline RouteConfiguration becomes an
//! ordered route plan (match → action, header modifiers, rewrite, mirrors), and a `tcp_proxy`
//! with weighted clusters becomes a weighted plan. kuma-dp enforces exactly what these plans
//! hold; every other field that changes what Envoy would do is rejected by name (the NACK tells
//! the control plane what the proxy cannot honour instead of silently ignoring it).
//!
//! Plain data only: regexes are checked here (a pattern kuma-dp cannot compile is a NACK) and
//! compiled again by the proxy.

#![allow(deprecated)] // the deprecated Envoy fields are named so that they can be refused

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValueOption, RuntimeFractionalPercent};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::redirect_action::{
    PathRewriteSpecifier, SchemeRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
use envoy_types::pb::envoy::config::route::v3::route_action::{
    ClusterSpecifier, HashPolicy, HostRewriteSpecifier, RequestMirrorPolicy,
};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, RedirectAction, Route, RouteAction, RouteConfiguration,
    RouteMatch, WeightedCluster,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, RouteSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier as TcpCluster;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher};
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::envoy::r#type::v3::hash_policy::PolicySpecifier as TcpHashSpecifier;
use serde::Serialize;

/// How a request path is matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum PathMatch {
    /// `path`: the whole path (query excluded) equals the value.
    Exact(String),
    /// `prefix`: the path starts with the value (`""` and `/` match everything).
    Prefix(String),
    /// `safe_regex`: the whole path matches the pattern.
    Regex(String),
}

/// How a header or query parameter value is matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ValueMatch {
    Exact {
        value: String,
        ignore_case: bool,
    },
    Prefix {
        value: String,
        ignore_case: bool,
    },
    Suffix {
        value: String,
        ignore_case: bool,
    },
    Contains {
        value: String,
        ignore_case: bool,
    },
    /// The whole value matches the pattern.
    Regex(String),
    /// `present_match`: true → the header is there; false → it is not.
    Present(bool),
}

/// One header condition (`:method` included); `invert` negates it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderMatchPlan {
    pub name: String,
    pub matcher: ValueMatch,
    pub invert: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueryMatchPlan {
    pub name: String,
    pub matcher: ValueMatch,
}

/// What a request must look like for the route to apply: every condition holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteMatchPlan {
    pub path: PathMatch,
    pub headers: Vec<HeaderMatchPlan>,
    pub query: Vec<QueryMatchPlan>,
}

/// `append_action` of a header to add.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum HeaderAppend {
    /// Add another value (Kuma's `add`).
    Append,
    /// Add only when the header is absent.
    AddIfAbsent,
    /// Replace every value (Kuma's `set`).
    Overwrite,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderAdd {
    pub name: String,
    pub value: String,
    pub append: HeaderAppend,
}

/// Headers to add, then remove (`*_headers_to_add` / `*_headers_to_remove`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HeaderModPlan {
    pub add: Vec<HeaderAdd>,
    pub remove: Vec<String>,
}

impl HeaderModPlan {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// One cluster of a split, with its relative weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WeightedClusterPlan {
    pub cluster: String,
    pub weight: u32,
}

/// How the path is rewritten before forwarding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum PathRewrite {
    /// `prefix_rewrite`: the matched prefix is replaced.
    Prefix(String),
    /// `regex_rewrite`: every match of the pattern in the path is substituted (`\1` groups).
    Regex {
        pattern: String,
        substitution: String,
    },
}

/// A copy of the request sent to another cluster, its answer dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MirrorPlan {
    pub cluster: String,
    /// Share of requests mirrored, per million.
    pub per_million: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForwardPlan {
    /// One entry for `cluster`, several for `weighted_clusters`.
    pub clusters: Vec<WeightedClusterPlan>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_rewrite: Option<PathRewrite>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_rewrite: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<MirrorPlan>,
    /// `hash_policy`: the request's key for ring hash and maglev clusters.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hash_policy: Vec<HashPolicyPlan>,
    /// Request and stream-idle timeouts (MeshTimeout).
    pub timeouts: super::timeouts::RouteTimeouts,
    /// Retries (MeshRetry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<super::timeouts::RetryPlan>,
}

/// One `route.hash_policy` entry kuma-dp computes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HashPolicyPlan {
    pub key: HashKeyPlan,
    /// Stop at this policy when it produced a hash.
    pub terminal: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum HashKeyPlan {
    /// A request header's value.
    Header(String),
    /// A cookie's value; with `ttl_seconds`, a request without it gets one generated (and set
    /// on the response with `Max-Age` and `Path`), as Envoy does.
    Cookie {
        name: String,
        ttl_seconds: Option<u64>,
        path: String,
    },
    /// A query parameter's value.
    QueryParameter(String),
    /// The downstream client's IP address (`connection_properties.source_ip`).
    SourceIp,
}

/// `route.redirect`: answered by the proxy itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedirectPlan {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `path_redirect`: the new path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `prefix_rewrite`: the matched prefix is replaced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    pub status: u16,
    pub strip_query: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum RouteActionPlan {
    Forward(ForwardPlan),
    Redirect(RedirectPlan),
}

/// One route, in the order they are tried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoutePlan {
    pub name: String,
    #[serde(rename = "match")]
    pub matches: RouteMatchPlan,
    pub action: RouteActionPlan,
    #[serde(skip_serializing_if = "HeaderModPlan::is_empty")]
    pub request_headers: HeaderModPlan,
    #[serde(skip_serializing_if = "HeaderModPlan::is_empty")]
    pub response_headers: HeaderModPlan,
}

impl RoutePlan {
    /// Every cluster the route may send to (mirrors included).
    pub fn clusters(&self) -> impl Iterator<Item = &str> {
        let (forward, mirrors): (&[WeightedClusterPlan], &[MirrorPlan]) = match &self.action {
            RouteActionPlan::Forward(f) => (&f.clusters, &f.mirrors),
            RouteActionPlan::Redirect(_) => (&[], &[]),
        };
        forward
            .iter()
            .map(|c| c.cluster.as_str())
            .chain(mirrors.iter().map(|m| m.cluster.as_str()))
    }
}

/// Decodes every item of a list, naming the failing one `path[i]`.
fn each<T, U>(
    items: &[T],
    path: &str,
    decode: impl Fn(&T, &str) -> Result<U, String>,
) -> Result<Vec<U>, String> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| decode(item, &format!("{path}[{i}]")))
        .collect()
}

pub(super) fn is_set<T: Default + PartialEq>(v: &T) -> bool {
    *v != T::default()
}

/// Refuses the first listed field that is set, naming it under `$path`.
macro_rules! refuse_set {
    ($msg:expr, $path:expr, [$($field:ident),* $(,)?]) => {
        $(
            if is_set(&$msg.$field) {
                return Err(format!(
                    "{}.{}: not supported by kuma-dp",
                    $path,
                    stringify!($field)
                ));
            }
        )*
    };
}

/// Refuses whatever is left once the supported fields were taken out (a field newer than the
/// lists above).
pub(super) fn refuse_rest<T: Default + PartialEq>(
    rest: &T,
    path: &str,
    supported: &str,
) -> Result<(), String> {
    if is_set(rest) {
        return Err(format!(
            "{path}: a field other than {supported} is set; kuma-dp does not support it"
        ));
    }
    Ok(())
}

/// The plan of an HTTP connection manager: its route configuration's name (the generator names
/// it after the destination service) and its routes, in order. `http_filters` are left to the
/// decoders of the filters (the router filter is implied).
pub fn hcm_routes(hcm: &HttpConnectionManager) -> Result<(String, Vec<RoutePlan>), String> {
    let mut rest = hcm.clone();
    rest.stat_prefix.clear();
    rest.http_filters.clear();
    if rest.codec_type == CodecType::Auto as i32 {
        rest.codec_type = 0;
    }
    let Some(RouteSpecifier::RouteConfig(rc)) = rest.route_specifier.take() else {
        return Err("http_connection_manager: an inline route_config is required (no RDS)".into());
    };
    let path = "http_connection_manager";
    refuse_set!(
        rest,
        path,
        [
            codec_type,
            add_user_agent,
            tracing,
            common_http_protocol_options,
            http1_safe_max_connection_duration,
            http_protocol_options,
            http2_protocol_options,
            http3_protocol_options,
            server_name,
            server_header_transformation,
            scheme_header_transformation,
            max_request_headers_kb,
            stream_idle_timeout,
            stream_flush_timeout,
            request_timeout,
            request_headers_timeout,
            drain_timeout,
            drain_timeout_jitter,
            delayed_close_timeout,
            access_log,
            access_log_flush_interval,
            flush_access_log_on_new_request,
            access_log_options,
            use_remote_address,
            xff_num_trusted_hops,
            original_ip_detection_extensions,
            early_header_mutation_extensions,
            internal_address_config,
            skip_xff_append,
            via,
            generate_request_id,
            preserve_external_request_id,
            always_set_request_id_in_response,
            forward_client_cert_details,
            set_current_client_cert_details,
            forward_client_cert_matcher,
            proxy_100_continue,
            represent_ipv4_remote_address_as_ipv4_mapped_ipv6,
            upgrade_configs,
            normalize_path,
            merge_slashes,
            path_with_escaped_slashes_action,
            request_id_extension,
            local_reply_config,
            strip_matching_host_port,
            stream_error_on_invalid_http_message,
            path_normalization_options,
            strip_trailing_host_dot,
            proxy_status_config,
            typed_header_validation_config,
            append_x_forwarded_port,
            append_local_overload,
            add_proxy_protocol_connection_state,
            forward_proto_config,
            strip_port_mode,
        ]
    );
    refuse_rest(
        &rest,
        path,
        "stat_prefix, codec_type AUTO, http_filters, route_config",
    )?;
    Ok((rc.name.clone(), route_configuration(&rc)?))
}

/// The routes of an inline RouteConfiguration with one virtual host matching every domain.
pub fn route_configuration(rc: &RouteConfiguration) -> Result<Vec<RoutePlan>, String> {
    let path = format!("route_config {:?}", rc.name);
    let mut rest = rc.clone();
    rest.name.clear();
    rest.validate_clusters = None;
    let vhosts = std::mem::take(&mut rest.virtual_hosts);
    refuse_set!(
        rest,
        path,
        [
            vhds,
            internal_only_headers,
            response_headers_to_add,
            response_headers_to_remove,
            request_headers_to_add,
            request_headers_to_remove,
            most_specific_header_mutations_wins,
            max_direct_response_body_size_bytes,
            cluster_specifier_plugins,
            request_mirror_policies,
            ignore_port_in_host_matching,
            vhost_header,
            ignore_path_parameters_in_path_matching,
            typed_per_filter_config,
            metadata,
            route_specifiers,
        ]
    );
    refuse_rest(&rest, &path, "name, validate_clusters, virtual_hosts")?;
    let [vh] = vhosts.as_slice() else {
        return Err(format!(
            "{path}.virtual_hosts: exactly one virtual host is supported, got {}",
            vhosts.len()
        ));
    };
    let path = format!("{path}.virtual_hosts[0]");
    if vh.domains != ["*"] {
        return Err(format!(
            "{path}.domains: only [\"*\"] is supported (kuma-dp does not route by host), got {:?}",
            vh.domains
        ));
    }
    let mut rest = vh.clone();
    rest.name.clear();
    rest.domains.clear();
    let routes = std::mem::take(&mut rest.routes);
    refuse_set!(
        rest,
        path,
        [
            matcher,
            require_tls,
            virtual_clusters,
            rate_limits,
            request_headers_to_add,
            request_headers_to_remove,
            response_headers_to_add,
            response_headers_to_remove,
            cors,
            typed_per_filter_config,
            include_request_attempt_count,
            include_attempt_count_in_response,
            retry_policy,
            retry_policy_typed_config,
            hedge_policy,
            include_is_timeout_retry_header,
            per_request_buffer_limit_bytes,
            request_body_buffer_limit,
            request_mirror_policies,
            metadata,
            route_specifiers,
        ]
    );
    refuse_rest(&rest, &path, "name, domains, routes")?;
    if routes.is_empty() {
        return Err(format!("{path}.routes: no route"));
    }
    routes
        .iter()
        .enumerate()
        .map(|(i, r)| route(r, &format!("{path}.routes[{i}] {:?}", r.name)))
        .collect()
}

fn route(r: &Route, path: &str) -> Result<RoutePlan, String> {
    let mut rest = r.clone();
    rest.name.clear();
    rest.stat_prefix.clear();
    let m = rest.r#match.take();
    let action = rest.action.take();
    let request_headers = header_mods(
        &std::mem::take(&mut rest.request_headers_to_add),
        std::mem::take(&mut rest.request_headers_to_remove),
        &format!("{path}.request_headers_to_add"),
    )?;
    let response_headers = header_mods(
        &std::mem::take(&mut rest.response_headers_to_add),
        std::mem::take(&mut rest.response_headers_to_remove),
        &format!("{path}.response_headers_to_add"),
    )?;
    refuse_set!(
        rest,
        path,
        [
            metadata,
            decorator,
            typed_per_filter_config,
            tracing,
            per_request_buffer_limit_bytes,
            request_body_buffer_limit,
            route_specifiers,
        ]
    );
    refuse_rest(
        &rest,
        path,
        "name, match, action, stat_prefix, header modifiers",
    )?;
    let matches = route_match(
        m.as_ref().ok_or_else(|| format!("{path}.match: missing"))?,
        &format!("{path}.match"),
    )?;
    let action = match action {
        Some(Action::Route(a)) => RouteActionPlan::Forward(forward(&a, &format!("{path}.route"))?),
        Some(Action::Redirect(a)) => {
            RouteActionPlan::Redirect(redirect(&a, &format!("{path}.redirect"))?)
        }
        Some(Action::DirectResponse(_)) => {
            return Err(format!("{path}.direct_response: not supported by kuma-dp"));
        }
        Some(_) => {
            return Err(format!(
                "{path}: only route and redirect actions are supported"
            ));
        }
        None => return Err(format!("{path}: no action")),
    };
    Ok(RoutePlan {
        name: r.name.clone(),
        matches,
        action,
        request_headers,
        response_headers,
    })
}

/// Checks a regex the way kuma-dp will compile it (whole-string matching is added there).
fn regex(m: &RegexMatcher, path: &str) -> Result<String, String> {
    if m.engine_type.is_some() {
        return Err(format!(
            "{path}.engine_type: only the default engine is supported"
        ));
    }
    regex::Regex::new(&m.regex)
        .map_err(|e| format!("{path}.regex: kuma-dp cannot compile {:?}: {e}", m.regex))?;
    Ok(m.regex.clone())
}

fn route_match(m: &RouteMatch, path: &str) -> Result<RouteMatchPlan, String> {
    let mut rest = m.clone();
    if rest.case_sensitive.is_some_and(|b| b.value) {
        rest.case_sensitive = None;
    }
    let specifier = rest.path_specifier.take();
    let headers = std::mem::take(&mut rest.headers);
    let query = std::mem::take(&mut rest.query_parameters);
    refuse_set!(
        rest,
        path,
        [
            case_sensitive,
            runtime_fraction,
            cookies,
            grpc,
            tls_context,
            dynamic_metadata,
            filter_state
        ]
    );
    refuse_rest(&rest, path, "path specifier, headers, query_parameters")?;
    let path_match = match specifier {
        Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(p),
        Some(PathSpecifier::Path(p)) => PathMatch::Exact(p),
        Some(PathSpecifier::SafeRegex(r)) => {
            PathMatch::Regex(regex(&r, &format!("{path}.safe_regex"))?)
        }
        Some(_) => {
            return Err(format!(
                "{path}: only prefix, path and safe_regex path matching are supported"
            ));
        }
        None => return Err(format!("{path}: no path specifier")),
    };
    Ok(RouteMatchPlan {
        path: path_match,
        headers: each(&headers, &format!("{path}.headers"), header_match)?,
        query: each(&query, &format!("{path}.query_parameters"), query_match)?,
    })
}

fn string_match(m: &StringMatcher, path: &str) -> Result<ValueMatch, String> {
    let ignore_case = m.ignore_case;
    Ok(match &m.match_pattern {
        Some(MatchPattern::Exact(v)) => ValueMatch::Exact {
            value: v.clone(),
            ignore_case,
        },
        Some(MatchPattern::Prefix(v)) => ValueMatch::Prefix {
            value: v.clone(),
            ignore_case,
        },
        Some(MatchPattern::Suffix(v)) => ValueMatch::Suffix {
            value: v.clone(),
            ignore_case,
        },
        Some(MatchPattern::Contains(v)) => ValueMatch::Contains {
            value: v.clone(),
            ignore_case,
        },
        Some(MatchPattern::SafeRegex(r)) if !ignore_case => {
            ValueMatch::Regex(regex(r, &format!("{path}.safe_regex"))?)
        }
        Some(MatchPattern::SafeRegex(_)) => {
            return Err(format!("{path}.ignore_case: not supported with safe_regex"));
        }
        _ => {
            return Err(format!(
                "{path}: only exact, prefix, suffix, contains and safe_regex are supported"
            ));
        }
    })
}

pub(crate) fn header_match(h: &HeaderMatcher, path: &str) -> Result<HeaderMatchPlan, String> {
    if h.treat_missing_header_as_empty {
        return Err(format!(
            "{path}.treat_missing_header_as_empty: not supported by kuma-dp"
        ));
    }
    let exact = |value: &str| ValueMatch::Exact {
        value: value.to_string(),
        ignore_case: false,
    };
    let matcher = match &h.header_match_specifier {
        Some(HeaderMatchSpecifier::StringMatch(m)) => {
            string_match(m, &format!("{path}.string_match"))?
        }
        Some(HeaderMatchSpecifier::PresentMatch(p)) => ValueMatch::Present(*p),
        Some(HeaderMatchSpecifier::ExactMatch(v)) => exact(v),
        Some(HeaderMatchSpecifier::PrefixMatch(v)) => ValueMatch::Prefix {
            value: v.clone(),
            ignore_case: false,
        },
        Some(HeaderMatchSpecifier::SuffixMatch(v)) => ValueMatch::Suffix {
            value: v.clone(),
            ignore_case: false,
        },
        Some(HeaderMatchSpecifier::ContainsMatch(v)) => ValueMatch::Contains {
            value: v.clone(),
            ignore_case: false,
        },
        Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => {
            ValueMatch::Regex(regex(r, &format!("{path}.safe_regex_match"))?)
        }
        Some(HeaderMatchSpecifier::RangeMatch(_)) => {
            return Err(format!("{path}.range_match: not supported by kuma-dp"));
        }
        // Envoy: no specifier means the header must be present.
        None => ValueMatch::Present(true),
    };
    Ok(HeaderMatchPlan {
        name: h.name.to_ascii_lowercase(),
        matcher,
        invert: h.invert_match,
    })
}

fn query_match(q: &QueryParameterMatcher, path: &str) -> Result<QueryMatchPlan, String> {
    let matcher = match &q.query_parameter_match_specifier {
        Some(QueryParameterMatchSpecifier::StringMatch(m)) => {
            string_match(m, &format!("{path}.string_match"))?
        }
        Some(QueryParameterMatchSpecifier::PresentMatch(p)) => ValueMatch::Present(*p),
        None => ValueMatch::Present(true),
    };
    Ok(QueryMatchPlan {
        name: q.name.clone(),
        matcher,
    })
}

pub(super) fn header_mods(
    add: &[HeaderValueOption],
    remove: Vec<String>,
    path: &str,
) -> Result<HeaderModPlan, String> {
    let add = add
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let path = format!("{path}[{i}]");
            if o.append.is_some() {
                return Err(format!("{path}.append: deprecated; use append_action"));
            }
            if o.keep_empty_value {
                return Err(format!("{path}.keep_empty_value: not supported by kuma-dp"));
            }
            let header = o
                .header
                .as_ref()
                .ok_or_else(|| format!("{path}.header: missing"))?;
            let value = if header.raw_value.is_empty() {
                header.value.clone()
            } else {
                String::from_utf8(header.raw_value.clone())
                    .map_err(|_| format!("{path}.header.raw_value: not UTF-8"))?
            };
            let append = match HeaderAppendAction::try_from(o.append_action) {
                Ok(HeaderAppendAction::AppendIfExistsOrAdd) => HeaderAppend::Append,
                Ok(HeaderAppendAction::AddIfAbsent) => HeaderAppend::AddIfAbsent,
                Ok(HeaderAppendAction::OverwriteIfExistsOrAdd) => HeaderAppend::Overwrite,
                _ => {
                    return Err(format!(
                        "{path}.append_action: {} is not supported by kuma-dp",
                        o.append_action
                    ));
                }
            };
            Ok(HeaderAdd {
                name: header.key.to_ascii_lowercase(),
                value,
                append,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(HeaderModPlan {
        add,
        remove: remove.into_iter().map(|r| r.to_ascii_lowercase()).collect(),
    })
}

fn weighted(w: &WeightedCluster, path: &str) -> Result<Vec<WeightedClusterPlan>, String> {
    let mut rest = w.clone();
    rest.total_weight = None;
    let clusters = std::mem::take(&mut rest.clusters);
    refuse_set!(rest, path, [runtime_key_prefix, random_value_specifier]);
    refuse_rest(&rest, path, "clusters, total_weight")?;
    let out: Vec<WeightedClusterPlan> = clusters
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let path = format!("{path}.clusters[{i}]");
            let mut rest = c.clone();
            rest.name.clear();
            let weight = rest.weight.take().map_or(0, |w| w.value);
            refuse_set!(
                rest,
                path,
                [
                    cluster_header,
                    metadata_match,
                    request_headers_to_add,
                    request_headers_to_remove,
                    response_headers_to_add,
                    response_headers_to_remove,
                    typed_per_filter_config,
                    host_rewrite_specifier,
                ]
            );
            refuse_rest(&rest, &path, "name, weight")?;
            if c.name.is_empty() {
                return Err(format!("{path}.name: empty"));
            }
            Ok(WeightedClusterPlan {
                cluster: c.name.clone(),
                weight,
            })
        })
        .collect::<Result<_, String>>()?;
    check_weights(&out, path)?;
    Ok(out)
}

fn check_weights(clusters: &[WeightedClusterPlan], path: &str) -> Result<(), String> {
    if clusters.is_empty() {
        return Err(format!("{path}.clusters: empty"));
    }
    if clusters.iter().all(|c| c.weight == 0) {
        return Err(format!("{path}.clusters: every weight is 0"));
    }
    Ok(())
}

fn per_million(f: &RuntimeFractionalPercent, path: &str) -> Result<u32, String> {
    let Some(v) = &f.default_value else {
        return Err(format!("{path}.default_value: missing"));
    };
    let scale = match DenominatorType::try_from(v.denominator) {
        Ok(DenominatorType::Hundred) => 10_000,
        Ok(DenominatorType::TenThousand) => 100,
        Ok(DenominatorType::Million) => 1,
        Err(_) => return Err(format!("{path}.default_value.denominator: unknown")),
    };
    Ok(v.numerator.saturating_mul(scale).min(1_000_000))
}

fn mirror(m: &RequestMirrorPolicy, path: &str) -> Result<MirrorPlan, String> {
    let mut rest = m.clone();
    rest.cluster.clear();
    let fraction = rest.runtime_fraction.take();
    refuse_set!(
        rest,
        path,
        [
            cluster_header,
            trace_sampled,
            disable_shadow_host_suffix_append,
            request_headers_mutations,
            host_rewrite_literal,
        ]
    );
    refuse_rest(&rest, path, "cluster, runtime_fraction")?;
    if m.cluster.is_empty() {
        return Err(format!("{path}.cluster: empty"));
    }
    Ok(MirrorPlan {
        cluster: m.cluster.clone(),
        per_million: match &fraction {
            Some(f) => per_million(f, &format!("{path}.runtime_fraction"))?,
            None => 1_000_000,
        },
    })
}

fn forward(a: &RouteAction, path: &str) -> Result<ForwardPlan, String> {
    let mut rest = a.clone();
    let specifier = rest.cluster_specifier.take();
    let prefix_rewrite = std::mem::take(&mut rest.prefix_rewrite);
    let regex_rewrite = rest.regex_rewrite.take();
    let host = rest.host_rewrite_specifier.take();
    let mirrors = std::mem::take(&mut rest.request_mirror_policies);
    let hash_policy = hash_policies(
        &std::mem::take(&mut rest.hash_policy),
        &format!("{path}.hash_policy"),
    )?;
    // Timeouts and retries (MeshTimeout, MeshRetry) are taken out here.
    let (timeouts, retry) = super::timeouts::route_resilience(&mut rest, path)?;
    refuse_set!(
        rest,
        path,
        [
            cluster_not_found_response_code,
            metadata_match,
            path_rewrite_policy,
            path_rewrite,
            append_x_forwarded_host,
            timeout,
            idle_timeout,
            flush_timeout,
            early_data_policy,
            retry_policy,
            retry_policy_typed_config,
            priority,
            rate_limits,
            include_vh_rate_limits,
            cors,
            max_grpc_timeout,
            grpc_timeout_offset,
            upgrade_configs,
            internal_redirect_policy,
            internal_redirect_action,
            max_internal_redirects,
            hedge_policy,
            max_stream_duration,
        ]
    );
    refuse_rest(
        &rest,
        path,
        "cluster, weighted_clusters, prefix_rewrite, regex_rewrite, host_rewrite_literal, request_mirror_policies, hash_policy",
    )?;
    let clusters = match specifier {
        Some(ClusterSpecifier::Cluster(c)) if !c.is_empty() => vec![WeightedClusterPlan {
            cluster: c,
            weight: 1,
        }],
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            weighted(&w, &format!("{path}.weighted_clusters"))?
        }
        _ => {
            return Err(format!(
                "{path}: a cluster or weighted_clusters is required"
            ));
        }
    };
    let path_rewrite = match (prefix_rewrite.is_empty(), regex_rewrite) {
        (true, None) => None,
        (false, None) => Some(PathRewrite::Prefix(prefix_rewrite)),
        (true, Some(r)) => {
            let pattern = r
                .pattern
                .as_ref()
                .ok_or_else(|| format!("{path}.regex_rewrite.pattern: missing"))?;
            Some(PathRewrite::Regex {
                pattern: regex(pattern, &format!("{path}.regex_rewrite.pattern"))?,
                substitution: r.substitution,
            })
        }
        (false, Some(_)) => {
            return Err(format!(
                "{path}: prefix_rewrite and regex_rewrite are exclusive"
            ));
        }
    };
    let host_rewrite = match host {
        None => None,
        Some(HostRewriteSpecifier::HostRewriteLiteral(h)) => Some(h),
        Some(_) => {
            return Err(format!(
                "{path}: only host_rewrite_literal host rewriting is supported"
            ));
        }
    };
    Ok(ForwardPlan {
        clusters,
        path_rewrite,
        host_rewrite,
        mirrors: each(&mirrors, &format!("{path}.request_mirror_policies"), mirror)?,
        hash_policy,
        timeouts,
        retry,
    })
}

/// The hash policies kuma-dp computes: header, cookie (name, ttl, path), query parameter and
/// source IP. kuma-dp keeps no filter state, so that one is refused. A `connection_properties`
/// without `source_ip` can never give a value, so it is left out, as if absent.
fn hash_policies(policies: &[HashPolicy], path: &str) -> Result<Vec<HashPolicyPlan>, String> {
    policies
        .iter()
        .enumerate()
        .filter(|(_, h)| {
            !matches!(&h.policy_specifier, Some(PolicySpecifier::ConnectionProperties(c)) if !c.source_ip)
        })
        .map(|(i, h)| {
            let at = format!("{path}[{i}]");
            let key = match &h.policy_specifier {
                Some(PolicySpecifier::Header(x)) => {
                    if x.regex_rewrite.is_some() {
                        return Err(format!("{at}.header.regex_rewrite: not enforced by kuma-dp"));
                    }
                    if x.header_name.is_empty() {
                        return Err(format!("{at}.header.header_name: empty"));
                    }
                    HashKeyPlan::Header(x.header_name.to_ascii_lowercase())
                }
                Some(PolicySpecifier::Cookie(c)) => {
                    if !c.attributes.is_empty() {
                        return Err(format!("{at}.cookie.attributes: not enforced by kuma-dp"));
                    }
                    let ttl_seconds = match &c.ttl {
                        None => None,
                        Some(d) if d.nanos == 0 && d.seconds >= 0 => Some(d.seconds as u64),
                        Some(_) => {
                            return Err(format!(
                                "{at}.cookie.ttl: only whole non-negative seconds are enforced by kuma-dp"
                            ));
                        }
                    };
                    HashKeyPlan::Cookie {
                        name: c.name.clone(),
                        ttl_seconds,
                        path: c.path.clone(),
                    }
                }
                Some(PolicySpecifier::QueryParameter(q)) => HashKeyPlan::QueryParameter(q.name.clone()),
                Some(PolicySpecifier::ConnectionProperties(_)) => HashKeyPlan::SourceIp,
                Some(PolicySpecifier::FilterState(_)) => {
                    return Err(format!("{at}.filter_state: not enforced by kuma-dp"));
                }
                None => return Err(format!("{at}: a policy specifier is required")),
            };
            Ok(HashPolicyPlan {
                key,
                terminal: h.terminal,
            })
        })
        .collect()
}

fn redirect(r: &RedirectAction, path: &str) -> Result<RedirectPlan, String> {
    let status = match r.response_code {
        0 => 301,
        1 => 302,
        2 => 303,
        3 => 307,
        4 => 308,
        other => return Err(format!("{path}.response_code: unknown value {other}")),
    };
    let scheme = match &r.scheme_rewrite_specifier {
        None => None,
        Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => Some("https".to_string()),
        Some(SchemeRewriteSpecifier::HttpsRedirect(false)) => None,
        Some(SchemeRewriteSpecifier::SchemeRedirect(s)) => Some(s.clone()),
    };
    let (path_redirect, prefix_rewrite) = match &r.path_rewrite_specifier {
        None => (None, None),
        Some(PathRewriteSpecifier::PathRedirect(p)) => (Some(p.clone()), None),
        Some(PathRewriteSpecifier::PrefixRewrite(p)) => (None, Some(p.clone())),
        Some(_) => {
            return Err(format!(
                "{path}: only path_redirect and prefix_rewrite path rewriting are supported"
            ));
        }
    };
    let port = match r.port_redirect {
        0 => None,
        p => Some(u16::try_from(p).map_err(|_| format!("{path}.port_redirect: {p} out of range"))?),
    };
    Ok(RedirectPlan {
        scheme,
        host: Some(r.host_redirect.clone()).filter(|h| !h.is_empty()),
        port,
        path: path_redirect,
        prefix_rewrite,
        status,
        strip_query: r.strip_query,
    })
}

/// The clusters of a `tcp_proxy`: one (`cluster`), or a weighted split (`weighted_clusters`,
/// the bool; possibly of one cluster).
/// Takes `tcp_proxy.hash_policy`: whether the connection is hashed by its source IP (the one
/// policy kuma-dp computes for TCP; a filter-state key is refused).
pub fn tcp_hash_source_ip(tcp: &mut TcpProxy) -> Result<bool, String> {
    let mut source_ip = false;
    for (i, h) in std::mem::take(&mut tcp.hash_policy).iter().enumerate() {
        match &h.policy_specifier {
            Some(TcpHashSpecifier::SourceIp(_)) => source_ip = true,
            Some(TcpHashSpecifier::FilterState(_)) => {
                return Err(format!(
                    "tcp_proxy.hash_policy[{i}].filter_state: not enforced by kuma-dp"
                ));
            }
            None => {
                return Err(format!(
                    "tcp_proxy.hash_policy[{i}]: a policy specifier is required"
                ));
            }
        }
    }
    Ok(source_ip)
}

pub fn tcp_proxy_clusters(tcp: &TcpProxy) -> Result<(Vec<WeightedClusterPlan>, bool), String> {
    let path = "tcp_proxy";
    let mut rest = tcp.clone();
    rest.stat_prefix.clear();
    let specifier = rest.cluster_specifier.take();
    refuse_set!(
        rest,
        path,
        [
            on_demand,
            metadata_match,
            idle_timeout,
            downstream_idle_timeout,
            upstream_idle_timeout,
            access_log,
            max_connect_attempts,
            backoff_options,
            hash_policy,
            tunneling_config,
            max_downstream_connection_duration,
            max_downstream_connection_duration_jitter_percentage,
            access_log_flush_interval,
            flush_access_log_on_connected,
            access_log_options,
            proxy_protocol_tlvs,
            proxy_protocol_tlv_merge_policy,
            upstream_connect_mode,
            max_early_data_bytes,
            check_drain_close,
        ]
    );
    refuse_rest(&rest, path, "stat_prefix, cluster, weighted_clusters")?;
    match specifier {
        Some(TcpCluster::Cluster(c)) if !c.is_empty() => Ok((
            vec![WeightedClusterPlan {
                cluster: c,
                weight: 1,
            }],
            false,
        )),
        Some(TcpCluster::WeightedClusters(w)) => {
            let path = "tcp_proxy.weighted_clusters";
            let out: Vec<WeightedClusterPlan> = w
                .clusters
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if c.metadata_match.is_some() {
                        return Err(format!(
                            "{path}.clusters[{i}].metadata_match: not supported by kuma-dp (use a subset cluster)"
                        ));
                    }
                    if c.name.is_empty() {
                        return Err(format!("{path}.clusters[{i}].name: empty"));
                    }
                    Ok(WeightedClusterPlan {
                        cluster: c.name.clone(),
                        weight: c.weight,
                    })
                })
                .collect::<Result<_, String>>()?;
            check_weights(&out, path)?;
            Ok((out, true))
        }
        _ => Err(format!(
            "{path}: a cluster or weighted_clusters is required"
        )),
    }
}

#[cfg(test)]
mod tests;
