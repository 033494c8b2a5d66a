//! HTTP-aware proxying for services tagged `kuma.io/protocol: http | http2 | grpc`: requests are
//! served with hyper (HTTP/1.1 or HTTP/2, detected), balanced one by one across the cluster's
//! endpoints over pooled upstream connections (mTLS when the cluster says so), and counted by
//! response class.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue, LOCATION, TRANSFER_ENCODING, UPGRADE,
};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, capture_connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshzone_xds::decode::routes::RouteActionPlan;
use meshzone_xds::decode::{ClusterTimeouts, RetryPlan, RouteTimeouts};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::outlier::Ejection;
use crate::routes::{RequestView, modify_headers};
use crate::runtime::{Outcome, Runtime};
use crate::stats::Stats;

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Pooled HTTP client of one cluster.
pub type HttpClient = Client<Connector, Body>;

/// The pooled client of a cluster: connections made within `timeouts.connect`, idle ones closed
/// after `timeouts.idle` (MeshTimeout `connectionTimeout`, `idleTimeout`). With `pooled` false,
/// no connection is kept once its request is done: each request opens its own.
pub fn client(
    tls: Option<(Arc<ClientConfig>, Option<String>)>,
    http2: bool,
    timeouts: &ClusterTimeouts,
    stats: crate::stats::ClusterStatsSlot,
    pooled: bool,
) -> HttpClient {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .http2_only(http2)
        .pool_idle_timeout(timeouts.idle)
        .pool_timer(hyper_util::rt::TokioTimer::new());
    if !pooled {
        builder.pool_max_idle_per_host(0);
    }
    builder.build(Connector {
        tls,
        connect_timeout: timeouts.connect,
        stats,
    })
}

/// Serves one downstream connection as HTTP until it closes: each request goes through the
/// listener's route table.
pub async fn serve<S>(
    stream: S,
    listener: String,
    rt: Arc<Runtime>,
    stats: Arc<Stats>,
    guard: crate::rbac::RequestGuard,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let headers_timeout = rt
        .listener(&listener)
        .and_then(|l| l.timeouts.request_headers);
    // Resolved once per connection (and once per listener build), not per request.
    let counted = Arc::new(match rt.listeners.get(&listener) {
        Some(l) => l.stats(&stats).1.clone(),
        None => stats.http(&listener),
    });
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (listener, rt, stats) = (listener.clone(), rt.clone(), stats.clone());
        let counted = counted.clone();
        let started = std::time::Instant::now();
        // Judged by the newest permissions, whenever the connection was opened.
        let allowed = guard.allows(&stats);
        // Faults and rate limits too come from the newest configuration.
        let latest = guard.latest.borrow().clone();
        let sans = guard.sans.clone();
        let peer = guard.peer;
        let downstream = guard.downstream;
        async move {
            let mut req = req;
            // MeshTrace, from the newest configuration (a pooled connection outlives updates):
            // the context headers are written before any filter, as Envoy's HCM does.
            let recording = crate::trace::begin(&latest, &listener, &mut req, peer);
            // MeshAccessLog: taken from the request now, written when the response is sent.
            let logging = crate::access_log::http::begin(
                latest.listeners.get(&listener),
                &stats,
                &mut req,
                downstream,
                &sans,
            );
            let resp = if allowed {
                let inbound = latest.listeners.get(&listener);
                let decision = match inbound {
                    Some(l) if !l.plan().inbound_http.is_empty() => {
                        crate::faults::before_routing(
                            &mut req,
                            &l.plan().inbound_http,
                            l.limits.http.as_ref(),
                            &sans,
                            &stats,
                        )
                        .await
                    }
                    _ => crate::faults::Decision::Route { throttle_kib: None },
                };
                match decision {
                    crate::faults::Decision::Answer(resp) => resp,
                    crate::faults::Decision::Route { throttle_kib } => {
                        let resp = route(req, &listener, &rt, &stats, peer).await;
                        match throttle_kib {
                            Some(kib) => crate::faults::throttled(resp, kib),
                            None => resp,
                        }
                    }
                }
            } else {
                error_response(StatusCode::FORBIDDEN, crate::rbac::DENIED_BODY)
            };
            counted.answered(resp.status().as_u16(), started.elapsed());
            if let Some(r) = recording {
                r.end(resp.status().as_u16());
            }
            let resp = match logging {
                Some(pending) => crate::access_log::http::finish(pending, resp),
                None => resp,
            };
            Ok::<_, Infallible>(resp)
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // MeshTimeout's requestHeadersTimeout (HTTP/1: the request head must arrive in time).
    if let Some(d) = headers_timeout {
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(d);
    }
    builder
        .serve_connection(TokioIo::new(stream), service)
        .await
        .map_err(|e| format!("HTTP: {e}"))
}

fn empty_body() -> Body {
    full_body(Bytes::new())
}

fn full_body(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// Largest request body copied to a mirror or kept for retries (read before forwarding, so it
/// is bounded).
const MAX_REPLAY_BODY: u64 = 64 * 1024;

/// Mirrored requests in flight, process-wide; past [`MAX_MIRRORS`] a copy is dropped.
static MIRRORS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
const MAX_MIRRORS: usize = 64;
/// How long a mirrored request may take before it is abandoned.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends a copy of a request to a mirror cluster and drops the answer.
fn mirror(
    rt: &Arc<Runtime>,
    stats: &Arc<Stats>,
    cluster: &str,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &Bytes,
) {
    if MIRRORS_IN_FLIGHT.fetch_add(1, Ordering::SeqCst) >= MAX_MIRRORS {
        MIRRORS_IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        stats.inc(format!("cluster.{cluster}.mirror_dropped"));
        return;
    }
    let mut headers = headers.clone();
    // Envoy marks shadowed requests by their authority.
    if let Some(shadow) = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| HeaderValue::from_str(&format!("{h}-shadow")).ok())
    {
        headers.insert(HOST, shadow);
    }
    let (rt, stats, cluster, method, path, body) = (
        rt.clone(),
        stats.clone(),
        cluster.to_string(),
        method.clone(),
        path.to_string(),
        body.clone(),
    );
    tokio::spawn(async move {
        stats.inc(format!("cluster.{cluster}.mirror_total"));
        let sent = tokio::time::timeout(
            MIRROR_TIMEOUT,
            forward(
                &method,
                &path,
                headers,
                ReqBody::Replayable(body),
                &cluster,
                &rt,
                None,
                &stats,
                ForwardPolicy::once(),
            ),
        )
        .await;
        if let Ok(resp) = sent {
            let _ = resp.into_body().collect().await;
        }
        MIRRORS_IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    });
}

/// One request through the listener's route table: match, filters, then forward or redirect.
async fn route(
    req: Request<Incoming>,
    listener: &str,
    rt: &Arc<Runtime>,
    stats: &Arc<Stats>,
    peer: Option<std::net::IpAddr>,
) -> Response<Body> {
    let Some(table) = rt.listeners.get(listener).and_then(|l| l.routes.as_ref()) else {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "no route table\n");
    };
    let (parts, body) = req.into_parts();
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| parts.headers.get(HOST).and_then(|h| h.to_str().ok()));
    let view = RequestView {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        authority,
        headers: &parts.headers,
    };
    let Some(route) = table.find(&view) else {
        stats.inc(format!("http.{listener}.no_route"));
        return error_response(StatusCode::NOT_FOUND, "no route matched\n");
    };
    let plan = &route.plan;
    let mut resp = match (&plan.action, &route.split) {
        (RouteActionPlan::Redirect(r), _) => {
            let location = route.redirect_location(r, &view);
            let mut resp = Response::new(empty_body());
            *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::FOUND);
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(LOCATION, v);
            }
            resp
        }
        (RouteActionPlan::Forward(f), Some(split)) => {
            let cluster = split.pick().to_string();
            let hashing = !f.hash_policy.is_empty()
                && rt.cluster(&cluster).is_some_and(|c| c.balancer.hashes());
            let hash = if hashing {
                hash_key::hash_key(&f.hash_policy, &parts.headers, view.query, peer)
            } else {
                hash_key::HashKey::default()
            };
            let path = route.rewritten_path(view.path, view.query);
            let mut headers = parts.headers.clone();
            modify_headers(&plan.request_headers, &mut headers);
            if let Some(host) = f
                .host_rewrite
                .as_deref()
                .and_then(|h| HeaderValue::from_str(h).ok())
            {
                headers.insert(HOST, host);
            }
            let mirrors: Vec<&str> = route
                .mirrors
                .iter()
                .filter(|m| m.take())
                .map(|m| m.cluster.as_str())
                .collect();
            // A retry needs the body again: a small one is read first (up to MAX_REPLAY_BODY,
            // as its length says), as it is for mirrors; a larger or unsized one is sent once
            // and never retried or mirrored.
            let mut retry = f
                .retry
                .as_ref()
                .filter(|r| r.num_retries > 0 && route.retry_allowed(&view));
            let needs_copy = !mirrors.is_empty() || retry.is_some();
            let bodiless = hyper::body::Body::is_end_stream(&body);
            // MeshAccessLog's BYTES_RECEIVED, when the request is logged.
            let received = parts
                .extensions
                .get::<crate::access_log::http::ReceivedBytes>();
            let small = hyper::body::Body::size_hint(&body)
                .upper()
                .is_some_and(|n| n <= MAX_REPLAY_BODY);
            let body = if bodiless {
                ReqBody::Replayable(Bytes::new())
            } else if needs_copy && small {
                let bytes = match body.collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(_) => {
                        return error_response(StatusCode::BAD_REQUEST, "request body\n");
                    }
                };
                if let Some(r) = received {
                    r.add(bytes.len());
                }
                ReqBody::Replayable(bytes)
            } else {
                for cluster in &mirrors {
                    stats.inc(format!("cluster.{cluster}.mirror_skipped_body"));
                }
                if retry.take().is_some() {
                    stats.inc(format!("cluster.{cluster}.retry_skipped_body"));
                }
                ReqBody::Once(crate::access_log::http::count_body(
                    body.map_err(Into::into).boxed(),
                    received,
                ))
            };
            if let ReqBody::Replayable(bytes) = &body {
                for m in &mirrors {
                    mirror(rt, stats, m, &parts.method, &path, &headers, bytes);
                }
            }
            let policy = ForwardPolicy {
                timeouts: f.timeouts.clone(),
                retry,
            };
            let mut resp = forward(
                &parts.method,
                &path,
                headers,
                body,
                &cluster,
                rt,
                hash.key,
                stats,
                policy,
            )
            .await;
            if let Some(v) = hash.set_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
                resp.headers_mut().append(hyper::header::SET_COOKIE, v);
            }
            resp
        }
        (RouteActionPlan::Forward(_), None) => {
            error_response(StatusCode::SERVICE_UNAVAILABLE, "route without clusters\n")
        }
    };
    modify_headers(&plan.response_headers, resp.headers_mut());
    resp
}

fn error_response(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(text.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

/// Headers that belong to one connection and must not be forwarded (HTTP/2 refuses them).
const HOP_BY_HOP: [HeaderName; 3] = [CONNECTION, TRANSFER_ENCODING, UPGRADE];

/// How many endpoints a request without a body may try when connecting fails (the request was
/// never sent, so trying the next endpoint is safe).
const CONNECT_ATTEMPTS: usize = 3;

/// Set on the 503 a proxy answers when no upstream could even be connected to: the request
/// reached no application. A kuma-dp client that gets it from a peer (say, an instance that just
/// joined while its application is still starting) tries the next endpoint, as it does after a
/// refused connection of its own; any other client sees a plain 503.
pub const NOT_DELIVERED: HeaderName = HeaderName::from_static("x-meshzone-not-delivered");

fn not_delivered() -> Response<Body> {
    let mut r = error_response(StatusCode::SERVICE_UNAVAILABLE, "upstream connect error\n");
    r.headers_mut()
        .insert(NOT_DELIVERED, hyper::header::HeaderValue::from_static("1"));
    r
}

/// A request body: kept (so it can be sent again), or a stream sent once.
enum ReqBody {
    Replayable(Bytes),
    Once(Body),
}

/// How a forwarded request is timed and retried (the route's MeshTimeout and MeshRetry).
struct ForwardPolicy<'a> {
    timeouts: RouteTimeouts,
    /// `None`: no retry (none configured, or the request is not retriable).
    retry: Option<&'a RetryPlan>,
}

impl ForwardPolicy<'_> {
    /// One try, no timeouts of its own (mirrors bound themselves).
    fn once() -> Self {
        ForwardPolicy {
            timeouts: RouteTimeouts {
                request: None,
                stream_idle: None,
            },
            retry: None,
        }
    }
}

/// Envoy's answer when the route timeout fires.
fn upstream_timeout() -> Response<Body> {
    error_response(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
}

/// Sends a request to `cluster` within the route timeout: each try to the next endpoint, a
/// retry after a failure the policy names (with back-off), and, for a request kept in memory,
/// a free move to the next endpoint when it reached no application.
#[allow(clippy::too_many_arguments)]
async fn forward(
    method: &Method,
    path: &str,
    headers: HeaderMap,
    body: ReqBody,
    cluster: &str,
    rt: &Runtime,
    hash: Option<u64>,
    stats: &Stats,
    policy: ForwardPolicy<'_>,
) -> Response<Body> {
    let tries = tries(
        method, path, headers, body, cluster, rt, hash, stats, &policy,
    );
    let resp = match policy.timeouts.request {
        None => tries.await,
        Some(limit) => match tokio::time::timeout(limit, tries).await {
            Ok(resp) => resp,
            Err(_) => {
                stats.inc(format!("cluster.{cluster}.upstream_rq_timeout"));
                return upstream_timeout();
            }
        },
    };
    match policy.timeouts.stream_idle {
        Some(idle) => resp.map(|b| IdleBody::new(b, idle).boxed()),
        None => resp,
    }
}

#[allow(clippy::too_many_arguments)]
async fn tries(
    method: &Method,
    path: &str,
    mut headers: HeaderMap,
    body: ReqBody,
    cluster: &str,
    rt: &Runtime,
    hash: Option<u64>,
    stats: &Stats,
    policy: &ForwardPolicy<'_>,
) -> Response<Body> {
    let Some(c) = rt.cluster(cluster) else {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "no such cluster\n");
    };
    if c.tls.is_err() {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream TLS material is missing\n",
        );
    }
    let client = &c.http;
    let candidates = c.pick_with(hash);
    if candidates.is_empty() {
        stats.inc(format!("cluster.{cluster}.upstream_cx_none_healthy"));
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n");
    }
    if c.limits.connections_busy() {
        stats.inc(format!("cluster.{cluster}.upstream_cx_overflow"));
    }
    let slot = match c.limits.request().await {
        Ok(slot) => slot,
        Err(_) => {
            stats.inc(format!("cluster.{cluster}.upstream_rq_pending_overflow"));
            return overloaded();
        }
    };
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    headers.remove("keep-alive");
    let version = if c.plan().http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let (replay, mut once) = match body {
        ReqBody::Replayable(b) => (Some(b), None),
        ReqBody::Once(b) => (None, Some(b)),
    };
    // A body can be sent once unless it was kept: only a kept one moves on or is retried.
    let mut free_moves = match replay {
        Some(_) => CONNECT_ATTEMPTS.min(candidates.len()) - 1,
        None => 0,
    };
    // A lone candidate is usually a zone ingress or egress, which gives each connection to one
    // of a service's instances: when the instance behind a pooled connection says the request
    // reached no application (it is still starting), a new connection reaches another.
    let mut fresh_moves = match replay {
        Some(_) if candidates.len() == 1 => CONNECT_ATTEMPTS - 1,
        _ => 0,
    };
    let mut fresh_connection = false;
    let retry = policy.retry.filter(|_| replay.is_some());
    let mut retries_left = retry.map_or(0, |r| r.num_retries);
    // Each try must answer within the per-try timeout, the cluster's max stream duration and
    // the stream idle timeout, whichever is shortest.
    let per_try = [
        retry.and_then(|r| r.per_try_timeout),
        c.plan().timeouts.max_stream_duration,
        policy.timeouts.stream_idle,
    ]
    .into_iter()
    .flatten()
    .min();
    let mut last_refusal = None;
    let mut n = 0;
    let mut retried = 0;
    let mut retry_slot = None;
    while let Some(endpoint) = retry::endpoint_for(&candidates, n) {
        // Moving on to another endpoint is a retry, within the cluster's max_retries.
        if n > 0 {
            retry_slot = c.limits.retry();
            if retry_slot.is_none() {
                stats.inc(format!("cluster.{cluster}.upstream_rq_retry_overflow"));
                break;
            }
        }
        n += 1;
        let Ok(uri) = format!("http://{endpoint}{path}").parse::<Uri>() else {
            return error_response(StatusCode::BAD_REQUEST, "bad request path\n");
        };
        let body = match &replay {
            Some(b) => full_body(b.clone()),
            None => once.take().unwrap_or_else(empty_body),
        };
        let mut request = Request::new(body);
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = version;
        *request.headers_mut() = headers.clone();
        let max_age = c.plan().timeouts.max_connection_duration;
        let captured = max_age.map(|_| capture_connection(&mut request));
        // Counted in flight (least request) until the response head arrives.
        let in_flight = c.balancer.begin(endpoint);
        let counted = c.stats(stats);
        counted.upstream_rq_total.inc();
        let try_started = std::time::Instant::now();
        let sent = if fresh_connection {
            c.http_unpooled.request(request)
        } else {
            client.request(request)
        };
        let result = match per_try {
            None => Some(sent.await),
            Some(limit) => tokio::time::timeout(limit, sent).await.ok(),
        };
        drop(in_flight);
        // Outlier detection hears of every try (Envoy counts timeouts and resets as
        // local-origin failures).
        let count = |ejections: Vec<(std::net::SocketAddr, Ejection)>| {
            for (addr, why) in ejections {
                ejected(stats, cluster, addr, why);
            }
        };
        let failed = |what: Outcome| count(c.record(endpoint, what));
        let failed_past_connect = |what: Outcome| count(c.record_past_connect(endpoint, what));
        let (outcome, resp, undelivered) = match result {
            None => {
                stats.inc(format!("cluster.{cluster}.upstream_rq_per_try_timeout"));
                failed_past_connect(Outcome::LocalFailure);
                (retry::Outcome::Timeout, None, false)
            }
            Some(Ok(resp)) => {
                counted.answered(resp.status().as_u16(), try_started.elapsed());
                if let (Some(max), Some(captured)) = (max_age, &captured) {
                    connection_age::retire_if_expired(
                        resp.extensions(),
                        captured,
                        max,
                        stats,
                        cluster,
                    );
                }
                let refused = resp.status() == StatusCode::SERVICE_UNAVAILABLE
                    && resp.headers().contains_key(NOT_DELIVERED);
                if !refused {
                    // Not counted when refused: the peer proxy is healthy, and its application
                    // may be up a moment later (an instance that is still starting).
                    c.record(endpoint, Outcome::Connected { last: false });
                    failed_past_connect(Outcome::Status(resp.status().as_u16()));
                }
                let grpc_status = resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                let outcome = retry::Outcome::Answered {
                    status: resp.status(),
                    grpc_status,
                };
                let mut resp = resp;
                resp.extensions_mut()
                    .insert(crate::access_log::http::UpstreamHost(endpoint));
                (
                    outcome,
                    Some(resp.map(|b| b.map_err(Into::into).boxed())),
                    refused,
                )
            }
            Some(Err(e)) if e.is_connect() => {
                if handshake_failed(&e) {
                    failed_past_connect(Outcome::LocalFailure);
                } else {
                    failed(Outcome::LocalFailure);
                }
                tracing::debug!(cluster, %endpoint, error = %e, "cannot connect");
                (retry::Outcome::ConnectFailure, None, true)
            }
            Some(Err(e)) => {
                // Reset or closed after connecting: a local-origin failure.
                failed_past_connect(Outcome::LocalFailure);
                tracing::debug!(cluster, %endpoint, error = %e, "upstream request failed");
                (retry::Outcome::Reset, None, false)
            }
        };
        if undelivered && free_moves > 0 {
            // The request reached no application: the next endpoint may have it.
            tracing::debug!(cluster, %endpoint, "not delivered; trying the next endpoint");
            free_moves -= 1;
            if resp.is_some() {
                last_refusal = resp;
            }
            continue;
        }
        if undelivered && resp.is_some() && fresh_moves > 0 {
            tracing::debug!(cluster, %endpoint, "not delivered; trying a new connection");
            stats.inc(format!(
                "cluster.{cluster}.upstream_rq_not_delivered_new_connection"
            ));
            fresh_moves -= 1;
            fresh_connection = true;
            last_refusal = resp;
            continue;
        }
        if let Some(plan) = retry
            && retries_left > 0
            && retry::retriable(plan, outcome)
        {
            retries_left -= 1;
            stats.inc(format!("cluster.{cluster}.upstream_rq_retry"));
            let rate_limited = plan.rate_limited.as_ref().and_then(|r| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                retry::reset_back_off(r, resp.as_ref()?.headers(), now, retry::jitter())
            });
            let pause = match rate_limited {
                Some(pause) => {
                    stats.inc(format!(
                        "cluster.{cluster}.upstream_rq_retry_backoff_ratelimited"
                    ));
                    pause
                }
                None => {
                    stats.inc(format!(
                        "cluster.{cluster}.upstream_rq_retry_backoff_exponential"
                    ));
                    retry::back_off(plan, retried, retry::jitter())
                }
            };
            tokio::time::sleep(pause).await;
            retried += 1;
            if resp.is_some() && undelivered {
                last_refusal = resp;
            }
            continue;
        }
        drop(retry_slot);
        return match (outcome, resp) {
            // The request holds its place under the limits until its response is done.
            (_, Some(resp)) => resp.map(|b| {
                b.map_frame(move |f| {
                    let _held = &slot;
                    f
                })
                .boxed()
            }),
            (retry::Outcome::Timeout, None) => upstream_timeout(),
            (retry::Outcome::ConnectFailure, None) => last_refusal.unwrap_or_else(not_delivered),
            _ => error_response(StatusCode::SERVICE_UNAVAILABLE, "upstream request failed\n"),
        };
    }
    last_refusal.unwrap_or_else(not_delivered)
}

/// Envoy's answer to a request over a circuit breaker's limit.
fn overloaded() -> Response<Body> {
    let mut r = error_response(StatusCode::SERVICE_UNAVAILABLE, "upstream overflow\n");
    r.headers_mut().insert(
        HeaderName::from_static("x-envoy-overloaded"),
        HeaderValue::from_static("true"),
    );
    r
}

/// Counts an ejection as Envoy's stats name it.
pub(crate) fn ejected(stats: &Stats, cluster: &str, addr: std::net::SocketAddr, why: Ejection) {
    let kind = match why {
        Ejection::Consecutive5xx => "consecutive_5xx",
        Ejection::ConsecutiveGatewayFailure => "consecutive_gateway_failure",
        Ejection::ConsecutiveLocalOriginFailure => "consecutive_local_origin_failure",
        Ejection::SuccessRate => "success_rate",
        Ejection::FailurePercentage => "failure_percentage",
    };
    stats.inc(format!(
        "cluster.{cluster}.outlier_detection.ejections_enforced_total"
    ));
    stats.inc(format!(
        "cluster.{cluster}.outlier_detection.ejections_enforced_{kind}"
    ));
    tracing::debug!(cluster, %addr, kind, "endpoint ejected");
}

/// A response body that fails when no frame arrives for the stream idle timeout.
struct IdleBody {
    inner: Body,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl IdleBody {
    fn new(inner: Body, idle: Duration) -> Self {
        IdleBody {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl hyper::body::Body for IdleBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = tokio::time::Instant::now() + this.idle;
                this.timer.as_mut().reset(next);
                Poll::Ready(frame)
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err("stream idle timeout".into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Opens upstream connections: TCP, then mTLS when the cluster has it.
#[derive(Clone)]
pub struct Connector {
    tls: Option<(Arc<ClientConfig>, Option<String>)>,
    connect_timeout: Duration,
    /// The cluster's `upstream_cx_*` stats (resolved before its first request).
    stats: crate::stats::ClusterStatsSlot,
}

impl tower_service::Service<Uri> for Connector {
    type Response = UpstreamIo;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<UpstreamIo>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        let connect_timeout = self.connect_timeout;
        let counted = self.stats.get().cloned();
        Box::pin(async move {
            let host = uri
                .host()
                .unwrap_or("127.0.0.1")
                .trim_matches(['[', ']'])
                .to_string();
            let port = uri.port_u16().unwrap_or(80);
            let connecting = Instant::now();
            let tcp =
                tokio::time::timeout(connect_timeout, TcpStream::connect((host.as_str(), port)))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
                    .and_then(|connected| connected)
                    .inspect_err(|_| {
                        if let Some(c) = &counted {
                            c.upstream_cx_connect_fail.inc();
                        }
                    })?;
            tcp.set_nodelay(true)?;
            let active = counted.as_ref().map(|c| {
                c.upstream_cx_connect_ms.observe_ms(connecting.elapsed());
                c.upstream_cx_total.inc();
                c.upstream_cx_active.track()
            });
            let tcp = CountedTcp {
                tcp,
                bytes: counted.map(|c| {
                    (
                        c.upstream_cx_rx_bytes_total.clone(),
                        c.upstream_cx_tx_bytes_total.clone(),
                    )
                }),
            };
            let opened = Instant::now();
            let stream = match tls {
                None => UpstreamStream::Plain(TokioIo::new(tcp)),
                Some((config, sni)) => {
                    let name = sni
                        .and_then(|s| ServerName::try_from(s).ok())
                        .or_else(|| {
                            host.parse::<std::net::IpAddr>()
                                .ok()
                                .map(|ip| ServerName::IpAddress(ip.into()))
                        })
                        .ok_or_else(|| {
                            io::Error::new(io::ErrorKind::InvalidInput, "no server name")
                        })?;
                    let stream = tokio_rustls::TlsConnector::from(config)
                        .connect(name, tcp)
                        .await
                        .map_err(|e| io::Error::new(e.kind(), Handshake(e)))?;
                    UpstreamStream::Tls(Box::new(TokioIo::new(stream)))
                }
            };
            Ok(UpstreamIo {
                stream,
                opened,
                _active: active,
            })
        })
    }
}

/// A TLS handshake that failed after the TCP connection was made: through a zone egress, a
/// failure past the egress.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake: {0}")]
struct Handshake(io::Error);

/// Whether a request's connection failed in its TLS handshake (not in reaching the peer).
fn handshake_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    // An io::Error hides its inner error from `source()`; `get_ref` shows it.
    let mut source = e.source();
    while let Some(s) = source {
        let inner = s.downcast_ref::<io::Error>().and_then(io::Error::get_ref);
        if s.is::<Handshake>() || inner.is_some_and(|i| i.is::<Handshake>()) {
            return true;
        }
        source = s.source();
    }
    false
}

/// An upstream connection, plain or mTLS, and when it was opened.
pub struct UpstreamIo {
    stream: UpstreamStream,
    opened: Instant,
    /// Counted in the cluster's `upstream_cx_active` while it lives.
    _active: Option<meshzone_metrics::GaugeGuard>,
}

enum UpstreamStream {
    Plain(TokioIo<CountedTcp>),
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<CountedTcp>>>),
}

/// A TCP connection that adds what it reads and writes to its cluster's
/// `upstream_cx_{rx,tx}_bytes_total` (bytes on the wire, as the TCP path counts them).
struct CountedTcp {
    tcp: TcpStream,
    bytes: Option<(meshzone_metrics::Counter, meshzone_metrics::Counter)>,
}

impl tokio::io::AsyncRead for CountedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut me.tcp).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some((rx, _))) = (&polled, &me.bytes) {
            rx.add((buf.filled().len() - before) as u64);
        }
        polled
    }
}

impl tokio::io::AsyncWrite for CountedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let polled = Pin::new(&mut me.tcp).poll_write(cx, buf);
        if let (Poll::Ready(Ok(n)), Some((_, tx))) = (&polled, &me.bytes) {
            tx.add(*n as u64);
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

impl Connection for UpstreamIo {
    /// Each response carries its connection's [`connection_age::Opened`].
    fn connected(&self) -> Connected {
        Connected::new().extra(connection_age::Opened(self.opened))
    }
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

mod connection_age;
mod hash_key;

#[cfg(test)]
mod egress_tests;
#[cfg(test)]
pub(crate) mod loopback;

#[cfg(test)]
mod resilience_tests;
mod retry;
#[cfg(test)]
mod retry_tests;
#[cfg(test)]
mod tests;
