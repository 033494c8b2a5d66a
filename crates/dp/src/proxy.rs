//! The data path: one accept loop per listener, and per connection a plan (which endpoint,
//! which TLS) followed by copying bytes both ways. Listener changes never drop live connections.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use meshzone_xds::decode::ListenerPlan;

use crate::runtime::Runtime;
use crate::stats::Stats;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
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
}

impl Listeners {
    pub fn new(stats: Arc<Stats>, drain: Arc<Drain>) -> Self {
        Listeners {
            running: BTreeMap::new(),
            stats,
            drain,
        }
    }

    /// Starts listeners that appeared, stops those that went away or moved.
    pub async fn reconcile(&mut self, runtime: &watch::Receiver<Arc<Runtime>>) {
        let desired: BTreeMap<String, SocketAddr> = runtime
            .borrow()
            .config
            .listeners
            .values()
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
                    ));
                    self.running.insert(name, (addr, task));
                }
                Err(e) => {
                    self.stats.inc(format!("listener.{name}.bind_errors"));
                    warn!(listener = name, %addr, error = %e, "cannot listen");
                }
            }
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
        tokio::spawn(async move {
            let _guard = guard;
            stats.inc(format!("listener.{name}.downstream_cx_total"));
            stats.inc(format!("listener.{name}.downstream_cx_active"));
            if let Err(reason) = handle(&name, conn, rt, stats.clone()).await {
                stats.inc(format!("listener.{name}.downstream_cx_refused"));
                debug!(listener = name, %peer, reason, "connection closed");
            }
            stats.dec(&format!("listener.{name}.downstream_cx_active"));
        });
    }
}

/// Runs one downstream connection to its end.
async fn handle(
    listener: &str,
    conn: TcpStream,
    rt: Arc<Runtime>,
    stats: Arc<Stats>,
) -> Result<(), String> {
    let plan = rt
        .listener(listener)
        .cloned()
        .ok_or_else(|| "listener was removed".to_string())?;
    let plaintext = plan.tls.is_none() || (plan.permissive && !starts_with_tls(&conn).await);
    if plaintext {
        if plan.tls.is_some() {
            stats.inc(format!("listener.{listener}.plaintext.cx_total"));
        }
        return carry(conn, &plan, rt, stats).await;
    }
    let tls = rt
        .downstream
        .get(listener)
        .ok_or_else(|| "TLS material has not arrived".to_string())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    let stream = acceptor.accept(conn).await.map_err(|e| {
        stats.inc(format!("listener.{listener}.ssl.handshake_error"));
        format!("TLS handshake: {e}")
    })?;
    let peer = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| crate::tls::peer_identity(c, &tls.peer));
    let Some(peer) = peer else {
        stats.inc(format!("listener.{listener}.rbac.denied"));
        return Err("peer identity is not allowed".into());
    };
    stats.inc(format!("listener.{listener}.peer.{peer}.cx_total"));
    carry(stream, &plan, rt, stats).await
}

/// Moves the connection's traffic: request by request for HTTP listeners, bytes otherwise.
async fn carry<D>(
    stream: D,
    plan: &ListenerPlan,
    rt: Arc<Runtime>,
    stats: Arc<Stats>,
) -> Result<(), String>
where
    D: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if plan.http {
        crate::http::serve(stream, plan.name.clone(), plan.cluster.clone(), rt, stats).await
    } else {
        forward(stream, &plan.cluster, &rt, &stats).await
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

/// Connects to an endpoint of `cluster` (TLS if the cluster says so) and copies bytes.
async fn forward<D>(
    mut downstream: D,
    cluster: &str,
    rt: &Runtime,
    stats: &Stats,
) -> Result<(), String>
where
    D: AsyncRead + AsyncWrite + Unpin,
{
    let candidates = rt.pick(cluster);
    if candidates.is_empty() {
        stats.inc(format!("cluster.{cluster}.upstream_cx_none_healthy"));
        return Err(format!("cluster {cluster} has no endpoints"));
    }
    for addr in candidates {
        let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            _ => {
                stats.inc(format!("cluster.{cluster}.upstream_cx_connect_fail"));
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        stats.inc(format!("cluster.{cluster}.upstream_cx_total"));
        stats.inc(format!("cluster.{cluster}.endpoint.{addr}.cx_total"));
        let copied = match rt.upstream.get(cluster) {
            None => {
                let mut tcp = tcp;
                tokio::io::copy_bidirectional_with_sizes(&mut downstream, &mut tcp, BUFFER, BUFFER)
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
                    Ok(s) => s,
                    Err(e) => {
                        stats.inc(format!("cluster.{cluster}.ssl.handshake_error"));
                        warn!(cluster, %addr, error = %e, "upstream TLS handshake failed");
                        continue;
                    }
                };
                tokio::io::copy_bidirectional_with_sizes(
                    &mut downstream,
                    &mut upstream,
                    BUFFER,
                    BUFFER,
                )
                .await
            }
        };
        if let Ok((up, down)) = copied {
            stats.add(format!("cluster.{cluster}.upstream_cx_tx_bytes_total"), up);
            stats.add(
                format!("cluster.{cluster}.upstream_cx_rx_bytes_total"),
                down,
            );
        }
        return Ok(());
    }
    Err(format!("no endpoint of cluster {cluster} could be reached"))
}
