//! The data path: one accept loop per listener, and per connection a plan (which endpoint,
//! which TLS) followed by copying bytes both ways. Listener changes never drop live connections.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use meshzone_xds::decode::{ListenerPlan, ListenerTimeouts};

use crate::rbac::{self, Registry, RequestGuard};

mod replay;
use crate::runtime::Runtime;
use crate::stats::Stats;

const CONNECT_TIMEOUT: Duration = meshzone_xds::decode::timeouts::ENVOY_CONNECT;
/// Copy buffer per direction: large enough for bulk transfers to move in few syscalls.
const BUFFER: usize = 64 * 1024;

/// Live connections, so a shutdown can wait for them to finish.
#[derive(Default)]
pub struct Drain {
    active: AtomicUsize,
    idle: Notify,
}

impl Drain {
    fn enter(self: &Arc<Self>) -> DrainGuard {
        self.active.fetch_add(1, Ordering::SeqCst);
        DrainGuard(self.clone())
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Waits until no connection is left.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

struct DrainGuard(Arc<Drain>);

impl Drop for DrainGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Keeps one accept loop per configured listener.
pub struct Listeners {
    running: BTreeMap<String, (SocketAddr, JoinHandle<()>)>,
    stats: Arc<Stats>,
    drain: Arc<Drain>,
    /// Live inbound connections and their peers, re-judged on every update.
    registry: Arc<Registry>,
}

impl Listeners {
    pub fn new(stats: Arc<Stats>, drain: Arc<Drain>) -> Self {
        Listeners {
            running: BTreeMap::new(),
            stats,
            drain,
            registry: Arc::default(),
        }
    }

    /// Starts listeners that appeared, stops those that went away or moved.
    pub async fn reconcile(&mut self, runtime: &watch::Receiver<Arc<Runtime>>) {
        let desired: BTreeMap<String, SocketAddr> = runtime
            .borrow()
            .config
            .listeners
            .values()
            .filter(|l| l.bind)
            .map(|l| (l.name.clone(), l.address))
            .collect();
        self.running.retain(|name, (addr, task)| {
            let keep = desired.get(name) == Some(addr);
            if !keep {
                task.abort();
            }
            keep
        });
        for (name, addr) in desired {
            if self.running.contains_key(&name) {
                continue;
            }
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    let task = tokio::spawn(accept_loop(
                        name.clone(),
                        listener,
                        runtime.clone(),
                        self.stats.clone(),
                        self.drain.clone(),
                        self.registry.clone(),
                    ));
                    self.running.insert(name, (addr, task));
                }
                Err(e) => {
                    self.stats.inc(format!("listener.{name}.bind_errors"));
                    warn!(listener = name, %addr, error = %e, "cannot listen");
                }
            }
        }
        // Permissions may have changed: close the live connections they now deny.
        let config = &runtime.borrow().config;
        let closed = self.registry.reevaluate(config, &self.stats);
        if closed > 0 {
            debug!(closed, "closed connections the new permissions deny");
        }
    }

    /// Stops accepting new connections everywhere.
    pub fn close_all(&mut self) {
        for (_, (_, task)) in std::mem::take(&mut self.running) {
            task.abort();
        }
    }
}

async fn accept_loop(
    name: String,
    listener: TcpListener,
    runtime: watch::Receiver<Arc<Runtime>>,
    stats: Arc<Stats>,
    drain: Arc<Drain>,
    registry: Arc<Registry>,
) {
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = conn.set_nodelay(true);
        let rt = runtime.borrow().clone();
        let guard = drain.enter();
        let (name, stats) = (name.clone(), stats.clone());
        let access = Access {
            registry: registry.clone(),
            latest: runtime.clone(),
            peer: peer.ip(),
            downstream: crate::access_log::Downstream {
                remote: Some(peer),
                local: conn.local_addr().ok(),
            },
        };
        let counted = match rt.listeners.get(&name) {
            Some(l) => l.stats(&stats).0.clone(),
            None => stats.listener(&name),
        };
        tokio::spawn(async move {
            let _guard = guard;
            counted.downstream_cx_total.inc();
            let _active = counted.downstream_cx_active.track();
            if let Err(reason) = handle(&name, conn, rt, stats.clone(), access).await {
                stats.inc(format!("listener.{name}.downstream_cx_refused"));
                debug!(listener = name, %peer, reason, "connection closed");
            }
        });
    }
}

/// What a connection needs for its permissions: the registry of live connections and the
/// newest configuration.
struct Access {
    registry: Arc<Registry>,
    latest: watch::Receiver<Arc<Runtime>>,
    /// The client's address (source-IP hashing).
    peer: std::net::IpAddr,
    /// The connection's addresses (access logs).
    downstream: crate::access_log::Downstream,
}

/// Runs one downstream connection to its end.
async fn handle(
    listener: &str,
    conn: TcpStream,
    rt: Arc<Runtime>,
    stats: Arc<Stats>,
    access: Access,
) -> Result<(), String> {
    let mut plan = rt
        .listener(listener)
        .cloned()
        .ok_or_else(|| "listener was removed".to_string())?;
    if plan.use_original_dst {
        let original = original_destination(&conn)
            .ok_or("no original destination: the connection was not redirected by iptables")?;
        if conn.local_addr().ok() == Some(original) {
            return Err("a connection straight to the redirect port is not proxied".into());
        }
        match rt
            .config
            .listeners
            .values()
            .find(|l| !l.bind && l.address == original)
        {
            Some(target) => {
                plan = target.clone();
                match rt.listeners.get(&plan.name) {
                    Some(l) => l.stats(&stats).0.downstream_cx_total.inc(),
                    None => stats.listener(&plan.name).downstream_cx_total.inc(),
                }
            }
            None => return pass_through(conn, original, &plan.cluster, &rt, &stats).await,
        }
    }
    let listener = plan.name.as_str();
    if !plan.sni_routes.is_empty() || !plan.sni_terminated.is_empty() {
        return route_by_sni(listener, conn, &plan, rt, stats, access).await;
    }
    let plaintext = plan.tls.is_none() || (plan.permissive && !starts_with_tls(&conn).await);
    if plaintext {
        if plan.tls.is_some() {
            stats.inc(format!("listener.{listener}.plaintext.cx_total"));
        }
        // No certificate, no SANs: only a principal that needs no identity admits it.
        return permitted(conn, &plan, Vec::new(), rt, stats, access).await;
    }
    let (stream, sans) = accept_mtls(listener, conn, &rt, &stats).await?;
    permitted(stream, &plan, sans, rt, stats, access).await
}

/// Terminates the mesh's mTLS of `listener` (an inbound, or a zone egress's terminating
/// chain): the peer must show a mesh identity the listener accepts. Returns the stream and the
/// peer's URI SANs.
async fn accept_mtls<S>(
    listener: &str,
    conn: S,
    rt: &Runtime,
    stats: &Stats,
) -> Result<(tokio_rustls::server::TlsStream<S>, Vec<String>), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let tls = rt
        .downstream
        .get(listener)
        .ok_or_else(|| "TLS material has not arrived".to_string())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    let stream = acceptor.accept(conn).await.map_err(|e| {
        stats.inc(format!("listener.{listener}.ssl.handshake_error"));
        format!("TLS handshake: {e}")
    })?;
    let cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first());
    let peer = cert.and_then(|c| crate::tls::peer_identity(c, &tls.peer));
    let Some(peer) = peer else {
        stats.inc(format!("listener.{listener}.rbac.denied"));
        return Err("peer identity is not allowed".into());
    };
    stats.inc(format!("listener.{listener}.peer.{peer}.cx_total"));
    let sans = cert
        .map(|c| rbac::peer_sans(c.as_ref()))
        .unwrap_or_default();
    Ok((stream, sans))
}

/// Judges a connection by the listener's permissions before anything reaches the
/// application, then carries it until it ends or an update denies its client. TCP is judged
/// here, once; HTTP per request (the connection itself is admitted).
async fn permitted<D>(
    stream: D,
    plan: &ListenerPlan,
    sans: Vec<String>,
    rt: Arc<Runtime>,
    stats: Arc<Stats>,
    access: Access,
) -> Result<(), String>
where
    D: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (registration, verdict, current) =
        access
            .registry
            .admit(&plan.name, sans, plan.rbac.as_ref(), &access.latest);
    if !plan.http {
        rbac::count(&stats, current.as_ref(), verdict);
        if !verdict.allowed {
            return Err(rbac::DENIED_BODY.into());
        }
    }
    // MeshRateLimit's connection budget, after the network RBAC as in Envoy's filter order.
    if let (Some(limit), Some(bucket)) = (
        &plan.connection_limit,
        rt.listeners
            .get(&plan.name)
            .and_then(|l| l.limits.connections.as_ref()),
    ) && !bucket.take()
    {
        stats.inc(format!(
            "local_ratelimit.{}.rate_limited",
            limit.stat_prefix
        ));
        return Err("closed: over the connection rate limit".into());
    }
    let peer = access.peer;
    let guard = RequestGuard {
        listener: plan.name.clone(),
        sans: registration.sans.clone(),
        started: plan.rbac.clone(),
        latest: access.latest,
        peer: Some(peer),
        downstream: access.downstream,
    };
    // Request by request for HTTP listeners, bytes otherwise.
    let carried = async {
        if plan.http {
            crate::http::serve(stream, plan.name.clone(), rt, stats, guard).await
        } else {
            // A TCP route's split picks the cluster once per connection.
            let cluster = rt
                .listeners
                .get(&plan.name)
                .map_or(plan.cluster.as_str(), |l| l.tcp_cluster())
                .to_string();
            // A hashing cluster picks by the client's address when the listener says so.
            let hash = plan
                .hash_source_ip
                .then(|| crate::balancer::fnv64(peer.to_string().as_bytes()));
            let loggers = rt
                .listeners
                .get(&plan.name)
                .map(|l| l.access_logs(&stats))
                .unwrap_or_default();
            // Written when the connection ends, or when an update closes it.
            let log = crate::access_log::TcpLog::start(
                loggers,
                &cluster,
                access.downstream,
                &registration.sans,
            );
            let counted = crate::access_log::Counted::new(stream, log.counts());
            let result = forward(
                counted,
                &cluster,
                &rt,
                &stats,
                &[],
                &plan.timeouts,
                hash,
                log.upstream(),
            )
            .await;
            log.finish(result.is_err());
            result
        }
    };
    tokio::select! {
        carried = carried => carried,
        () = registration.closed() => Err("closed: an update denies this client".into()),
    }
}

/// The destination a connection had before iptables redirected it (`SO_ORIGINAL_DST`).
fn original_destination(conn: &TcpStream) -> Option<SocketAddr> {
    let socket = socket2::SockRef::from(conn);
    let original = if conn.local_addr().ok()?.is_ipv6() {
        socket.original_dst_v6()
    } else {
        socket.original_dst_v4()
    };
    original.ok()?.as_socket()
}

/// A redirected connection to no service of the mesh: carried to where it was going, when the
/// redirect listener's cluster is the passthrough (ORIGINAL_DST) cluster.
async fn pass_through(
    mut conn: TcpStream,
    original: SocketAddr,
    cluster: &str,
    rt: &Runtime,
    stats: &Stats,
) -> Result<(), String> {
    if !rt
        .config
        .clusters
        .get(cluster)
        .is_some_and(|c| c.original_dst)
    {
        return forward(
            conn,
            cluster,
            rt,
            stats,
            &[],
            &EVERY_ENDPOINT,
            None,
            &Default::default(),
        )
        .await;
    }
    // The passthrough cluster has no runtime of its own (no endpoints): resolved here, once
    // per redirected connection to outside the mesh.
    let counted = stats.cluster(cluster);
    counted.upstream_cx_total.inc();
    let mut upstream =
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(original)).await {
            Ok(Ok(s)) => s,
            _ => {
                counted.upstream_cx_connect_fail.inc();
                return Err(format!("cannot reach {original}"));
            }
        };
    let _ = upstream.set_nodelay(true);
    let _ =
        tokio::io::copy_bidirectional_with_sizes(&mut conn, &mut upstream, BUFFER, BUFFER).await;
    Ok(())
}

/// A zone proxy's connection: read the TLS ClientHello (without terminating TLS), pick the
/// cluster its SNI names, and pass everything, the hello included, through to an endpoint.
async fn route_by_sni(
    listener: &str,
    mut conn: TcpStream,
    plan: &ListenerPlan,
    rt: Arc<Runtime>,
    stats: Arc<Stats>,
    access: Access,
) -> Result<(), String> {
    let no_match = || stats.inc(format!("listener.{listener}.no_filter_chain_match"));
    let (hello, sni) =
        match tokio::time::timeout(Duration::from_secs(10), read_client_hello(&mut conn)).await {
            Ok(Ok(found)) => found,
            Ok(Err(reason)) => {
                no_match();
                return Err(reason);
            }
            Err(_) => {
                no_match();
                return Err("no TLS ClientHello within 10s".into());
            }
        };
    // A zone egress's ExternalService: terminate the mesh's mTLS, judge the client, then on
    // to the external address.
    if let Some(chain) = sni.as_deref().and_then(|s| plan.sni_terminated.get(s)) {
        let replayed = replay::Replay::new(hello, conn);
        let (stream, sans) = accept_mtls(&chain.name, replayed, &rt, &stats).await?;
        return permitted(stream, chain, sans, rt, stats, access).await;
    }
    let Some(cluster) = sni.as_deref().and_then(|s| plan.sni_routes.get(s)) else {
        no_match();
        return Err(format!("no route for SNI {sni:?}"));
    };
    forward(
        conn,
        cluster,
        &rt,
        &stats,
        &hello,
        &EVERY_ENDPOINT,
        None,
        &Default::default(),
    )
    .await
}

/// Zone proxies and the passthrough keep trying every endpoint when connecting fails (their
/// plans carry no connect attempts), with Envoy's default idle timeout.
static EVERY_ENDPOINT: std::sync::LazyLock<ListenerTimeouts> =
    std::sync::LazyLock::new(|| ListenerTimeouts {
        max_connect_attempts: u32::MAX,
        ..ListenerTimeouts::default()
    });

/// Reads until a whole TLS ClientHello has arrived; returns the bytes read and its SNI.
async fn read_client_hello(conn: &mut TcpStream) -> Result<(Vec<u8>, Option<String>), String> {
    use meshzone_tls_client::client_hello::{ClientHelloReader, Hello};
    let mut reader = ClientHelloReader::default();
    let mut chunk = vec![0u8; 4096];
    loop {
        let n = conn
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the ClientHello: {e}"))?;
        if n == 0 {
            return Err("closed before a TLS ClientHello".into());
        }
        if let Hello::Complete(sni) = reader.push(&chunk[..n])? {
            return Ok((reader.into_bytes(), sni));
        }
    }
}

/// Whether the client opens with a TLS handshake record (content type 22), without consuming it.
async fn starts_with_tls(conn: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), conn.peek(&mut first)).await,
        Ok(Ok(1)) if first[0] == 0x16
    )
}

/// Connects to an endpoint of `cluster` (TLS if the cluster says so), sends `preface` (bytes
/// already read from the downstream), and copies bytes both ways. An endpoint that cannot be
/// reached is ejected for a while and the next one is tried. The endpoint that took the
/// connection is left in `upstream`.
#[allow(clippy::too_many_arguments)]
async fn forward<D>(
    mut downstream: D,
    cluster: &str,
    rt: &Runtime,
    stats: &Stats,
    preface: &[u8],
    limits: &ListenerTimeouts,
    hash: Option<u64>,
    upstream: &std::sync::OnceLock<SocketAddr>,
) -> Result<(), String>
where
    D: AsyncRead + AsyncWrite + Unpin,
{
    let Some(c) = rt.cluster(cluster) else {
        return Err(format!("no cluster {cluster}"));
    };
    let counted = c.stats(stats);
    let upstream_tls = c
        .tls
        .as_ref()
        .map_err(|e| format!("cluster {cluster}: {e}"))?;
    let candidates = c.pick_with(hash.filter(|_| c.balancer.hashes()));
    if candidates.is_empty() {
        stats.inc(format!("cluster.{cluster}.upstream_cx_none_healthy"));
        return Err(format!("cluster {cluster} has no healthy endpoint"));
    }
    // Over max_connections the connection is closed, as Envoy's tcp_proxy does.
    let Ok(_slot) = c.limits.connection() else {
        stats.inc(format!("cluster.{cluster}.upstream_cx_overflow"));
        return Err(format!("cluster {cluster}: max_connections reached"));
    };
    // The listener's connect attempts (MeshRetry `tcp.maxConnectAttempt`), each to the next
    // endpoint; its idle timeout (MeshTimeout `idleTimeout`).
    let connect_timeout = c.plan().timeouts.connect;
    let attempts = usize::try_from(limits.max_connect_attempts.max(1)).unwrap_or(usize::MAX);
    for (attempt, addr) in candidates.into_iter().take(attempts).enumerate() {
        if attempt > 0 {
            stats.inc(format!(
                "cluster.{cluster}.upstream_cx_connect_attempts_exceeded_retry"
            ));
        }
        let connecting = std::time::Instant::now();
        let tcp = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            _ => {
                counted.upstream_cx_connect_fail.inc();
                for (a, why) in c.record(addr, crate::runtime::Outcome::LocalFailure) {
                    crate::http::ejected(stats, cluster, a, why);
                }
                continue;
            }
        };
        c.record(addr, crate::runtime::Outcome::Connected { last: true });
        let _ = upstream.set(addr);
        // A connection counts as one request in flight (least request).
        let _in_flight = c.balancer.begin(addr);
        let _ = tcp.set_nodelay(true);
        counted
            .upstream_cx_connect_ms
            .observe_ms(connecting.elapsed());
        counted.upstream_cx_total.inc();
        let _active = counted.upstream_cx_active.track();
        stats.inc(format!("cluster.{cluster}.endpoint.{addr}.cx_total"));
        let copied = match upstream_tls {
            None => {
                let mut tcp = tcp;
                if !preface.is_empty() {
                    tcp.write_all(preface)
                        .await
                        .map_err(|e| format!("sending to {addr}: {e}"))?;
                }
                crate::idle::copy_until_idle(&mut downstream, &mut tcp, limits.tcp_idle, BUFFER)
                    .await
            }
            Some(tls) => {
                let name = tls
                    .sni
                    .clone()
                    .and_then(|s| ServerName::try_from(s).ok())
                    .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
                let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
                let mut upstream = match connector.connect(name, tcp).await {
                    Ok(s) if preface.is_empty() => s,
                    Ok(mut s) => {
                        s.write_all(preface)
                            .await
                            .map_err(|e| format!("sending to {addr}: {e}"))?;
                        s
                    }
                    Err(e) => {
                        stats.inc(format!("cluster.{cluster}.ssl.handshake_error"));
                        warn!(cluster, %addr, error = %e, "upstream TLS handshake failed");
                        continue;
                    }
                };
                crate::idle::copy_until_idle(
                    &mut downstream,
                    &mut upstream,
                    limits.tcp_idle,
                    BUFFER,
                )
                .await
            }
        };
        if let Ok(None) = copied {
            stats.inc(format!("cluster.{cluster}.upstream_cx_idle_timeout"));
        }
        if let Ok(Some((up, down))) = copied {
            counted.upstream_cx_tx_bytes_total.add(up);
            counted.upstream_cx_rx_bytes_total.add(down);
        }
        return Ok(());
    }
    Err(format!("no endpoint of cluster {cluster} could be reached"))
}

#[cfg(test)]
mod resilience_tests;
