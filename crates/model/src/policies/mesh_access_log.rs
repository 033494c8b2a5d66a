//! MeshAccessLog (reference §2.11): access logs of the selected proxies' outbounds (`to`: Mesh
//! or a MeshService), inbounds (`from`: Mesh) and, Kuma 2.10+, inbounds without a client
//! selector (`rules`, without `matches` here). Each conf is a list of `backends`: `File{path}`
//! or `Tcp{address}`, each with an optional `format` (`Plain` text or `Json` key/values, with
//! Envoy's command operators and Kuma's `%KUMA_*%` placeholders). The list is replaced whole on
//! merge (JSON Merge Patch replaces arrays). `OpenTelemetry` backends are refused: no proxy of
//! this mesh exports OTLP logs.

use serde::{Deserialize, Serialize};

use super::{PolicyKind, check_items, check_top_level, from_items, to_items};
use crate::descriptor::ResourceType;
use crate::policy::{PolicySpec, Section, SpecRule, TargetRef, TargetRefKind};
use crate::validate::Violations;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshAccessLog {
    /// The proxies configured; `{kind: Mesh}` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<AccessLogItem>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<AccessLogItem>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AccessLogRule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessLogItem {
    pub target_ref: TargetRef,
    #[serde(default)]
    pub default: AccessLogConf,
}

/// A `rules[]` entry: inbound conf for every client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessLogRule {
    /// Kuma's `spiffeID`/`sni` matches; refused here (see `validate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<serde_json::Value>,
    #[serde(default)]
    pub default: AccessLogConf,
}

/// The conf of a `to`, `from` or `rules` item.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessLogConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<Backend>>,
}

/// One backend: `type` names the one section that is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Backend {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<BackendType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpBackend>,
    /// Kept so that it is refused with its path rather than as an unknown field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_telemetry: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendType {
    File,
    Tcp,
    OpenTelemetry,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileBackend {
    #[serde(default)]
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpBackend {
    /// `host:port` of the collector.
    #[serde(default)]
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Format {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<FormatType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<Vec<JsonField>>,
    /// Empty values become `""` (plain) or are left out (JSON) instead of `-` / `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omit_empty_values: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FormatType {
    Plain,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JsonField {
    pub key: String,
    pub value: String,
}

/// Kuma's default format of TCP traffic (`plugin/xds/configurer.go`).
pub const DEFAULT_TCP_FORMAT: &str = "[%START_TIME%] %RESPONSE_FLAGS% %KUMA_MESH% %KUMA_SOURCE_ADDRESS_WITHOUT_PORT%(%KUMA_SOURCE_SERVICE%)->%UPSTREAM_HOST%(%KUMA_DESTINATION_SERVICE%) took %DURATION%ms, sent %BYTES_SENT% bytes, received: %BYTES_RECEIVED% bytes";

/// Kuma's default format of HTTP traffic.
pub const DEFAULT_HTTP_FORMAT: &str = "[%START_TIME%] %KUMA_MESH% \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%KUMA_SOURCE_SERVICE%\" \"%KUMA_DESTINATION_SERVICE%\" \"%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%\" \"%UPSTREAM_HOST%\"";

const TO_KINDS: [TargetRefKind; 2] = [TargetRefKind::Mesh, TargetRefKind::MeshService];
const FROM_KINDS: [TargetRefKind; 1] = [TargetRefKind::Mesh];

fn check_format(format: &Format, path: &str, v: &mut Violations) {
    match (format.kind, &format.plain, &format.json) {
        (None, _, _) => v.push(format!("{path}.type"), "must be defined"),
        (Some(FormatType::Plain), None, _) => v.push(format!("{path}.plain"), "must be defined"),
        (Some(FormatType::Json), _, None) => v.push(format!("{path}.json"), "must be defined"),
        (Some(FormatType::Plain), Some(_), Some(_)) => {
            v.push(format!("{path}.json"), "must not be defined")
        }
        (Some(FormatType::Json), Some(_), Some(_)) => {
            v.push(format!("{path}.plain"), "must not be defined")
        }
        _ => {}
    }
    if let Some(plain) = &format.plain
        && plain.is_empty()
    {
        v.push(format!("{path}.plain"), "must not be empty");
    }
    if let Some(json) = &format.json {
        if json.is_empty() {
            v.push(format!("{path}.json"), "must not be empty");
        }
        for (i, field) in json.iter().enumerate() {
            if field.key.is_empty() {
                v.push(format!("{path}.json[{i}].key"), "key cannot be empty");
            }
            if json[..i].iter().any(|f| f.key == field.key) {
                v.push(
                    format!("{path}.json[{i}].key"),
                    format!("key {:?} is defined twice", field.key),
                );
            }
        }
    }
}

/// A `host:port` with a port in 1..=65535 (a name or an IP as the host).
fn valid_address(address: &str) -> bool {
    let Some((host, port)) = address.rsplit_once(':') else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    !host.is_empty()
        && !host.contains(char::is_whitespace)
        && port.parse::<u16>().is_ok_and(|p| p > 0)
}

fn check_backend(b: &Backend, path: &str, v: &mut Violations) {
    let set = [
        (BackendType::File, b.file.is_some()),
        (BackendType::Tcp, b.tcp.is_some()),
        (BackendType::OpenTelemetry, b.open_telemetry.is_some()),
    ];
    let Some(kind) = b.kind else {
        v.push(format!("{path}.type"), "must be defined");
        return;
    };
    for (other, present) in set {
        let field = match other {
            BackendType::File => "file",
            BackendType::Tcp => "tcp",
            BackendType::OpenTelemetry => "openTelemetry",
        };
        if other == kind && !present {
            v.push(format!("{path}.{field}"), "must be defined");
        }
        if other != kind && present {
            v.push(format!("{path}.{field}"), "must not be defined");
        }
    }
    match kind {
        BackendType::File => {
            if let Some(f) = &b.file {
                if f.path.is_empty() {
                    v.push(format!("{path}.file.path"), "must be defined");
                } else if !f.path.starts_with('/') {
                    v.push(
                        format!("{path}.file.path"),
                        "file backend requires a valid path",
                    );
                }
                if let Some(fmt) = &f.format {
                    check_format(fmt, &format!("{path}.file.format"), v);
                }
            }
        }
        BackendType::Tcp => {
            if let Some(t) = &b.tcp {
                if t.address.is_empty() {
                    v.push(format!("{path}.tcp.address"), "must be defined");
                } else if !valid_address(&t.address) {
                    v.push(
                        format!("{path}.tcp.address"),
                        "tcp backend requires valid address (host:port)",
                    );
                }
                if let Some(fmt) = &t.format {
                    check_format(fmt, &format!("{path}.tcp.format"), v);
                }
            }
        }
        BackendType::OpenTelemetry => v.push(
            format!("{path}.type"),
            "OpenTelemetry backends are not supported by this mesh's proxies; use File or Tcp",
        ),
    }
}

fn check_conf(conf: &AccessLogConf, path: &str, v: &mut Violations) {
    let Some(backends) = &conf.backends else {
        v.push(format!("{path}.backends"), "must be defined");
        return;
    };
    for (i, b) in backends.iter().enumerate() {
        check_backend(b, &format!("{path}.backends[{i}]"), v);
    }
}

impl PolicyKind for MeshAccessLog {
    const TYPE: ResourceType = ResourceType::MeshAccessLog;

    fn validate(&self, v: &mut Violations) {
        check_top_level(self.target_ref.as_ref(), Self::TYPE, v);
        if self.to.is_empty() && self.from.is_empty() && self.rules.is_empty() {
            v.push(
                "spec",
                "at least one of 'from', 'to' or 'rules' has to be defined",
            );
        }
        let mixed = !self.to.is_empty() || !self.from.is_empty();
        if !self.rules.is_empty() && mixed {
            v.push("spec.rules", "'rules' cannot be mixed with 'from' or 'to'");
        }
        for (section, items, kinds) in [
            (Section::To, &self.to, &TO_KINDS[..]),
            (Section::From, &self.from, &FROM_KINDS[..]),
        ] {
            let items = items.iter().map(|i| (&i.target_ref, &i.default));
            check_items(items, section, kinds, Self::TYPE, v, check_conf);
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let path = format!("spec.rules[{i}]");
            if rule.matches.is_some() {
                v.push(
                    format!("{path}.matches"),
                    "matches are not supported for MeshAccessLog here; leave them out to log every client",
                );
            }
            check_conf(&rule.default, &format!("{path}.default"), v);
        }
    }

    fn to_engine(&self) -> PolicySpec {
        PolicySpec {
            target_ref: self.target_ref.clone(),
            to: to_items(self.to.iter().map(|t| (&t.target_ref, &t.default))),
            from: from_items(self.from.iter().map(|f| (&f.target_ref, &f.default))),
            rules: self
                .rules
                .iter()
                .map(|r| SpecRule {
                    matches: None,
                    default: Some(super::json(&r.default)),
                })
                .collect(),
            ..PolicySpec::default()
        }
    }
}
