//! The `access_log` of an HTTP connection manager or TCP proxy → [`AccessLogPlan`]s kuma-dp
//! writes: `envoy.access_loggers.file` with a `log_format` (text from an inline string, or a
//! JSON object, `omit_empty_values`), filters and every other field refused with its path. A
//! file logger whose path is a Kuma access-log socket (`…/kuma-al-*.sock`) with the JSON line
//! `{address, message}` is MeshAccessLog's Tcp backend: kuma-dp sends `message` to `address`.

pub mod format;

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType;
use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format as SubstitutionFormat;
use envoy_types::pb::envoy::config::core::v3::{SubstitutionFormatString, data_source};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::file_access_log::AccessLogFormat;
use envoy_types::pb::google::protobuf::{Struct, value::Kind};
use prost::{Message, Name};
use serde::Serialize;

pub use format::{HeaderRef, Operator, Piece, Template};

use crate::policy::mesh_access_log::{FILE_LOGGER, TCP_ADDRESS_KEY, TCP_MESSAGE_KEY};

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum LogSink {
    /// Appended to this file.
    File(String),
    /// Sent over TCP to `host:port`, one line each.
    Tcp(String),
}

/// A JSON value of a format: a template, or a nested object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum JsonTemplate {
    Value(Template),
    Object(BTreeMap<String, JsonTemplate>),
}

/// How a line is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum LineFormat {
    /// Text, its own newline included.
    Text(Template),
    /// One JSON object per line; keys sorted, as Envoy writes them.
    Json(BTreeMap<String, JsonTemplate>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogFormat {
    pub line: LineFormat,
    /// Empty values print as `""` (text) or are left out (JSON) instead of `-` / `null`.
    pub omit_empty: bool,
}

impl LogFormat {
    /// True when some operator reads request or response headers.
    pub fn reads_headers(&self) -> bool {
        fn any(t: &JsonTemplate) -> bool {
            match t {
                JsonTemplate::Value(t) => headers(t),
                JsonTemplate::Object(o) => o.values().any(any),
            }
        }
        fn headers(t: &Template) -> bool {
            t.operators()
                .any(|o| matches!(o, Operator::Req(_) | Operator::Resp(_)))
        }
        match &self.line {
            LineFormat::Text(t) => headers(t),
            LineFormat::Json(o) => o.values().any(any),
        }
    }
}

/// One access log of a listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessLogPlan {
    pub sink: LogSink,
    pub format: LogFormat,
}

/// True for Kuma's access-log socket path of a proxy (`/tmp/kuma-al-<dp>-<mesh>.sock`).
fn is_kuma_socket(path: &str) -> bool {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.starts_with("kuma-al-") && file.ends_with(".sock")
}

fn json_object(s: &Struct, at: &str) -> Result<BTreeMap<String, JsonTemplate>, String> {
    s.fields
        .iter()
        .map(|(k, v)| {
            let at = format!("{at}.{k}");
            let value = match &v.kind {
                Some(Kind::StringValue(text)) => {
                    JsonTemplate::Value(format::parse(text).map_err(|e| format!("{at}: {e}"))?)
                }
                Some(Kind::StructValue(inner)) => JsonTemplate::Object(json_object(inner, &at)?),
                _ => {
                    return Err(format!(
                        "{at}: only strings and objects are supported by kuma-dp"
                    ));
                }
            };
            Ok((k.clone(), value))
        })
        .collect()
}

fn log_format(f: &SubstitutionFormatString, at: &str) -> Result<LogFormat, String> {
    let mut rest = f.clone();
    rest.format = None;
    rest.omit_empty_values = false;
    if rest != SubstitutionFormatString::default() {
        return Err(format!(
            "{at}: only text_format_source (inline_string), json_format and omit_empty_values are supported by kuma-dp (content_type, formatters, json_format_options are not)"
        ));
    }
    let line = match &f.format {
        Some(SubstitutionFormat::TextFormatSource(ds)) => match &ds.specifier {
            Some(data_source::Specifier::InlineString(s)) => LineFormat::Text(
                format::parse(s).map_err(|e| format!("{at}.text_format_source: {e}"))?,
            ),
            _ => {
                return Err(format!(
                    "{at}.text_format_source: only inline_string is supported by kuma-dp"
                ));
            }
        },
        Some(SubstitutionFormat::JsonFormat(s)) => {
            LineFormat::Json(json_object(s, &format!("{at}.json_format"))?)
        }
        #[allow(deprecated)]
        Some(SubstitutionFormat::TextFormat(_)) => {
            return Err(format!(
                "{at}.text_format: deprecated; use text_format_source"
            ));
        }
        None => return Err(format!("{at}: a format is required by kuma-dp")),
    };
    Ok(LogFormat {
        line,
        omit_empty: f.omit_empty_values,
    })
}

/// A Tcp backend's line `{address, message}` → the collector and the message's format.
fn tcp_backend(line: &LineFormat, omit_empty: bool, at: &str) -> Result<AccessLogPlan, String> {
    let LineFormat::Json(fields) = line else {
        return Err(format!(
            "{at}: a line to kuma-dp's access-log socket must be the JSON object {{address, message}}"
        ));
    };
    let address = match fields.get(TCP_ADDRESS_KEY) {
        Some(JsonTemplate::Value(Template(pieces))) => match pieces.as_slice() {
            [Piece::Text(a)] => a.clone(),
            _ => return Err(format!("{at}.{TCP_ADDRESS_KEY}: must be a plain host:port")),
        },
        _ => return Err(format!("{at}.{TCP_ADDRESS_KEY}: required")),
    };
    let message = match fields.get(TCP_MESSAGE_KEY) {
        Some(JsonTemplate::Value(t)) => LineFormat::Text(t.clone()),
        Some(JsonTemplate::Object(o)) => LineFormat::Json(o.clone()),
        None => return Err(format!("{at}.{TCP_MESSAGE_KEY}: required")),
    };
    if fields.len() != 2 {
        return Err(format!(
            "{at}: a line to kuma-dp's access-log socket has only {TCP_ADDRESS_KEY} and {TCP_MESSAGE_KEY}"
        ));
    }
    Ok(AccessLogPlan {
        sink: LogSink::Tcp(address),
        format: LogFormat {
            line: message,
            omit_empty,
        },
    })
}

/// The plans of `logs`, at `at` (`….access_log`).
pub fn decode(logs: &[AccessLog], at: &str) -> Result<Vec<AccessLogPlan>, String> {
    logs.iter()
        .enumerate()
        .map(|(i, log)| {
            let at = format!("{at}[{i}]");
            if log.filter.is_some() {
                return Err(format!("{at}.filter: access log filters are not supported by kuma-dp"));
            }
            let Some(ConfigType::TypedConfig(any)) = &log.config_type else {
                return Err(format!("{at}: typed_config is required"));
            };
            if any.type_url != FileAccessLog::type_url() {
                return Err(format!(
                    "{at}: {} is not supported by kuma-dp (only {FILE_LOGGER})",
                    any.type_url
                ));
            }
            let file = FileAccessLog::decode(any.value.as_slice())
                .map_err(|e| format!("{at}: {e}"))?;
            let at = format!("{at}.typed_config");
            if file.path.is_empty() {
                return Err(format!("{at}.path: required"));
            }
            let format = match &file.access_log_format {
                Some(AccessLogFormat::LogFormat(f)) => log_format(f, &format!("{at}.log_format"))?,
                None => {
                    return Err(format!(
                        "{at}.log_format: required by kuma-dp (Envoy's default format is not reproduced)"
                    ));
                }
                #[allow(deprecated)]
                Some(_) => {
                    return Err(format!(
                        "{at}: deprecated format fields; use log_format"
                    ));
                }
            };
            if is_kuma_socket(&file.path) {
                return tcp_backend(&format.line, format.omit_empty, &format!("{at}.log_format.json_format"));
            }
            Ok(AccessLogPlan {
                sink: LogSink::File(file.path),
                format,
            })
        })
        .collect()
}
