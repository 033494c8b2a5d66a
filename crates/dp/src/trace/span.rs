//! One request's span, pure: the sampling decision as Envoy makes it, the span's ids from the
//! caller's context, the headers passed on, and the finished record with Envoy's tags. Random
//! draws and times are parameters, so tables test it.

use std::time::{Duration, SystemTime};

use hyper::header::HeaderMap;
use meshzone_xds::decode::tracing::{ProviderPlan, SamplingPlan, SpanKind, TagSource, TracingPlan};

use super::context::{CLIENT_TRACE_ID, Outgoing, Parent, extract, inject};

/// The random numbers one request uses: two shares in `0..1_000_000` and three ids.
#[derive(Debug, Clone, Copy)]
pub struct Draws {
    pub decision: u32,
    pub overall: u32,
    pub trace_id: u128,
    pub span_id: u64,
}

/// Envoy's decision: a caller's decision is kept (the tracers follow their parent); otherwise
/// a request with `x-client-trace-id` is traced at the client share and any other at the random
/// share, and what was chosen then passes the overall share.
pub fn sampled(
    sampling: &SamplingPlan,
    parent: Option<bool>,
    client_trace_id: bool,
    draws: &Draws,
) -> bool {
    if let Some(decision) = parent {
        return decision;
    }
    let share = if client_trace_id {
        sampling.client
    } else {
        sampling.random
    };
    draws.decision < share && draws.overall < sampling.overall
}

/// A request being traced.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveSpan {
    pub kind: SpanKind,
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_id: Option<u64>,
    /// Zipkin's shared span context: this server span reuses its client's id.
    pub shared: bool,
    pub name: String,
    pub start: SystemTime,
    pub tags: Vec<(String, String)>,
}

/// The span as reported: the request's span, its tags completed with the answer's.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedSpan {
    pub span: ActiveSpan,
    pub duration: Duration,
    /// A 5xx answer (Envoy's `error: true` tag).
    pub error: bool,
}

/// What the proxy knows of the request besides its headers.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    pub method: &'a str,
    /// The URL as Envoy's `http.url` tag has it: `<scheme>://<authority><path>`.
    pub url: &'a str,
    pub authority: &'a str,
    pub protocol: &'a str,
    pub peer: Option<std::net::IpAddr>,
    /// Where the request goes: the listener's cluster (Envoy's `upstream_cluster`).
    pub upstream_cluster: &'a str,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Starts the request's span: decides whether it is sampled, then writes the proxy's context
/// into `headers` for the next hop (sampled or not, so the decision travels). `None` when not
/// sampled.
pub fn begin(
    plan: &TracingPlan,
    headers: &mut HeaderMap,
    info: &RequestInfo<'_>,
    draws: &Draws,
    now: SystemTime,
) -> Option<ActiveSpan> {
    let propagation = plan.provider.propagation();
    let parent = extract(propagation, headers);
    let client_trace_id = headers.contains_key(CLIENT_TRACE_ID);
    let sampled = sampled(
        &plan.sampling,
        parent.and_then(|p| p.sampled),
        client_trace_id,
        draws,
    );
    let (trace_id_128bit, shared_context) = match &plan.provider {
        ProviderPlan::Zipkin {
            trace_id_128bit,
            shared_span_context,
            ..
        } => (*trace_id_128bit, *shared_span_context),
        ProviderPlan::OpenTelemetry { .. } => (true, false),
    };
    let caller = parent.filter(|p| p.span_id.is_some() && p.trace_id != 0);
    let trace_id = match caller {
        Some(Parent { trace_id, .. }) => trace_id,
        None if trace_id_128bit => draws.trace_id,
        None => draws.trace_id & u128::from(u64::MAX),
    };
    // Zipkin's shared context: a server span joins its client's span (same id, same parent).
    let shared = shared_context && plan.kind == SpanKind::Server && caller.is_some();
    let (span_id, parent_id) = match caller {
        Some(p) if shared => (p.span_id.unwrap_or(draws.span_id), p.parent_span_id),
        Some(p) => (draws.span_id, p.span_id),
        None => (draws.span_id, None),
    };
    inject(
        propagation,
        &Outgoing {
            trace_id,
            span_id,
            parent_span_id: parent_id,
            sampled,
            trace_id_128bit,
        },
        headers,
    );
    if !sampled {
        return None;
    }
    let name = match plan.kind {
        SpanKind::Server => "ingress".to_string(),
        SpanKind::Client => format!("egress {}", info.authority),
    };
    let mut tags: Vec<(String, String)> = vec![
        ("component".into(), "proxy".into()),
        ("http.method".into(), info.method.into()),
        ("http.url".into(), info.url.into()),
        ("http.protocol".into(), info.protocol.into()),
        ("upstream_cluster".into(), info.upstream_cluster.into()),
        ("upstream_cluster.name".into(), info.upstream_cluster.into()),
    ];
    for (tag, name) in [
        ("user_agent", "user-agent"),
        ("guid:x-request-id", "x-request-id"),
        ("downstream_cluster", "x-envoy-downstream-service-cluster"),
    ] {
        tags.push((tag.into(), header(headers, name).unwrap_or("-").into()));
    }
    if let Some(peer) = info.peer {
        tags.push(("peer.address".into(), peer.to_string()));
    }
    for t in &plan.tags {
        let value = match &t.source {
            TagSource::Literal(v) => Some(v.clone()),
            TagSource::Header { name, default } => header(headers, name)
                .map(str::to_string)
                .or_else(|| (!default.is_empty()).then(|| default.clone())),
        };
        if let Some(value) = value {
            tags.retain(|(k, _)| *k != t.name);
            tags.push((t.name.clone(), value));
        }
    }
    Some(ActiveSpan {
        kind: plan.kind,
        trace_id,
        span_id,
        parent_id,
        shared,
        name,
        start: now,
        tags,
    })
}

impl ActiveSpan {
    /// The record once the response's status is known.
    pub fn finish(mut self, status: u16, duration: Duration) -> FinishedSpan {
        self.tags
            .push(("http.status_code".into(), status.to_string()));
        self.tags.push(("response_flags".into(), "-".into()));
        let error = status >= 500;
        if error {
            self.tags.push(("error".into(), "true".into()));
        }
        FinishedSpan {
            span: self,
            duration,
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;
    use meshzone_xds::decode::tracing::TagPlan;

    use super::*;
    use crate::trace::context::{B3_SAMPLED, B3_SPAN_ID, B3_TRACE_ID, TRACEPARENT};

    const ALL: SamplingPlan = SamplingPlan {
        overall: 1_000_000,
        client: 1_000_000,
        random: 1_000_000,
    };

    fn draws(decision: u32, overall: u32) -> Draws {
        Draws {
            decision,
            overall,
            trace_id: 0x1111_2222_3333_4444_5555_6666_7777_8888,
            span_id: 0xabcd,
        }
    }

    #[test]
    fn sampling_follows_envoys_shares_and_the_callers_decision() {
        let half = SamplingPlan {
            overall: 500_000,
            client: 250_000,
            random: 100_000,
        };
        for (parent, client, d, want) in [
            // The caller decided: kept whatever the shares.
            (Some(true), false, draws(999_999, 999_999), true),
            (Some(false), false, draws(0, 0), false),
            // random share for ordinary requests, then the overall share.
            (None, false, draws(99_999, 0), true),
            (None, false, draws(100_000, 0), false),
            (None, false, draws(0, 499_999), true),
            (None, false, draws(0, 500_000), false),
            // x-client-trace-id: the client share instead of the random one.
            (None, true, draws(249_999, 0), true),
            (None, true, draws(250_000, 0), false),
        ] {
            assert_eq!(
                sampled(&half, parent, client, &d),
                want,
                "{parent:?} {client} {d:?}"
            );
        }
        assert!(sampled(&ALL, None, false, &draws(999_999, 999_999)));
        let none = SamplingPlan { overall: 0, ..ALL };
        assert!(!sampled(&none, None, false, &draws(0, 0)));
    }

    fn plan(kind: SpanKind, provider: ProviderPlan) -> TracingPlan {
        TracingPlan {
            kind,
            sampling: ALL,
            tags: vec![
                TagPlan {
                    name: "team".into(),
                    source: TagSource::Literal("core".into()),
                },
                TagPlan {
                    name: "env".into(),
                    source: TagSource::Header {
                        name: "x-env".into(),
                        default: "prod".into(),
                    },
                },
                TagPlan {
                    name: "absent".into(),
                    source: TagSource::Header {
                        name: "x-none".into(),
                        default: String::new(),
                    },
                },
            ],
            provider,
        }
    }

    fn zipkin(shared: bool, wide: bool) -> ProviderPlan {
        ProviderPlan::Zipkin {
            cluster: "meshtrace:zipkin".into(),
            path: "/api/v2/spans".into(),
            hostname: String::new(),
            trace_id_128bit: wide,
            shared_span_context: shared,
        }
    }

    fn otel() -> ProviderPlan {
        ProviderPlan::OpenTelemetry {
            cluster: "meshtrace:opentelemetry".into(),
            service_name: "backend".into(),
        }
    }

    const INFO: RequestInfo<'static> = RequestInfo {
        method: "GET",
        url: "http://backend.mesh/api?x=1",
        authority: "backend.mesh",
        protocol: "HTTP/1.1",
        peer: None,
        upstream_cluster: "backend",
    };

    /// Begins a span of `kind` to `provider` on `h` at the epoch.
    fn start(
        kind: SpanKind,
        provider: ProviderPlan,
        h: &mut HeaderMap,
        d: Draws,
    ) -> Option<ActiveSpan> {
        begin(&plan(kind, provider), h, &INFO, &d, SystemTime::UNIX_EPOCH)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn a_new_trace_starts_without_a_caller_and_is_passed_on() {
        let mut h = headers(&[("x-env", "staging")]);
        let span = start(SpanKind::Client, otel(), &mut h, draws(0, 0)).expect("sampled");
        assert_eq!(span.trace_id, 0x1111_2222_3333_4444_5555_6666_7777_8888);
        assert_eq!((span.span_id, span.parent_id), (0xabcd, None));
        assert_eq!(span.name, "egress backend.mesh");
        assert_eq!(
            h[TRACEPARENT],
            "00-11112222333344445555666677778888-000000000000abcd-01"
        );
        let tag = |k: &str| {
            span.tags
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(tag("team"), Some("core"));
        assert_eq!(tag("env"), Some("staging"));
        assert_eq!(tag("absent"), None);
        assert_eq!(tag("http.method"), Some("GET"));
        assert_eq!(tag("upstream_cluster"), Some("backend"));
        let done = span.finish(503, Duration::from_millis(3));
        assert!(done.error);
        assert!(
            done.span
                .tags
                .contains(&("http.status_code".into(), "503".into()))
        );
        assert!(done.span.tags.contains(&("error".into(), "true".into())));
        // 64-bit Zipkin ids keep the low half of the draw.
        let mut h = HeaderMap::new();
        let span =
            start(SpanKind::Client, zipkin(true, false), &mut h, draws(0, 0)).expect("sampled");
        assert_eq!(span.trace_id, 0x5555_6666_7777_8888);
        assert_eq!(h[B3_TRACE_ID], "5555666677778888");
    }

    #[test]
    fn a_callers_span_becomes_the_parent_or_is_shared() {
        let caller = [
            (B3_TRACE_ID, "00000000000000000000000000000042"),
            (B3_SPAN_ID, "0000000000000007"),
            ("x-b3-parentspanid", "0000000000000003"),
            (B3_SAMPLED, "1"),
        ];
        // Server span with a shared context: the caller's id and parent.
        let mut h = headers(&caller);
        let span = start(
            SpanKind::Server,
            zipkin(true, true),
            &mut h,
            draws(999_999, 999_999),
        )
        .expect("the caller sampled it");
        assert_eq!(
            (span.trace_id, span.span_id, span.parent_id, span.shared),
            (0x42, 7, Some(3), true)
        );
        assert_eq!(span.name, "ingress");
        assert_eq!(h[B3_SPAN_ID], "0000000000000007");
        // Without it, a child of the caller's span.
        let mut h = headers(&caller);
        let span =
            start(SpanKind::Server, zipkin(false, true), &mut h, draws(0, 0)).expect("sampled");
        assert_eq!(
            (span.span_id, span.parent_id, span.shared),
            (0xabcd, Some(7), false)
        );
        assert_eq!(h[B3_SPAN_ID], "000000000000abcd");
        assert_eq!(h["x-b3-parentspanid"], "0000000000000007");
        // A caller that chose not to sample: no span, the decision passed on.
        let mut h = headers(&[(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )]);
        let span = start(SpanKind::Server, otel(), &mut h, draws(0, 0));
        assert_eq!(span, None);
        assert_eq!(
            h[TRACEPARENT],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-000000000000abcd-00"
        );
    }
}
