//! Trace-context headers, pure: reading the caller's context from a request and writing the
//! proxy's own into it, in B3 (Zipkin: `x-b3-*` or the single `b3`) or W3C (`traceparent`,
//! with `tracestate` passed on untouched).

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use meshzone_xds::decode::tracing::Propagation;

pub const TRACEPARENT: &str = "traceparent";
pub const B3_SINGLE: &str = "b3";
pub const B3_TRACE_ID: &str = "x-b3-traceid";
pub const B3_SPAN_ID: &str = "x-b3-spanid";
pub const B3_PARENT_SPAN_ID: &str = "x-b3-parentspanid";
pub const B3_SAMPLED: &str = "x-b3-sampled";
pub const B3_FLAGS: &str = "x-b3-flags";
/// Envoy's header forcing a client-requested trace (`client_sampling` applies).
pub const CLIENT_TRACE_ID: &str = "x-client-trace-id";

/// The caller's place in a trace, as its headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: u128,
    /// The caller's span; `None` when a header only carried a sampling decision.
    pub span_id: Option<u64>,
    /// B3's `x-b3-parentspanid`: the caller's own parent (used with a shared span context).
    pub parent_span_id: Option<u64>,
    /// The caller's sampling decision, when it made one (B3 debug counts as sampled).
    pub sampled: Option<bool>,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// A non-zero id of 16 (or, for trace ids, 32) hex digits.
fn hex_id(text: &str, max_digits: usize) -> Option<u128> {
    let ok = (text.len() == 16 || text.len() == max_digits)
        && text.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| u128::from_str_radix(text, 16).ok())
        .flatten()
        .filter(|v| *v != 0)
}

fn span_id(text: &str) -> Option<u64> {
    hex_id(text, 16).and_then(|v| u64::try_from(v).ok())
}

fn b3_sampled(text: &str) -> Option<bool> {
    match text {
        "1" | "true" | "d" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

fn w3c(headers: &HeaderMap) -> Option<Parent> {
    let value = header(headers, TRACEPARENT)?;
    let mut parts = value.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    // Version 00 has exactly four fields; later versions may add more (read the first four).
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Parent {
        trace_id: hex_id(trace, 32)?,
        span_id: Some(span_id(span)?),
        parent_span_id: None,
        sampled: Some(flags & 1 == 1),
    })
}

fn b3_single(value: &str) -> Option<Parent> {
    let parts: Vec<&str> = value.split('-').collect();
    match parts.as_slice() {
        // A bare decision: no context, only whether to sample.
        [decision] => Some(Parent {
            trace_id: 0,
            span_id: None,
            parent_span_id: None,
            sampled: Some(b3_sampled(decision)?),
        }),
        [trace, span, rest @ ..] => {
            let sampled = match rest.first() {
                Some(s) => Some(b3_sampled(s)?),
                None => None,
            };
            let parent_span_id = match rest.get(1) {
                Some(p) => Some(span_id(p)?),
                None => None,
            };
            (rest.len() <= 2).then_some(())?;
            Some(Parent {
                trace_id: hex_id(trace, 32)?,
                span_id: Some(span_id(span)?),
                parent_span_id,
                sampled,
            })
        }
        [] => None,
    }
}

fn b3(headers: &HeaderMap) -> Option<Parent> {
    if let Some(single) = header(headers, B3_SINGLE) {
        return b3_single(single);
    }
    let sampled = if header(headers, B3_FLAGS) == Some("1") {
        Some(true)
    } else {
        header(headers, B3_SAMPLED).and_then(b3_sampled)
    };
    let Some(trace) = header(headers, B3_TRACE_ID) else {
        return sampled.map(|s| Parent {
            trace_id: 0,
            span_id: None,
            parent_span_id: None,
            sampled: Some(s),
        });
    };
    Some(Parent {
        trace_id: hex_id(trace, 32)?,
        span_id: Some(span_id(header(headers, B3_SPAN_ID)?)?),
        parent_span_id: header(headers, B3_PARENT_SPAN_ID).and_then(span_id),
        sampled,
    })
}

/// The caller's context in `headers`, if a valid one is there (an invalid one counts as none,
/// as in Envoy: the proxy starts a new trace).
pub fn extract(propagation: Propagation, headers: &HeaderMap) -> Option<Parent> {
    match propagation {
        Propagation::B3 => b3(headers),
        Propagation::W3c => w3c(headers),
    }
}

/// The context the proxy passes on: its span as the next hop's parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outgoing {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_span_id: Option<u64>,
    pub sampled: bool,
    /// B3 with 64-bit trace ids writes 16 hex digits.
    pub trace_id_128bit: bool,
}

fn set(headers: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

/// Replaces the request's context headers with `out` (other propagation formats are left).
pub fn inject(propagation: Propagation, out: &Outgoing, headers: &mut HeaderMap) {
    match propagation {
        Propagation::W3c => {
            let flags = if out.sampled { "01" } else { "00" };
            set(
                headers,
                TRACEPARENT,
                format!("00-{:032x}-{:016x}-{flags}", out.trace_id, out.span_id),
            );
        }
        Propagation::B3 => {
            headers.remove(B3_SINGLE);
            headers.remove(B3_FLAGS);
            let trace = if out.trace_id_128bit || out.trace_id > u128::from(u64::MAX) {
                format!("{:032x}", out.trace_id)
            } else {
                format!("{:016x}", out.trace_id)
            };
            set(headers, B3_TRACE_ID, trace);
            set(headers, B3_SPAN_ID, format!("{:016x}", out.span_id));
            match out.parent_span_id {
                Some(p) => set(headers, B3_PARENT_SPAN_ID, format!("{p:016x}")),
                None => {
                    headers.remove(B3_PARENT_SPAN_ID);
                }
            }
            set(
                headers,
                B3_SAMPLED,
                if out.sampled { "1" } else { "0" }.into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    const TRACE: u128 = 0x4bf92f3577b34da6a3ce929d0e0e4736;
    const SPAN: u64 = 0x00f067aa0ba902b7;

    #[test]
    fn traceparent_is_read_as_the_w3c_spec_says() {
        let ctx = |tp: &str| extract(Propagation::W3c, &headers(&[(TRACEPARENT, tp)]));
        let sampled = Parent {
            trace_id: TRACE,
            span_id: Some(SPAN),
            parent_span_id: None,
            sampled: Some(true),
        };
        for (tp, want) in [
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Some(sampled),
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                Some(Parent {
                    sampled: Some(false),
                    ..sampled
                }),
            ),
            // A later version may carry more fields.
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-extra",
                Some(sampled),
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
                None,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                None,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                None,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                None,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
                None,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
                None,
            ),
            ("garbage", None),
        ] {
            assert_eq!(ctx(tp), want, "{tp}");
        }
        assert_eq!(extract(Propagation::W3c, &HeaderMap::new()), None);
    }

    #[test]
    fn b3_is_read_from_multiple_headers_or_the_single_one() {
        let multi = headers(&[
            (B3_TRACE_ID, "a3ce929d0e0e4736"),
            (B3_SPAN_ID, "00f067aa0ba902b7"),
            (B3_PARENT_SPAN_ID, "0000000000000001"),
            (B3_SAMPLED, "1"),
        ]);
        assert_eq!(
            extract(Propagation::B3, &multi),
            Some(Parent {
                trace_id: 0xa3ce929d0e0e4736,
                span_id: Some(SPAN),
                parent_span_id: Some(1),
                sampled: Some(true)
            })
        );
        let debug = headers(&[
            (B3_TRACE_ID, "4bf92f3577b34da6a3ce929d0e0e4736"),
            (B3_SPAN_ID, "00f067aa0ba902b7"),
            (B3_FLAGS, "1"),
        ]);
        assert_eq!(
            extract(Propagation::B3, &debug).and_then(|p| p.sampled),
            Some(true)
        );
        let decision_only = headers(&[(B3_SAMPLED, "0")]);
        assert_eq!(
            extract(Propagation::B3, &decision_only),
            Some(Parent {
                trace_id: 0,
                span_id: None,
                parent_span_id: None,
                sampled: Some(false)
            })
        );
        for (single, want) in [
            (
                "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1-0000000000000002",
                Some((TRACE, Some(true), Some(2))),
            ),
            (
                "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                Some((TRACE, None, None)),
            ),
            (
                "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-d",
                Some((TRACE, Some(true), None)),
            ),
            ("4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-x", None),
            ("4bf92f3577b34da6a3ce929d0e0e4736-xyz", None),
        ] {
            let got = extract(Propagation::B3, &headers(&[(B3_SINGLE, single)]))
                .map(|p| (p.trace_id, p.sampled, p.parent_span_id));
            assert_eq!(got, want, "{single}");
        }
        // Broken multi headers: no context (a new trace starts).
        let broken = headers(&[(B3_TRACE_ID, "xyz"), (B3_SPAN_ID, "00f067aa0ba902b7")]);
        assert_eq!(extract(Propagation::B3, &broken), None);
    }

    #[test]
    fn the_proxys_context_replaces_the_callers() {
        let out = Outgoing {
            trace_id: 0xa3ce929d0e0e4736,
            span_id: SPAN,
            parent_span_id: Some(7),
            sampled: true,
            trace_id_128bit: false,
        };
        let mut h = headers(&[(B3_SINGLE, "1"), (B3_PARENT_SPAN_ID, "0000000000000009")]);
        inject(Propagation::B3, &out, &mut h);
        assert_eq!(h.get(B3_SINGLE), None);
        assert_eq!(h[B3_TRACE_ID], "a3ce929d0e0e4736");
        assert_eq!(h[B3_SPAN_ID], "00f067aa0ba902b7");
        assert_eq!(h[B3_PARENT_SPAN_ID], "0000000000000007");
        assert_eq!(h[B3_SAMPLED], "1");
        let wide = Outgoing {
            trace_id_128bit: true,
            parent_span_id: None,
            sampled: false,
            ..out
        };
        inject(Propagation::B3, &wide, &mut h);
        assert_eq!(h[B3_TRACE_ID], "0000000000000000a3ce929d0e0e4736");
        assert_eq!(h.get(B3_PARENT_SPAN_ID), None);
        assert_eq!(h[B3_SAMPLED], "0");
        let mut h = headers(&[("tracestate", "vendor=1")]);
        inject(Propagation::W3c, &out, &mut h);
        assert_eq!(
            h[TRACEPARENT],
            "00-0000000000000000a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(h["tracestate"], "vendor=1");
        // What is written reads back as the same context.
        assert_eq!(
            extract(Propagation::W3c, &h),
            Some(Parent {
                trace_id: out.trace_id,
                span_id: Some(SPAN),
                parent_span_id: None,
                sampled: Some(true)
            })
        );
    }
}
