//! MeshAccessLog's configurer (Kuma plugin order 600; fact sheet §2.11). For an outbound (the
//! `to` rule of its service) and an inbound (its catch-all `rules` conf, else its `from: Mesh`
//! rule), every backend becomes one `access_log` entry on the listener's HTTP connection
//! manager or TCP proxy, as Kuma emits it:
//! - `File` → `envoy.access_loggers.file` at the path;
//! - `Tcp` → the same file logger writing to kuma-dp's access-log socket
//!   (`/tmp/kuma-al-<dataplane>-<mesh>.sock`, [`socket_path`]) with a JSON line
//!   `{"address": <collector>, "message": <the formatted line>}`; kuma-dp sends `message` to
//!   `address` (ARCHITECTURE.md: an Envoy sidecar needs kuma-dp's forwarder for it).
//!
//! Formats: Kuma's default plain formats for HTTP and TCP when none is given, plain text (a
//! newline appended) or a JSON object (`json_format`, `omit_empty_values`). Kuma's placeholders
//! are resolved here, per listener and direction: `%KUMA_MESH%`, `%KUMA_SOURCE_SERVICE%`
//! (the proxy's service on an outbound, `unknown` on an inbound, as Kuma),
//! `%KUMA_DESTINATION_SERVICE%`, `%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%` (the Dataplane's address
//! in both directions, as Kuma; the older `%KUMA_SOURCE_ADDRESS%` is it with port 0) and
//! `%KUMA_TRAFFIC_DIRECTION%`.

use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType;
use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format as SubstitutionFormat;
use envoy_types::pb::envoy::config::core::v3::{DataSource, SubstitutionFormatString, data_source};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::file_access_log::AccessLogFormat;
use envoy_types::pb::google::protobuf::{Struct, Value as PbValue, value::Kind};
use envoy_types::util::pack_any;
use meshzone_model::policies::mesh_access_log::{
    AccessLogConf, Backend, BackendType, DEFAULT_HTTP_FORMAT, DEFAULT_TCP_FORMAT, Format,
    FormatType,
};
use meshzone_model::policy::PolicyRules;
use meshzone_model::specs::{Inbound, Tags};

use super::filters::{NetFilter, edit_filters, typed};
use crate::generate::{ListenerOrigin, ProxyInput, Resources};

/// The access logger's extension name.
pub const FILE_LOGGER: &str = "envoy.access_loggers.file";
/// Kuma's source service of inbound traffic (`mesh_proto.ServiceUnknown`).
pub const UNKNOWN_SERVICE: &str = "unknown";
/// The keys of a Tcp backend's line to kuma-dp's socket.
pub const TCP_ADDRESS_KEY: &str = "address";
pub const TCP_MESSAGE_KEY: &str = "message";

/// Kuma's access-log socket of a proxy, trimmed as Kuma trims it (Unix socket paths are short).
pub fn socket_path(dataplane: &str, mesh: &str) -> String {
    let mut base = format!("/tmp/kuma-al-{dataplane}-{mesh}");
    if base.len() > 98 {
        let mut cut = 98;
        while !base.is_char_boundary(cut) {
            cut -= 1;
        }
        base.truncate(cut);
    }
    base + ".sock"
}

/// What Kuma's placeholders stand for on one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KumaValues<'a> {
    pub mesh: &'a str,
    pub source_service: &'a str,
    pub destination_service: &'a str,
    pub source_address: &'a str,
    pub direction: &'static str,
}

impl KumaValues<'_> {
    /// `format` with every Kuma placeholder replaced by its value.
    pub fn resolve(&self, format: &str) -> String {
        // Longest first: KUMA_SOURCE_ADDRESS_WITHOUT_PORT before any shorter name.
        format
            .replace("%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%", self.source_address)
            // Kuma's older form, with the port Kuma gives it (0).
            .replace(
                "%KUMA_SOURCE_ADDRESS%",
                &format!("{}:0", self.source_address),
            )
            .replace("%KUMA_SOURCE_SERVICE%", self.source_service)
            .replace("%KUMA_DESTINATION_SERVICE%", self.destination_service)
            .replace("%KUMA_MESH%", self.mesh)
            .replace("%KUMA_TRAFFIC_DIRECTION%", self.direction)
    }
}

fn string_value(s: String) -> PbValue {
    PbValue {
        kind: Some(Kind::StringValue(s)),
    }
}

/// The substitution format of `format` (or Kuma's default for the protocol).
fn substitution(
    format: Option<&Format>,
    http: bool,
    values: &KumaValues<'_>,
) -> SubstitutionFormatString {
    let omit_empty_values = format.and_then(|f| f.omit_empty_values).unwrap_or(false);
    let json = format
        .filter(|f| f.kind == Some(FormatType::Json))
        .and_then(|f| f.json.as_ref());
    let format = match json {
        Some(fields) => SubstitutionFormat::JsonFormat(json_struct(fields, values)),
        None => {
            let text = format
                .and_then(|f| f.plain.clone())
                .unwrap_or_else(|| default_format(http).to_string());
            SubstitutionFormat::TextFormatSource(inline(line(&values.resolve(&text))))
        }
    };
    SubstitutionFormatString {
        format: Some(format),
        omit_empty_values,
        ..Default::default()
    }
}

fn default_format(http: bool) -> &'static str {
    if http {
        DEFAULT_HTTP_FORMAT
    } else {
        DEFAULT_TCP_FORMAT
    }
}

/// A plain format as one line.
fn line(text: &str) -> String {
    if text.ends_with('\n') {
        text.to_string()
    } else {
        format!("{text}\n")
    }
}

fn inline(text: String) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineString(text)),
        ..Default::default()
    }
}

fn json_struct(
    fields: &[meshzone_model::policies::mesh_access_log::JsonField],
    values: &KumaValues<'_>,
) -> Struct {
    Struct {
        fields: fields
            .iter()
            .map(|f| (f.key.clone(), string_value(values.resolve(&f.value))))
            .collect(),
    }
}

fn file_logger(path: String, format: SubstitutionFormatString) -> AccessLog {
    AccessLog {
        name: FILE_LOGGER.to_string(),
        filter: None,
        config_type: Some(ConfigType::TypedConfig(pack_any(FileAccessLog {
            path,
            access_log_format: Some(AccessLogFormat::LogFormat(format)),
        }))),
    }
}

/// The `access_log` entries of one backend.
pub fn backend_logger(
    backend: &Backend,
    http: bool,
    values: &KumaValues<'_>,
    socket: &str,
) -> Option<AccessLog> {
    match backend.kind? {
        BackendType::File => {
            let file = backend.file.as_ref()?;
            Some(file_logger(
                file.path.clone(),
                substitution(file.format.as_ref(), http, values),
            ))
        }
        BackendType::Tcp => {
            let tcp = backend.tcp.as_ref()?;
            let inner = substitution(tcp.format.as_ref(), http, values);
            let message = match inner.format {
                Some(SubstitutionFormat::JsonFormat(s)) => PbValue {
                    kind: Some(Kind::StructValue(s)),
                },
                Some(SubstitutionFormat::TextFormatSource(DataSource {
                    specifier: Some(data_source::Specifier::InlineString(s)),
                    ..
                })) => string_value(s),
                _ => return None,
            };
            let line = Struct {
                fields: [
                    (
                        TCP_ADDRESS_KEY.to_string(),
                        string_value(tcp.address.clone()),
                    ),
                    (TCP_MESSAGE_KEY.to_string(), message),
                ]
                .into_iter()
                .collect(),
            };
            Some(file_logger(
                socket.to_string(),
                SubstitutionFormatString {
                    format: Some(SubstitutionFormat::JsonFormat(line)),
                    omit_empty_values: inner.omit_empty_values,
                    ..Default::default()
                },
            ))
        }
        // Refused at validation.
        BackendType::OpenTelemetry => None,
    }
}

/// The conf of an inbound: the catch-all `rules` entry, else the `from` rule for any client.
fn inbound_conf(rules: &PolicyRules, inbound: &Inbound) -> Option<AccessLogConf> {
    let catch_all = rules
        .inbound_rules
        .iter()
        .find(|r| r.inbound.port == inbound.port)
        .and_then(|r| r.rules.iter().find(|r| r.matches.is_none()));
    if let Some(rule) = catch_all {
        return typed(&rule.conf);
    }
    typed(&rules.from_rule(inbound.port, &Tags::new())?.conf)
}

pub(crate) fn configure(input: &ProxyInput<'_>, resources: &mut Resources) {
    let rules = &input.policies.access_log;
    if rules.policies.is_empty() {
        return;
    }
    let net = &input.dataplane.networking;
    let own_service = net
        .inbound
        .first()
        .and_then(Inbound::service)
        .unwrap_or(UNKNOWN_SERVICE);
    for generated in &mut resources.listeners {
        let (conf, values) = match &generated.origin {
            ListenerOrigin::Outbound { service }
            | ListenerOrigin::VirtualOutbound { service, .. } => (
                rules
                    .to_rule(service)
                    .and_then(|r| typed::<AccessLogConf>(&r.conf)),
                KumaValues {
                    mesh: input.mesh,
                    source_service: own_service,
                    destination_service: service,
                    source_address: &net.address,
                    direction: "OUTBOUND",
                },
            ),
            ListenerOrigin::Inbound { index } => {
                let Some(inbound) = net.inbound.get(*index) else {
                    continue;
                };
                (
                    inbound_conf(rules, inbound),
                    KumaValues {
                        mesh: input.mesh,
                        source_service: UNKNOWN_SERVICE,
                        destination_service: inbound.service().unwrap_or(UNKNOWN_SERVICE),
                        source_address: &net.address,
                        direction: "INBOUND",
                    },
                )
            }
            _ => continue,
        };
        let Some(backends) = conf.and_then(|c| c.backends).filter(|b| !b.is_empty()) else {
            continue;
        };
        let socket = &input.policies.access_log_socket;
        edit_filters(&mut generated.listener, |f| {
            let (logs, http) = match f {
                NetFilter::Hcm(hcm) => (&mut hcm.access_log, true),
                NetFilter::Tcp(tcp) => (&mut tcp.access_log, false),
            };
            logs.extend(
                backends
                    .iter()
                    .filter_map(|b| backend_logger(b, http, &values, socket)),
            );
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_resolve_and_socket_paths_are_kumas() {
        let v = KumaValues {
            mesh: "default",
            source_service: "web",
            destination_service: "backend",
            source_address: "10.0.0.1",
            direction: "OUTBOUND",
        };
        assert_eq!(
            v.resolve("%KUMA_MESH% %KUMA_SOURCE_ADDRESS_WITHOUT_PORT%(%KUMA_SOURCE_SERVICE%)->%KUMA_DESTINATION_SERVICE% %KUMA_TRAFFIC_DIRECTION% %RESPONSE_CODE% %KUMA_SOURCE_ADDRESS%"),
            "default 10.0.0.1(web)->backend OUTBOUND %RESPONSE_CODE% 10.0.0.1:0"
        );
        assert_eq!(socket_path("dp-1", "mesh"), "/tmp/kuma-al-dp-1-mesh.sock");
        let long = socket_path(&"x".repeat(200), "m");
        assert_eq!(long.len(), 98 + ".sock".len());
    }
}
