//! One probe of one endpoint, on a fresh connection that is closed after it: TCP connect within
//! the check's timeout (the whole probe shares it), the cluster's mTLS with its SNI when it has
//! TLS, then the checker: HTTP (a request of the path, the status against the ranges, HTTP/1.1
//! or prior-knowledge HTTP/2), TCP (send, then read until every receive payload was seen in
//! order) or gRPC (`grpc.health.v1.Health/Check` over HTTP/2, SERVING passes).

use std::net::SocketAddr;

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshzone_xds::decode::CheckerPlan;
use meshzone_xds::decode::health_checks::{GrpcCheckPlan, HttpCheckPlan, TcpCheckPlan};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use super::{Target, Verdict};

/// What a TCP probe reads at most while looking for its payloads.
const MAX_TCP_READ: usize = 64 * 1024;

/// The user agent of Envoy's health checker, which backends may recognise.
const USER_AGENT: &str = "Envoy/HC";

const GRPC_PATH: &str = "/grpc.health.v1.Health/Check";

/// `grpc.health.v1.HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Probes `endpoint`; no verdict within the check's timeout is a network failure.
pub(super) async fn probe(target: &Target, endpoint: SocketAddr) -> Verdict {
    match tokio::time::timeout(target.plan.timeout, run(target, endpoint)).await {
        Ok(v) => v,
        Err(_) => {
            debug!(cluster = target.cluster, %endpoint, "health check timed out");
            Verdict::NetworkFailure
        }
    }
}

async fn run(target: &Target, endpoint: SocketAddr) -> Verdict {
    let io = match connect(target, endpoint).await {
        Ok(io) => io,
        Err(e) => {
            debug!(cluster = target.cluster, %endpoint, error = %e, "health check connect failed");
            return Verdict::NetworkFailure;
        }
    };
    match &target.plan.checker {
        CheckerPlan::Tcp(t) => tcp(io, t).await,
        CheckerPlan::Http(h) => http(io, h, &target.cluster).await,
        CheckerPlan::Grpc(g) => grpc(io, g, &target.cluster).await,
    }
}

async fn connect(target: &Target, endpoint: SocketAddr) -> std::io::Result<Box<dyn Io>> {
    let tcp = TcpStream::connect(endpoint).await?;
    tcp.set_nodelay(true)?;
    let Some((config, sni)) = &target.tls else {
        return Ok(Box::new(tcp));
    };
    let name = sni
        .clone()
        .and_then(|s| ServerName::try_from(s).ok())
        .unwrap_or_else(|| ServerName::IpAddress(endpoint.ip().into()));
    let tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await?;
    Ok(Box::new(tls))
}

/// Whether every segment is found in `buf`, each after the previous one (Envoy's fuzzy
/// payload match: in order, not necessarily contiguous).
pub fn payload_matches(segments: &[Vec<u8>], buf: &[u8]) -> bool {
    let mut start = 0;
    for seg in segments.iter().filter(|s| !s.is_empty()) {
        let Some(at) = buf[start..]
            .windows(seg.len())
            .position(|w| w == seg.as_slice())
        else {
            return false;
        };
        start += at + seg.len();
    }
    true
}

async fn tcp(mut io: Box<dyn Io>, plan: &TcpCheckPlan) -> Verdict {
    if !plan.send.is_empty() && io.write_all(&plan.send).await.is_err() {
        return Verdict::NetworkFailure;
    }
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !payload_matches(&plan.receive, &got) {
        if got.len() > MAX_TCP_READ {
            return Verdict::Failure;
        }
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return Verdict::NetworkFailure,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    let _ = io.shutdown().await;
    Verdict::Pass
}

/// The verdict of an HTTP status: expected passes, retriable counts, anything else fails.
pub fn status_verdict(plan: &HttpCheckPlan, status: u16) -> Verdict {
    let within = |ranges: &[(u16, u16)]| ranges.iter().any(|(s, e)| (*s..*e).contains(&status));
    if within(&plan.expected_statuses) {
        Verdict::Pass
    } else if within(&plan.retriable_statuses) {
        Verdict::RetriableFailure
    } else {
        Verdict::Failure
    }
}

/// The probe request of an HTTP check of `cluster`.
pub fn http_request(plan: &HttpCheckPlan, cluster: &str) -> Result<Request<Empty<Bytes>>, String> {
    let host = plan.host.as_deref().unwrap_or(cluster);
    let uri = if plan.http2 {
        format!("http://{host}{}", plan.path)
    } else {
        plan.path.clone()
    };
    let method = hyper::Method::from_bytes(plan.method.as_bytes()).map_err(|e| e.to_string())?;
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(hyper::header::USER_AGENT, USER_AGENT);
    if !plan.http2 {
        req = req
            .header(hyper::header::HOST, host)
            .header(hyper::header::CONNECTION, "close");
    }
    let mut req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    crate::routes::modify_headers(&plan.headers, req.headers_mut());
    Ok(req)
}

/// Keeps a connection's task running for as long as the probe lasts.
struct ConnectionTask(tokio::task::JoinHandle<()>);

impl Drop for ConnectionTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends one request over a new HTTP/1.1 or HTTP/2 connection on `io`; the connection's task
/// lives as long as the returned guard.
async fn exchange<B>(
    io: Box<dyn Io>,
    http2: bool,
    req: Request<B>,
) -> Result<(Response<Incoming>, ConnectionTask), hyper::Error>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = TokioIo::new(io);
    if http2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        let task = ConnectionTask(tokio::spawn(async move {
            let _ = conn.await;
        }));
        Ok((sender.send_request(req).await?, task))
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        let task = ConnectionTask(tokio::spawn(async move {
            let _ = conn.await;
        }));
        Ok((sender.send_request(req).await?, task))
    }
}

async fn http(io: Box<dyn Io>, plan: &HttpCheckPlan, cluster: &str) -> Verdict {
    let req = match http_request(plan, cluster) {
        Ok(r) => r,
        Err(e) => {
            debug!(cluster, error = %e, "health check request cannot be built");
            return Verdict::Failure;
        }
    };
    match exchange(io, plan.http2, req).await {
        Ok((resp, _conn)) => status_verdict(plan, resp.status().as_u16()),
        Err(e) => {
            debug!(cluster, error = %e, "health check request failed");
            Verdict::NetworkFailure
        }
    }
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// A gRPC message frame of `HealthCheckRequest { service }`.
pub fn grpc_request_frame(service: &str) -> Vec<u8> {
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a); // field 1, length-delimited
        push_varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    frame
}

/// The `status` of the first `HealthCheckResponse` frame in a gRPC body (0, UNKNOWN, when
/// unset); none when the body is not one uncompressed frame.
pub fn grpc_response_status(body: &[u8]) -> Option<u64> {
    let (&[compressed, a, b, c, d], rest) = body.split_first_chunk::<5>()?;
    if compressed != 0 {
        return None;
    }
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    let mut msg = rest.get(..len)?;
    let mut status = 0;
    while !msg.is_empty() {
        let key = read_varint(&mut msg)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = read_varint(&mut msg)?,
            (_, 0) => {
                read_varint(&mut msg)?;
            }
            (_, 1) => msg = msg.get(8..)?,
            (_, 2) => {
                let n = usize::try_from(read_varint(&mut msg)?).ok()?;
                msg = msg.get(n..)?;
            }
            (_, 5) => msg = msg.get(4..)?,
            _ => return None,
        }
    }
    Some(status)
}

async fn grpc(io: Box<dyn Io>, plan: &GrpcCheckPlan, cluster: &str) -> Verdict {
    let authority = plan.authority.as_deref().unwrap_or(cluster);
    let req = Request::builder()
        .method(hyper::Method::POST)
        .uri(format!("http://{authority}{GRPC_PATH}"))
        .header(hyper::header::CONTENT_TYPE, "application/grpc")
        .header(hyper::header::TE, "trailers")
        .header(hyper::header::USER_AGENT, USER_AGENT)
        .body(Full::new(Bytes::from(grpc_request_frame(
            &plan.service_name,
        ))));
    let mut req = match req {
        Ok(r) => r,
        Err(e) => {
            debug!(cluster, error = %e, "gRPC health check request cannot be built");
            return Verdict::Failure;
        }
    };
    crate::routes::modify_headers(&plan.metadata, req.headers_mut());
    let (resp, _conn) = match exchange(io, true, req).await {
        Ok(r) => r,
        Err(e) => {
            debug!(cluster, error = %e, "gRPC health check failed");
            return Verdict::NetworkFailure;
        }
    };
    if resp.status() != hyper::StatusCode::OK {
        return Verdict::Failure;
    }
    let head_status = resp.headers().get("grpc-status").cloned();
    let collected = match resp.into_body().collect().await {
        Ok(c) => c,
        Err(_) => return Verdict::NetworkFailure,
    };
    let grpc_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status").cloned())
        .or(head_status);
    if grpc_status.as_ref().map(|s| s.as_bytes()) != Some(b"0") {
        return Verdict::Failure;
    }
    match grpc_response_status(&collected.to_bytes()) {
        Some(SERVING) => Verdict::Pass,
        _ => Verdict::Failure,
    }
}
