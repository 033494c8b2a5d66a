//! Cross-zone latency benchmark, in one run on loopback: a global CP, two zone CPs, an echo
//! application behind a kuma-dp sidecar in zone-1, and four paths to it at a fixed rate (default
//! 1000 rps, 1 KB responses, 16 keep-alive connections, open loop):
//!
//! - direct: client → app;
//! - in-zone: client sidecar (zone-1) → app sidecar (2 proxies);
//! - cross-zone: client sidecar (zone-2) → zone-1 ingress → app sidecar (3 proxies);
//! - via egress: client sidecar (zone-2) → zone-2 egress → zone-1 ingress → app sidecar
//!   (4 proxies; mesh `routing.zoneEgress: true`).
//!
//! Goal: cross-zone added p99 ≤ 2 × in-zone added p99. Usage: `bench/run.sh` (or
//! `target/release/cross-zone-bench [--rate N] [--seconds S]`). Prints a table and writes
//! `bench/results/cross-zone.json`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use meshzone_bench::{
    CONNECTIONS, Cp, Latency, Proc, app, dataplane, fixed, free_port, load, numeric_flag,
    spawn_kuma_dp, start_cp, wait_http, wait_path,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;

const SERVICE: &str = "echo";

fn mesh(zone_egress: bool) -> Value {
    json!({"type": "Mesh", "name": "default",
        "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]},
        "routing": {"zoneEgress": zone_egress}})
}

async fn zone_token(global: &Cp, zone: &str) -> anyhow::Result<String> {
    let r = global
        .client
        .post(format!("{}/tokens/zone", global.api))
        .json(&json!({"zone": zone, "scope": ["ingress", "egress"]}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("zone token for {zone}: {}", r.text().await?);
    }
    Ok(r.text().await?)
}

async fn get_text(client: &reqwest::Client, url: &str) -> String {
    match client.get(url).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Waits until `url` answers with a body for which `check` holds.
async fn wait_until(
    client: &reqwest::Client,
    url: &str,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if check(&get_text(client, url).await) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("timed out waiting for {what}")
}

fn row(path: &str, proxies: u32, lat: &Latency, direct: &Latency) -> Value {
    json!({"path": path, "proxies": proxies,
        "p50Micros": lat.p50, "p99Micros": lat.p99, "p999Micros": lat.p999,
        "addedP50Micros": lat.p50 - direct.p50, "addedP99Micros": lat.p99 - direct.p99,
        "addedP999Micros": lat.p999 - direct.p999,
        "errors": lat.errors, "requests": lat.requests})
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rate = numeric_flag("--rate", 1000) as u32;
    let seconds = numeric_flag("--seconds", 10);
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("exe dir")?.to_path_buf();
    let kuma_dp = dir.join("kuma-dp");
    let http = reqwest::Client::new();

    let work = tempfile::tempdir()?;
    let kds = free_port()?;
    let global = start_cp(
        &dir,
        &work.path().join("global"),
        &[
            ("KUMA_MODE", "global".into()),
            ("KUMA_MULTIZONE_GLOBAL_KDS_GRPC_PORT", kds.to_string()),
        ],
    )
    .await?;
    let global_ca = global.work.join("kuma/kuma-cp.crt").display().to_string();
    let mut zones = Vec::new();
    for z in ["zone-1", "zone-2"] {
        zones.push(
            start_cp(
                &dir,
                &work.path().join(z),
                &[
                    ("KUMA_MODE", "zone".into()),
                    ("KUMA_MULTIZONE_ZONE_NAME", z.into()),
                    (
                        "KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS",
                        format!("grpcs://127.0.0.1:{kds}"),
                    ),
                    ("KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE", global_ca.clone()),
                ],
            )
            .await?,
        );
    }
    global.put("/meshes/default", mesh(false)).await?;
    for zone in &zones {
        wait_until(
            &http,
            &format!("{}/meshes/default", zone.api),
            "the mTLS mesh in every zone",
            |b| b.contains("enabledBackend"),
        )
        .await?;
    }
    let (zone1, zone2) = (&zones[0], &zones[1]);

    let app_listener = TcpListener::bind("127.0.0.1:0").await?;
    let app_port = app_listener.local_addr()?.port();
    tokio::spawn(app(app_listener));

    let mut procs: Vec<Proc> = Vec::new();
    let mut admins = Vec::new();
    // Zone-1: the ingress and the application's sidecar.
    let ingress_port = free_port()?;
    let (p, a) = spawn_kuma_dp(
        &kuma_dp,
        zone1,
        &json!({"type": "ZoneIngress", "name": "ingress-1", "networking": {
            "address": "127.0.0.1", "port": ingress_port,
            "advertisedAddress": "127.0.0.1", "advertisedPort": ingress_port}}),
        &zone_token(&global, "zone-1").await?,
        "ingress-1",
        &["--proxy-type=ingress"],
    )?;
    procs.push(p);
    admins.push(a);
    let (p, a) = spawn_kuma_dp(
        &kuma_dp,
        zone1,
        &dataplane("echo-1", SERVICE, free_port()?, app_port, None),
        &zone1.token("echo-1").await?,
        "echo-1",
        &[],
    )?;
    procs.push(p);
    admins.push(a);
    // Clients: one in each zone.
    let (in_zone, cross_zone) = (free_port()?, free_port()?);
    for (zone, name, port) in [
        (zone1, "client-1", in_zone),
        (zone2, "client-2", cross_zone),
    ] {
        let (p, a) = spawn_kuma_dp(
            &kuma_dp,
            zone,
            &dataplane(name, name, free_port()?, app_port, Some((port, SERVICE))),
            &zone.token(name).await?,
            name,
            &[],
        )?;
        procs.push(p);
        admins.push(a);
    }
    // Zone-2's egress (used once the mesh turns zoneEgress on).
    let egress_port = free_port()?;
    let (p, egress_admin) = spawn_kuma_dp(
        &kuma_dp,
        zone2,
        &json!({"type": "ZoneEgress", "name": "egress-2", "networking": {
            "address": "127.0.0.1", "port": egress_port}}),
        &zone_token(&global, "zone-2").await?,
        "egress-2",
        &["--proxy-type=egress"],
    )?;
    procs.push(p);
    admins.push(egress_admin);
    for port in &admins {
        wait_http(&format!("http://127.0.0.1:{port}/ready"), "proxy").await?;
    }
    wait_path(in_zone).await?;
    wait_path(cross_zone).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut rows = Vec::new();
    let direct = load(app_port, rate, seconds).await?;
    rows.push(row("direct", 0, &direct, &direct));
    let lat = load(in_zone, rate, seconds).await?;
    rows.push(row("in-zone", 2, &lat, &direct));
    let lat = load(cross_zone, rate, seconds).await?;
    rows.push(row("cross-zone via ingress", 3, &lat, &direct));

    global.put("/meshes/default", mesh(true)).await?;
    let egress_endpoint = format!("127.0.0.1:{egress_port}");
    let client2_admin = admins[3];
    wait_until(
        &http,
        &format!("http://127.0.0.1:{client2_admin}/config_dump"),
        "zone-2's client to send through the egress",
        |b| b.contains(&egress_endpoint),
    )
    .await?;
    wait_path(cross_zone).await?;
    let lat = load(cross_zone, rate, seconds).await?;
    let egress_stats = get_text(&http, &format!("http://127.0.0.1:{egress_admin}/stats")).await;
    let through_egress: u64 = egress_stats
        .lines()
        .filter(|l| l.starts_with("cluster.") && l.contains(".upstream_cx_total: "))
        .filter_map(|l| {
            l.rsplit_once(": ")
                .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        })
        .sum();
    if through_egress < CONNECTIONS as u64 {
        bail!("the egress carried {through_egress} connections; expected at least {CONNECTIONS}");
    }
    rows.push(row("cross-zone via egress + ingress", 4, &lat, &direct));

    let in_zone_added = rows[1]["addedP99Micros"].as_f64().unwrap_or(f64::NAN);
    let cross_added = rows[2]["addedP99Micros"].as_f64().unwrap_or(f64::NAN);
    let goal_met = cross_added <= 2.0 * in_zone_added;

    println!(
        "{rate} rps, {CONNECTIONS} keep-alive connections, 1 KiB responses, {seconds} s per path; everything on this machine"
    );
    println!(
        "{:<32} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "PATH", "PROXIES", "p50 µs", "p99 µs", "p999 µs", "+p50 µs", "+p99 µs", "ERRORS"
    );
    for r in &rows {
        let f = |k: &str| fixed(&r[k], 0);
        println!(
            "{:<32} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
            r["path"].as_str().unwrap_or(""),
            r["proxies"],
            f("p50Micros"),
            f("p99Micros"),
            f("p999Micros"),
            f("addedP50Micros"),
            f("addedP99Micros"),
            r["errors"]
        );
    }
    println!(
        "\ngoal: cross-zone added p99 ≤ 2 × in-zone added p99: {:.0} µs vs 2 × {:.0} µs → {}",
        cross_added,
        in_zone_added,
        if goal_met { "met" } else { "NOT met" }
    );
    let results = json!({
        "benchmark": "cross-zone",
        "date": chrono::Utc::now().to_rfc3339(),
        "machine": format!("{} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)),
        "rate": rate, "connections": CONNECTIONS, "responseBytes": 1024, "secondsPerPath": seconds,
        "rows": rows,
        "goal": {"crossZoneAddedP99Micros": cross_added, "inZoneAddedP99Micros": in_zone_added, "met": goal_met},
    });
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("results/cross-zone.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")?;
    println!("wrote {}", path.display());
    drop(procs);
    Ok(())
}
