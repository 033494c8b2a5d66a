//! Stopping control planes the way systemd and Kubernetes do (SIGTERM) while zones and proxies
//! are connected: the CP ends its streams, exits 0, and a restart on the same store takes over.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use meshzone_integration_tests::{
    ControlPlane, DataPlane, EchoServer, apply, free_port, host_dirs, http_get, line_of, ok,
    start_global, stderr, wait_for, zone_with_store,
};

/// Generous bounds for a loaded CI machine; the configured shutdown deadline is 4 s.
const EXIT_WITHIN: Duration = Duration::from_secs(10);

/// Whether an insight (JSON) holds a subscription that was closed before `t`: by the stopping
/// process itself, not by the next start's clean-up of stale subscriptions.
fn closed_before(insight: &str, t: chrono::DateTime<chrono::Utc>) -> bool {
    let v: serde_json::Value = serde_json::from_str(insight).expect("insight JSON");
    v["subscriptions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| {
            s["disconnectTime"]
                .as_str()
                .and_then(|d| chrono::DateTime::parse_from_rfc3339(d).ok())
                .is_some_and(|d| d < t)
        })
}

fn zone_state(global: &ControlPlane, zone: &str) -> String {
    line_of(&global.kumactl_ok(&["inspect", "zones"]), zone)
}

fn wait_zone(global: &ControlPlane, zone: &str, state: &str) -> Duration {
    let start = Instant::now();
    wait_for(
        &format!("{zone} {state} on global"),
        Duration::from_secs(20),
        || zone_state(global, zone).contains(state).then_some(()),
    );
    start.elapsed()
}

#[test]
fn global_stops_on_sigterm_with_zones_connected_and_takes_them_back_on_restart() {
    let root = tempfile::tempdir().expect("tempdir");
    let dirs = host_dirs(root.path(), &["global", "zone-1", "zone-2"]);
    let kds_port = free_port();
    let mut global = start_global(&dirs[0], kds_port, &[("KUMA_STORE_TYPE", "sqlite")]);
    let _zone_1 = zone_with_store(&dirs[1], "zone-1", &global, kds_port, "sqlite");
    let mut zone_2 = zone_with_store(&dirs[2], "zone-2", &global, kds_port, "sqlite");
    wait_zone(&global, "zone-1", "Online");
    wait_zone(&global, "zone-2", "Online");

    let status = global.sigterm(EXIT_WITHIN);
    assert!(status.success(), "global exited with {status}");
    let stopped = chrono::Utc::now();

    // Same store, same ports: both zones come back to the new process.
    global.start_again();
    let back_1 = wait_zone(&global, "zone-1", "Online");
    let back_2 = wait_zone(&global, "zone-2", "Online");
    eprintln!("zones Online on the restarted global after {back_1:?} and {back_2:?}");
    // The stopping global recorded the zones' streams it closed.
    for zone in ["zone-1", "zone-2"] {
        let insight = global.kumactl_ok(&["get", "zone-insight", zone, "-o", "json"]);
        assert!(closed_before(&insight, stopped), "{insight}");
    }

    // Zone lifecycle acts again on the new global: disable, re-enable...
    for (enabled, state) in [(false, "Offline"), (true, "Online")] {
        let yaml = format!("type: Zone\nname: zone-2\nspec:\n  enabled: {enabled}\n");
        let o = apply(&global, &dirs[0], "zone-2.yaml", &yaml);
        assert!(o.status.success(), "{}", stderr(&o));
        wait_zone(&global, "zone-2", state);
    }

    // ...and an offline zone can be deleted.
    let status = zone_2.sigterm(EXIT_WITHIN);
    assert!(status.success(), "zone-2 exited with {status}");
    wait_zone(&global, "zone-2", "Offline");
    global.kumactl_ok(&["delete", "zone", "zone-2"]);
    let zones = global.kumactl_ok(&["get", "zones"]);
    assert!(!zones.contains("zone-2"), "{zones}");
    assert!(zones.contains("zone-1"), "{zones}");

    // SIGINT (Ctrl-C) stops it as well.
    let _ = std::process::Command::new("kill")
        .args(["-INT", &global.child.id().to_string()])
        .status();
    let child = &mut global.child;
    let status = wait_for("global to exit on SIGINT", EXIT_WITHIN, || {
        child.try_wait().ok().flatten()
    });
    assert!(status.success(), "global exited with {status}");
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

fn dataplane(name: &str, service: &str, inbound: u16, app: u16, outbound: Option<u16>) -> String {
    let mut y = format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: {inbound}\n      servicePort: {app}\n      tags:\n        kuma.io/service: {service}\n"
    );
    if let Some(port) = outbound {
        y.push_str(&format!(
            "  outbound:\n    - port: {port}\n      tags:\n        kuma.io/service: echo\n"
        ));
    }
    y
}

fn proxy(cp: &ControlPlane, dir: &Path, name: &str, yaml: &str) -> DataPlane {
    let file = write(dir, &format!("{name}.yaml"), yaml);
    let token = ok(&cp.kumactl(&["generate", "dataplane-token", "--name", name]));
    let token = write(dir, &format!("{name}.token"), token.trim());
    let mut dp = DataPlane::start(cp, &file, Some(&token));
    dp.wait_ready();
    dp
}

/// Sends one request after another through `port` until stopped; counts requests and failures.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (st, se, fa, er) = (stop.clone(), sent.clone(), failed.clone(), errors.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: at most 10 minutes' worth of requests.
            for _ in 0..30_000 {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                se.fetch_add(1, Ordering::SeqCst);
                if let Err(e) = http_get(port) {
                    fa.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut v) = er.lock() {
                        v.push(e);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Load {
            stop,
            sent,
            failed,
            errors,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let errors = self.errors.lock().map(|v| v.clone()).unwrap_or_default();
        (
            self.sent.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
            errors,
        )
    }
}

#[test]
fn zone_cp_stops_on_sigterm_with_proxies_connected_and_traffic_never_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let mut cp = ControlPlane::start(dir, &[("KUMA_STORE_TYPE", "sqlite")]);
    cp.configure_kumactl();
    let mesh = "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n    - name: ca-1\n      type: builtin\n";
    ok(&cp.kumactl(&[
        "apply",
        "-f",
        &write(dir, "mesh.yaml", mesh).display().to_string(),
    ]));
    let echo_1 = EchoServer::start("echo-1");
    let client_app = EchoServer::start("client-app");
    let out = free_port();
    let _server_1 = proxy(
        &cp,
        dir,
        "echo-1",
        &dataplane("echo-1", "echo", free_port(), echo_1.port, None),
    );
    let _client = proxy(
        &cp,
        dir,
        "client-1",
        &dataplane(
            "client-1",
            "client",
            free_port(),
            client_app.port,
            Some(out),
        ),
    );
    wait_for("traffic through the mesh", Duration::from_secs(20), || {
        http_get(out).ok().filter(|b| b.contains("echo-1"))
    });

    let load = Load::start(out);
    let status = cp.sigterm(EXIT_WITHIN);
    assert!(status.success(), "zone CP exited with {status}");
    let stopped = chrono::Utc::now();
    // Its DNS port and every other port are free again: the same settings start at once.
    cp.start_again();
    wait_for("both proxies Online again", Duration::from_secs(30), || {
        let t = cp.kumactl_ok(&["inspect", "dataplanes"]);
        let online = |name: &str| {
            t.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(name) && l.contains("Online"))
        };
        (online("echo-1") && online("client-1")).then_some(())
    });
    // The stopping CP recorded the proxies' streams it closed.
    for proxy in ["echo-1", "client-1"] {
        let insight = cp.kumactl_ok(&["get", "dataplane-insight", proxy, "-o", "json"]);
        assert!(closed_before(&insight, stopped), "{insight}");
    }
    // The client follows the new CP: an instance registered there receives its traffic.
    let echo_2 = EchoServer::start("echo-2");
    let _server_2 = proxy(
        &cp,
        dir,
        "echo-2",
        &dataplane("echo-2", "echo", free_port(), echo_2.port, None),
    );
    wait_for(
        "traffic reaches the new instance",
        Duration::from_secs(20),
        || (echo_2.served() > 0).then_some(()),
    );
    let (sent, failed, errors) = load.finish();
    eprintln!("{sent} requests through the CP's stop and restart, {failed} failed");
    assert!(sent > 20, "too few requests to show anything: {sent}");
    assert_eq!(failed, 0, "requests failed: {errors:?}");
}

/// A client that sent half a request and stays silent: it keeps the API's graceful shutdown
/// waiting (as a stuck peer would).
fn stuck_client(cp: &ControlPlane) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", cp.api_port)).expect("connect");
    s.write_all(b"GET /meshes HTTP/1.1\r\nHost: stuck\r\n")
        .expect("write");
    // Connections are accepted in order: once a later one is answered, the server holds this one.
    let answered = reqwest::blocking::get(format!("{}/meshes", cp.api_url()))
        .is_ok_and(|r| r.status().is_success());
    assert!(answered, "the API did not answer");
    s
}

#[test]
fn the_shutdown_deadline_bounds_a_stuck_peer_and_a_second_signal_exits_at_once() {
    let root = tempfile::tempdir().expect("tempdir");
    let dirs = host_dirs(root.path(), &["deadline", "second-signal"]);
    // A short deadline: the CP exits 0 when it passes, stuck peer or not.
    let mut cp = ControlPlane::start(
        &dirs[0],
        &[("KUMA_GENERAL_GRACEFUL_SHUTDOWN_TIMEOUT", "1s")],
    );
    let _stuck = stuck_client(&cp);
    let status = cp.sigterm(EXIT_WITHIN);
    assert!(status.success(), "exited with {status}");

    // A long deadline: the second signal ends it at once, with 130.
    let mut cp = ControlPlane::start(
        &dirs[1],
        &[("KUMA_GENERAL_GRACEFUL_SHUTDOWN_TIMEOUT", "10m")],
    );
    let _stuck = stuck_client(&cp);
    let pid = cp.child.id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    // The shutdown has begun once /ready no longer says OK.
    let ready = format!("http://127.0.0.1:{}/ready", cp.diagnostics_port);
    wait_for("the shutdown to begin", EXIT_WITHIN, || {
        (!reqwest::blocking::get(&ready).is_ok_and(|r| r.status().is_success())).then_some(())
    });
    assert!(
        cp.child.try_wait().ok().flatten().is_none(),
        "the stuck client should hold the graceful shutdown"
    );
    let status = cp.sigterm(EXIT_WITHIN);
    assert_eq!(status.code(), Some(130), "exited with {status}");
}
