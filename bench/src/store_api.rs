//! Store and REST API benchmark: create, get and list of N Dataplanes (default 10,000), directly
//! through the store and through a real `kuma-cp` process's REST API, for the memory and SQLite
//! backends; p50/p99 per operation, and the RSS that `kuma-cp` grows by while holding them.
//!
//! Usage: `bench/run.sh [--count N]`. Prints a table and writes `bench/results/store-api.json`.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use meshzone_model::specs::{DataplaneSpec, Inbound, Outbound};
use meshzone_model::{Meta, Resource, ResourceKey, ResourceType, Spec};
use meshzone_store::{AnyBackend, Backend, MemoryBackend, SqliteBackend, Store};
use serde_json::{Value, json};

struct Stats {
    op: String,
    backend: String,
    path: String,
    count: usize,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
}

fn stats(op: &str, backend: &str, path: &str, mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(i).map(|d| d.as_secs_f64() * 1e6).unwrap_or(0.0)
    };
    Stats {
        op: op.into(),
        backend: backend.into(),
        path: path.into(),
        count: samples.len(),
        p50_us: at(0.5),
        p99_us: at(0.99),
        max_us: at(1.0),
    }
}

fn dataplane(i: usize) -> Resource {
    let mut spec = DataplaneSpec::default();
    spec.networking.address = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
    spec.networking.inbound.push(Inbound {
        port: 10_000 + (i % 50_000) as u32,
        service_port: Some(8080),
        tags: BTreeMap::from([
            (
                "kuma.io/service".to_string(),
                format!("service-{}", i % 100),
            ),
            ("kuma.io/protocol".to_string(), "http".to_string()),
            ("version".to_string(), "v1".to_string()),
        ]),
        ..Default::default()
    });
    spec.networking.outbound.push(Outbound {
        address: None,
        port: 20_000,
        tags: BTreeMap::from([("kuma.io/service".to_string(), "backend".to_string())]),
    });
    Resource::new(
        Meta::named(&format!("dp-{i:05}"), "default"),
        Spec::Dataplane(spec),
    )
}

async fn bench_store<B: Backend>(
    store: Store<B>,
    name: &str,
    n: usize,
    out: &mut Vec<Stats>,
) -> anyhow::Result<()> {
    store
        .create(Resource::new(
            Meta::named("default", ""),
            Spec::Mesh(Default::default()),
        ))
        .await?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let r = dataplane(i);
        let t = Instant::now();
        store.create(r).await?;
        samples.push(t.elapsed());
    }
    out.push(stats("create", name, "store", samples));
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let key = ResourceKey::new(
            ResourceType::Dataplane,
            "default",
            &format!("dp-{:05}", (i * 7919) % n),
        );
        let t = Instant::now();
        store.get(&key).await?;
        samples.push(t.elapsed());
    }
    out.push(stats("get", name, "store", samples));
    let mut samples = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let all = store.list(ResourceType::Dataplane, Some("default")).await?;
        samples.push(t.elapsed());
        if all.len() != n {
            bail!("list returned {} of {n}", all.len());
        }
    }
    out.push(stats(&format!("list {n}"), name, "store", samples));
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

struct Cp(Child);
impl Drop for Cp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn bench_api(
    kuma_cp: &Path,
    store_type: &str,
    n: usize,
    out: &mut Vec<Stats>,
) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let api = free_port()?;
    let diag = free_port()?;
    let cp = Cp(Command::new(kuma_cp)
        .arg("run")
        .env("HOME", dir.path())
        .env("KUMA_STORE_TYPE", store_type)
        .env("KUMA_API_SERVER_HTTP_INTERFACE", "127.0.0.1")
        .env("KUMA_API_SERVER_HTTP_PORT", api.to_string())
        .env("KUMA_API_SERVER_HTTPS_ENABLED", "false")
        .env("KUMA_DIAGNOSTICS_SERVER_PORT", diag.to_string())
        .env("KUMA_DNS_SERVER_PORT", free_port()?.to_string())
        .env("KUMA_DP_SERVER_PORT", free_port()?.to_string())
        .env("KUMA_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", kuma_cp.display()))?);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{api}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if client
            .get(format!("http://127.0.0.1:{diag}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("kuma-cp did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = cp.0.id();
    let rss_before = rss_kib(pid)?;
    let mut serialized = 0usize;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let body = dataplane(i).to_value();
        serialized += body.to_string().len();
        let t = Instant::now();
        let resp = client
            .put(format!("{base}/meshes/default/dataplanes/dp-{i:05}"))
            .json(&body)
            .send()
            .await?;
        samples.push(t.elapsed());
        if !resp.status().is_success() {
            bail!("PUT failed: {}", resp.status());
        }
    }
    out.push(stats("create", store_type, "REST", samples));
    let rss_holding = rss_kib(pid)?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let resp = client
            .get(format!(
                "{base}/meshes/default/dataplanes/dp-{:05}",
                (i * 7919) % n
            ))
            .send()
            .await?;
        let _ = resp.bytes().await?;
        samples.push(t.elapsed());
    }
    out.push(stats("get", store_type, "REST", samples));
    let mut samples = Vec::new();
    for _ in 0..10 {
        // Timed: request until the last byte arrived. The check below parses outside the clock.
        let t = Instant::now();
        let bytes = client
            .get(format!("{base}/meshes/default/dataplanes?size={n}"))
            .send()
            .await?
            .bytes()
            .await?;
        samples.push(t.elapsed());
        let body: Value = serde_json::from_slice(&bytes)?;
        if body["items"].as_array().map(Vec::len) != Some(n) {
            bail!("REST list did not return {n} items");
        }
    }
    out.push(stats(&format!("list {n}"), store_type, "REST", samples));
    let rss_after = rss_kib(pid)?;
    let grown = rss_holding.saturating_sub(rss_before) as f64 * 1024.0;
    let avg_serialized = serialized as f64 / n as f64;
    Ok(json!({
        "store": store_type,
        "rssBeforeKiB": rss_before,
        "rssHoldingKiB": rss_holding,
        "rssAfterReadsKiB": rss_after,
        "rssGrowthBytesPerDataplane": grown / n as f64,
        "serializedBytesPerDataplane": avg_serialized,
        "overheadBytesPerDataplane": grown / n as f64 - avg_serialized,
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n = match args.iter().position(|a| a == "--count") {
        Some(i) => args.get(i + 1).context("--count needs a number")?.parse()?,
        None => 10_000,
    };
    let exe = std::env::current_exe()?;
    let kuma_cp: PathBuf = exe.parent().context("exe dir")?.join("kuma-cp");
    let mut out = Vec::new();

    bench_store(
        Store::new(AnyBackend::Memory(MemoryBackend::new())),
        "memory",
        n,
        &mut out,
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let sqlite = SqliteBackend::open(&dir.path().join("bench.db")).await?;
    bench_store(
        Store::new(AnyBackend::Sqlite(sqlite)),
        "sqlite",
        n,
        &mut out,
    )
    .await?;
    let mut memory = Vec::new();
    for store_type in ["memory", "sqlite"] {
        memory.push(bench_api(&kuma_cp, store_type, n, &mut out).await?);
    }

    println!(
        "{:<12} {:<8} {:<6} {:>7} {:>10} {:>10} {:>10}",
        "OPERATION", "BACKEND", "PATH", "COUNT", "P50 µs", "P99 µs", "MAX µs"
    );
    for s in &out {
        println!(
            "{:<12} {:<8} {:<6} {:>7} {:>10.1} {:>10.1} {:>10.1}",
            s.op, s.backend, s.path, s.count, s.p50_us, s.p99_us, s.max_us
        );
    }
    println!();
    println!(
        "{:<8} {:>12} {:>12} {:>16} {:>12} {:>11} {:>14}",
        "STORE",
        "RSS EMPTY",
        "RSS HOLDING",
        "RSS AFTER READS",
        "GROWTH B/DP",
        "JSON B/DP",
        "OVERHEAD B/DP"
    );
    for m in &memory {
        println!(
            "{:<8} {:>8} KiB {:>8} KiB {:>12} KiB {:>12.0} {:>11.0} {:>14.0}",
            m["store"].as_str().unwrap_or(""),
            m["rssBeforeKiB"],
            m["rssHoldingKiB"],
            m["rssAfterReadsKiB"],
            m["rssGrowthBytesPerDataplane"].as_f64().unwrap_or(0.0),
            m["serializedBytesPerDataplane"].as_f64().unwrap_or(0.0),
            m["overheadBytesPerDataplane"].as_f64().unwrap_or(0.0),
        );
    }
    let results = json!({
        "benchmark": "store-api",
        "date": chrono::Utc::now().to_rfc3339(),
        "dataplanes": n,
        "machine": machine(),
        "latency": out.iter().map(|s| json!({
            "operation": s.op, "backend": s.backend, "path": s.path, "count": s.count,
            "p50Micros": s.p50_us, "p99Micros": s.p99_us, "maxMicros": s.max_us,
        })).collect::<Vec<_>>(),
        "memory": memory,
    });
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("results/store-api.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")?;
    println!("\nwrote {}", path.display());
    Ok(())
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    format!("{cpus} cores, {model}")
}
