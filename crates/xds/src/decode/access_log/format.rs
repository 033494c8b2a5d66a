//! Envoy's command-operator format strings, parsed once per listener build into a
//! [`Template`] kuma-dp renders per request: `%OPERATOR%`, `%OPERATOR(ARG)%` and
//! `%OPERATOR(ARG):MAX_LENGTH%` between literal text. Only the operators kuma-dp fills are
//! accepted; any other (or a `%` that starts no operator) is refused with its position, never
//! printed raw.

use serde::Serialize;

/// One command operator kuma-dp fills.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Operator {
    /// `%START_TIME%`: when the request (or connection) started, ISO 8601 UTC with ms.
    StartTime,
    /// `%REQ(X?Y):Z%`: request header X, else Y (`:path`, `:method`, `:authority` and
    /// `:scheme` included).
    Req(HeaderRef),
    /// `%RESP(X?Y):Z%`: response header.
    Resp(HeaderRef),
    ResponseCode,
    ResponseFlags,
    /// Milliseconds from the start to the last byte out.
    Duration,
    BytesReceived,
    BytesSent,
    UpstreamHost,
    UpstreamCluster,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    /// `HTTP/1.1`, `HTTP/2`; none for TCP.
    Protocol,
    /// The client certificate's URI SANs (comma separated).
    DownstreamPeerUriSan,
}

/// A header operand: the header, its fallback, and the length the value is cut to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderRef {
    /// Lower case.
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_len: Option<usize>,
}

/// Literal text or an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Piece {
    Text(String),
    Op(Operator),
}

/// A parsed format string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Template(pub Vec<Piece>);

impl Template {
    /// The operator when the template is exactly one (a JSON value Envoy then types).
    pub fn single(&self) -> Option<&Operator> {
        match self.0.as_slice() {
            [Piece::Op(op)] => Some(op),
            _ => None,
        }
    }

    pub fn operators(&self) -> impl Iterator<Item = &Operator> {
        self.0.iter().filter_map(|p| match p {
            Piece::Op(op) => Some(op),
            Piece::Text(_) => None,
        })
    }
}

fn no_argument(name: &str, arg: Option<&str>, len: Option<usize>) -> Result<(), String> {
    if arg.is_some() || len.is_some() {
        return Err(format!("%{name}% takes no argument or length in kuma-dp"));
    }
    Ok(())
}

fn operator(name: &str, arg: Option<&str>, len: Option<usize>) -> Result<Operator, String> {
    let header = |arg: Option<&str>| -> Result<HeaderRef, String> {
        let arg = arg
            .filter(|a| !a.is_empty())
            .ok_or_else(|| format!("%{name}(…)% needs a header name"))?;
        let (main, fallback) = match arg.split_once('?') {
            Some((m, f)) => (m, Some(f.to_ascii_lowercase())),
            None => (arg, None),
        };
        Ok(HeaderRef {
            name: main.to_ascii_lowercase(),
            fallback,
            max_len: len,
        })
    };
    let simple = match name {
        "REQ" => return header(arg).map(Operator::Req),
        "RESP" => return header(arg).map(Operator::Resp),
        "START_TIME" => Operator::StartTime,
        "RESPONSE_CODE" => Operator::ResponseCode,
        "RESPONSE_FLAGS" => Operator::ResponseFlags,
        "DURATION" => Operator::Duration,
        "BYTES_RECEIVED" => Operator::BytesReceived,
        "BYTES_SENT" => Operator::BytesSent,
        "UPSTREAM_HOST" => Operator::UpstreamHost,
        "UPSTREAM_CLUSTER" => Operator::UpstreamCluster,
        "DOWNSTREAM_REMOTE_ADDRESS" => Operator::DownstreamRemoteAddress,
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Operator::DownstreamRemoteAddressWithoutPort,
        "DOWNSTREAM_LOCAL_ADDRESS" => Operator::DownstreamLocalAddress,
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Operator::DownstreamLocalAddressWithoutPort,
        "PROTOCOL" => Operator::Protocol,
        "DOWNSTREAM_PEER_URI_SAN" => Operator::DownstreamPeerUriSan,
        other => {
            return Err(format!("%{other}% is not a command operator kuma-dp fills"));
        }
    };
    no_argument(name, arg, len)?;
    Ok(simple)
}

/// Parses a format string.
pub fn parse(format: &str) -> Result<Template, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = format;
    let mut at = 0;
    while let Some(start) = rest.find('%') {
        text.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let position = at + start;
        let (name_len, _) = after
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_'))
            .unwrap_or((after.len(), ' '));
        let name = &after[..name_len];
        if name.is_empty() {
            return Err(format!(
                "position {position}: '%' does not start a command operator"
            ));
        }
        let mut cursor = name_len;
        let mut arg = None;
        if after[cursor..].starts_with('(') {
            let close = after[cursor..]
                .find(')')
                .ok_or_else(|| format!("position {position}: %{name}( is not closed"))?;
            arg = Some(&after[cursor + 1..cursor + close]);
            cursor += close + 1;
        }
        let mut len = None;
        if let Some(digits) = after[cursor..].strip_prefix(':') {
            let n = digits
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(digits.len());
            len = Some(
                digits[..n]
                    .parse::<usize>()
                    .map_err(|_| format!("position {position}: %{name}: needs a length"))?,
            );
            cursor += 1 + n;
        }
        if !after[cursor..].starts_with('%') {
            return Err(format!("position {position}: %{name} is not closed by '%'"));
        }
        let op = operator(name, arg, len).map_err(|e| format!("position {position}: {e}"))?;
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut text)));
        }
        pieces.push(Piece::Op(op));
        let consumed = start + 1 + cursor + 1;
        at += consumed;
        rest = &rest[consumed..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(Template(pieces))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Piece {
        Piece::Text(s.into())
    }

    #[test]
    #[rustfmt::skip]
    fn formats_parse_into_pieces() {
        let req = |name: &str, fallback: Option<&str>, max_len| Piece::Op(Operator::Req(HeaderRef {
            name: name.into(), fallback: fallback.map(Into::into), max_len,
        }));
        let cases: Vec<(&str, Vec<Piece>)> = vec![
            ("", vec![]),
            ("plain text\n", vec![text("plain text\n")]),
            ("%START_TIME%", vec![Piece::Op(Operator::StartTime)]),
            ("[%START_TIME%] %RESPONSE_CODE%\n", vec![text("["), Piece::Op(Operator::StartTime), text("] "), Piece::Op(Operator::ResponseCode), text("\n")]),
            ("%REQ(:METHOD)%", vec![req(":method", None, None)]),
            ("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", vec![req("x-envoy-original-path", Some(":path"), None)]),
            ("%REQ(USER-AGENT):10%!", vec![req("user-agent", None, Some(10)), text("!")]),
            ("%BYTES_RECEIVED%%BYTES_SENT%", vec![Piece::Op(Operator::BytesReceived), Piece::Op(Operator::BytesSent)]),
            ("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", vec![Piece::Op(Operator::DownstreamRemoteAddressWithoutPort)]),
        ];
        for (format, want) in cases {
            assert_eq!(parse(format), Ok(Template(want)), "{format:?}");
        }
    }

    #[test]
    #[rustfmt::skip]
    fn unknown_or_broken_operators_are_refused() {
        let cases = [
            ("%KUMA_SOURCE_SERVICE%", "position 0: %KUMA_SOURCE_SERVICE% is not a command operator"),
            ("ok %UPSTREAM_TRANSPORT_FAILURE_REASON%", "position 3: %UPSTREAM_TRANSPORT_FAILURE_REASON% is not"),
            ("100% sure", "position 3: '%' does not start"),
            ("%START_TIME", "position 0: %START_TIME is not closed"),
            ("%REQ(:path%", "position 0: %REQ( is not closed"),
            ("%REQ()%", "needs a header name"),
            ("%START_TIME(%s)%", "takes no argument"),
            ("%DURATION:5%", "takes no argument"),
        ];
        for (format, want) in cases {
            let got = parse(format).expect_err(format);
            assert!(got.contains(want), "{format:?}: {got}");
        }
    }
}
