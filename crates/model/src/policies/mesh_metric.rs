//! MeshMetric (reference §2.11): which of a proxy's metrics are exposed and where. Proxy-wide:
//! the conf is `spec.default` only — the sidecar's own metrics (`profiles`: appended profile
//! names, then `exclude` and `include` selectors; `includeUnused`), the `applications` the proxy
//! scrapes and appends, and the `backends` that expose the result. Merged across policies with
//! JSON Merge Patch, except `appendProfiles`, which concatenates.
//!
//! Only the Prometheus backend without TLS is built; an OpenTelemetry backend and a `tls.mode`
//! other than `Disabled` are refused at their paths. [`MetricFilter`] is the pure filter the
//! data plane applies to each metric name.

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::inbound_from::required;
use super::{PolicyKind, check_top_level, json};
use crate::descriptor::ResourceType;
use crate::policy::{PolicySpec, TargetRef};
use crate::validate::Violations;

/// Kuma's default Prometheus backend port and path.
pub const DEFAULT_PROMETHEUS_PORT: u16 = 5670;
pub const DEFAULT_PROMETHEUS_PATH: &str = "/metrics";
/// Kuma's default application scrape path (2.10+).
pub const DEFAULT_APPLICATION_PATH: &str = "/metrics/prometheus";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshMetric {
    /// The proxies whose metrics are exposed; `{kind: Mesh}` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<MetricConf>,
}

/// The proxy-wide conf (also the merged conf the engine gives for a proxy).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<Sidecar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applications: Option<Vec<Application>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<Backend>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Sidecar {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profiles: Option<Profiles>,
    /// Also expose metrics never written (default false: only used ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_unused: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Profiles {
    /// Concatenated across policies; `Basic` when none is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append_profiles: Option<Vec<Profile>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<Vec<Selector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<Vec<Selector>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: ProfileName,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProfileName {
    All,
    Basic,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SelectorType {
    Prefix,
    Regex,
    Exact,
    Contains,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    #[serde(rename = "type")]
    pub selector_type: SelectorType,
    #[serde(default, rename = "match")]
    pub matches: String,
}

/// An application endpoint the proxy scrapes and appends to its own metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Application {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Default `/metrics/prometheus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Default `127.0.0.1` (the proxy's application).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default)]
    pub port: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendType {
    Prometheus,
    OpenTelemetry,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Backend {
    #[serde(rename = "type")]
    pub backend_type: BackendType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusBackend>,
    /// Kept as written so it can be refused at its path (not built).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_telemetry: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrometheusBackend {
    /// Default 5670.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Default `/metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Names the scraper (Kuma's MADS); also names the listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<PrometheusTls>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrometheusTls {
    /// `Disabled` (default), `ProvidedTLS` or `ActiveMTLSBackend`; only `Disabled` is built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

impl PrometheusBackend {
    pub fn port_or_default(&self) -> u32 {
        self.port.unwrap_or(u32::from(DEFAULT_PROMETHEUS_PORT))
    }
    pub fn path_or_default(&self) -> &str {
        self.path.as_deref().unwrap_or(DEFAULT_PROMETHEUS_PATH)
    }
}

fn check_port(port: u32, path: String, v: &mut Violations) {
    if !(1..=65535).contains(&port) {
        v.push(path, "must be in inclusive range [1, 65535]");
    }
}

fn check_http_path(text: &str, path: String, v: &mut Violations) {
    if !text.starts_with('/') {
        v.push(path, "must be a valid path starting with /");
    }
}

fn check_selectors(list: &[Selector], path: &str, v: &mut Violations) {
    for (i, s) in list.iter().enumerate() {
        let at = format!("{path}[{i}].match");
        if s.matches.is_empty() {
            v.push(at, "must not be empty");
        } else if s.selector_type == SelectorType::Regex && Regex::new(&s.matches).is_err() {
            v.push(at, "invalid regex");
        }
    }
}

fn check_backend(b: &Backend, path: &str, v: &mut Violations) {
    match b.backend_type {
        BackendType::Prometheus => {
            let at = format!("{path}.prometheus");
            if let Some(p) = required(&b.prometheus, &at, v) {
                if let Some(port) = p.port {
                    check_port(port, format!("{at}.port"), v);
                }
                if let Some(text) = &p.path {
                    check_http_path(text, format!("{at}.path"), v);
                }
                match p.tls.as_ref().and_then(|t| t.mode.as_deref()) {
                    None | Some("Disabled") => {}
                    Some("ProvidedTLS" | "ActiveMTLSBackend") => v.push(
                        format!("{at}.tls.mode"),
                        "only Disabled is supported by kuma-dp (TLS on the metrics endpoint is not built)",
                    ),
                    Some(_) => v.push(
                        format!("{at}.tls.mode"),
                        "must be one of: Disabled, ProvidedTLS, ActiveMTLSBackend",
                    ),
                }
            }
            if b.open_telemetry.is_some() {
                v.push(
                    format!("{path}.openTelemetry"),
                    "must not be defined for type Prometheus",
                );
            }
        }
        BackendType::OpenTelemetry => v.push(
            format!("{path}.type"),
            "OpenTelemetry is not supported by kuma-dp (only Prometheus is built)",
        ),
    }
}

/// Checks a merged or single conf rooted at `path` (`spec.default`).
pub fn check_conf(conf: &MetricConf, path: &str, v: &mut Violations) {
    if let Some(profiles) = conf.sidecar.as_ref().and_then(|s| s.profiles.as_ref()) {
        let at = format!("{path}.sidecar.profiles");
        check_selectors(
            profiles.include.as_deref().unwrap_or_default(),
            &format!("{at}.include"),
            v,
        );
        check_selectors(
            profiles.exclude.as_deref().unwrap_or_default(),
            &format!("{at}.exclude"),
            v,
        );
    }
    for (i, app) in conf.applications.iter().flatten().enumerate() {
        let at = format!("{path}.applications[{i}]");
        check_port(app.port, format!("{at}.port"), v);
        if let Some(p) = &app.path {
            check_http_path(p, format!("{at}.path"), v);
        }
        if let Some(a) = &app.address
            && a.parse::<std::net::IpAddr>().is_err()
        {
            v.push(format!("{at}.address"), "must be a valid IP address");
        }
    }
    let mut seen: Vec<(u32, Option<&str>)> = Vec::new();
    for (i, b) in conf.backends.iter().flatten().enumerate() {
        let at = format!("{path}.backends[{i}]");
        check_backend(b, &at, v);
        if let Some(p) = &b.prometheus {
            let id = (p.port_or_default(), p.client_id.as_deref());
            if seen.iter().any(|(port, _)| *port == id.0) {
                v.push(
                    format!("{at}.prometheus.port"),
                    "must be unique across Prometheus backends",
                );
            } else if id.1.is_some() && seen.iter().any(|(_, c)| *c == id.1) {
                v.push(
                    format!("{at}.prometheus.clientId"),
                    "must be unique across Prometheus backends",
                );
            }
            seen.push(id);
        }
    }
}

impl PolicyKind for MeshMetric {
    const TYPE: ResourceType = ResourceType::MeshMetric;

    fn validate(&self, v: &mut Violations) {
        check_top_level(self.target_ref.as_ref(), Self::TYPE, v);
        match &self.default {
            None => v.push("spec.default", "must be defined"),
            Some(conf) => check_conf(conf, "spec.default", v),
        }
    }

    fn to_engine(&self) -> PolicySpec {
        PolicySpec {
            target_ref: self.target_ref.clone(),
            default: self.default.as_ref().map(json),
            ..PolicySpec::default()
        }
    }
}

/// Name fragments of the `Basic` profile (Kuma's `profiles.go`): traffic, latency, connection,
/// circuit-breaker, TLS-handshake, retry, timeout and health metrics.
pub const BASIC_CONTAINS: &[&str] = &[
    "rq_time",
    "_rq",
    "bytes",
    "cx_active",
    "cx_total",
    "circuit_breakers",
    "ssl_handshake",
    "retry",
    "timeout",
    "health_check",
    "membership_healthy",
    "membership_total",
];
/// Name prefixes the `Basic` profile keeps whole.
pub const BASIC_PREFIXES: &[&str] = &["envoy_server", "envoy_control_plane"];

#[derive(Debug, Clone)]
enum Matcher {
    Prefix(String),
    Regex(Regex),
    Exact(String),
    Contains(String),
}

impl Matcher {
    fn matches(&self, name: &str) -> bool {
        match self {
            Matcher::Prefix(p) => name.starts_with(p.as_str()),
            Matcher::Regex(r) => r.is_match(name),
            Matcher::Exact(e) => name == e,
            Matcher::Contains(c) => name.contains(c.as_str()),
        }
    }

    fn of(s: &Selector) -> Option<Matcher> {
        Some(match s.selector_type {
            SelectorType::Prefix => Matcher::Prefix(s.matches.clone()),
            SelectorType::Exact => Matcher::Exact(s.matches.clone()),
            SelectorType::Contains => Matcher::Contains(s.matches.clone()),
            SelectorType::Regex => Matcher::Regex(Regex::new(&s.matches).ok()?),
        })
    }
}

/// Which of the sidecar's metric names a conf exposes: the union of the appended profiles
/// (`Basic` when none; `None` adds nothing), minus `exclude`, plus `include` (include wins).
#[derive(Debug, Clone)]
pub struct MetricFilter {
    all: bool,
    basic: bool,
    include: Vec<Matcher>,
    exclude: Vec<Matcher>,
    pub include_unused: bool,
}

impl MetricFilter {
    pub fn new(sidecar: Option<&Sidecar>) -> Self {
        let profiles = sidecar.and_then(|s| s.profiles.as_ref());
        let names: Vec<ProfileName> = match profiles.and_then(|p| p.append_profiles.as_ref()) {
            Some(list) => list.iter().map(|p| p.name).collect(),
            None => vec![ProfileName::Basic],
        };
        let matchers = |list: Option<&Vec<Selector>>| {
            list.into_iter()
                .flatten()
                .filter_map(Matcher::of)
                .collect::<Vec<_>>()
        };
        MetricFilter {
            all: names.contains(&ProfileName::All),
            basic: names.contains(&ProfileName::Basic),
            include: matchers(profiles.and_then(|p| p.include.as_ref())),
            exclude: matchers(profiles.and_then(|p| p.exclude.as_ref())),
            include_unused: sidecar.and_then(|s| s.include_unused).unwrap_or(false),
        }
    }

    fn in_profiles(&self, name: &str) -> bool {
        self.all
            || (self.basic
                && (BASIC_PREFIXES.iter().any(|p| name.starts_with(p))
                    || BASIC_CONTAINS.iter().any(|c| name.contains(c))))
    }

    /// Whether the metric family `name` (Prometheus form, e.g. `envoy_cluster_upstream_rq`)
    /// is exposed.
    pub fn keeps(&self, name: &str) -> bool {
        if self.include.iter().any(|m| m.matches(name)) {
            return true;
        }
        self.in_profiles(name) && !self.exclude.iter().any(|m| m.matches(name))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policy::merge_patch;

    fn sidecar(value: serde_json::Value) -> Sidecar {
        serde_json::from_value(value).expect("sidecar")
    }

    #[test]
    fn profiles_then_exclude_then_include() {
        type Case<'a> = (&'a str, serde_json::Value, &'a [(&'a str, bool)]);
        let cases: &[Case] = &[
            (
                "no profile means Basic",
                json!({}),
                &[
                    ("envoy_cluster_upstream_rq_total", true),
                    ("envoy_http_downstream_rq_time_bucket", true),
                    ("envoy_server_uptime", true),
                    ("envoy_listener_downstream_cx_active", true),
                    ("envoy_cluster_upstream_cx_tx_bytes_total", true),
                    ("envoy_cluster_lb_healthy_panic", false),
                    ("envoy_runtime_load_success", false),
                ],
            ),
            (
                "All",
                json!({"profiles": {"appendProfiles": [{"name": "All"}]}}),
                &[
                    ("envoy_runtime_load_success", true),
                    ("envoy_cluster_lb_healthy_panic", true),
                ],
            ),
            (
                "None",
                json!({"profiles": {"appendProfiles": [{"name": "None"}]}}),
                &[
                    ("envoy_server_uptime", false),
                    ("envoy_cluster_upstream_rq_total", false),
                ],
            ),
            (
                "None plus an include",
                json!({"profiles": {"appendProfiles": [{"name": "None"}],
                    "include": [{"type": "Exact", "match": "envoy_server_live"}]}}),
                &[("envoy_server_live", true), ("envoy_server_uptime", false)],
            ),
            (
                "None then Basic is Basic",
                json!({"profiles": {"appendProfiles": [{"name": "None"}, {"name": "Basic"}]}}),
                &[
                    ("envoy_server_uptime", true),
                    ("envoy_runtime_load_success", false),
                ],
            ),
            (
                "exclude by prefix and regex, include wins",
                json!({"profiles": {"appendProfiles": [{"name": "All"}],
                    "exclude": [{"type": "Prefix", "match": "envoy_cluster_"},
                                {"type": "Regex", "match": "^envoy_server_(live|uptime)$"}],
                    "include": [{"type": "Contains", "match": "upstream_rq_total"}]}}),
                &[
                    ("envoy_cluster_upstream_cx_total", false),
                    ("envoy_cluster_upstream_rq_total", true),
                    ("envoy_server_live", false),
                    ("envoy_server_memory_allocated", true),
                ],
            ),
        ];
        for (what, value, names) in cases {
            let filter = MetricFilter::new(Some(&sidecar(value.clone())));
            for (name, kept) in *names {
                assert_eq!(filter.keeps(name), *kept, "{what}: {name}");
            }
        }
        assert!(MetricFilter::new(None).keeps("envoy_server_uptime"));
        assert!(!MetricFilter::new(None).include_unused);
    }

    #[test]
    fn append_profiles_concatenate_and_the_rest_is_replaced_on_merge() {
        let mut merged = json!({
            "sidecar": {"profiles": {"appendProfiles": [{"name": "None"}],
                "exclude": [{"type": "Prefix", "match": "a"}]}},
            "backends": [{"type": "Prometheus", "prometheus": {"port": 1}}]
        });
        merge_patch(
            &mut merged,
            &json!({
                "sidecar": {"profiles": {"appendProfiles": [{"name": "All"}],
                    "exclude": [{"type": "Prefix", "match": "b"}]}},
                "backends": [{"type": "Prometheus", "prometheus": {"port": 2}}]
            }),
        );
        let conf: MetricConf = serde_json::from_value(merged).expect("conf");
        let profiles = conf.sidecar.and_then(|s| s.profiles).expect("profiles");
        let names: Vec<ProfileName> = profiles
            .append_profiles
            .iter()
            .flatten()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, [ProfileName::None, ProfileName::All]);
        let exclude = profiles.exclude.expect("exclude");
        assert_eq!(exclude.len(), 1);
        assert_eq!(exclude[0].matches, "b");
        let backends = conf.backends.expect("backends");
        assert_eq!(backends.len(), 1);
        assert_eq!(
            backends[0].prometheus.as_ref().and_then(|p| p.port),
            Some(2)
        );
    }
}

#[cfg(test)]
mod validation_tests {
    use crate::policies::test_support::field_errors as check;

    const HEAD: &str = "type: MeshMetric\nname: m\nmesh: default\nspec:\n";

    #[test]
    fn valid_confs_pass() {
        for spec in [
            "  default: {}\n",
            "  default: {backends: [{type: Prometheus, prometheus: {port: 5670, path: /metrics, clientId: main, tls: {mode: Disabled}}}]}\n",
            "  targetRef: {kind: MeshService, name: backend}\n  default: {sidecar: {includeUnused: true, profiles: {appendProfiles: [{name: Basic}], exclude: [{type: Regex, match: '^envoy_cluster_.*'}]}}, applications: [{name: app, path: /stats, address: 127.0.0.1, port: 8080}]}\n",
        ] {
            assert_eq!(check(&format!("{HEAD}{spec}")), Ok(()), "{spec}");
        }
    }

    #[test]
    fn each_mistake_is_named_at_its_field() {
        for (spec, field, message) in [
            (
                "  targetRef: {kind: Mesh}\n",
                "spec.default",
                "must be defined",
            ),
            (
                "  default: {backends: [{type: Prometheus}]}\n",
                "spec.default.backends[0].prometheus",
                "must be defined",
            ),
            (
                "  default: {backends: [{type: Prometheus, prometheus: {port: 70000}}]}\n",
                "spec.default.backends[0].prometheus.port",
                "must be in inclusive range [1, 65535]",
            ),
            (
                "  default: {backends: [{type: Prometheus, prometheus: {path: metrics}}]}\n",
                "spec.default.backends[0].prometheus.path",
                "must be a valid path",
            ),
            (
                "  default: {backends: [{type: Prometheus, prometheus: {tls: {mode: ProvidedTLS}}}]}\n",
                "spec.default.backends[0].prometheus.tls.mode",
                "only Disabled is supported",
            ),
            (
                "  default: {backends: [{type: Prometheus, prometheus: {tls: {mode: Other}}}]}\n",
                "spec.default.backends[0].prometheus.tls.mode",
                "must be one of",
            ),
            (
                "  default: {backends: [{type: OpenTelemetry, openTelemetry: {endpoint: 'otel:4317'}}]}\n",
                "spec.default.backends[0].type",
                "OpenTelemetry is not supported",
            ),
            (
                "  default: {backends: [{type: Prometheus, prometheus: {}}, {type: Prometheus, prometheus: {port: 5670}}]}\n",
                "spec.default.backends[1].prometheus.port",
                "must be unique",
            ),
            (
                "  default: {backends: [{type: Prometheus, prometheus: {clientId: a}}, {type: Prometheus, prometheus: {port: 1, clientId: a}}]}\n",
                "spec.default.backends[1].prometheus.clientId",
                "must be unique",
            ),
            (
                "  default: {applications: [{path: /m}]}\n",
                "spec.default.applications[0].port",
                "must be in inclusive range [1, 65535]",
            ),
            (
                "  default: {applications: [{port: 80, address: 'app.local'}]}\n",
                "spec.default.applications[0].address",
                "must be a valid IP address",
            ),
            (
                "  default: {sidecar: {profiles: {include: [{type: Regex, match: '('}]}}}\n",
                "spec.default.sidecar.profiles.include[0].match",
                "invalid regex",
            ),
            (
                "  default: {sidecar: {profiles: {exclude: [{type: Prefix, match: ''}]}}}\n",
                "spec.default.sidecar.profiles.exclude[0].match",
                "must not be empty",
            ),
            (
                "  targetRef: {kind: MeshGateway, name: gw}\n  default: {}\n",
                "spec.targetRef.kind",
                "not allowed",
            ),
        ] {
            let got = check(&format!("{HEAD}{spec}")).expect_err(spec);
            assert!(
                got.iter().any(|(f, m)| f == field && m.contains(message)),
                "{spec}: wanted {field}: {message}, got {got:?}"
            );
        }
    }

    #[test]
    fn unknown_fields_and_profile_names_are_refused() {
        for (spec, word) in [
            ("  default: {sidecar: {regex: x}}\n", "regex"),
            (
                "  default: {sidecar: {profiles: {appendProfiles: [{name: Most}]}}}\n",
                "Most",
            ),
            ("  default: {}\n  to: []\n", "to"),
        ] {
            let got = check(&format!("{HEAD}{spec}")).expect_err(spec);
            assert!(format!("{got:?}").contains(word), "{spec}: {got:?}");
        }
    }
}
