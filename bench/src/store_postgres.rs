//! Store benchmark, Postgres against SQLite: create, get and list of N Dataplanes (default
//! 10,000) through the store, and N creates through a real `kuma-cp`'s REST API on each store.
//! Creates are also reported per tenth of the run, so a write path that slows down as the store
//! grows shows as rising latency from the first tenth to the last.
//!
//! Usage: `store-postgres-bench [--count N] [--rest-count N]`, with MESHZONE_TEST_POSTGRES_URL
//! set (scripts/test-postgres.sh prints it); each run uses a fresh database. Prints a table and
//! writes `bench/results/store-postgres.json`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use meshzone_bench::{dataplane, free_port, machine, numeric_flag};
use meshzone_model::{Meta, Resource, ResourceKey, ResourceType, Spec};
use meshzone_store::postgres::testing::TestDatabase;
use meshzone_store::{Backend, PostgresBackend, SqliteBackend, Store};
use serde_json::{Value, json};

/// p50/p99/max in microseconds of one operation.
fn summary(op: &str, backend: &str, path: &str, samples: &[Duration]) -> Value {
    let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    us.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((us.len() as f64 - 1.0) * q).round() as usize;
        us.get(i).copied().unwrap_or(0.0)
    };
    json!({
        "operation": op, "backend": backend, "path": path, "count": us.len(),
        "p50Micros": at(0.5), "p99Micros": at(0.99), "maxMicros": at(1.0),
    })
}

/// Median create latency of each tenth of the run, in microseconds.
fn tenths(samples: &[Duration]) -> Vec<f64> {
    let size = samples.len().div_ceil(10).max(1);
    samples
        .chunks(size)
        .map(|chunk| {
            let mut us: Vec<f64> = chunk.iter().map(|d| d.as_secs_f64() * 1e6).collect();
            us.sort_by(f64::total_cmp);
            us[us.len() / 2]
        })
        .collect()
}

/// Dataplane `dp-<i>` of one of 100 services (the shape `meshzone_bench::dataplane` makes).
fn a_dataplane(i: usize) -> anyhow::Result<Resource> {
    let port = 10_000 + (i % 50_000) as u16;
    let value = dataplane(
        &format!("dp-{i:05}"),
        &format!("service-{}", i % 100),
        port,
        8080,
        Some((20_000, "backend")),
    );
    Resource::from_value(value).map_err(|v| anyhow::anyhow!("dataplane {i}: {v}"))
}

async fn bench_store<B: Backend>(
    store: Store<B>,
    name: &str,
    n: usize,
    out: &mut Vec<Value>,
    growth: &mut Vec<Value>,
) -> anyhow::Result<()> {
    store
        .create(Resource::new(
            Meta::named("default", ""),
            Spec::Mesh(Default::default()),
        ))
        .await?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let r = a_dataplane(i)?;
        let t = Instant::now();
        store.create(r).await?;
        samples.push(t.elapsed());
    }
    out.push(summary("create", name, "store", &samples));
    growth.push(
        json!({"backend": name, "path": "store", "createP50MicrosPerTenth": tenths(&samples)}),
    );
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
    out.push(summary("get", name, "store", &samples));
    let mut samples = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let all = store.list(ResourceType::Dataplane, Some("default")).await?;
        samples.push(t.elapsed());
        if all.len() != n {
            bail!("list returned {} of {n}", all.len());
        }
    }
    out.push(summary(&format!("list {n}"), name, "store", &samples));
    Ok(())
}

struct Cp(Child);
impl Drop for Cp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// N sequential PUTs of Dataplanes into a `kuma-cp run` with the given store environment.
async fn bench_rest(
    kuma_cp: &Path,
    name: &str,
    store_env: &[(&str, String)],
    n: usize,
    out: &mut Vec<Value>,
    growth: &mut Vec<Value>,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let api = free_port()?;
    let diag = free_port()?;
    let _cp = Cp(Command::new(kuma_cp)
        .arg("run")
        .env("HOME", dir.path())
        .env("KUMA_GENERAL_WORK_DIR", dir.path().join("kuma"))
        .env("KUMA_API_SERVER_HTTP_INTERFACE", "127.0.0.1")
        .env("KUMA_API_SERVER_HTTP_PORT", api.to_string())
        .env("KUMA_API_SERVER_HTTPS_ENABLED", "false")
        .env("KUMA_DIAGNOSTICS_SERVER_PORT", diag.to_string())
        .env("KUMA_DNS_SERVER_PORT", free_port()?.to_string())
        .env("KUMA_DP_SERVER_PORT", free_port()?.to_string())
        .env("KUMA_LOG_LEVEL", "warn")
        .envs(store_env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", kuma_cp.display()))?);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client
        .get(format!("http://127.0.0.1:{diag}/ready"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        if Instant::now() > deadline {
            bail!("kuma-cp ({name}) did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut samples = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let body = a_dataplane(i)?.to_value();
        let t = Instant::now();
        let resp = client
            .put(format!(
                "http://127.0.0.1:{api}/meshes/default/dataplanes/dp-{i:05}"
            ))
            .json(&body)
            .send()
            .await?;
        samples.push(t.elapsed());
        if !resp.status().is_success() {
            bail!("PUT failed: {}", resp.status());
        }
    }
    let total = started.elapsed();
    out.push(summary("create", name, "REST", &samples));
    growth.push(json!({
        "backend": name, "path": "REST", "createP50MicrosPerTenth": tenths(&samples),
        "totalSeconds": total.as_secs_f64(),
    }));
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = numeric_flag("--count", 10_000) as usize;
    let rest_n = numeric_flag("--rest-count", 2_000) as usize;
    let exe = std::env::current_exe()?;
    let kuma_cp: PathBuf = exe.parent().context("exe dir")?.join("kuma-cp");
    let mut out = Vec::new();
    let mut growth = Vec::new();

    let dir = tempfile::tempdir()?;
    let sqlite = SqliteBackend::open(&dir.path().join("bench.db")).await?;
    bench_store(Store::new(sqlite), "sqlite", n, &mut out, &mut growth).await?;

    let db = TestDatabase::migrated().await;
    let postgres = PostgresBackend::connect(db.settings.clone()).await?;
    let store = Store::new(postgres);
    // As in kuma-cp: the listener runs, so each write's notification is read back too.
    let listener = tokio::spawn(
        store
            .backend()
            .clone()
            .follow_changes(store.event_sink(), Default::default()),
    );
    bench_store(store, "postgres", n, &mut out, &mut growth).await?;
    listener.abort();
    db.drop_now().await;

    if rest_n > 0 {
        bench_rest(
            &kuma_cp,
            "sqlite",
            &[("KUMA_STORE_TYPE", "sqlite".into())],
            rest_n,
            &mut out,
            &mut growth,
        )
        .await?;
        let db = TestDatabase::migrated().await;
        let env = meshzone_store::postgres::testing::kuma_cp_env(&db.settings);
        bench_rest(&kuma_cp, "postgres", &env, rest_n, &mut out, &mut growth).await?;
        db.drop_now().await;
    }

    println!(
        "{:<12} {:<9} {:<6} {:>7} {:>10} {:>10} {:>10}",
        "OPERATION", "BACKEND", "PATH", "COUNT", "P50 µs", "P99 µs", "MAX µs"
    );
    for s in &out {
        println!(
            "{:<12} {:<9} {:<6} {:>7} {:>10.1} {:>10.1} {:>10.1}",
            s["operation"].as_str().unwrap_or(""),
            s["backend"].as_str().unwrap_or(""),
            s["path"].as_str().unwrap_or(""),
            s["count"],
            s["p50Micros"].as_f64().unwrap_or(0.0),
            s["p99Micros"].as_f64().unwrap_or(0.0),
            s["maxMicros"].as_f64().unwrap_or(0.0),
        );
    }
    println!("\ncreate p50 (µs) per tenth of the run, first to last:");
    for g in &growth {
        let tenths: Vec<String> = g["createP50MicrosPerTenth"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|v| format!("{:.0}", v.as_f64().unwrap_or(0.0)))
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "{:<9} {:<6} {}",
            g["backend"].as_str().unwrap_or(""),
            g["path"].as_str().unwrap_or(""),
            tenths.join(" ")
        );
    }
    let results = json!({
        "benchmark": "store-postgres",
        "date": chrono::Utc::now().to_rfc3339(),
        "dataplanes": n,
        "restDataplanes": rest_n,
        "machine": machine(),
        "latency": out,
        "createGrowth": growth,
    });
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("results/store-postgres.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")?;
    println!("\nwrote {}", path.display());
    Ok(())
}
