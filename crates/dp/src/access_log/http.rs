//! Access logs of HTTP requests: what is known when the request arrives is taken at once
//! (request headers only when a format reads them), the answer's status and upstream host when
//! it leaves, and the line is written when the response body has been sent (or dropped), with
//! the bytes sent and the duration to the last byte, as Envoy logs at stream end.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode, Version};

use super::{Downstream, Entry, RequestInfo, write_all};
use crate::runtime::ListenerRuntime;
use crate::stats::Stats;

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The endpoint that answered a request (a response extension `http.rs` sets).
#[derive(Debug, Clone, Copy)]
pub struct UpstreamHost(pub std::net::SocketAddr);

/// The request body bytes read so far (a request extension `http.rs` counts into).
#[derive(Debug, Clone, Default)]
pub struct ReceivedBytes(Arc<AtomicU64>);

impl ReceivedBytes {
    pub fn add(&self, n: usize) {
        self.0.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// `body`, counting its data into `received` when the request is logged.
pub fn count_body(body: Body, received: Option<&ReceivedBytes>) -> Body {
    match received {
        None => body,
        Some(r) => {
            let r = r.clone();
            body.map_frame(move |frame| {
                if let Some(data) = frame.data_ref() {
                    r.add(data.len());
                }
                frame
            })
            .boxed()
        }
    }
}

/// A request being logged.
pub struct Pending {
    listener: Arc<ListenerRuntime>,
    stats: Arc<Stats>,
    entry: Entry,
    began: Instant,
    received: ReceivedBytes,
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// Starts logging `req` when `listener` has access logs.
pub fn begin(
    listener: Option<&Arc<ListenerRuntime>>,
    stats: &Arc<Stats>,
    req: &mut Request<Incoming>,
    downstream: Downstream,
    sans: &[String],
) -> Option<Pending> {
    let listener = listener?;
    let loggers = listener.access_logs(stats);
    if loggers.is_empty() {
        return None;
    }
    let headers = loggers
        .iter()
        .any(|l| l.format.reads_headers())
        .then(|| req.headers().clone());
    let uri = req.uri();
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let request = RequestInfo {
        method: req.method().as_str().to_string(),
        path: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_string(), |p| p.as_str().to_string()),
        authority,
        scheme: "http",
        headers,
    };
    let received = ReceivedBytes::default();
    req.extensions_mut().insert(received.clone());
    Some(Pending {
        listener: listener.clone(),
        stats: stats.clone(),
        entry: Entry {
            request: Some(request),
            protocol: Some(protocol(req.version())),
            ..Entry::starting(&listener.plan().cluster, downstream, sans)
        },
        began: Instant::now(),
        received,
    })
}

/// Envoy's response flag for an answer kuma-dp made itself.
fn flags(status: StatusCode, upstream: bool) -> &'static str {
    if upstream {
        return "";
    }
    match status {
        StatusCode::NOT_FOUND => "NR",
        StatusCode::SERVICE_UNAVAILABLE => "UH",
        StatusCode::GATEWAY_TIMEOUT => "UT",
        StatusCode::FORBIDDEN => "RBAC",
        StatusCode::TOO_MANY_REQUESTS => "RL",
        _ => "",
    }
}

/// The response, whose body writes the line when it has been sent.
pub fn finish(mut pending: Pending, resp: Response<Body>) -> Response<Body> {
    let upstream = resp.extensions().get::<UpstreamHost>().map(|u| u.0);
    let e = &mut pending.entry;
    e.response_code = resp.status().as_u16();
    e.upstream_host = upstream;
    e.response_flags = flags(resp.status(), upstream.is_some());
    if e.request.as_ref().is_some_and(|r| r.headers.is_some()) {
        e.response_headers = Some(resp.headers().clone());
    }
    resp.map(|body| {
        LoggedBody {
            inner: body,
            pending: Some(pending),
        }
        .boxed()
    })
}

struct LoggedBody {
    inner: Body,
    pending: Option<Pending>,
}

impl LoggedBody {
    fn done(&mut self) {
        if let Some(mut p) = self.pending.take() {
            p.entry.duration = p.began.elapsed();
            p.entry.bytes_received = p.received.0.load(Ordering::Relaxed);
            write_all(p.listener.access_logs(&p.stats), &p.entry);
        }
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        self.done();
    }
}

impl hyper::body::Body for LoggedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(p)) = (frame.data_ref(), this.pending.as_mut()) {
                    p.entry.bytes_sent += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.done();
                }
            }
            Poll::Ready(_) => this.done(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
