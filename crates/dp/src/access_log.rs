//! MeshAccessLog in kuma-dp: each listener's [`AccessLogPlan`]s become [`Logger`]s (the
//! format parsed once by the decoder, a shared [`Sink`] per file or collector). The request
//! path only renders a line and offers it to the sink's bounded channel; a full channel drops
//! the line and counts it (`access_logs.dropped_lines`), so logging never blocks or slows
//! traffic. One writer task per sink appends to the file, or sends to the TCP collector,
//! reconnecting with backoff and keeping unsent lines while it is down (up to the channel's
//! capacity). A sink lives while some listener build uses it: rebuilt listeners share the same
//! writer; when the last user goes away the writer hands over what is queued and ends, or is
//! aborted after a grace period.

pub mod http;
pub mod render;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use meshzone_xds::decode::access_log::{AccessLogPlan, LogFormat, LogSink};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;
use tracing::{debug, warn};

pub use render::{Entry, RequestInfo};

use crate::stats::Stats;

/// Lines a sink holds before new ones are dropped.
pub const CAPACITY: usize = 4096;
/// The stat counting dropped lines.
pub const DROPPED: &str = "access_logs.dropped_lines";
const BACKOFF_START: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One file or collector and its writer task.
pub struct Sink {
    tx: mpsc::Sender<String>,
    /// Taken by `drop`.
    writer: Option<tokio::task::JoinHandle<()>>,
    stats: Arc<Stats>,
}

/// How long a writer may take to hand over what is queued once its last user went away.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

impl Drop for Sink {
    /// The channel closes with the sender: the writer hands over what is queued and ends. One
    /// that cannot (a collector that is down or does not read) is aborted after a grace period.
    fn drop(&mut self) {
        let Some(writer) = self.writer.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    let abort = writer.abort_handle();
                    if tokio::time::timeout(DRAIN_GRACE, writer).await.is_err() {
                        abort.abort();
                    }
                });
            }
            Err(_) => writer.abort(),
        }
    }
}

impl Sink {
    /// Offers a line; never waits.
    pub fn offer(&self, line: String) {
        if self.tx.try_send(line).is_err() {
            self.stats.inc(DROPPED);
        }
    }
}

/// The live sinks, so that every listener writing to one file shares its writer.
static SINKS: LazyLock<Mutex<HashMap<LogSink, Weak<Sink>>>> = LazyLock::new(Default::default);

fn sink(target: &LogSink, stats: &Arc<Stats>) -> Option<Arc<Sink>> {
    let mut sinks = SINKS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(live) = sinks.get(target).and_then(Weak::upgrade) {
        return Some(live);
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        warn!(?target, "no async runtime: access log not started");
        return None;
    };
    let (tx, rx) = mpsc::channel(CAPACITY);
    let writer = match target {
        LogSink::File(path) => {
            let (path, stats) = (path.clone(), stats.clone());
            runtime.spawn_blocking(move || write_file(&path, rx, &stats))
        }
        LogSink::Tcp(address) => runtime.spawn(send_tcp(address.clone(), rx, stats.clone())),
    };
    let sink = Arc::new(Sink {
        tx,
        writer: Some(writer),
        stats: stats.clone(),
    });
    sinks.retain(|_, w| w.strong_count() > 0);
    sinks.insert(target.clone(), Arc::downgrade(&sink));
    Some(sink)
}

/// One access log of a listener: its format and sink.
pub struct Logger {
    pub format: LogFormat,
    sink: Arc<Sink>,
}

impl Logger {
    pub fn write(&self, entry: &Entry) {
        self.sink.offer(render::render(&self.format, entry));
    }
}

/// The loggers of a listener's plans (what cannot start is logged and left out).
pub fn loggers(plans: &[AccessLogPlan], stats: &Arc<Stats>) -> Vec<Logger> {
    plans
        .iter()
        .filter_map(|p| {
            Some(Logger {
                format: p.format.clone(),
                sink: sink(&p.sink, stats)?,
            })
        })
        .collect()
}

/// Writes every logger's line for `entry`.
pub fn write_all(loggers: &[Logger], entry: &Entry) {
    for l in loggers {
        l.write(entry);
    }
}

/// Takes what is queued after `first`, up to a batch.
fn batch(first: String, rx: &mut mpsc::Receiver<String>) -> Vec<u8> {
    let mut out = first.into_bytes();
    while out.len() < 64 * 1024 {
        match rx.try_recv() {
            Ok(line) => out.extend_from_slice(line.as_bytes()),
            Err(_) => break,
        }
    }
    out
}

fn next_backoff(d: Duration) -> Duration {
    (d * 2).min(BACKOFF_MAX)
}

/// Appends batches to the file on a blocking thread of its own (no per-write hop to tokio's
/// blocking pool); it ends when the channel closes and is drained.
fn write_file(path: &str, mut rx: mpsc::Receiver<String>, stats: &Stats) {
    use std::io::Write as _;
    let mut backoff = BACKOFF_START;
    let mut file: Option<std::fs::File> = None;
    while let Some(first) = rx.blocking_recv() {
        let bytes = batch(first, &mut rx);
        loop {
            if file.is_none() {
                match std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                {
                    Ok(f) => file = Some(f),
                    Err(e) => {
                        warn!(path, error = %e, "cannot open the access log; retrying");
                        stats.inc("access_logs.file.reopen_failed");
                        std::thread::sleep(backoff);
                        backoff = next_backoff(backoff);
                        if rx.is_closed() && backoff == BACKOFF_MAX {
                            return;
                        }
                        continue;
                    }
                }
            }
            let Some(f) = file.as_mut() else { continue };
            match f.write_all(&bytes) {
                Ok(()) => {
                    backoff = BACKOFF_START;
                    stats.inc("access_logs.file.write_completed");
                    break;
                }
                Err(e) => {
                    warn!(path, error = %e, "cannot write the access log; reopening");
                    stats.inc("access_logs.file.write_failed");
                    file = None;
                    std::thread::sleep(backoff);
                    backoff = next_backoff(backoff);
                }
            }
        }
    }
}

async fn send_tcp(address: String, mut rx: mpsc::Receiver<String>, stats: Arc<Stats>) {
    let mut backoff = BACKOFF_START;
    let mut conn: Option<tokio::net::TcpStream> = None;
    while let Some(first) = rx.recv().await {
        let bytes = batch(first, &mut rx);
        // The batch is kept until a connection took it whole.
        loop {
            if conn.is_none() {
                match tokio::net::TcpStream::connect(&address).await {
                    Ok(c) => {
                        let _ = c.set_nodelay(true);
                        debug!(address, "access log collector connected");
                        conn = Some(c);
                    }
                    Err(e) => {
                        debug!(address, error = %e, "access log collector unreachable; retrying");
                        stats.inc("access_logs.tcp.connect_failed");
                        tokio::time::sleep(backoff).await;
                        backoff = next_backoff(backoff);
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            match c.write_all(&bytes).await {
                Ok(()) => {
                    backoff = BACKOFF_START;
                    break;
                }
                Err(e) => {
                    warn!(address, error = %e, "access log collector went away; reconnecting");
                    stats.inc("access_logs.tcp.write_failed");
                    conn = None;
                }
            }
        }
    }
}

/// A TCP connection being logged: its line is written when this is dropped (the connection
/// ended, or an update closed it), with the bytes counted on the downstream stream (two relaxed
/// adds per read or write) and the endpoint that took it.
pub struct TcpLog<'a> {
    loggers: &'a [Logger],
    entry: Option<Entry>,
    began: std::time::Instant,
    counts: Arc<ByteCounts>,
    upstream: std::sync::OnceLock<SocketAddr>,
}

impl<'a> TcpLog<'a> {
    pub fn start(
        loggers: &'a [Logger],
        cluster: &str,
        downstream: Downstream,
        sans: &[String],
    ) -> Self {
        let entry = (!loggers.is_empty()).then(|| Entry::starting(cluster, downstream, sans));
        TcpLog {
            loggers,
            entry,
            began: std::time::Instant::now(),
            counts: Arc::default(),
            upstream: std::sync::OnceLock::new(),
        }
    }

    pub fn counts(&self) -> Arc<ByteCounts> {
        self.counts.clone()
    }

    /// Where the forwarder records the endpoint that took the connection.
    pub fn upstream(&self) -> &std::sync::OnceLock<SocketAddr> {
        &self.upstream
    }

    /// The connection ended; `failed`: it was not carried (`UF` when no endpoint took it).
    pub fn finish(self, failed: bool) {
        let mut this = self;
        if failed
            && this.upstream.get().is_none()
            && let Some(e) = this.entry.as_mut()
        {
            e.response_flags = "UF";
        }
    }
}

impl Drop for TcpLog<'_> {
    fn drop(&mut self) {
        let Some(mut e) = self.entry.take() else {
            return;
        };
        e.duration = self.began.elapsed();
        e.bytes_received = self.counts.received.load(Ordering::Relaxed);
        e.bytes_sent = self.counts.sent.load(Ordering::Relaxed);
        e.upstream_host = self.upstream.get().copied();
        write_all(self.loggers, &e);
    }
}

/// Bytes read from and written to a stream (TCP entries' `BYTES_RECEIVED` / `BYTES_SENT`).
#[derive(Default)]
pub struct ByteCounts {
    pub received: AtomicU64,
    pub sent: AtomicU64,
}

/// A stream that counts its bytes into [`ByteCounts`].
pub struct Counted<S> {
    inner: S,
    counts: Arc<ByteCounts>,
}

impl<S> Counted<S> {
    pub fn new(inner: S, counts: Arc<ByteCounts>) -> Self {
        Counted { inner, counts }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        self.counts.received.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.counts.sent.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The addresses of a downstream connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Downstream {
    pub remote: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
}

#[cfg(test)]
mod tests;
