//! Shared parts of the benchmarks: the application under load, an open-loop load generator,
//! process statistics, and control planes and kuma-dp processes started from the release build.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const CONNECTIONS: usize = 16;
pub const BODY: usize = 1024;
pub const BULK: usize = 256 * 1024 * 1024;

pub fn free_port() -> anyhow::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub struct Proc(pub Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn proc_stat(pid: u32) -> anyhow::Result<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of /proc/pid/stat (11 and 12 after the comm).
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok((rss, ticks as f64 / 100.0))
}

/// The application: HTTP/1.1 keep-alive; `/big` answers BULK bytes, everything else 1 KiB.
pub async fn app(listener: TcpListener) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let _ = conn.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut have = 0usize;
            let body = vec![b'x'; BODY];
            loop {
                let end = loop {
                    if let Some(i) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match conn.read(&mut buf[have..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have += n,
                    }
                };
                let big = buf[..end].starts_with(b"GET /big");
                buf.copy_within(end..have, 0);
                have -= end;
                if big {
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BULK}\r\n\r\n");
                    if conn.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = vec![b'y'; 64 * 1024];
                    for _ in 0..BULK / chunk.len() {
                        if conn.write_all(&chunk).await.is_err() {
                            return;
                        }
                    }
                } else {
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY}\r\n\r\n");
                    if conn.write_all(head.as_bytes()).await.is_err()
                        || conn.write_all(&body).await.is_err()
                    {
                        return;
                    }
                }
            }
        });
    }
}

/// Sends one request on a keep-alive connection and reads the whole response; the body size.
pub async fn request(conn: &mut TcpStream, path: &str, buf: &mut Vec<u8>) -> anyhow::Result<usize> {
    Ok(request_status(conn, path, buf).await?.1)
}

/// Like [`request`], also giving the response's status code.
pub async fn request_status(
    conn: &mut TcpStream,
    path: &str,
    buf: &mut Vec<u8>,
) -> anyhow::Result<(u16, usize)> {
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes())
        .await?;
    buf.clear();
    let mut chunk = vec![0u8; 64 * 1024];
    let (head_end, length, status) = loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .context("no content-length")?;
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .context("no status line")?;
            break (i + 4, len, status);
        }
    };
    let mut got = buf.len() - head_end;
    while got < length {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed mid-body");
        }
        got += n;
    }
    Ok((status, got))
}

pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub errors: usize,
    pub requests: usize,
}

/// Open-loop load: CONNECTIONS connections share `rate` requests per second for `seconds`.
pub async fn load(port: u16, rate: u32, seconds: u64) -> anyhow::Result<Latency> {
    let per_conn = Duration::from_secs_f64(CONNECTIONS as f64 / f64::from(rate));
    let total = (u64::from(rate) * seconds) as usize / CONNECTIONS;
    let start = Instant::now() + Duration::from_millis(200);
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(total);
            let mut errors = 0;
            let mut conn = TcpStream::connect(("127.0.0.1", port)).await?;
            conn.set_nodelay(true)?;
            let mut buf = Vec::with_capacity(4096);
            let offset = per_conn.mul_f64(c as f64 / CONNECTIONS as f64);
            let mut previous_done = start;
            for i in 0..total {
                let scheduled = start + offset + per_conn * i as u32;
                tokio::time::sleep_until(scheduled.into()).await;
                // Open loop without the timer's slop: latency counts from the scheduled time only
                // when the previous response on this connection made the request late.
                let from = if previous_done > scheduled {
                    scheduled
                } else {
                    Instant::now()
                };
                match request(&mut conn, "/", &mut buf).await {
                    Ok(_) => {
                        previous_done = Instant::now();
                        samples.push(from.elapsed());
                    }
                    Err(_) => {
                        errors += 1;
                        conn = TcpStream::connect(("127.0.0.1", port)).await?;
                    }
                }
            }
            anyhow::Ok((samples, errors))
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (s, e) = t.await??;
        all.extend(s);
        errors += e;
    }
    all.sort();
    let at = |q: f64| {
        let i = ((all.len() as f64 - 1.0) * q).round() as usize;
        all.get(i)
            .map(|d| d.as_secs_f64() * 1e6)
            .unwrap_or(f64::NAN)
    };
    Ok(Latency {
        p50: at(0.5),
        p99: at(0.99),
        p999: at(0.999),
        errors,
        requests: all.len() + errors,
    })
}

pub async fn bulk(port: u16) -> anyhow::Result<f64> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut buf = Vec::new();
    let t = Instant::now();
    let n = request(&mut conn, "/big", &mut buf).await?;
    Ok(n as f64 / t.elapsed().as_secs_f64() / 1e6)
}

pub async fn wait_http(url: &str, what: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what} did not become ready")
}

pub async fn wait_path(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = Vec::new();
    while Instant::now() < deadline {
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)).await
            && request(&mut c, "/", &mut buf).await.is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no traffic through port {port}")
}

pub struct Cp {
    pub _proc: Proc,
    pub api: String,
    pub dp_port: u16,
    pub work: PathBuf,
    pub client: reqwest::Client,
}

impl Cp {
    pub async fn put(&self, path: &str, body: Value) -> anyhow::Result<()> {
        let r = self
            .client
            .put(format!("{}{path}", self.api))
            .json(&body)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("PUT {path}: {}", r.text().await?);
        }
        Ok(())
    }
    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        let r = self
            .client
            .delete(format!("{}{path}", self.api))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("DELETE {path}: {}", r.text().await?);
        }
        Ok(())
    }
    /// The JSON at `path`, or `None` when the answer is not a success.
    pub async fn get(&self, path: &str) -> anyhow::Result<Option<Value>> {
        let r = self
            .client
            .get(format!("{}{path}", self.api))
            .send()
            .await?;
        if !r.status().is_success() {
            return Ok(None);
        }
        Ok(Some(r.json().await?))
    }
    pub async fn token(&self, name: &str) -> anyhow::Result<String> {
        Ok(self
            .client
            .post(format!("{}/tokens/dataplane", self.api))
            .json(&json!({"mesh": "default", "name": name}))
            .send()
            .await?
            .text()
            .await?)
    }
}

pub fn dataplane(
    name: &str,
    service: &str,
    inbound: u16,
    app: u16,
    outbound: Option<(u16, &str)>,
) -> Value {
    let mut v = json!({"type": "Dataplane", "mesh": "default", "name": name,
        "networking": {"address": "127.0.0.1", "inbound": [{"port": inbound, "servicePort": app, "tags": {"kuma.io/service": service}}]}});
    if let Some((port, target)) = outbound {
        v["networking"]["outbound"] = json!([{"port": port, "tags": {"kuma.io/service": target}}]);
    }
    v
}

pub fn spawn_kuma_dp(
    bin: &Path,
    cp: &Cp,
    dp: &Value,
    token: &str,
    label: &str,
    extra_args: &[&str],
) -> anyhow::Result<(Proc, u16)> {
    let admin = free_port()?;
    let tf = cp.work.join(format!("{label}.token"));
    std::fs::write(&tf, token)?;
    let child = Command::new(bin)
        .arg("run")
        .arg(format!("--cp-address=https://127.0.0.1:{}", cp.dp_port))
        .arg(format!("--dataplane={dp}"))
        .arg(format!("--dataplane-token-file={}", tf.display()))
        .arg(format!(
            "--ca-cert-file={}",
            cp.work.join("kuma/kuma-cp.crt").display()
        ))
        .arg(format!("--admin-port={admin}"))
        .args(extra_args)
        .env("KUMA_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok((Proc(child), admin))
}

/// Starts `kuma-cp run` from `bin_dir` on loopback with fresh ports, a memory store and `env`,
/// and waits until it is ready.
pub async fn start_cp(bin_dir: &Path, work: &Path, env: &[(&str, String)]) -> anyhow::Result<Cp> {
    let (api_port, diag, dp_port) = (free_port()?, free_port()?, free_port()?);
    std::fs::create_dir_all(work)?;
    let mut cmd = Command::new(bin_dir.join("kuma-cp"));
    cmd.arg("run")
        .env("HOME", work)
        .env("KUMA_GENERAL_WORK_DIR", work.join("kuma"))
        .env("KUMA_STORE_TYPE", "memory")
        .env("KUMA_API_SERVER_HTTP_INTERFACE", "127.0.0.1")
        .env("KUMA_API_SERVER_HTTP_PORT", api_port.to_string())
        .env("KUMA_API_SERVER_HTTPS_ENABLED", "false")
        .env("KUMA_DIAGNOSTICS_SERVER_PORT", diag.to_string())
        .env("KUMA_DNS_SERVER_PORT", free_port()?.to_string())
        .env("KUMA_DP_SERVER_PORT", dp_port.to_string())
        .env("KUMA_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let proc = Proc(cmd.spawn()?);
    wait_http(&format!("http://127.0.0.1:{diag}/ready"), "kuma-cp").await?;
    Ok(Cp {
        _proc: proc,
        api: format!("http://127.0.0.1:{api_port}"),
        dp_port,
        work: work.to_path_buf(),
        client: reqwest::Client::new(),
    })
}

/// The `q` quantile (0..=1) of `samples` (sorted in place), nearest rank.
pub fn percentile(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples.get(i).copied().unwrap_or(f64::NAN)
}

/// `--flag N` from the command line, or `default`.
pub fn numeric_flag(flag: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A number of a results row for a table: `decimals` after the point, `-` when absent.
pub fn fixed(v: &Value, decimals: usize) -> String {
    v.as_f64()
        .map(|x| format!("{x:.decimals$}"))
        .unwrap_or_else(|| "-".into())
}

/// Opens one ADS stream to a DP server as proxy `node_id` (the zone CP must run with
/// `KUMA_DP_SERVER_AUTHN_DP_PROXY_TYPE=none`), subscribes to every type and ACKs each response
/// right after `observe` saw it, as a proxy does. `ended` gets the final status (`None` for a
/// clean end). The stream runs in its own task.
pub async fn ads_stream(
    channel: tonic::transport::Channel,
    node_id: String,
    mut observe: impl FnMut(&meshzone_xds::discovery::DiscoveryResponse) + Send + 'static,
    ended: impl FnOnce(Option<tonic::Status>) + Send + 'static,
) -> anyhow::Result<()> {
    use meshzone_xds::discovery::DiscoveryRequest;
    use meshzone_xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use meshzone_xds::envoy_types::pb::envoy::config::core::v3::Node;
    use meshzone_xds::names::TypeUrl;

    let (tx, rx) = tokio::sync::mpsc::channel::<DiscoveryRequest>(16);
    let node = Node {
        id: node_id,
        ..Default::default()
    };
    for t in TypeUrl::ALL {
        tx.send(DiscoveryRequest {
            node: Some(node.clone()),
            type_url: t.as_str().to_string(),
            ..Default::default()
        })
        .await?;
    }
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let mut responses = client
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    tokio::spawn(async move {
        loop {
            let r = match responses.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return ended(None),
                Err(status) => return ended(Some(status)),
            };
            observe(&r);
            let ack = DiscoveryRequest {
                type_url: r.type_url.clone(),
                version_info: r.version_info.clone(),
                response_nonce: r.nonce.clone(),
                ..Default::default()
            };
            if tx.send(ack).await.is_err() {
                return ended(None);
            }
        }
    });
    Ok(())
}

/// A gRPC channel to a control plane's DP server, trusting its generated certificate.
pub async fn dp_server_channel(cp: &Cp) -> anyhow::Result<tonic::transport::Channel> {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    let ca = std::fs::read_to_string(cp.work.join("kuma/kuma-cp.crt"))?;
    Ok(
        Channel::from_shared(format!("https://127.0.0.1:{}", cp.dp_port))?
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&ca))
                    .domain_name("localhost"),
            )?
            .connect()
            .await?,
    )
}

/// Envoy 1.40: `ENVOY_BIN`, or the one scripts/test.sh installs into `.venv`.
pub fn envoy_binary() -> anyhow::Result<PathBuf> {
    let bin = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/envoy"));
    if !bin.exists() {
        bail!(
            "Envoy not found at {} (scripts/test.sh installs it into .venv, or set ENVOY_BIN)",
            bin.display()
        );
    }
    Ok(bin)
}

/// An Envoy sidecar for Dataplane `dp` of mesh `default`, configured over ADS by `cp`, with 2
/// workers; its admin port.
pub fn spawn_envoy(
    bin: &Path,
    cp: &Cp,
    name: &str,
    dp: &Value,
    token: &str,
    label: &'static str,
) -> anyhow::Result<(Proc, u16)> {
    let admin = free_port()?;
    let bootstrap = json!({
        "node": {"id": format!("default.{name}"), "cluster": name, "metadata": {"dataplane.resource": dp.to_string()}},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3", "set_node_on_first_message_only": true,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "ads_cluster"},
                    "initial_metadata": [{"key": "authorization", "value": format!("Bearer {token}")}]}]},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"}},
        "static_resources": {"clusters": [{"name": "ads_cluster", "type": "STATIC", "connect_timeout": "5s",
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": "ads_cluster", "endpoints": [{"lb_endpoints": [{"endpoint": {"address":
                {"socket_address": {"address": "127.0.0.1", "port_value": cp.dp_port}}}}]}]},
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": "localhost",
                "common_tls_context": {"validation_context": {"trusted_ca": {"filename": cp.work.join("kuma/kuma-cp.crt").display().to_string()}}}}}}]}
    });
    let file = cp.work.join(format!("{label}.json"));
    std::fs::write(&file, bootstrap.to_string())?;
    let child = Command::new(bin)
        .arg("-c")
        .arg(&file)
        .args([
            "--concurrency",
            "2",
            "--use-dynamic-base-id",
            "--log-level",
            "error",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok((Proc(child), admin))
}

/// Mesh `default` with a builtin CA (mTLS on).
pub fn mtls_mesh() -> Value {
    json!({"type": "Mesh", "name": "default",
        "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}})
}

/// Starts [`app`] on a free loopback port; the port.
pub async fn start_app() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(app(listener));
    Ok(port)
}

/// Runs one integration test of `crates/integration-tests` (debug profile, as CI runs it) with
/// `env`, pointing `report_var` at a file the test writes its JSON report to. The test's output
/// goes to files in a temporary directory, kept (and named in the error) when no report came.
/// The report and whether the test passed.
pub fn run_reporting_test(
    test: &str,
    report_var: &str,
    env: &[(&str, String)],
) -> anyhow::Result<(Value, bool)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let work = tempfile::tempdir()?;
    let report = work.path().join(format!("{test}.json"));
    let log = work.path().join(format!("{test}-test.log"));
    eprintln!("running the {test} test; its output in {}", log.display());
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&root)
        .args([
            "test",
            "-p",
            "meshzone-integration-tests",
            "--test",
            test,
            "--",
            "--nocapture",
        ])
        .env(report_var, &report)
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(work.path().join("cargo.log"))?);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = cmd.status().context("cargo test")?;
    match std::fs::read_to_string(&report) {
        Ok(text) => Ok((serde_json::from_str(&text)?, status.success())),
        Err(e) => {
            let kept = work.keep();
            bail!(
                "the {test} test wrote no report ({status}, {e}); see {}",
                kept.join("cargo.log").display()
            )
        }
    }
}

/// "N cores", for the results files.
pub fn machine() -> String {
    format!(
        "{} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}
