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
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue, LOCATION, TRANSFER_ENCODING, UPGRADE,
};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshzone_xds::decode::routes::RouteActionPlan;
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

pub fn client(tls: Option<(Arc<ClientConfig>, Option<String>)>, http2: bool) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .pool_idle_timeout(Duration::from_secs(60))
        .build(Connector { tls })
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
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (listener, rt, stats) = (listener.clone(), rt.clone(), stats.clone());
        // Judged by the newest permissions, whenever the connection was opened.
        let allowed = guard.allows(&stats);
        // Faults and rate limits too come from the newest configuration.
        let latest = guard.latest.borrow().clone();
        let sans = guard.sans.clone();
        async move {
            let mut req = req;
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
                        let resp = route(req, &listener, &rt, &stats).await;
                        match throttle_kib {
                            Some(kib) => crate::faults::throttled(resp, kib),
                            None => resp,
                        }
                    }
                }
            } else {
                error_response(StatusCode::FORBIDDEN, crate::rbac::DENIED_BODY)
            };
            stats.inc(format!("http.{listener}.rq_total"));
            stats.inc(format!(
                "http.{listener}.rq_{}xx",
                resp.status().as_u16() / 100
            ));
            Ok::<_, Infallible>(resp)
        }
    });
    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
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

/// Largest request body copied to a mirror (read before forwarding, so it is bounded).
const MAX_MIRROR_BODY: u64 = 64 * 1024;

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
                full_body(body),
                &cluster,
                &rt,
                None,
                &stats,
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
                hash_key::hash_key(&f.hash_policy, &parts.headers, view.query)
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
            let body = if mirrors.is_empty() {
                body.map_err(Into::into).boxed()
            } else {
                // A mirrored request's body is read first (up to MAX_MIRROR_BODY, as its
                // length says) so that both copies carry it; a larger one is not mirrored.
                let small = hyper::body::Body::size_hint(&body)
                    .upper()
                    .is_some_and(|n| n <= MAX_MIRROR_BODY);
                if small {
                    let bytes = match body.collect().await {
                        Ok(b) => b.to_bytes(),
                        Err(_) => {
                            return error_response(StatusCode::BAD_REQUEST, "request body\n");
                        }
                    };
                    for cluster in &mirrors {
                        mirror(rt, stats, cluster, &parts.method, &path, &headers, &bytes);
                    }
                    full_body(bytes)
                } else {
                    for cluster in &mirrors {
                        stats.inc(format!("cluster.{cluster}.mirror_skipped_body"));
                    }
                    body.map_err(Into::into).boxed()
                }
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

/// Sends a request to an endpoint of `cluster`; a bodiless request moves on to the next endpoint
/// when it reached no application.
// The request's parts, where it goes and what it needs there (runtime, hash key, stats).
#[allow(clippy::too_many_arguments)]
async fn forward(
    method: &Method,
    path: &str,
    mut headers: HeaderMap,
    body: Body,
    cluster: &str,
    rt: &Runtime,
    hash: Option<u64>,
    stats: &Stats,
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
    // A body can be sent once; without one, a refused connection moves on to the next endpoint.
    let attempts = if hyper::body::Body::is_end_stream(&body) {
        CONNECT_ATTEMPTS
    } else {
        1
    };
    let mut body = Some(body);
    let mut last_refusal = None;
    let mut retry = None;
    for (i, endpoint) in candidates.into_iter().take(attempts).enumerate() {
        // Moving on to another endpoint is a retry, within the cluster's max_retries.
        if i > 0 {
            retry = c.limits.retry();
            if retry.is_none() {
                stats.inc(format!("cluster.{cluster}.upstream_rq_retry_overflow"));
                break;
            }
        }
        let Ok(uri) = format!("http://{endpoint}{path}").parse::<Uri>() else {
            return error_response(StatusCode::BAD_REQUEST, "bad request path\n");
        };
        let mut request = Request::new(body.take().unwrap_or_else(empty_body));
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = version;
        *request.headers_mut() = headers.clone();
        // Counted in flight (least request) until the response head arrives.
        let in_flight = c.balancer.begin(endpoint);
        let sent = client.request(request).await;
        drop(in_flight);
        match sent {
            // The peer proxy could not reach its application: the request went nowhere, so the
            // next endpoint may have it (when there is one and the request has no body).
            Ok(resp)
                if attempts > 1
                    && resp.status() == StatusCode::SERVICE_UNAVAILABLE
                    && resp.headers().contains_key(NOT_DELIVERED) =>
            {
                // Not ejected: the peer proxy is healthy, and its application may be up a moment
                // later (an instance that is still starting).
                tracing::debug!(cluster, %endpoint, "the peer could not reach its application; trying the next endpoint");
                last_refusal = Some(resp.map(|b| b.map_err(Into::into).boxed()));
            }
            Ok(resp) => {
                c.record(endpoint, Outcome::Connected { last: false });
                for (addr, why) in c.record(endpoint, Outcome::Status(resp.status().as_u16())) {
                    ejected(stats, cluster, addr, why);
                }
                drop(retry);
                // The request holds its place under the limits until its response is done.
                return resp.map(|b| {
                    b.map_err(Into::into)
                        .map_frame(move |f| {
                            let _held = &slot;
                            f
                        })
                        .boxed()
                });
            }
            Err(e) if e.is_connect() => {
                for (addr, why) in c.record(endpoint, Outcome::LocalFailure) {
                    ejected(stats, cluster, addr, why);
                }
                tracing::debug!(cluster, %endpoint, error = %e, "cannot connect; trying the next endpoint");
            }
            Err(e) => {
                // Reset or closed after connecting: a local-origin failure.
                for (addr, why) in c.record(endpoint, Outcome::LocalFailure) {
                    ejected(stats, cluster, addr, why);
                }
                tracing::debug!(cluster, %endpoint, error = %e, "upstream request failed");
                return error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream request failed\n",
                );
            }
        }
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

/// Opens upstream connections: TCP, then mTLS when the cluster has it.
#[derive(Clone)]
pub struct Connector {
    tls: Option<(Arc<ClientConfig>, Option<String>)>,
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
        Box::pin(async move {
            let host = uri
                .host()
                .unwrap_or("127.0.0.1")
                .trim_matches(['[', ']'])
                .to_string();
            let port = uri.port_u16().unwrap_or(80);
            let tcp = tokio::time::timeout(
                Duration::from_secs(5),
                TcpStream::connect((host.as_str(), port)),
            )
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            tcp.set_nodelay(true)?;
            match tls {
                None => Ok(UpstreamIo::Plain(TokioIo::new(tcp))),
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
                        .await?;
                    Ok(UpstreamIo::Tls(Box::new(TokioIo::new(stream))))
                }
            }
        })
    }
}

/// An upstream connection, plain or mTLS.
pub enum UpstreamIo {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

mod hash_key;

#[cfg(test)]
mod resilience_tests;
#[cfg(test)]
mod tests;
