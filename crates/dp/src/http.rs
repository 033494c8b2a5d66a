//! HTTP-aware proxying for services tagged `kuma.io/protocol: http | http2 | grpc`: requests are
//! served with hyper (HTTP/1.1 or HTTP/2, detected), balanced one by one across the cluster's
//! endpoints over pooled upstream connections (mTLS when the cluster says so), and counted by
//! response class.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONNECTION, HeaderName, TRANSFER_ENCODING, UPGRADE};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::runtime::Runtime;
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

/// Serves one downstream connection as HTTP until it closes.
pub async fn serve<S>(
    stream: S,
    listener: String,
    cluster: String,
    rt: Arc<Runtime>,
    stats: Arc<Stats>,
    guard: crate::rbac::RequestGuard,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (listener, cluster, rt, stats) =
            (listener.clone(), cluster.clone(), rt.clone(), stats.clone());
        // Judged by the newest permissions, whenever the connection was opened.
        let allowed = guard.allows(&stats);
        async move {
            let resp = if allowed {
                forward(req, &cluster, &rt).await
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

async fn forward(req: Request<Incoming>, cluster: &str, rt: &Runtime) -> Response<Body> {
    let Some(client) = rt.http_clients.get(cluster) else {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "no such cluster\n");
    };
    let candidates = rt.pick(cluster);
    if candidates.is_empty() {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n");
    }
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    for h in HOP_BY_HOP {
        parts.headers.remove(h);
    }
    parts.headers.remove("keep-alive");
    let version = if rt.http2(cluster) {
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
    let mut body = Some(body.map_err(Into::into).boxed());
    let mut last_refusal = None;
    for endpoint in candidates.into_iter().take(attempts) {
        let Ok(uri) = format!("http://{endpoint}{path}").parse::<Uri>() else {
            return error_response(StatusCode::BAD_REQUEST, "bad request path\n");
        };
        let mut request = Request::new(body.take().unwrap_or_else(|| {
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed()
        }));
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = version;
        *request.headers_mut() = parts.headers.clone();
        match client.request(request).await {
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
                rt.health.restore(endpoint);
                return resp.map(|b| b.map_err(Into::into).boxed());
            }
            Err(e) if e.is_connect() => {
                rt.health.eject(endpoint);
                tracing::debug!(cluster, %endpoint, error = %e, "cannot connect; trying the next endpoint");
            }
            Err(e) => {
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
