//! Several hosts on one machine: one network namespace per host, joined by veth pairs to a
//! bridge in a private "switch" namespace, addresses from 198.18.0.0/15. Processes are started
//! inside a host's namespace (`ip netns exec`), stopped or signalled by name, and everything is
//! torn down on drop. Nothing is ever sent from the root namespace to a non-loopback address.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{binary, ok, stat_value, wait_for};

pub struct Lab {
    prefix: String,
    switch: String,
    hosts: Vec<String>,
    children: Vec<(String, Child)>,
    dir: tempfile::TempDir,
}

pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

pub fn must(program: &str, args: &[&str]) {
    let o = run(program, args);
    assert!(
        o.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A Mesh `default` with builtin mTLS; `routing` is appended as is (YAML at the top level).
pub fn mtls_mesh(routing: &str) -> String {
    format!(
        "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n{routing}"
    )
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Lab {
    pub fn new() -> Lab {
        let prefix = format!("mz{}", std::process::id() % 100_000);
        let switch = format!("{prefix}-sw");
        must("ip", &["netns", "add", &switch]);
        must(
            "ip",
            &["-n", &switch, "link", "add", "br0", "type", "bridge"],
        );
        must("ip", &["-n", &switch, "link", "set", "br0", "up"]);
        let dir = tempfile::tempdir().expect("tmp");
        // kuma-dp may run as another user on a transparent-proxy host: it must read its files.
        must("chmod", &["755", &dir.path().display().to_string()]);
        Lab {
            prefix,
            switch,
            hosts: Vec::new(),
            children: Vec::new(),
            dir,
        }
    }

    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// A host: its own namespace, loopback up, one interface on the bridge with `ip`/15.
    pub fn host(&mut self, host: &str, ip: &str) {
        let ns = self.ns(host);
        let port = format!("p{}", self.hosts.len());
        must("ip", &["netns", "add", &ns]);
        self.hosts.push(ns.clone());
        must("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        must(
            "ip",
            &[
                "-n",
                &self.switch,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &ns,
            ],
        );
        must(
            "ip",
            &[
                "-n",
                &self.switch,
                "link",
                "set",
                &port,
                "master",
                "br0",
                "up",
            ],
        );
        must(
            "ip",
            &["-n", &ns, "addr", "add", &format!("{ip}/15"), "dev", "eth0"],
        );
        must("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        // Like any host: a default route (VIPs of 240.0.0.0/4 must be routable for the
        // connect() that iptables then redirects to the proxy).
        must("ip", &["-n", &ns, "route", "add", "default", "dev", "eth0"]);
        std::fs::create_dir_all(self.home(host)).expect("home");
        must("chmod", &["755", &self.home(host).display().to_string()]);
    }

    pub fn home(&self, host: &str) -> PathBuf {
        self.dir.path().join(host)
    }

    /// The directory of the processes' logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, host: &str, name: &str, text: &str) -> String {
        let p = self.home(host).join(name);
        std::fs::write(&p, text).expect("write");
        p.display().to_string()
    }

    /// `program` (a workspace binary when its name starts with `kuma`) on `host`, `HOME` set to
    /// the host's directory.
    pub fn command(
        &self,
        host: &str,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Command {
        let path = if program.starts_with("kuma") {
            binary(program)
        } else {
            PathBuf::from(program)
        };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(host)])
            .arg(path)
            .args(args)
            .env("HOME", self.home(host));
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs a command on a host and waits for it.
    pub fn exec(&self, host: &str, program: &str, args: &[&str]) -> Output {
        self.command(host, program, args, &[])
            .output()
            .expect("ip netns exec")
    }

    /// Starts a long-running process on a host; `name` names its log (appended to, so a
    /// restarted process keeps its history) and lets it be stopped or signalled.
    pub fn spawn(
        &mut self,
        host: &str,
        name: &str,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .expect("log");
        // `ip netns exec` execs the program: the child's pid is the program's own.
        let child = self
            .command(host, program, args, env)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn");
        self.children.push((name.to_string(), child));
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    pub fn running(&self, name: &str) -> bool {
        self.children.iter().any(|(n, _)| n == name)
    }

    /// SIGKILL, and waits for the process.
    pub fn stop(&mut self, name: &str) {
        if let Some(i) = self.children.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.children.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal (`TERM`, `INT`, …) without waiting.
    pub fn signal(&self, name: &str, signal: &str) {
        let (_, child) = self
            .children
            .iter()
            .find(|(n, _)| n == name)
            .expect("child");
        must("kill", &[&format!("-{signal}"), &child.id().to_string()]);
    }

    /// Waits up to `timeout` for a process to exit on its own; `None` if it is still running
    /// (it is left running).
    pub fn try_wait_exit(&mut self, name: &str, timeout: Duration) -> Option<ExitStatus> {
        let i = self.children.iter().position(|(n, _)| n == name)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.children[i].1.try_wait() {
                self.children.remove(i);
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (20 s at most) for a process to exit on its own.
    pub fn wait_exit(&mut self, name: &str) -> ExitStatus {
        self.try_wait_exit(name, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("timed out after 20s waiting for {name} to exit"))
    }

    /// `curl` on a host; the body, or why not.
    pub fn curl(&self, host: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["-fsS", "--max-time", "5"];
        all.extend_from_slice(args);
        let o = self.exec(host, "curl", &all);
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    }

    /// `kumactl` on a host, with the host's kumactl config file.
    pub fn kumactl(&self, host: &str, args: &[&str]) -> Output {
        let config = self.home(host).join("kumactl.yaml").display().to_string();
        let mut all = vec!["--config-file", config.as_str()];
        all.extend_from_slice(args);
        self.exec(host, "kumactl", &all)
    }

    /// Points the host's kumactl at the control plane on its own loopback, once the API answers.
    pub fn configure_kumactl(&self, host: &str) {
        wait_for("control plane API", Duration::from_secs(30), || {
            self.kumactl(
                host,
                &[
                    "config",
                    "control-planes",
                    "add",
                    "--overwrite",
                    "--name",
                    host,
                    "--address",
                    "http://127.0.0.1:5681",
                ],
            )
            .status
            .success()
            .then_some(())
        });
    }

    pub fn stat(&self, host: &str, admin_port: u16, name: &str) -> u64 {
        let stats = self
            .curl(host, &[&format!("http://127.0.0.1:{admin_port}/stats")])
            .unwrap_or_default();
        stat_value(&stats, name)
    }

    /// `KUMA_MODE=global kuma-cp run` on host `global` (process `global`), durable store in the
    /// host's work dir.
    pub fn global_cp(&mut self) {
        self.global_cp_with(&[]);
    }

    /// The global CP with `extra` environment on top.
    pub fn global_cp_with(&mut self, extra: &[(&str, &str)]) {
        let mut env = vec![("KUMA_MODE", "global")];
        env.extend_from_slice(extra);
        self.spawn("global", "global", "kuma-cp", &["run"], &env);
    }

    /// Zone `zone-<z>`'s CP on host `z<z>-cp` (process `zone-<z>`), connected to global at
    /// `global_ip` and trusting host `global`'s KDS certificate; `extra` environment on top.
    pub fn zone_cp(&mut self, z: &str, global_ip: &str, extra: &[(&str, &str)]) {
        let ca = self.home("global").join(".kuma").join("kuma-cp.crt");
        wait_for("global CP certificate", Duration::from_secs(30), || {
            ca.exists().then_some(())
        });
        let ca = ca.display().to_string();
        let (zone, address) = (format!("zone-{z}"), format!("grpcs://{global_ip}:5685"));
        let mut env = vec![
            ("KUMA_MODE", "zone"),
            ("KUMA_MULTIZONE_ZONE_NAME", zone.as_str()),
            ("KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS", address.as_str()),
            ("KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE", ca.as_str()),
        ];
        env.extend_from_slice(extra);
        self.spawn(&format!("z{z}-cp"), &zone, "kuma-cp", &["run"], &env);
    }

    /// The zone CP's certificate (`z<z>-cp`'s work dir), for `--ca-cert-file` on other hosts.
    pub fn cp_cert(&self, z: &str) -> String {
        let path = self
            .home(&format!("z{z}-cp"))
            .join(".kuma")
            .join("kuma-cp.crt");
        wait_for("zone CP certificate", Duration::from_secs(30), || {
            std::fs::read_to_string(&path).ok()
        })
    }

    /// A zone proxy (`kind`: ingress or egress) of zone `z` on `host`, with a zone token and its
    /// resource YAML: `kuma-dp run --proxy-type=… --cp-address --dataplane-token-file
    /// --ca-cert-file --dataplane-file`, the zone CP's certificate copied over.
    #[allow(clippy::too_many_arguments)]
    pub fn zone_proxy(
        &mut self,
        host: &str,
        name: &str,
        kind: &str,
        z: &str,
        token: &str,
        yaml: &str,
        extra: &[&str],
    ) {
        let token = self.file(host, &format!("{name}.token"), token);
        let ca = self.file(host, "kuma-cp.crt", &self.cp_cert(z));
        let dp = self.file(host, &format!("{name}.yaml"), yaml);
        let mut args = vec![
            "run".to_string(),
            format!("--proxy-type={kind}"),
            format!("--cp-address=https://198.18.{z}.1:5678"),
            format!("--dataplane-token-file={token}"),
            format!("--ca-cert-file={ca}"),
            format!("--dataplane-file={dp}"),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.spawn(host, name, "kuma-dp", &args, &[]);
    }

    /// A Dataplane on `host` in zone `z` (its CP is host `z<z>-cp` at 198.18.<z>.1): token from
    /// the zone CP, its certificate copied over, `kuma-dp run` (under `wrapper`, e.g. setpriv
    /// for another uid), waited until ready on admin port 9901. The process is `<name>-dp`.
    pub fn sidecar(&mut self, host: &str, z: &str, name: &str, yaml: &str, wrapper: &[&str]) {
        let cp = format!("z{z}-cp");
        let token = ok(&self.kumactl(&cp, &["generate", "dataplane-token", "--name", name]));
        let token = self.file(host, &format!("{name}.token"), token.trim());
        let ca = self.file(host, "kuma-cp.crt", &self.cp_cert(z));
        let dp = self.file(host, &format!("{name}.yaml"), yaml);
        let kuma_dp = binary("kuma-dp").display().to_string();
        let mut args: Vec<String> = wrapper.iter().map(|s| s.to_string()).collect();
        args.extend([
            kuma_dp,
            "run".into(),
            format!("--cp-address=https://198.18.{z}.1:5678"),
            format!("--dataplane-token-file={token}"),
            format!("--ca-cert-file={ca}"),
            format!("--dataplane-file={dp}"),
        ]);
        let (program, rest) = args.split_first().expect("program");
        let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
        let log = format!("{name}-dp");
        self.spawn(host, &log, program, &rest, &[]);
        wait_for("sidecar ready", Duration::from_secs(30), || {
            self.curl(host, &["http://127.0.0.1:9901/ready"])
                .ok()
                .or_else(|| {
                    let text = self.log(&log);
                    assert!(!text.contains("kuma-dp: "), "{text}");
                    None
                })
        });
    }

    /// An Envoy 1.40 sidecar on `host` in zone `z` for the Dataplane `dataplane` (JSON, mesh
    /// `default`): token from the zone CP, ADS to 198.18.<z>.1:5678 trusting the CP's
    /// certificate, admin on loopback `admin_port`; waited until ready. The process is
    /// `<name>-envoy`.
    pub fn envoy_sidecar(
        &mut self,
        host: &str,
        z: &str,
        dataplane: &serde_json::Value,
        admin_port: u16,
    ) {
        let name = dataplane["name"]
            .as_str()
            .expect("a named Dataplane")
            .to_string();
        let cp = format!("z{z}-cp");
        let token = ok(&self.kumactl(&cp, &["generate", "dataplane-token", "--name", &name]));
        let ca = self.file(host, "kuma-cp.crt", &self.cp_cert(z));
        let cp_ip = format!("198.18.{z}.1");
        let bootstrap = crate::envoy_bootstrap(
            &format!("default.{name}"),
            &name,
            serde_json::json!({ "dataplane.resource": dataplane.to_string() }),
            token.trim(),
            admin_port,
            (&cp_ip, 5678),
            Path::new(&ca),
        );
        let file = self.file(
            host,
            &format!("{name}.bootstrap.json"),
            &bootstrap.to_string(),
        );
        let envoy = crate::envoy_binary().display().to_string();
        let log = format!("{name}-envoy");
        self.spawn(
            host,
            &log,
            &envoy,
            &[
                "-c",
                &file,
                "--concurrency",
                "1",
                "--use-dynamic-base-id",
                "--log-level",
                "warn",
            ],
            &[],
        );
        wait_for("Envoy sidecar ready", Duration::from_secs(60), || {
            self.curl(host, &[&format!("http://127.0.0.1:{admin_port}/ready")])
                .ok()
                .filter(|b| b.contains("LIVE"))
        });
    }

    /// A static HTTP server on `ip:8080` (process `<name>-app`) that answers `<name>\n`.
    pub fn echo_app(&mut self, host: &str, ip: &str, name: &str) {
        let site = self.home(host).join("site");
        std::fs::create_dir_all(&site).expect("site");
        std::fs::write(site.join("index.html"), format!("{name}\n")).expect("index");
        let site = site.display().to_string();
        self.spawn(
            host,
            &format!("{name}-app"),
            "python3",
            &[
                "-m",
                "http.server",
                "8080",
                "--bind",
                ip,
                "--directory",
                &site,
            ],
            &[],
        );
    }

    /// Counts the answers of `n` requests made by one curl (URL globbing: one request each);
    /// the unanswered ones under `FAILED`.
    pub fn split(&self, host: &str, url: &str, n: usize) -> BTreeMap<String, usize> {
        let glob = format!("{url}?[1-{n}]");
        let o = self.exec(host, "curl", &["-fs", "--max-time", "60", &glob]);
        let body = String::from_utf8_lossy(&o.stdout);
        let mut out = BTreeMap::new();
        for line in body.lines().filter(|l| !l.is_empty()) {
            *out.entry(line.trim().to_string()).or_insert(0) += 1;
        }
        let answered: usize = out.values().sum();
        if answered < n {
            out.insert("FAILED".into(), n - answered);
        }
        out
    }

    /// The name of the cluster of a kuma-dp on `host` (admin on 9901) whose endpoints include
    /// `endpoint` (`ip:port`); panics naming the configuration when there is none.
    pub fn cluster_with_endpoint(&self, host: &str, endpoint: &str) -> String {
        let dump: serde_json::Value = serde_json::from_str(
            &self
                .curl(host, &["http://127.0.0.1:9901/config_dump"])
                .expect("config dump"),
        )
        .expect("json");
        dump["endpoints"]
            .as_object()
            .and_then(|m| {
                m.iter()
                    .find(|(_, l)| l.to_string().contains(endpoint))
                    .map(|(k, _)| k.clone())
            })
            .unwrap_or_else(|| panic!("no cluster with {endpoint} on {host}: {dump}"))
    }

    /// iptables in a host's namespace; panics when the rule is refused.
    pub fn iptables(&self, host: &str, args: &[&str]) {
        let ns = self.ns(host);
        let mut all = vec!["netns", "exec", ns.as_str(), "iptables", "-w"];
        all.extend_from_slice(args);
        must("ip", &all);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (name, _) in &self.children {
                let log = self.log(name);
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!("--- {name} (last lines) ---");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.hosts.iter().chain(std::iter::once(&self.switch)) {
            let _ = run("ip", &["netns", "delete", ns]);
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{ns}"));
        }
        // MESHZONE_LAB_KEEP=1: keep the logs and files of a failed run; `always`: of every run.
        let keep = std::env::var("MESHZONE_LAB_KEEP").ok();
        if keep.as_deref() == Some("always") || (std::thread::panicking() && keep.is_some()) {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tmp"));
            eprintln!("lab files kept in {}", dir.keep().display());
        }
    }
}

/// A `loadgen` process on a host (`loadgen load …` or `loadgen sample …`, see its docs); its
/// JSON when it ends on its own. Killed on drop.
pub struct LoadGen {
    what: String,
    child: Option<Child>,
}

impl LoadGen {
    pub fn start(lab: &Lab, host: &str, what: &str, args: &[&str]) -> LoadGen {
        let loadgen = binary("loadgen").display().to_string();
        let child = lab
            .command(host, &loadgen, args, &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn loadgen");
        LoadGen {
            what: what.to_string(),
            child: Some(child),
        }
    }

    /// Waits for the generator (it stops by itself after its duration).
    pub fn finish(mut self) -> serde_json::Value {
        let child = self.child.take().expect("running");
        let out = child.wait_with_output().expect("loadgen output");
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{}: bad loadgen output ({e}): {:?}", self.what, out))
    }
}

impl Drop for LoadGen {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Like `wait_for` (30 s), but the panic shows the last failure.
pub fn wait_for_or<T>(
    what: &str,
    last: &std::cell::RefCell<String>,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    for _ in 0..150 {
        if let Some(v) = check() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "timed out waiting for {what}; last failure: {}",
        last.borrow()
    );
}
