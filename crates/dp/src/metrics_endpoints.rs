//! MeshMetric's Prometheus endpoints: for each scrape endpoint of the running configuration
//! (`ProxyConfig::metrics`, from the `_kuma:metrics:prometheus:<clientId>` listeners), an HTTP
//! server on its address that answers `GET <path>` with the proxy's Envoy-named stats filtered
//! by the conf's profiles (`MetricFilter`), followed by the metrics of each `applications[]`
//! entry, scraped at that moment (HTTP/1.0 GET, bounded in time and size; an application that
//! fails is skipped and logged). Any other path is 404.
//!
//! One task ([`run`]) owns the servers: a server whose plan changed is stopped (and awaited, so
//! its port is free) before the new one binds; a server whose endpoint is gone is stopped. A
//! port that cannot be bound is logged and tried again at the next configuration change.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use meshzone_model::policies::mesh_metric::{Application, DEFAULT_APPLICATION_PATH, MetricFilter};
use meshzone_xds::decode::metrics::MetricsPlan;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::runtime::Runtime;
use crate::stats::Stats;

/// How long one application scrape may take, and how much of it is read.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);
const SCRAPE_LIMIT: u64 = 8 * 1024 * 1024;

/// Which servers to stop and which endpoints to start to go from `running` to `wanted`
/// (a changed plan is both).
pub(crate) fn changes(
    running: &BTreeMap<String, MetricsPlan>,
    wanted: &BTreeMap<String, MetricsPlan>,
) -> (Vec<String>, Vec<String>) {
    let stop = running
        .iter()
        .filter(|(name, plan)| wanted.get(*name) != Some(plan))
        .map(|(name, _)| name.clone())
        .collect();
    let start = wanted
        .iter()
        .filter(|(name, plan)| running.get(*name) != Some(plan))
        .map(|(name, _)| name.clone())
        .collect();
    (stop, start)
}

struct Server {
    plan: MetricsPlan,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct Endpoint {
    path: String,
    filter: Arc<MetricFilter>,
    applications: Arc<Vec<Application>>,
    stats: Arc<Stats>,
    runtime: watch::Receiver<Arc<Runtime>>,
    ready: watch::Receiver<bool>,
    started: Instant,
}

/// Keeps one server per scrape endpoint of the newest configuration; when `runtime` closes it
/// stops them and waits for the process to stop.
pub async fn run(
    mut runtime: watch::Receiver<Arc<Runtime>>,
    stats: Arc<Stats>,
    ready: watch::Receiver<bool>,
    started: Instant,
) {
    let mut servers: BTreeMap<String, Server> = BTreeMap::new();
    loop {
        let wanted = runtime.borrow_and_update().config.metrics.clone();
        let running: BTreeMap<String, MetricsPlan> = servers
            .iter()
            .map(|(n, s)| (n.clone(), s.plan.clone()))
            .collect();
        let (stop, start) = changes(&running, &wanted);
        for name in stop {
            if let Some(server) = servers.remove(&name) {
                server.task.abort();
                // Awaited so the listening socket is closed before a new one binds the port.
                let _ = server.task.await;
                info!(endpoint = name, "MeshMetric endpoint stopped");
            }
        }
        for name in start {
            let Some(plan) = wanted.get(&name) else {
                continue;
            };
            let endpoint = Endpoint {
                path: plan.path.clone(),
                filter: Arc::new(MetricFilter::new(plan.conf.sidecar.as_ref())),
                applications: Arc::new(plan.conf.applications.clone().unwrap_or_default()),
                stats: stats.clone(),
                runtime: runtime.clone(),
                ready: ready.clone(),
                started,
            };
            match tokio::net::TcpListener::bind(plan.address).await {
                Ok(listener) => {
                    info!(endpoint = name, address = %plan.address, path = plan.path, "MeshMetric endpoint listening");
                    let router = Router::new().fallback(scrape).with_state(endpoint);
                    let label = name.clone();
                    let task = tokio::spawn(async move {
                        if let Err(e) = axum::serve(listener, router).await {
                            warn!(endpoint = label, "MeshMetric endpoint ended: {e}");
                        }
                    });
                    servers.insert(
                        name,
                        Server {
                            plan: plan.clone(),
                            task,
                        },
                    );
                }
                Err(e) => warn!(
                    endpoint = name,
                    address = %plan.address,
                    "cannot listen for MeshMetric (tried again at the next configuration): {e}"
                ),
            }
        }
        if runtime.changed().await.is_err() {
            break;
        }
    }
    for (_, server) in servers {
        server.task.abort();
    }
    // The configuration's sender is gone only when the xDS client has ended (refused, or the
    // process is stopping): its outcome, not this task's, decides how kuma-dp exits, so the task
    // must not end first and be reported as a failure in its place.
    std::future::pending::<()>().await;
}

async fn scrape(State(e): State<Endpoint>, uri: Uri) -> impl IntoResponse {
    if uri.path() != e.path {
        return (StatusCode::NOT_FOUND, Vec::new()).into_response();
    }
    let rt = e.runtime.borrow().clone();
    let extra = crate::admin::extra_stats(&rt, *e.ready.borrow(), e.started);
    let mut body =
        e.stats
            .prometheus_filtered(extra, &|name| e.filter.keeps(name), e.filter.include_unused);
    for app in e.applications.iter() {
        match scrape_application(app).await {
            Ok(text) => {
                if !body.is_empty() && !body.ends_with('\n') {
                    body.push('\n');
                }
                body.push_str(&text);
            }
            Err(reason) => debug!(
                app = app.name.as_deref().unwrap_or_default(),
                port = app.port,
                "application metrics skipped: {reason}"
            ),
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            meshzone_metrics::CONTENT_TYPE,
        )],
        body,
    )
        .into_response()
}

/// The body of a `200` answer to `GET <path>` at the application's address and port.
async fn scrape_application(app: &Application) -> Result<String, String> {
    let address = app.address.as_deref().unwrap_or("127.0.0.1");
    let path = app.path.as_deref().unwrap_or(DEFAULT_APPLICATION_PATH);
    let port = u16::try_from(app.port).map_err(|_| format!("port {} out of range", app.port))?;
    let ip: std::net::IpAddr = address
        .parse()
        .map_err(|_| format!("{address:?} is not an IP address"))?;
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect((ip, port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {address}:{port}\r\nAccept: text/plain\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut raw = Vec::new();
        stream
            .take(SCRAPE_LIMIT)
            .read_to_end(&mut raw)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok::<Vec<u8>, String>(raw)
    };
    let raw = tokio::time::timeout(SCRAPE_TIMEOUT, fetch)
        .await
        .map_err(|_| format!("no answer within {SCRAPE_TIMEOUT:?}"))??;
    http_body(&raw)
}

/// The body of a raw HTTP/1.x response, if its status is 200.
pub(crate) fn http_body(raw: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "incomplete HTTP response".to_string())?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default();
    if status != "200" {
        return Err(format!("status {status:?}"));
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(path: &str) -> MetricsPlan {
        MetricsPlan {
            name: "m".into(),
            address: "127.0.0.1:5670".parse().expect("addr"),
            path: path.into(),
            conf: Default::default(),
        }
    }

    #[test]
    fn changed_plans_restart_and_missing_ones_stop() {
        let map = |items: &[(&str, &str)]| -> BTreeMap<String, MetricsPlan> {
            items
                .iter()
                .map(|(n, p)| (n.to_string(), plan(p)))
                .collect()
        };
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for (running, wanted, stop, start) in [
            (map(&[]), map(&[("a", "/m")]), names(&[]), names(&["a"])),
            (
                map(&[("a", "/m")]),
                map(&[("a", "/m")]),
                names(&[]),
                names(&[]),
            ),
            (
                map(&[("a", "/m")]),
                map(&[("a", "/x")]),
                names(&["a"]),
                names(&["a"]),
            ),
            (
                map(&[("a", "/m"), ("b", "/m")]),
                map(&[("b", "/m")]),
                names(&["a"]),
                names(&[]),
            ),
        ] {
            assert_eq!(changes(&running, &wanted), (stop, start));
        }
    }

    #[test]
    fn only_a_200_answer_gives_a_body() {
        assert_eq!(
            http_body(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\napp_up 1\n"),
            Ok("app_up 1\n".to_string())
        );
        assert!(http_body(b"HTTP/1.1 500 Oops\r\n\r\nx").is_err());
        assert!(http_body(b"HTTP/1.1 200 OK\r\n").is_err());
    }
}

#[cfg(test)]
mod socket_tests {
    use meshzone_model::policies::mesh_metric::MetricConf;
    use serde_json::json;

    use super::*;

    async fn get(address: std::net::SocketAddr, path: &str) -> Result<String, String> {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .map_err(|e| e.to_string())?;
        http_body(&raw)
    }

    /// Polls `address` until `ok` holds for what it answers (or 10 s pass).
    async fn until(
        address: std::net::SocketAddr,
        path: &str,
        ok: impl Fn(&Result<String, String>) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = get(address, path).await;
            if ok(&got) || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port")
    }

    #[tokio::test]
    async fn serves_filtered_stats_and_the_app_then_stops_with_the_policy() {
        // The application: a plain HTTP server with one metric.
        let app = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("app");
        let app_port = app.local_addr().expect("addr").port();
        let app_task = tokio::spawn(
            axum::serve(
                app,
                Router::new().route(
                    "/metrics/prometheus",
                    axum::routing::get(|| async {
                        "# TYPE app_requests counter\napp_requests 7\n"
                    }),
                ),
            )
            .into_future(),
        );

        let stats = Arc::new(Stats::default());
        let cluster = stats.cluster("backend");
        cluster.upstream_rq_total.add(3);
        cluster.upstream_cx_tx_bytes_total.add(5);
        cluster.upstream_cx_rx_bytes_total.add(9);
        stats.inc("cluster.backend.lb_healthy_panic");
        let port = free_port();
        let address: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let conf: MetricConf = serde_json::from_value(json!({
            "sidecar": {"profiles": {"appendProfiles": [{"name": "Basic"}],
                "exclude": [{"type": "Contains", "match": "rx_bytes"}]}},
            "applications": [{"port": app_port}, {"port": free_port()}]
        }))
        .expect("conf");
        let with_metrics = |path: &str| {
            let mut rt = Runtime::empty_for("backend");
            rt.config.metrics.insert(
                "m".into(),
                MetricsPlan {
                    name: "m".into(),
                    address,
                    path: path.into(),
                    conf: conf.clone(),
                },
            );
            Arc::new(rt)
        };
        let (tx, rx) = watch::channel(with_metrics("/metrics"));
        let (_ready_tx, ready) = watch::channel(true);
        let task = tokio::spawn(run(rx, stats.clone(), ready, Instant::now()));

        let body = until(address, "/metrics", |r| r.is_ok())
            .await
            .expect("scrape");
        assert!(
            body.contains("envoy_cluster_upstream_rq_total{envoy_cluster_name=\"backend\"} 3"),
            "{body}"
        );
        assert!(body.contains("envoy_server_live 1"), "{body}");
        assert!(body.contains("app_requests 7"), "{body}");
        assert!(!body.contains("lb_healthy_panic"), "not in Basic: {body}");
        assert!(
            body.contains(
                "envoy_cluster_upstream_cx_tx_bytes_total{envoy_cluster_name=\"backend\"} 5"
            ),
            "{body}"
        );
        assert!(!body.contains("rx_bytes"), "excluded: {body}");
        assert!(!body.contains("upstream_rq_5xx"), "never written: {body}");
        assert_eq!(get(address, "/other").await, Err("status \"404\"".into()));

        // A new path replaces the server; no policy stops it.
        tx.send_replace(with_metrics("/stats"));
        let body = until(address, "/stats", |r| r.is_ok())
            .await
            .expect("new path");
        assert!(body.contains("app_requests 7"), "{body}");
        tx.send_replace(Arc::new(Runtime::empty_for("backend")));
        let gone = until(address, "/stats", |r| {
            r.is_err() && !r.as_ref().is_err_and(|e| e.contains("404"))
        })
        .await;
        assert!(gone.is_err(), "still served: {gone:?}");
        task.abort();
        app_task.abort();
    }
}
