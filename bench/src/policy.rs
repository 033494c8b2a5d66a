//! Policy propagation benchmark: a global CP and N zone CPs (default 10) as real processes on
//! loopback, each zone holding M Dataplanes (default 1000) of one mTLS mesh, with an ADS stream
//! open for each (real gRPC/TLS streams of this process that ACK every response, as proxies do).
//!
//! - **to ACK**: a MeshTrafficPermission changed on global (PUT through its REST API) until each
//!   proxy in every zone has received, and ACKed, the inbound listener carrying it; p50/p99 over
//!   every proxy of every trial, and the slowest proxy per trial.
//! - **to the first refused request**: a real kuma-dp client calling a real kuma-dp server in
//!   zone-0 on a keep-alive connection; a Deny of that client is applied on global, and we measure
//!   until the first request that is refused (403, or the connection closed by the server's
//!   proxy). The Deny is deleted again between trials.
//!
//! Usage: `target/release/policy-bench [--zones N] [--dataplanes M] [--trials T]`; prints a
//! table and writes `bench/results/policy.json`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use meshzone_bench::{
    Cp, ads_stream, dataplane, dp_server_channel, free_port, mtls_mesh, numeric_flag, percentile,
    request_status, spawn_kuma_dp, start_app, start_cp, wait_path,
};
use meshzone_xds::names::TypeUrl;
use serde_json::{Value, json};
use tokio::net::TcpStream;

const SERVICES: usize = 50;

/// When each stream first received a listener carrying the current trial's marker.
struct Trial {
    marker: Vec<u8>,
    seen: Vec<Option<Instant>>,
}

type Shared = Arc<Mutex<Trial>>;

fn lock(t: &Shared) -> anyhow::Result<std::sync::MutexGuard<'_, Trial>> {
    t.lock()
        .map_err(|_| anyhow::anyhow!("trial state poisoned"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A permission that changes nothing for traffic (an Allow for a tag nobody carries) but
/// puts `trial-<n>` into every inbound listener's RBAC principals.
fn marker_policy(n: usize) -> Value {
    json!({"type": "MeshTrafficPermission", "name": "bench-marker", "mesh": "default",
        "spec": {"targetRef": {"kind": "Mesh"},
            "from": [{"targetRef": {"kind": "MeshSubset", "tags": {"bench": format!("trial-{n}")}},
                "default": {"action": "Allow"}}]}})
}

async fn wait_for_value(
    cp: &Cp,
    path: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = cp.get(path).await?
            && ok(&v)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not seen within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Requests on one keep-alive connection until one is refused (not 200, or the connection
/// closed); when that happened.
async fn until_refused(port: u16, deadline: Duration) -> anyhow::Result<Instant> {
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await?;
    while start.elapsed() < deadline {
        match request_status(&mut conn, "/", &mut buf).await {
            Ok((200, _)) => {}
            Ok(_) | Err(_) => return Ok(Instant::now()),
        }
    }
    bail!("no request was refused within {deadline:?}")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let zones = numeric_flag("--zones", 10) as usize;
    let dps = numeric_flag("--dataplanes", 1000) as usize;
    let trials = numeric_flag("--trials", 10) as usize;
    let bin = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .to_path_buf();
    let root = tempfile::tempdir()?;
    let kds = free_port()?;
    let global = start_cp(
        &bin,
        &root.path().join("global"),
        &[
            ("KUMA_MODE", "global".into()),
            ("KUMA_MULTIZONE_GLOBAL_KDS_GRPC_PORT", kds.to_string()),
        ],
    )
    .await?;
    let ca = root.path().join("global/kuma/kuma-cp.crt");
    let mut zone_cps = Vec::new();
    for z in 0..zones {
        zone_cps.push(
            start_cp(
                &bin,
                &root.path().join(format!("zone-{z}")),
                &[
                    ("KUMA_MODE", "zone".into()),
                    ("KUMA_MULTIZONE_ZONE_NAME", format!("zone-{z}")),
                    (
                        "KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS",
                        format!("grpcs://127.0.0.1:{kds}"),
                    ),
                    (
                        "KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE",
                        ca.display().to_string(),
                    ),
                    ("KUMA_DP_SERVER_AUTHN_DP_PROXY_TYPE", "none".into()),
                ],
            )
            .await?,
        );
    }
    global.put("/meshes/default", mtls_mesh()).await?;
    for z in &zone_cps {
        wait_for_value(z, "/meshes/default", "the mTLS mesh in a zone", |m| {
            m["mtls"]["enabledBackend"] == "ca-1"
        })
        .await?;
        wait_for_value(
            z,
            "/meshes/default/meshtrafficpermissions",
            "the default permission in a zone",
            |l| l["total"].as_u64().unwrap_or(0) > 0,
        )
        .await?;
    }

    // M Dataplanes per zone, each with an open ADS stream.
    let shared: Shared = Arc::new(Mutex::new(Trial {
        marker: Vec::new(),
        seen: vec![None; zones * dps],
    }));
    for (z, cp) in zone_cps.iter().enumerate() {
        for i in 0..dps {
            let name = format!("dp-{i}");
            let mut dp = dataplane(
                &name,
                &format!("svc-{}", i % SERVICES),
                (10000 + i) as u16,
                (30000 + i) as u16,
                Some(((20000 + i) as u16, "svc-0")),
            );
            dp["networking"]["inbound"][0]["tags"]["kuma.io/protocol"] = json!("http");
            cp.put(&format!("/meshes/default/dataplanes/{name}"), dp)
                .await?;
        }
        let channel = dp_server_channel(cp).await?;
        for i in 0..dps {
            let index = z * dps + i;
            let shared = shared.clone();
            ads_stream(
                channel.clone(),
                format!("default.dp-{i}"),
                move |r| {
                    if r.type_url != TypeUrl::Listener.as_str() {
                        return;
                    }
                    let Ok(mut t) = shared.lock() else { return };
                    if t.seen[index].is_none()
                        && r.resources.iter().any(|a| contains(&a.value, &t.marker))
                    {
                        t.seen[index] = Some(Instant::now());
                    }
                },
                |_| {},
            )
            .await?;
        }
    }

    let mut to_ack = Vec::new();
    let mut slowest = Vec::new();
    for n in 0..=trials {
        {
            let mut t = lock(&shared)?;
            t.marker = format!("trial-{n}").into_bytes();
            t.seen.iter_mut().for_each(|s| *s = None);
        }
        let start = Instant::now();
        global
            .put(
                "/meshes/default/meshtrafficpermissions/bench-marker",
                marker_policy(n),
            )
            .await?;
        // Trial 0 warms up (connections, caches) and is not counted.
        let deadline = Duration::from_secs(120);
        let done = loop {
            let progress = {
                let t = lock(&shared)?;
                if t.seen.iter().all(Option::is_some) {
                    Ok(t.seen
                        .iter()
                        .flatten()
                        .map(|s| *s - start)
                        .collect::<Vec<_>>())
                } else {
                    Err((t.seen.iter().flatten().count(), t.seen.len()))
                }
            };
            match progress {
                Ok(done) => break done,
                Err((got, all)) if start.elapsed() > deadline => {
                    bail!("trial {n}: only {got}/{all} proxies got the policy")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        };
        if n > 0 {
            let ms: Vec<f64> = done.iter().map(|d| d.as_secs_f64() * 1e3).collect();
            slowest.push(ms.iter().copied().fold(0.0, f64::max));
            to_ack.extend(ms);
        }
        // Let the ACKs and insight writes of this trial settle.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A real client and server in zone-0, and a Deny applied on global.
    let kuma_dp = bin.join("kuma-dp");
    let cp = &zone_cps[0];
    let app_port = start_app().await?;
    let outbound = free_port()?;
    let server = dataplane("target", "target", free_port()?, app_port, None);
    let client = dataplane(
        "client",
        "client",
        free_port()?,
        free_port()?,
        Some((outbound, "target")),
    );
    let _server = spawn_kuma_dp(&kuma_dp, cp, &server, "none", "target", &[])?;
    let _client = spawn_kuma_dp(&kuma_dp, cp, &client, "none", "client", &[])?;
    wait_path(outbound).await?;
    let deny = json!({"type": "MeshTrafficPermission", "name": "deny-client", "mesh": "default",
        "spec": {"targetRef": {"kind": "MeshService", "name": "target"},
            "from": [{"targetRef": {"kind": "MeshSubset", "tags": {"kuma.io/service": "client"}},
                "default": {"action": "Deny"}}]}});
    let mut to_refused = Vec::new();
    for n in 0..=trials {
        wait_path(outbound).await?;
        let probe = tokio::spawn(until_refused(outbound, Duration::from_secs(60)));
        // Let the prober's requests flow before the Deny is written (a refusal before the
        // write would show as 0 ms and is a failure of the set-up, caught below).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let start = Instant::now();
        global
            .put(
                "/meshes/default/meshtrafficpermissions/deny-client",
                deny.clone(),
            )
            .await?;
        let refused_at = probe.await??;
        let refused_after = refused_at.saturating_duration_since(start).as_secs_f64() * 1e3;
        if refused_at < start {
            bail!("deny trial {n}: a request was refused before the Deny was written");
        }
        if n > 0 {
            to_refused.push(refused_after);
        }
        global
            .delete("/meshes/default/meshtrafficpermissions/deny-client")
            .await?;
    }

    let (ack_p50, ack_p99) = (percentile(&mut to_ack, 0.5), percentile(&mut to_ack, 0.99));
    let slowest_p50 = percentile(&mut slowest, 0.5);
    let (deny_p50, deny_p99) = (
        percentile(&mut to_refused, 0.5),
        percentile(&mut to_refused, 0.99),
    );
    println!(
        "{zones} zones × {dps} Dataplanes (mTLS, one ADS stream each), {trials} trials, policy written on global"
    );
    println!("{:<44} {:>10} {:>10}", "", "p50", "p99");
    println!(
        "{:<44} {:>10} {:>10}",
        "MeshTrafficPermission → ACK (every proxy)",
        format!("{ack_p50:.1} ms"),
        format!("{ack_p99:.1} ms")
    );
    println!(
        "{:<44} {:>10} {:>10}",
        "same, slowest proxy of a trial",
        format!("{slowest_p50:.1} ms"),
        "-"
    );
    println!(
        "{:<44} {:>10} {:>10}",
        "Deny → first refused request (kuma-dp)",
        format!("{deny_p50:.1} ms"),
        format!("{deny_p99:.1} ms")
    );
    let results = json!({
        "benchmark": "policy",
        "date": chrono::Utc::now().to_rfc3339(),
        "machine": format!("{} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)),
        "zones": zones, "dataplanesPerZone": dps, "trials": trials,
        "toAckP50Millis": ack_p50, "toAckP99Millis": ack_p99,
        "slowestProxyP50Millis": slowest_p50,
        "denyToRefusedP50Millis": deny_p50, "denyToRefusedP99Millis": deny_p99,
    });
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("results/policy.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")?;
    println!("wrote {}", path.display());
    Ok(())
}
