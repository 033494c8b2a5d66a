//! Sending spans to the collector: one exporter per collector cluster, kept across updates
//! unless its provider or cluster changed. The request path only `try_send`s into a bounded
//! queue (a full queue drops the span and counts it; it never waits); a task owned by the
//! exporter (aborted when it is dropped) sends batches — when [`MAX_BATCH`] spans are waiting
//! or [`FLUSH_INTERVAL`] after the first — to an endpoint of the cluster: Zipkin v2 JSON over
//! HTTP with the cluster's pooled client, or OTLP/gRPC `TraceService/Export` with tonic.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request};
use meshzone_xds::decode::tracing::ProviderPlan;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tracing::{debug, warn};

use super::report::{otlp_request, zipkin_json};
use super::span::FinishedSpan;
use crate::runtime::ClusterRuntime;

/// Spans waiting to be sent; more are dropped.
pub const QUEUE: usize = 4096;
pub const MAX_BATCH: usize = 256;
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(500);
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Envoy-named counters of one provider (`tracing.zipkin.*`, `tracing.opentelemetry.*`), kept
/// across exporter rebuilds.
#[derive(Debug, Default)]
pub struct Counters {
    pub spans_sent: AtomicU64,
    pub reports_sent: AtomicU64,
    pub reports_failed: AtomicU64,
    /// Spans the full queue refused (kuma-dp's own).
    pub spans_dropped: AtomicU64,
}

/// The counters of both providers.
#[derive(Debug, Default)]
pub struct TraceCounters {
    pub zipkin: Counters,
    pub opentelemetry: Counters,
}

impl TraceCounters {
    pub fn of(&self, provider: &ProviderPlan) -> &Counters {
        match provider {
            ProviderPlan::Zipkin { .. } => &self.zipkin,
            ProviderPlan::OpenTelemetry { .. } => &self.opentelemetry,
        }
    }

    /// `(dotted name, value)` of every counter, for the admin's `/stats`.
    pub fn stats(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for (provider, c) in [
            ("zipkin", &self.zipkin),
            ("opentelemetry", &self.opentelemetry),
        ] {
            for (name, v) in [
                ("spans_sent", &c.spans_sent),
                ("reports_sent", &c.reports_sent),
                ("reports_failed", &c.reports_failed),
                ("spans_dropped", &c.spans_dropped),
            ] {
                out.push((
                    format!("tracing.{provider}.{name}"),
                    v.load(Ordering::Relaxed),
                ));
            }
        }
        out
    }
}

/// What an exporter was built from: equal keys keep the running exporter.
#[derive(Clone)]
pub struct ExporterKey {
    pub provider: ProviderPlan,
    pub service: String,
    pub cluster: Arc<ClusterRuntime>,
}

impl std::fmt::Debug for ExporterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExporterKey")
            .field("provider", &self.provider)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl PartialEq for ExporterKey {
    fn eq(&self, other: &Self) -> bool {
        self.provider == other.provider
            && self.service == other.service
            && Arc::ptr_eq(&self.cluster, &other.cluster)
    }
}

#[derive(Debug)]
pub struct Exporter {
    pub key: ExporterKey,
    tx: mpsc::Sender<FinishedSpan>,
    counters: Arc<TraceCounters>,
    task: JoinHandle<()>,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Exporter {
    /// Starts the exporter's task (needs a Tokio runtime).
    pub fn spawn(key: ExporterKey, counters: Arc<TraceCounters>) -> Exporter {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(rx, key.clone(), counters.clone()));
        Exporter {
            key,
            tx,
            counters,
            task,
        }
    }

    /// Queues a span; never waits (a full queue drops it and counts the drop).
    pub fn record(&self, span: FinishedSpan) {
        if self.tx.try_send(span).is_err() {
            self.counters
                .of(&self.key.provider)
                .spans_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn run(mut rx: mpsc::Receiver<FinishedSpan>, key: ExporterKey, counters: Arc<TraceCounters>) {
    let mut sender = Sender {
        key,
        otlp: BTreeMap::new(),
    };
    let counters = counters.of(&sender.key.provider);
    loop {
        let Some(first) = rx.recv().await else { return };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + FLUSH_INTERVAL;
        let mut open = true;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) => {
                    open = false;
                    break;
                }
                Err(_) => break,
            }
        }
        match sender.send(&batch).await {
            Ok(()) => {
                counters.reports_sent.fetch_add(1, Ordering::Relaxed);
                counters
                    .spans_sent
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                debug!(
                    spans = batch.len(),
                    cluster = sender.key.provider.cluster(),
                    "spans sent"
                );
            }
            Err(e) => {
                counters.reports_failed.fetch_add(1, Ordering::Relaxed);
                warn!(
                    spans = batch.len(),
                    cluster = sender.key.provider.cluster(),
                    "spans not sent: {e}"
                );
            }
        }
        if !open {
            return;
        }
    }
}

struct Sender {
    key: ExporterKey,
    /// One lazily connected channel per collector address.
    otlp: BTreeMap<SocketAddr, TraceServiceClient<Channel>>,
}

type Body = http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

impl Sender {
    async fn send(&mut self, batch: &[FinishedSpan]) -> Result<(), String> {
        let cluster = &self.key.cluster;
        let Some(addr) = cluster.pick_with(None).first().copied() else {
            return Err(format!(
                "cluster {} has no endpoint",
                self.key.provider.cluster()
            ));
        };
        let service = self.key.service.clone();
        match &self.key.provider {
            ProviderPlan::Zipkin { path, hostname, .. } => {
                let body: Body = Full::new(Bytes::from(zipkin_json(batch, &service)))
                    .map_err(|never| match never {})
                    .boxed();
                let host = if hostname.is_empty() {
                    self.key.provider.cluster()
                } else {
                    hostname
                };
                let mut req = Request::builder()
                    .method(Method::POST)
                    .uri(format!("http://{addr}{path}"))
                    .body(body)
                    .map_err(|e| format!("report request: {e}"))?;
                req.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                if let Ok(h) = HeaderValue::from_str(host) {
                    req.headers_mut().insert(HOST, h);
                }
                let resp = tokio::time::timeout(REPORT_TIMEOUT, cluster.http.request(req))
                    .await
                    .map_err(|_| format!("{addr}: no answer in {REPORT_TIMEOUT:?}"))?
                    .map_err(|e| format!("{addr}: {e}"))?;
                let status = resp.status();
                // Drain the answer so the connection goes back to the pool.
                let _ = resp.into_body().collect().await;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("{addr} answered {status}"))
                }
            }
            ProviderPlan::OpenTelemetry { service_name, .. } => {
                let service = if service_name.is_empty() {
                    service
                } else {
                    service_name.clone()
                };
                let client = match self.otlp.get(&addr) {
                    Some(c) => c.clone(),
                    None => {
                        let endpoint =
                            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                                .map_err(|e| format!("{addr}: {e}"))?
                                .connect_timeout(REPORT_TIMEOUT)
                                .timeout(REPORT_TIMEOUT);
                        let c = TraceServiceClient::new(endpoint.connect_lazy());
                        self.otlp.insert(addr, c.clone());
                        c
                    }
                };
                let mut client = client;
                client
                    .export(otlp_request(batch, &service))
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("{addr}: {e}"))
            }
        }
    }
}
