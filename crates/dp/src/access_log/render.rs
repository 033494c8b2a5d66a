//! Renders one access-log line from a pre-parsed format and what happened to one request or
//! connection, as Envoy does: a missing value is `-` in text (`""` with `omit_empty`) and
//! `null` in JSON (left out with `omit_empty`); a JSON value that is exactly one numeric
//! operator is a number. Pure.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use hyper::HeaderMap;
use meshzone_xds::decode::access_log::{
    HeaderRef, JsonTemplate, LineFormat, LogFormat, Operator, Piece, Template,
};
use serde_json::{Map, Value};

/// The request side of an HTTP entry.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    pub method: String,
    pub path: String,
    pub authority: String,
    pub scheme: &'static str,
    /// Only kept when a format reads headers.
    pub headers: Option<HeaderMap>,
}

/// What one request (HTTP) or connection (TCP) did.
#[derive(Debug, Clone)]
pub struct Entry {
    pub start: SystemTime,
    pub duration: Duration,
    /// `None` for TCP.
    pub request: Option<RequestInfo>,
    /// 0 for TCP, as Envoy prints it.
    pub response_code: u16,
    pub response_headers: Option<HeaderMap>,
    /// Envoy's short flags (`UF`, `NR`, …); empty for none.
    pub response_flags: &'static str,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: String,
    pub downstream_remote: Option<SocketAddr>,
    pub downstream_local: Option<SocketAddr>,
    /// `HTTP/1.1`, `HTTP/2`; `None` for TCP.
    pub protocol: Option<&'static str>,
    pub peer_uri_sans: Vec<String>,
}

impl Entry {
    /// An entry starting now on a connection from `downstream`, towards `cluster`.
    pub fn starting(cluster: &str, downstream: super::Downstream, sans: &[String]) -> Self {
        Entry {
            start: SystemTime::now(),
            duration: Duration::ZERO,
            request: None,
            response_code: 0,
            response_headers: None,
            response_flags: "",
            bytes_received: 0,
            bytes_sent: 0,
            upstream_host: None,
            upstream_cluster: cluster.to_string(),
            downstream_remote: downstream.remote,
            downstream_local: downstream.local,
            protocol: None,
            peer_uri_sans: sans.to_vec(),
        }
    }
}

/// A rendered value: text, a number, or nothing.
enum Rendered {
    Text(String),
    Number(u64),
    Missing,
}

fn header(headers: Option<&HeaderMap>, request: Option<&RequestInfo>, h: &HeaderRef) -> Rendered {
    let lookup = |name: &str| -> Option<String> {
        if let Some(r) = request {
            match name {
                ":method" => return Some(r.method.clone()),
                ":path" => return Some(r.path.clone()),
                ":authority" | "host" if !r.authority.is_empty() => {
                    return Some(r.authority.clone());
                }
                ":scheme" => return Some(r.scheme.to_string()),
                _ => {}
            }
        }
        headers?
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let value = lookup(&h.name).or_else(|| h.fallback.as_deref().and_then(lookup));
    match value {
        Some(mut v) => {
            if let Some(max) = h.max_len
                && v.len() > max
            {
                let mut cut = max;
                while !v.is_char_boundary(cut) {
                    cut -= 1;
                }
                v.truncate(cut);
            }
            Rendered::Text(v)
        }
        None => Rendered::Missing,
    }
}

/// Envoy's `%START_TIME%`: `2016-04-15T20:17:00.310Z`.
pub fn start_time(t: SystemTime) -> String {
    let at: chrono::DateTime<chrono::Utc> = t.into();
    at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn without_port(a: Option<SocketAddr>) -> Rendered {
    a.map_or(Rendered::Missing, |a| Rendered::Text(a.ip().to_string()))
}

fn address(a: Option<SocketAddr>) -> Rendered {
    a.map_or(Rendered::Missing, |a| Rendered::Text(a.to_string()))
}

fn value(op: &Operator, e: &Entry) -> Rendered {
    let request = e.request.as_ref();
    match op {
        Operator::StartTime => Rendered::Text(start_time(e.start)),
        Operator::Req(h) => header(request.and_then(|r| r.headers.as_ref()), request, h),
        Operator::Resp(h) => header(e.response_headers.as_ref(), None, h),
        Operator::ResponseCode => Rendered::Number(u64::from(e.response_code)),
        // Envoy writes `-` for no flag, in JSON too (a value, not a missing one).
        Operator::ResponseFlags if e.response_flags.is_empty() => Rendered::Text("-".into()),
        Operator::ResponseFlags => Rendered::Text(e.response_flags.to_string()),
        Operator::Duration => {
            Rendered::Number(u64::try_from(e.duration.as_millis()).unwrap_or(u64::MAX))
        }
        Operator::BytesReceived => Rendered::Number(e.bytes_received),
        Operator::BytesSent => Rendered::Number(e.bytes_sent),
        Operator::UpstreamHost => address(e.upstream_host),
        Operator::UpstreamCluster if e.upstream_cluster.is_empty() => Rendered::Missing,
        Operator::UpstreamCluster => Rendered::Text(e.upstream_cluster.clone()),
        Operator::DownstreamRemoteAddress => address(e.downstream_remote),
        Operator::DownstreamRemoteAddressWithoutPort => without_port(e.downstream_remote),
        Operator::DownstreamLocalAddress => address(e.downstream_local),
        Operator::DownstreamLocalAddressWithoutPort => without_port(e.downstream_local),
        Operator::Protocol => e
            .protocol
            .map_or(Rendered::Missing, |p| Rendered::Text(p.to_string())),
        Operator::DownstreamPeerUriSan if e.peer_uri_sans.is_empty() => Rendered::Missing,
        Operator::DownstreamPeerUriSan => Rendered::Text(e.peer_uri_sans.join(",")),
    }
}

fn text(template: &Template, e: &Entry, omit_empty: bool, out: &mut String) {
    for piece in &template.0 {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Op(op) => match value(op, e) {
                Rendered::Text(t) => out.push_str(&t),
                Rendered::Number(n) => {
                    let _ = write!(out, "{n}");
                }
                Rendered::Missing if omit_empty => {}
                Rendered::Missing => out.push('-'),
            },
        }
    }
}

fn json_value(t: &JsonTemplate, e: &Entry, omit_empty: bool) -> Option<Value> {
    match t {
        JsonTemplate::Object(fields) => Some(Value::Object(json_object(fields, e, omit_empty))),
        JsonTemplate::Value(template) => match template.single().map(|op| value(op, e)) {
            Some(Rendered::Number(n)) => Some(Value::from(n)),
            Some(Rendered::Text(t)) => Some(Value::String(t)),
            Some(Rendered::Missing) if omit_empty => None,
            Some(Rendered::Missing) => Some(Value::Null),
            None => {
                let mut s = String::new();
                text(template, e, omit_empty, &mut s);
                Some(Value::String(s))
            }
        },
    }
}

fn json_object(
    fields: &std::collections::BTreeMap<String, JsonTemplate>,
    e: &Entry,
    omit_empty: bool,
) -> Map<String, Value> {
    fields
        .iter()
        .filter_map(|(k, t)| json_value(t, e, omit_empty).map(|v| (k.clone(), v)))
        .collect()
}

/// The line for `entry` (text formats carry their own newline; JSON gets one).
pub fn render(format: &LogFormat, entry: &Entry) -> String {
    match &format.line {
        LineFormat::Text(t) => {
            let mut out = String::with_capacity(256);
            text(t, entry, format.omit_empty, &mut out);
            out
        }
        LineFormat::Json(fields) => {
            let mut out = Value::Object(json_object(fields, entry, format.omit_empty)).to_string();
            out.push('\n');
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use meshzone_xds::decode::access_log::format::parse;

    use super::*;

    fn http_entry() -> Entry {
        let mut headers = HeaderMap::new();
        headers.insert("user-agent", "curl/8.0".parse().expect("header"));
        headers.insert("x-request-id", "abc".parse().expect("header"));
        let mut resp = HeaderMap::new();
        resp.insert("content-type", "text/plain".parse().expect("header"));
        Entry {
            start: SystemTime::UNIX_EPOCH + Duration::from_millis(1_460_751_420_310),
            duration: Duration::from_millis(12),
            request: Some(RequestInfo {
                method: "GET".into(),
                path: "/hello?x=1".into(),
                authority: "backend.mesh".into(),
                scheme: "http",
                headers: Some(headers),
            }),
            response_code: 200,
            response_headers: Some(resp),
            response_flags: "",
            bytes_received: 5,
            bytes_sent: 42,
            upstream_host: Some("10.0.0.5:8080".parse().expect("addr")),
            upstream_cluster: "backend".into(),
            downstream_remote: Some("127.0.0.1:51000".parse().expect("addr")),
            downstream_local: Some("127.0.0.1:30001".parse().expect("addr")),
            protocol: Some("HTTP/1.1"),
            peer_uri_sans: vec![],
        }
    }

    fn tcp_entry() -> Entry {
        Entry {
            request: None,
            response_code: 0,
            response_headers: None,
            response_flags: "UF",
            upstream_host: None,
            protocol: None,
            ..http_entry()
        }
    }

    fn plain(format: &str, omit_empty: bool) -> LogFormat {
        LogFormat {
            line: LineFormat::Text(parse(format).expect("format parses")),
            omit_empty,
        }
    }

    #[test]
    #[rustfmt::skip]
    fn text_lines_are_rendered_as_envoy_does() {
        let cases = [
            ("[%START_TIME%]\n", false, http_entry(), "[2016-04-15T20:17:00.310Z]\n"),
            ("\"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS%", false, http_entry(), "\"GET /hello?x=1 HTTP/1.1\" 200 -"),
            ("%BYTES_RECEIVED% %BYTES_SENT% %DURATION%", false, http_entry(), "5 42 12"),
            ("%REQ(USER-AGENT)% %REQ(X-REQUEST-ID)% %REQ(:AUTHORITY)% %REQ(X-FORWARDED-FOR)%", false, http_entry(), "curl/8.0 abc backend.mesh -"),
            ("%REQ(USER-AGENT):4% %RESP(CONTENT-TYPE)% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%", false, http_entry(), "curl text/plain -"),
            ("%UPSTREAM_HOST% %UPSTREAM_CLUSTER% %DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_LOCAL_ADDRESS%", false, http_entry(), "10.0.0.5:8080 backend 127.0.0.1:51000 127.0.0.1 127.0.0.1:30001"),
            // TCP: the HTTP operators are missing, the response code is 0.
            ("%RESPONSE_FLAGS% %RESPONSE_CODE% %REQ(:METHOD)% %PROTOCOL% %UPSTREAM_HOST%", false, tcp_entry(), "UF 0 - - -"),
            ("%REQ(:METHOD)%|%PROTOCOL%|", true, tcp_entry(), "||"),
        ];
        for (format, omit, entry, want) in cases {
            assert_eq!(render(&plain(format, omit), &entry), want, "{format:?}");
        }
    }

    #[test]
    fn json_lines_type_numbers_and_handle_missing_values() {
        let fields = |omit_empty| LogFormat {
            line: LineFormat::Json(BTreeMap::from([
                (
                    "code".to_string(),
                    JsonTemplate::Value(parse("%RESPONSE_CODE%").expect("op")),
                ),
                (
                    "sent".to_string(),
                    JsonTemplate::Value(parse("%BYTES_SENT%").expect("op")),
                ),
                (
                    "method".to_string(),
                    JsonTemplate::Value(parse("%REQ(:METHOD)%").expect("op")),
                ),
                (
                    "route".to_string(),
                    JsonTemplate::Value(parse("to %UPSTREAM_CLUSTER%").expect("op")),
                ),
                (
                    "src".to_string(),
                    JsonTemplate::Value(parse("web").expect("text")),
                ),
                (
                    "nested".to_string(),
                    JsonTemplate::Object(BTreeMap::from([(
                        "host".to_string(),
                        JsonTemplate::Value(parse("%UPSTREAM_HOST%").expect("op")),
                    )])),
                ),
            ])),
            omit_empty,
        };
        assert_eq!(
            render(&fields(false), &http_entry()),
            "{\"code\":200,\"method\":\"GET\",\"nested\":{\"host\":\"10.0.0.5:8080\"},\"route\":\"to backend\",\"sent\":42,\"src\":\"web\"}\n"
        );
        assert_eq!(
            render(&fields(false), &tcp_entry()),
            "{\"code\":0,\"method\":null,\"nested\":{\"host\":null},\"route\":\"to backend\",\"sent\":42,\"src\":\"web\"}\n"
        );
        assert_eq!(
            render(&fields(true), &tcp_entry()),
            "{\"code\":0,\"nested\":{},\"route\":\"to backend\",\"sent\":42,\"src\":\"web\"}\n"
        );
    }
}
