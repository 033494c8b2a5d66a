//! MeshFaultInjection and MeshRateLimit on kuma-dp's inbound HTTP path, as the decoder's
//! [`InboundHttpPlan`] says, in Envoy's filter order: the caller header is written from the
//! verified peer certificate's URI SANs (replacing the client's), then each fault filter whose
//! header matchers hold delays, aborts and/or throttles the response at its own share of
//! requests (each drawn independently), then the rate limit takes a token or answers
//! `local_rate_limited`. Counters keep Envoy's names: `http.<prefix>.fault.delays_injected`,
//! `.aborts_injected`, `.response_rl_injected`, `<prefix>.http_local_rate_limit.{enabled,
//! enforced,rate_limited,ok}`.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use meshzone_xds::decode::{FaultPlan, InboundHttpPlan};
use tokio::time::Instant;

use crate::ratelimit::TokenBucket;
use crate::routes::modify_headers;
use crate::stats::Stats;

type Body = http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Envoy's local reply bodies.
pub const RATE_LIMITED_BODY: &str = "local_rate_limited";
pub const ABORT_BODY: &str = "fault filter abort";

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x9e37_79b9_7f4a_7c15);
    h.finish() | 1
}

/// A uniform 64-bit draw (xorshift64*, seeded per thread from the OS-keyed hasher).
pub(crate) fn next_u64() -> u64 {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        r.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// A uniform draw in `0..1_000_000`.
pub(crate) fn draw() -> u32 {
    (next_u64() >> 32) as u32 % 1_000_000
}

/// Whether a fault with this share (per million) hits this request.
pub fn hit(per_million: u32) -> bool {
    match per_million {
        0 => false,
        p if p >= 1_000_000 => true,
        p => draw() < p,
    }
}

fn matches<B>(f: &FaultPlan, req: &Request<B>) -> bool {
    f.headers.iter().all(|m| {
        let value = req.headers().get(&m.name).and_then(|v| v.to_str().ok());
        m.matches(value)
    })
}

fn local_reply(status: u16, body: &'static str) -> Response<Body> {
    let mut r = Response::new(
        http_body_util::Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    r
}

/// What the inbound policies decided before routing: answer now, or route and throttle the
/// response body to this many KiB/s.
pub enum Decision {
    Answer(Response<Body>),
    Route { throttle_kib: Option<u64> },
}

/// Runs the plan on one request (its headers may change: the caller header).
pub async fn before_routing<B>(
    req: &mut Request<B>,
    plan: &InboundHttpPlan,
    bucket: Option<&TokenBucket>,
    sans: &[String],
    stats: &Stats,
) -> Decision {
    if let Some(name) = &plan.caller_header
        && let Ok(name) = HeaderName::from_bytes(name.as_bytes())
    {
        let value = format!(",{},", sans.join(","));
        match HeaderValue::from_str(&value) {
            Ok(v) => {
                req.headers_mut().insert(name, v);
            }
            // A SAN that is not a header value cannot be matched; nobody is named.
            Err(_) => {
                req.headers_mut()
                    .insert(name, HeaderValue::from_static(",,"));
            }
        }
    }
    let prefix = &plan.stat_prefix;
    let mut throttle: Option<u64> = None;
    for f in &plan.faults {
        if !matches(f, req) {
            continue;
        }
        if let Some(d) = f.delay
            && hit(d.per_million)
        {
            stats.inc(format!("http.{prefix}.fault.delays_injected"));
            tokio::time::sleep(d.value).await;
        }
        if let Some(a) = f.abort
            && hit(a.per_million)
        {
            stats.inc(format!("http.{prefix}.fault.aborts_injected"));
            return Decision::Answer(local_reply(a.value, ABORT_BODY));
        }
        if let Some(r) = f.response_kib_per_second
            && hit(r.per_million)
        {
            stats.inc(format!("http.{prefix}.fault.response_rl_injected"));
            throttle = Some(throttle.map_or(r.value, |t| t.min(r.value)));
        }
    }
    if let (Some(limit), Some(bucket)) = (&plan.rate_limit, bucket) {
        let p = &limit.stat_prefix;
        stats.inc(format!("{p}.http_local_rate_limit.enabled"));
        if !bucket.take() {
            stats.inc(format!("{p}.http_local_rate_limit.enforced"));
            stats.inc(format!("{p}.http_local_rate_limit.rate_limited"));
            let mut resp = local_reply(limit.status, RATE_LIMITED_BODY);
            modify_headers(&limit.response_headers, resp.headers_mut());
            return Decision::Answer(resp);
        }
        stats.inc(format!("{p}.http_local_rate_limit.ok"));
    }
    Decision::Route {
        throttle_kib: throttle,
    }
}

/// Slices per second of a throttled body (Envoy refills its response limiter 16 times a
/// second).
const SLICES_PER_SECOND: u64 = 16;

/// The response with its body sent at most `kib_per_second` KiB/s: a slice goes out only when
/// the bytes sent so far, itself included, are due, so a body of `n` bytes takes at least
/// `n / rate`.
pub fn throttled(resp: Response<Body>, kib_per_second: u64) -> Response<Body> {
    let rate = kib_per_second.saturating_mul(1024).max(1);
    let slice = usize::try_from((rate / SLICES_PER_SECOND).max(1)).unwrap_or(usize::MAX);
    let (parts, mut body) = resp.into_parts();
    let (tx, rx) = tokio::sync::mpsc::channel::<
        Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>,
    >(1);
    tokio::spawn(async move {
        let start = Instant::now();
        let mut sent: u64 = 0;
        while let Some(frame) = body.frame().await {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(other) => {
                    if tx.send(Ok(other)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let mut data = data;
            while !data.is_empty() {
                let piece = data.split_to(slice.min(data.len()));
                sent += piece.len() as u64;
                let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                tokio::time::sleep_until(start + due).await;
                if tx.send(Ok(Frame::data(piece))).await.is_err() {
                    return;
                }
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Response::from_parts(parts, StreamBody::new(stream).boxed())
}

#[cfg(test)]
mod tests;
