//! xDS fan-out benchmark: one zone control plane holding 1000 Dataplanes of one mesh (mTLS on),
//! with N ADS streams open (default 200, real gRPC/TLS streams of this process, each ACKing every
//! response as a proxy would). One new instance of a service every proxy calls is registered,
//! and we measure how long until every stream has received the new endpoint set, and how much
//! CPU the control plane spent on it. Repeated `--changes` times. Last, the CP gets SIGTERM with
//! every stream open: how long until it exited, and how many streams it ended with UNAVAILABLE.
//!
//! Usage: `bench/run.sh` (or `target/release/xds-fanout-bench [--streams N] [--changes K] [--sqlite]`).
//! Prints a table and writes `bench/results/xds-fanout.json`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use meshzone_bench::{ads_stream, dp_server_channel, mtls_mesh, numeric_flag, proc_stat, start_cp};
use meshzone_xds::envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use meshzone_xds::names::TypeUrl;
use prost::Message;
use serde_json::json;
use tonic::transport::Channel;

const DATAPLANES: usize = 1000;
const SERVICES: usize = 50;

fn dataplane(name: &str, service: &str, port: usize) -> serde_json::Value {
    json!({"type": "Dataplane", "mesh": "default", "name": name, "networking": {
        "address": "127.0.0.1",
        "inbound": [{"port": port, "tags": {"kuma.io/service": service}}],
        "outbound": [{"port": 20000 + port % 10000, "tags": {"kuma.io/service": "svc-0"}}]}})
}

/// Endpoint count of `svc-0` seen last by each stream.
type Seen = Arc<std::sync::Mutex<Vec<usize>>>;

/// Streams the control plane ended with `UNAVAILABLE` (its shutdown status).
type Unavailable = Arc<std::sync::atomic::AtomicUsize>;

async fn open_stream(
    channel: Channel,
    name: String,
    index: usize,
    seen: Seen,
    unavailable: Unavailable,
) -> anyhow::Result<()> {
    ads_stream(
        channel,
        format!("default.{name}"),
        move |r| {
            if r.type_url != TypeUrl::ClusterLoadAssignment.as_str() {
                return;
            }
            let count = r
                .resources
                .iter()
                .filter_map(|any| ClusterLoadAssignment::decode(any.value.as_slice()).ok())
                .filter(|cla| cla.cluster_name == "svc-0")
                .map(|cla| cla.endpoints.iter().map(|l| l.lb_endpoints.len()).sum())
                .next()
                .unwrap_or(0);
            if let Ok(mut v) = seen.lock() {
                v[index] = count;
            }
        },
        move |status| {
            if status.is_some_and(|s| s.code() == tonic::Code::Unavailable) {
                unavailable.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        },
    )
    .await
}

async fn wait_all(seen: &Seen, expected: usize, deadline: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if seen
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .iter()
            .all(|n| *n == expected)
        {
            return Ok(start.elapsed());
        }
        if start.elapsed() > deadline {
            let v = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            let done = v.iter().filter(|n| **n == expected).count();
            bail!("only {done}/{} streams saw {expected} endpoints", v.len());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let streams = numeric_flag("--streams", 200) as usize;
    let changes = numeric_flag("--changes", 10) as usize;
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("exe dir")?.to_path_buf();
    let work = tempfile::tempdir()?;
    // `--sqlite`: the durable store, where every closed subscription is a synced write.
    let store = if std::env::args().any(|a| a == "--sqlite") {
        "sqlite"
    } else {
        "memory"
    };
    let cp = start_cp(
        &dir,
        work.path(),
        &[
            ("KUMA_DP_SERVER_AUTHN_DP_PROXY_TYPE", "none".into()),
            ("KUMA_STORE_TYPE", store.into()),
        ],
    )
    .await?;
    let cp_pid = cp._proc.0.id();
    let unavailable: Unavailable = Arc::default();
    cp.put("/meshes/default", mtls_mesh()).await?;
    for i in 0..DATAPLANES {
        let name = format!("dp-{i}");
        cp.put(
            &format!("/meshes/default/dataplanes/{name}"),
            dataplane(&name, &format!("svc-{}", i % SERVICES), 10000 + i),
        )
        .await?;
    }
    let channel = dp_server_channel(&cp).await?;
    let seen: Seen = Arc::new(std::sync::Mutex::new(vec![usize::MAX; streams]));
    let mut instances = DATAPLANES / SERVICES;
    for i in 0..streams {
        open_stream(
            channel.clone(),
            format!("dp-{i}"),
            i,
            seen.clone(),
            unavailable.clone(),
        )
        .await?;
    }
    wait_all(&seen, instances, Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut latencies = Vec::new();
    let mut cpu = Vec::new();
    for c in 0..changes {
        let (_, cpu0) = proc_stat(cp_pid)?;
        let name = format!("extra-{c}");
        cp.put(
            &format!("/meshes/default/dataplanes/{name}"),
            dataplane(&name, "svc-0", 15000 + c),
        )
        .await?;
        instances += 1;
        latencies.push(wait_all(&seen, instances, Duration::from_secs(120)).await?);
        // Let the streams' ACKs and insight writes settle before reading the CPU time.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (_, cpu1) = proc_stat(cp_pid)?;
        cpu.push(cpu1 - cpu0);
    }
    latencies.sort();
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    let p50 = ms(&latencies[latencies.len() / 2]);
    let max = ms(latencies.last().context("no change")?);
    let cpu_avg = cpu.iter().sum::<f64>() / cpu.len() as f64;
    let (rss, _) = proc_stat(cp_pid)?;

    // SIGTERM with every stream open.
    let mut cp = cp;
    let stop_began = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &cp_pid.to_string()])
        .status()?;
    let exit = loop {
        if let Some(status) = cp._proc.0.try_wait()? {
            break status;
        }
        if stop_began.elapsed() > Duration::from_secs(60) {
            bail!("kuma-cp did not exit within 60 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let stop_ms = stop_began.elapsed().as_secs_f64() * 1e3;
    // The last statuses may still be in flight on the client side.
    let ended_deadline = Instant::now() + Duration::from_secs(5);
    while unavailable.load(std::sync::atomic::Ordering::SeqCst) < streams
        && Instant::now() < ended_deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ended = unavailable.load(std::sync::atomic::Ordering::SeqCst);
    println!(
        "{DATAPLANES} Dataplanes in one mesh (mTLS), {streams} ADS streams, {changes} changes (one new instance of a service every stream calls), {store} store"
    );
    println!(
        "{:<34} {:>10}",
        "change → every stream has it, p50",
        format!("{p50:.1} ms")
    );
    println!("{:<34} {:>10}", "same, slowest", format!("{max:.1} ms"));
    println!(
        "{:<34} {:>10}",
        "CP CPU per change (incl. ACKs)",
        format!("{:.3} s", cpu_avg)
    );
    println!(
        "{:<34} {:>10}",
        "CP RSS",
        format!("{:.1} MiB", rss as f64 / 1024.0)
    );
    println!(
        "{:<34} {:>10}",
        "SIGTERM → exited",
        format!("{stop_ms:.0} ms ({exit})")
    );
    println!(
        "{:<34} {:>10}",
        "streams ended with UNAVAILABLE",
        format!("{ended}/{streams}")
    );
    let results = json!({
        "benchmark": "xds-fanout",
        "date": chrono::Utc::now().to_rfc3339(),
        "machine": format!("{} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)),
        "dataplanes": DATAPLANES, "streams": streams, "changes": changes, "store": store,
        "propagationP50Millis": p50, "propagationMaxMillis": max,
        "cpCpuSecondsPerChange": cpu_avg, "cpRssKiB": rss,
        "sigtermToExitMillis": stop_ms, "exitCode": exit.code(),
        "streamsEndedUnavailable": ended,
    });
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("results/xds-fanout.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")?;
    println!("wrote {}", path.display());
    Ok(())
}
