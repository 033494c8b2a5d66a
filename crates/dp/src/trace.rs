//! MeshTrace in kuma-dp: on a listener whose plan traces (`ListenerPlan::tracing`), each
//! request gets Envoy's sampling decision, the proxy's trace context in its headers (B3 for
//! Zipkin, W3C `traceparent` for OpenTelemetry; the caller's span becomes the parent) and, when
//! sampled, a span — SERVER on inbounds, CLIENT on outbounds — with Envoy's tags and the
//! policy's custom tags, handed to the collector's exporter without waiting.
//!
//! `context` reads and writes the headers, `span` decides and builds (both pure), `report`
//! encodes Zipkin v2 JSON and OTLP, `export` queues and sends.

pub mod context;
pub mod export;
pub mod report;
pub mod span;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use hyper::Request;
use hyper::header::HOST;

pub use export::{Exporter, ExporterKey, TraceCounters};
use span::{ActiveSpan, Draws, RequestInfo};

use crate::runtime::Runtime;

/// A sampled request on its way: finished with the response's status.
pub struct Recording {
    span: ActiveSpan,
    started: Instant,
    exporter: Arc<Exporter>,
}

impl Recording {
    pub fn end(self, status: u16) {
        self.exporter
            .record(self.span.finish(status, self.started.elapsed()));
    }
}

fn draws() -> Draws {
    let next = crate::faults::next_u64;
    Draws {
        decision: crate::faults::draw(),
        overall: crate::faults::draw(),
        trace_id: (u128::from(next()) << 64) | u128::from(next()),
        span_id: next().max(1),
    }
}

/// Starts tracing a request that arrived on `listener`: writes the context headers and, when
/// sampled (and the collector cluster is there), returns its recording.
pub fn begin<B>(
    rt: &Runtime,
    listener: &str,
    req: &mut Request<B>,
    peer: Option<IpAddr>,
) -> Option<Recording> {
    let l = rt.listener(listener)?;
    let plan = l.tracing.as_ref()?;
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let url = format!("http://{authority}{path}");
    let protocol = format!("{:?}", req.version());
    let method = req.method().as_str().to_string();
    let info = RequestInfo {
        method: &method,
        url: &url,
        authority: &authority,
        protocol: &protocol,
        peer,
        upstream_cluster: &l.cluster,
    };
    let span = span::begin(plan, req.headers_mut(), &info, &draws(), SystemTime::now())?;
    let exporter = rt.tracers.get(plan.provider.cluster())?.clone();
    Some(Recording {
        span,
        started: Instant::now(),
        exporter,
    })
}
