//! MeshTimeout (reference §2.2): connection, idle and HTTP timeouts of the selected proxies'
//! outbounds (`to`: Mesh or a MeshService) and inbounds (`from`: Mesh). Durations are Go
//! duration strings, kept as written; `connectionTimeout` must be greater than zero, the others
//! not negative (0 turns a timeout off).

use serde::{Deserialize, Serialize};

use super::{PolicyKind, check_items, check_top_level, duration, from_items, to_items};
use crate::descriptor::ResourceType;
use crate::policy::{PolicySpec, Section, TargetRef, TargetRefKind};
use crate::validate::Violations;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshTimeout {
    /// The proxies configured; `{kind: Mesh}` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<TimeoutItem>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<TimeoutItem>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TimeoutItem {
    pub target_ref: TargetRef,
    #[serde(default)]
    pub default: TimeoutConf,
}

/// The conf of a `to` or `from` item.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TimeoutConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpTimeouts>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpTimeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_idle_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stream_duration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers_timeout: Option<String>,
}

/// `to[].targetRef` kinds (MeshExternalService and MeshMultiZoneService do not exist here;
/// route-targeted confs are not configured yet, so MeshHTTPRoute is refused rather than
/// ignored).
const TO_KINDS: [TargetRefKind; 2] = [TargetRefKind::Mesh, TargetRefKind::MeshService];
const FROM_KINDS: [TargetRefKind; 1] = [TargetRefKind::Mesh];

/// The name of the MeshTimeout created with a mesh.
pub fn default_name(mesh: &str) -> String {
    format!("mesh-timeout-all-{mesh}")
}

fn some(s: &str) -> Option<String> {
    Some(s.to_string())
}

impl MeshTimeout {
    /// Kuma's `mesh-timeout-all-<mesh>` (`pkg/defaults/mesh/meshtimeout.go`): sidecars only;
    /// outbound 5s / 1h / 15s / 30m, inbound 10s / 2h / 0 / 1h / 0.
    pub fn mesh_default() -> Self {
        let mut top = TargetRef::mesh();
        top.proxy_types = Some(vec![crate::policy::ProxyType::Sidecar]);
        MeshTimeout {
            target_ref: Some(top),
            to: vec![TimeoutItem {
                target_ref: TargetRef::mesh(),
                default: TimeoutConf {
                    connection_timeout: some("5s"),
                    idle_timeout: some("1h"),
                    http: Some(HttpTimeouts {
                        request_timeout: some("15s"),
                        stream_idle_timeout: some("30m"),
                        ..Default::default()
                    }),
                },
            }],
            from: vec![TimeoutItem {
                target_ref: TargetRef::mesh(),
                default: TimeoutConf {
                    connection_timeout: some("10s"),
                    idle_timeout: some("2h"),
                    http: Some(HttpTimeouts {
                        request_timeout: some("0s"),
                        stream_idle_timeout: some("1h"),
                        max_stream_duration: some("0s"),
                        ..Default::default()
                    }),
                },
            }],
        }
    }
}

/// Checks a Go duration at `path`: well formed, not negative, and above zero when `positive`.
pub(crate) fn check_duration(
    value: Option<&String>,
    path: &str,
    positive: bool,
    v: &mut Violations,
) {
    let Some(s) = value else { return };
    match duration::parse(s) {
        None => v.push(
            path,
            format!("{s:?} is not a duration (for example 5s, 1m30s, 250ms)"),
        ),
        Some(d) if d.negative && !d.is_zero() => v.push(path, "must not be negative"),
        Some(d) if positive && d.is_zero() => v.push(path, "must be greater than zero"),
        Some(_) => {}
    }
}

fn check_conf(conf: &TimeoutConf, path: &str, v: &mut Violations) {
    if conf.connection_timeout.is_none() && conf.idle_timeout.is_none() && conf.http.is_none() {
        v.push(path, "at least one timeout should be configured");
    }
    check_duration(
        conf.connection_timeout.as_ref(),
        &format!("{path}.connectionTimeout"),
        true,
        v,
    );
    check_duration(
        conf.idle_timeout.as_ref(),
        &format!("{path}.idleTimeout"),
        false,
        v,
    );
    if let Some(http) = &conf.http {
        let path = format!("{path}.http");
        let fields = [
            ("requestTimeout", &http.request_timeout),
            ("streamIdleTimeout", &http.stream_idle_timeout),
            ("maxStreamDuration", &http.max_stream_duration),
            ("maxConnectionDuration", &http.max_connection_duration),
            ("requestHeadersTimeout", &http.request_headers_timeout),
        ];
        if fields.iter().all(|(_, f)| f.is_none()) {
            v.push(
                path.clone(),
                "at least one timeout in this section should be configured",
            );
        }
        for (name, f) in fields {
            check_duration(f.as_ref(), &format!("{path}.{name}"), false, v);
        }
    }
}

impl PolicyKind for MeshTimeout {
    const TYPE: ResourceType = ResourceType::MeshTimeout;

    fn validate(&self, v: &mut Violations) {
        check_top_level(self.target_ref.as_ref(), Self::TYPE, v);
        if self.to.is_empty() && self.from.is_empty() {
            v.push("spec", "at least one of 'from', 'to' has to be defined");
        }
        for (section, items, kinds) in [
            (Section::To, &self.to, &TO_KINDS[..]),
            (Section::From, &self.from, &FROM_KINDS[..]),
        ] {
            let items = items.iter().map(|i| (&i.target_ref, &i.default));
            check_items(items, section, kinds, Self::TYPE, v, check_conf);
        }
    }

    fn to_engine(&self) -> PolicySpec {
        PolicySpec {
            target_ref: self.target_ref.clone(),
            to: to_items(self.to.iter().map(|t| (&t.target_ref, &t.default))),
            from: from_items(self.from.iter().map(|f| (&f.target_ref, &f.default))),
            ..PolicySpec::default()
        }
    }
}
