//! Multi-zone propagation benchmark: a global CP and N zone CPs (default 10) as real processes
//! on loopback, each zone holding M Dataplanes (default 1000) registered through its REST API.
//!
//! - propagation: a Mesh change on global → visible through every zone's REST API, p50/p99;
//! - memory: RSS of global and of each zone at that size;
//! - resync: a zone restarted (durable store) until global reports it Online again and its
//!   Dataplanes are all still there.
//!
//! Usage: `target/release/kds-bench [--zones N] [--dataplanes M] [--trials T]
//! [--global-store postgres]`; writes `bench/results/kds.json` (`kds-postgres-global.json` with
//! global on a fresh database of the test server MESHZONE_TEST_POSTGRES_URL names; zones stay
//! on SQLite).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use meshzone_bench::percentile;
use serde_json::{Value, json};

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

struct Cp {
    child: Child,
    api: String,
    env: Vec<(String, String)>,
    diag: u16,
}

impl Drop for Cp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(bin: &Path, env: &[(String, String)]) -> anyhow::Result<Child> {
    Ok(Command::new(bin)
        .arg("run")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("KUMA_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

async fn wait_ready(client: &reqwest::Client, diag: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if client
            .get(format!("http://127.0.0.1:{diag}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("control plane on diagnostics port {diag} not ready")
}

async fn start(
    bin: &Path,
    dir: &Path,
    extra: &[(&str, String)],
    client: &reqwest::Client,
) -> anyhow::Result<Cp> {
    let (api, diag, dp) = (free_port()?, free_port()?, free_port()?);
    let mut env: Vec<(String, String)> = vec![
        ("HOME".into(), dir.display().to_string()),
        (
            "KUMA_GENERAL_WORK_DIR".into(),
            dir.join("kuma").display().to_string(),
        ),
        ("KUMA_API_SERVER_HTTP_INTERFACE".into(), "127.0.0.1".into()),
        ("KUMA_API_SERVER_HTTP_PORT".into(), api.to_string()),
        ("KUMA_API_SERVER_HTTPS_ENABLED".into(), "false".into()),
        ("KUMA_DIAGNOSTICS_SERVER_PORT".into(), diag.to_string()),
        ("KUMA_DP_SERVER_PORT".into(), dp.to_string()),
        ("KUMA_DNS_SERVER_PORT".into(), free_port()?.to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let child = spawn(bin, &env)?;
    wait_ready(client, diag).await?;
    Ok(Cp {
        child,
        api: format!("http://127.0.0.1:{api}"),
        env,
        diag,
    })
}

async fn total(client: &reqwest::Client, url: &str) -> u64 {
    match client.get(url).send().await {
        Ok(r) => r
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| v["total"].as_u64())
            .unwrap_or(0),
        Err(_) => 0,
    }
}

/// Whether global shows an open subscription of `zone`.
async fn zone_connected(client: &reqwest::Client, api: &str, zone: &str) -> anyhow::Result<bool> {
    let insight: Value = client
        .get(format!("{api}/zone-insights/{zone}"))
        .send()
        .await?
        .json()
        .await?;
    Ok(insight["subscriptions"]
        .as_array()
        .is_some_and(|s| s.iter().any(|x| x["disconnectTime"].is_null())))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |flag: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (zones, dps, trials) = (
        arg("--zones", 10),
        arg("--dataplanes", 1000),
        arg("--trials", 20),
    );
    let bin = std::env::current_exe()?
        .parent()
        .context("dir")?
        .join("kuma-cp");
    let client = reqwest::Client::new();
    let root = tempfile::tempdir()?;

    let postgres_global = args
        .iter()
        .position(|a| a == "--global-store")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        == Some("postgres");
    let global_db = if postgres_global {
        Some(meshzone_store::postgres::testing::TestDatabase::migrated().await)
    } else {
        None
    };
    let kds_port = free_port()?;
    let gdir = root.path().join("global");
    let mut global_env = vec![
        ("KUMA_MODE", "global".to_string()),
        ("KUMA_MULTIZONE_GLOBAL_KDS_GRPC_PORT", kds_port.to_string()),
    ];
    if let Some(db) = &global_db {
        global_env.extend(meshzone_store::postgres::testing::kuma_cp_env(&db.settings));
    }
    let global_store = if postgres_global {
        "Postgres"
    } else {
        "SQLite"
    };
    let global = start(&bin, &gdir, &global_env, &client).await?;
    let ca = gdir.join("kuma/kuma-cp.crt").display().to_string();
    let mut zone_cps = Vec::new();
    for z in 0..zones {
        let dir = root.path().join(format!("zone-{z}"));
        zone_cps.push(
            start(
                &bin,
                &dir,
                &[
                    ("KUMA_MODE", "zone".into()),
                    ("KUMA_MULTIZONE_ZONE_NAME", format!("zone-{z}")),
                    (
                        "KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS",
                        format!("grpcs://127.0.0.1:{kds_port}"),
                    ),
                    ("KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE", ca.clone()),
                ],
                &client,
            )
            .await?,
        );
    }
    // The default mesh reaches every zone; then each zone gets its Dataplanes.
    let deadline = Instant::now() + Duration::from_secs(60);
    for z in &zone_cps {
        while total(&client, &format!("{}/meshes", z.api)).await == 0 {
            if Instant::now() > deadline {
                bail!("zones did not receive the default mesh");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let load_start = Instant::now();
    for (zi, z) in zone_cps.iter().enumerate() {
        for i in 0..dps {
            let body = json!({"type": "Dataplane", "mesh": "default", "name": format!("dp-{i}"),
                "networking": {"address": format!("10.{zi}.{}.{}", i / 250, i % 250 + 1),
                    "inbound": [{"port": 10000 + (i % 1000), "tags": {"kuma.io/service": format!("svc-{}", i % 50), "kuma.io/protocol": "http"}}]}});
            let r = client
                .put(format!("{}/meshes/default/dataplanes/dp-{i}", z.api))
                .json(&body)
                .send()
                .await?;
            if !r.status().is_success() {
                bail!("PUT failed: {}", r.text().await?);
            }
        }
    }
    let expected = (zones * dps) as u64;
    while total(
        &client,
        &format!("{}/meshes/default/dataplanes?size=1", global.api),
    )
    .await
        < expected
    {
        if load_start.elapsed() > Duration::from_secs(600) {
            bail!("global did not receive all {expected} dataplanes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let inventory_secs = load_start.elapsed().as_secs_f64();

    // Propagation: a change on global, until every zone's API shows it.
    let mut samples = Vec::new();
    for t in 0..trials {
        let name = format!("bench-{t}");
        let start_at = Instant::now();
        client
            .put(format!("{}/meshes/{name}", global.api))
            .json(&json!({"type": "Mesh", "name": name}))
            .send()
            .await?;
        for z in &zone_cps {
            loop {
                if client
                    .get(format!("{}/meshes/{name}", z.api))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    break;
                }
                if start_at.elapsed() > Duration::from_secs(30) {
                    bail!("mesh {name} did not reach every zone");
                }
            }
        }
        samples.push(start_at.elapsed().as_secs_f64() * 1000.0);
    }
    let (p50, p99) = (
        percentile(&mut samples, 0.5),
        percentile(&mut samples, 0.99),
    );

    let global_rss = rss_kib(global.child.id());
    let zone_rss: Vec<u64> = zone_cps.iter().map(|z| rss_kib(z.child.id())).collect();
    let zone_rss_avg = zone_rss.iter().sum::<u64>() as f64 / zone_rss.len().max(1) as f64;

    // Resync: restart zone-0 from its durable store; time until it is Online again on global.
    let z0 = &mut zone_cps[0];
    let _ = z0.child.kill();
    let _ = z0.child.wait();
    let offline_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let open = zone_connected(&client, &global.api, "zone-0").await?;
        if !open || Instant::now() > offline_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resync_start = Instant::now();
    z0.child = spawn(&bin, &z0.env)?;
    wait_ready(&client, z0.diag).await?;
    loop {
        let open = zone_connected(&client, &global.api, "zone-0").await?;
        let dps_now = total(
            &client,
            &format!("{}/meshes/default/dataplanes?size=1", global.api),
        )
        .await;
        if open && dps_now == expected {
            break;
        }
        if resync_start.elapsed() > Duration::from_secs(120) {
            bail!("zone-0 did not resync");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resync_ms = resync_start.elapsed().as_secs_f64() * 1000.0;

    println!(
        "{zones} zones × {dps} Dataplanes (zones on SQLite, global on {global_store}), {trials} trials"
    );
    println!("{:<44} {:>12}", "METRIC", "VALUE");
    println!(
        "{:<44} {:>9.1} ms",
        "global change → all zones' API, p50", p50
    );
    println!(
        "{:<44} {:>9.1} ms",
        "global change → all zones' API, p99", p99
    );
    println!(
        "{:<44} {:>10.1} s",
        "all zone inventories on global", inventory_secs
    );
    println!("{:<44} {:>8} KiB", "global RSS", global_rss);
    println!("{:<44} {:>8.0} KiB", "zone RSS (average)", zone_rss_avg);
    println!(
        "{:<44} {:>8.0} B",
        "zone RSS per Dataplane (average)",
        zone_rss_avg * 1024.0 / dps as f64
    );
    println!(
        "{:<44} {:>9.0} ms",
        "zone restart → Online with inventory intact", resync_ms
    );
    let results = json!({
        "benchmark": "kds",
        "globalStore": global_store,
        "date": chrono::Utc::now().to_rfc3339(),
        "zones": zones, "dataplanesPerZone": dps, "trials": trials,
        "propagationP50Millis": p50, "propagationP99Millis": p99,
        "inventorySeconds": inventory_secs,
        "globalRssKiB": global_rss, "zoneRssKiB": zone_rss,
        "zoneRssBytesPerDataplane": zone_rss_avg * 1024.0 / dps as f64,
        "resyncMillis": resync_ms,
    });
    let file = if postgres_global {
        "results/kds-postgres-global.json"
    } else {
        "results/kds.json"
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")?;
    println!("\nwrote {}", path.display());
    drop(global);
    if let Some(db) = global_db {
        db.drop_now().await;
    }
    Ok(())
}
