//! MeshTrace (reference §2.11): tracing of the selected proxies' HTTP traffic. Proxy-wide: the
//! conf is `spec.default` only — at most one backend (Zipkin, Datadog or OpenTelemetry over
//! gRPC), the sampling percentages (`overall`, `client`, `random`) and custom span tags (a
//! literal, or a request header with a default). Merged across policies with JSON Merge Patch,
//! so `backends` and `tags` are replaced whole.

use serde::{Deserialize, Serialize};

use super::inbound_from::required;
use super::{Percentage, PolicyKind, check_top_level, json};
use crate::descriptor::ResourceType;
use crate::policy::{PolicySpec, TargetRef};
use crate::validate::Violations;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshTrace {
    /// The proxies traced; `{kind: Mesh}` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<TraceConf>,
}

/// The proxy-wide conf (also the merged conf the engine gives for a proxy).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TraceConf {
    /// Zero or one backend; an empty list turns tracing off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<Backend>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<Tag>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendType {
    Zipkin,
    Datadog,
    OpenTelemetry,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Backend {
    #[serde(rename = "type")]
    pub backend_type: BackendType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zipkin: Option<ZipkinBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datadog: Option<DatadogBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_telemetry: Option<OpenTelemetryBackend>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ZipkinBackend {
    /// The collector's span endpoint, e.g. `http://zipkin:9411/api/v2/spans`.
    #[serde(default)]
    pub url: String,
    /// 128-bit trace ids (64-bit when unset).
    #[serde(
        default,
        rename = "traceId128bit",
        skip_serializing_if = "Option::is_none"
    )]
    pub trace_id_128bit: Option<bool>,
    /// `httpJson` (default) or `httpProto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Client and server spans of one hop share a span id (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_span_context: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DatadogBackend {
    #[serde(default)]
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_service: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OpenTelemetryBackend {
    /// The collector's OTLP/gRPC address, `host:port`.
    #[serde(default)]
    pub endpoint: String,
}

/// Percentages of requests traced (each 100 when unset, Envoy's default).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Sampling {
    /// Applied last, to every request the other two chose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overall: Option<Percentage>,
    /// Requests that carry `x-client-trace-id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<Percentage>,
    /// Requests without a trace decision of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random: Option<Percentage>,
}

/// A custom span tag: a fixed value or a request header's value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Tag {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderTag>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderTag {
    #[serde(default)]
    pub name: String,
    /// The tag's value when the request lacks the header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

/// An `http(s)://host:port/path` URL split into its parts (the port defaults by scheme).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectorUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// `host:port` as written (what Envoy sends as the Host of Zipkin reports).
    pub authority: String,
    pub path: String,
}

/// Parses a collector URL; `None` unless it is an http(s) URL with a host.
pub fn collector_url(text: &str) -> Option<CollectorUrl> {
    let url = url::Url::parse(text).ok()?;
    let tls = match url.scheme() {
        "http" => false,
        "https" => true,
        _ => return None,
    };
    let host = url.host_str().filter(|h| !h.is_empty())?;
    let port = url.port_or_known_default()?;
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    Some(CollectorUrl {
        tls,
        host: bare,
        port,
        authority,
        path: url.path().to_string(),
    })
}

/// Splits an OTLP/gRPC `host:port` endpoint; `None` when it is not one.
pub fn host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
    (!host.is_empty() && !host.contains('/')).then(|| (host.to_string(), port))
}

fn check_backend(b: &Backend, path: &str, v: &mut Violations) {
    match b.backend_type {
        BackendType::Zipkin => {
            let at = format!("{path}.zipkin");
            if let Some(z) = required(&b.zipkin, &at, v) {
                if z.url.is_empty() {
                    v.push(format!("{at}.url"), "must not be empty");
                } else if collector_url(&z.url).is_none() {
                    v.push(format!("{at}.url"), "must be a valid url");
                }
                if let Some(api) = &z.api_version
                    && api != "httpJson"
                    && api != "httpProto"
                {
                    v.push(
                        format!("{at}.apiVersion"),
                        "must be one of: httpJson, httpProto",
                    );
                }
            }
        }
        BackendType::Datadog => {
            let at = format!("{path}.datadog");
            if let Some(d) = required(&b.datadog, &at, v) {
                match collector_url(&d.url) {
                    None => v.push(format!("{at}.url"), "must be a valid url"),
                    Some(u) if u.tls => v.push(format!("{at}.url"), "scheme must be http"),
                    Some(u) if u.path != "/" && !u.path.is_empty() => {
                        v.push(format!("{at}.url"), "path must not be defined")
                    }
                    Some(_) => {}
                }
            }
        }
        BackendType::OpenTelemetry => {
            let at = format!("{path}.openTelemetry");
            if let Some(o) = required(&b.open_telemetry, &at, v) {
                if o.endpoint.is_empty() {
                    v.push(format!("{at}.endpoint"), "must not be empty");
                } else if host_port(&o.endpoint).is_none() {
                    v.push(
                        format!("{at}.endpoint"),
                        "must be host:port of an OTLP/gRPC collector (OTLP over HTTP is not supported)",
                    );
                }
            }
        }
    }
    for (name, set, wanted) in [
        ("zipkin", b.zipkin.is_some(), BackendType::Zipkin),
        ("datadog", b.datadog.is_some(), BackendType::Datadog),
        (
            "openTelemetry",
            b.open_telemetry.is_some(),
            BackendType::OpenTelemetry,
        ),
    ] {
        if set && b.backend_type != wanted {
            v.push(
                format!("{path}.{name}"),
                format!("must not be defined for type {:?}", b.backend_type),
            );
        }
    }
}

/// An HTTP header name hyper takes (case does not matter; it is matched lowercased).
fn header_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b))
}

/// Checks a merged or single conf rooted at `path` (`spec.default`).
pub fn check_conf(conf: &TraceConf, path: &str, v: &mut Violations) {
    let at = format!("{path}.backends");
    if let Some(backends) = required(&conf.backends, &at, v) {
        match backends.as_slice() {
            [] => {}
            [b] => check_backend(b, &format!("{at}[0]"), v),
            _ => v.push(&at, "must have zero or one backend defined"),
        }
    }
    for (i, tag) in conf.tags.iter().flatten().enumerate() {
        let at = format!("{path}.tags[{i}]");
        if tag.name.is_empty() {
            v.push(format!("{at}.name"), "must not be empty");
        }
        match (&tag.header, &tag.literal) {
            (Some(h), None) => {
                if !header_name_ok(&h.name) {
                    v.push(format!("{at}.header.name"), "must be an HTTP header name");
                }
            }
            (None, Some(_)) => {}
            _ => v.push(&at, r#"must have only one type defined: header, literal"#),
        }
    }
    if let Some(s) = &conf.sampling {
        for (name, p) in [
            ("client", &s.client),
            ("random", &s.random),
            ("overall", &s.overall),
        ] {
            if let Some(p) = p
                && p.per_million().is_none()
            {
                v.push(
                    format!("{path}.sampling.{name}"),
                    "must be between 0 and 100",
                );
            }
        }
    }
}

impl PolicyKind for MeshTrace {
    const TYPE: ResourceType = ResourceType::MeshTrace;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collector_urls_split_into_their_parts() {
        let u = collector_url("http://zipkin.mesh:9411/api/v2/spans").expect("url");
        assert_eq!(
            u,
            CollectorUrl {
                tls: false,
                host: "zipkin.mesh".into(),
                port: 9411,
                authority: "zipkin.mesh:9411".into(),
                path: "/api/v2/spans".into()
            }
        );
        let u = collector_url("https://[::1]/spans").expect("url");
        assert_eq!((u.tls, u.host.as_str(), u.port), (true, "::1", 443));
        assert_eq!(collector_url("ftp://x/y"), None);
        assert_eq!(collector_url("not a url"), None);
    }

    #[test]
    fn otlp_endpoints_are_host_and_port() {
        for (text, want) in [
            ("otel-collector:4317", Some(("otel-collector", 4317))),
            ("127.0.0.1:4317", Some(("127.0.0.1", 4317))),
            ("[::1]:4317", Some(("::1", 4317))),
            ("http://collector:4318", None),
            ("collector", None),
            ("collector:0", None),
        ] {
            let got = host_port(text);
            assert_eq!(got.as_ref().map(|(h, p)| (h.as_str(), *p)), want, "{text}");
        }
    }
}

#[cfg(test)]
mod validation_tests {
    use crate::policies::test_support::field_errors as check;

    const HEAD: &str = "type: MeshTrace\nname: t\nmesh: default\nspec:\n";

    #[test]
    fn valid_confs_pass() {
        for spec in [
            "  default: {backends: []}\n",
            "  targetRef: {kind: MeshService, name: backend}\n  default: {backends: [{type: OpenTelemetry, openTelemetry: {endpoint: 'otel:4317'}}]}\n",
            "  default: {backends: [{type: Datadog, datadog: {url: 'http://dd:8126', splitService: true}}], sampling: {overall: '99.5'}}\n",
        ] {
            assert_eq!(check(&format!("{HEAD}{spec}")), Ok(()), "{spec}");
        }
    }

    #[test]
    fn each_mistake_is_named_at_its_field() {
        let z = "{type: Zipkin, zipkin: {url: 'http://z:9411/api/v2/spans'}}";
        for (spec, field, message) in [
            (
                "  targetRef: {kind: Mesh}\n",
                "spec.default",
                "must be defined",
            ),
            (
                "  default: {}\n",
                "spec.default.backends",
                "must be defined",
            ),
            (
                &format!("  default: {{backends: [{z}, {z}]}}\n"),
                "spec.default.backends",
                "must have zero or one backend defined",
            ),
            (
                "  default: {backends: [{type: Zipkin}]}\n",
                "spec.default.backends[0].zipkin",
                "must be defined",
            ),
            (
                "  default: {backends: [{type: Zipkin, zipkin: {url: ''}}]}\n",
                "spec.default.backends[0].zipkin.url",
                "must not be empty",
            ),
            (
                "  default: {backends: [{type: Zipkin, zipkin: {url: 'zipkin:9411'}}]}\n",
                "spec.default.backends[0].zipkin.url",
                "must be a valid url",
            ),
            (
                "  default: {backends: [{type: Zipkin, zipkin: {url: 'http://z/s', apiVersion: grpc}}]}\n",
                "spec.default.backends[0].zipkin.apiVersion",
                "must be one of",
            ),
            (
                "  default: {backends: [{type: OpenTelemetry, openTelemetry: {endpoint: 'http://otel:4318'}}]}\n",
                "spec.default.backends[0].openTelemetry.endpoint",
                "host:port",
            ),
            (
                "  default: {backends: [{type: OpenTelemetry, zipkin: {url: 'http://z/s'}, openTelemetry: {endpoint: 'o:1'}}]}\n",
                "spec.default.backends[0].zipkin",
                "must not be defined",
            ),
            (
                "  default: {backends: [{type: Datadog, datadog: {url: 'https://dd:8126'}}]}\n",
                "spec.default.backends[0].datadog.url",
                "scheme must be http",
            ),
            (
                &format!("  default: {{backends: [{z}], sampling: {{overall: 101}}}}\n"),
                "spec.default.sampling.overall",
                "must be between 0 and 100",
            ),
            (
                &format!("  default: {{backends: [{z}], sampling: {{client: 'abc'}}}}\n"),
                "spec.default.sampling.client",
                "must be between 0 and 100",
            ),
            (
                &format!("  default: {{backends: [{z}], tags: [{{name: a}}]}}\n"),
                "spec.default.tags[0]",
                "must have only one type defined: header, literal",
            ),
            (
                &format!("  default: {{backends: [{z}], tags: [{{name: '', literal: x}}]}}\n"),
                "spec.default.tags[0].name",
                "must not be empty",
            ),
            (
                &format!(
                    "  default: {{backends: [{z}], tags: [{{name: a, header: {{name: 'a b'}}}}]}}\n"
                ),
                "spec.default.tags[0].header.name",
                "header name",
            ),
            (
                "  targetRef: {kind: MeshGateway, name: gw}\n  default: {backends: []}\n",
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
    fn unknown_fields_are_refused() {
        let got = check(&format!("{HEAD}  default: {{backends: [], sampler: 1}}\n"))
            .expect_err("unknown field");
        assert!(format!("{got:?}").contains("sampler"), "{got:?}");
        let got =
            check(&format!("{HEAD}  default: {{backends: []}}\n  from: []\n")).expect_err("from");
        assert!(format!("{got:?}").contains("from"), "{got:?}");
    }
}
