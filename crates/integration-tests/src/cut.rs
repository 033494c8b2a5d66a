//! What the link-cut tests share (`tests/zone_cut.rs`, `tests/egress_zone_cut.rs`): policies
//! applied on global, waiting until they reached a zone and its clients, bounded open-loop load
//! from several clients with a cut placed inside its schedule, and what each client saw (which
//! instance answered each request, and when).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::lab::{Lab, LoadGen};
use crate::{ok, wait_for};

/// Unix time in ms.
pub fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// A client under load: who it is (for messages), its host and its admin port.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub who: &'static str,
    pub host: &'static str,
    pub admin: u16,
}

/// The clients of the cut tests, in zone-2, each with an outbound to `echo` on
/// [`ECHO_OUTBOUND`]: a kuma-dp sidecar on host `z2-client` (198.18.2.20) and an Envoy 1.40
/// sidecar on host `z2-envoy` (198.18.2.21), both configured by zone-2's CP.
pub const ZONE_2_CLIENTS: [Client; 2] = [
    Client {
        who: "kuma-dp",
        host: "z2-client",
        admin: 9901,
    },
    Client {
        who: "Envoy",
        host: "z2-envoy",
        admin: 9902,
    },
];

/// The clients' outbound port to `echo`.
pub const ECHO_OUTBOUND: u16 = 20012;

/// Starts [`ZONE_2_CLIENTS`] (their hosts must exist).
pub fn start_zone_2_clients(lab: &mut Lab) {
    let dataplane = format!(
        "type: Dataplane\nmesh: default\nname: client-2\nnetworking:\n  address: 198.18.2.20\n  inbound:\n  - port: 10021\n    servicePort: 8081\n    tags:\n      kuma.io/service: client-2\n  outbound:\n  - port: {ECHO_OUTBOUND}\n    tags:\n      kuma.io/service: echo\n"
    );
    lab.sidecar("z2-client", "2", "client-2", &dataplane, &[]);
    lab.envoy_sidecar(
        "z2-envoy",
        "2",
        &serde_json::json!({
            "type": "Dataplane", "mesh": "default", "name": "envoy-client-2",
            "networking": {
                "address": "198.18.2.21",
                "inbound": [{"port": 10021, "servicePort": 8081, "tags": {"kuma.io/service": "envoy-client-2"}}],
                "outbound": [{"port": ECHO_OUTBOUND, "tags": {"kuma.io/service": "echo"}}]
            }
        }),
        ZONE_2_CLIENTS[1].admin,
    );
}

/// The load and the cut: `before` of load, then `cut` with the link cut, then `after` healed.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub rate: u64,
    pub timeout_ms: u64,
    pub before: Duration,
    pub cut: Duration,
    pub after: Duration,
}

/// Applies every YAML document of `yaml` on global with kumactl.
pub fn apply_on_global(lab: &Lab, yaml: &str) {
    for (i, doc) in yaml.split("\n---\n").enumerate() {
        let file = lab.file("global", &format!("policy-{i}.yaml"), doc);
        ok(&lab.kumactl("global", &["apply", "-f", &file]));
    }
}

/// A proxy's `/config_dump` from its admin port (empty when it does not answer).
pub fn config_dump(lab: &Lab, host: &str, admin: u16) -> String {
    lab.curl(host, &[&format!("http://127.0.0.1:{admin}/config_dump")])
        .unwrap_or_default()
}

/// Waits until zone CP host `cp` lists resources of each of `types` in mesh `default`, then
/// until each client's config dump contains all its needles.
pub fn wait_arrived(
    lab: &Lab,
    cp: &str,
    types: &[&str],
    clients: &[Client],
    needles: &[&[&str]],
    what: &str,
    deadline: Duration,
) {
    for t in types {
        wait_for(&format!("{t} on {cp}"), deadline, || {
            lab.curl(cp, &[&format!("http://127.0.0.1:5681/meshes/default/{t}")])
                .ok()
                .and_then(|b| serde_json::from_str::<Value>(&b).ok())
                .filter(|v| v["total"].as_u64().unwrap_or(0) > 0)
        });
    }
    for (c, needles) in clients.iter().zip(needles) {
        wait_for(&format!("{what} in {}'s config", c.who), deadline, || {
            let dump = config_dump(lab, c.host, c.admin);
            needles.iter().all(|n| dump.contains(n)).then_some(())
        });
    }
}

/// Waits until a handful of requests from every client to `url` all answer, from each of
/// `instances`.
pub fn wait_answered_by(
    lab: &Lab,
    clients: &[Client],
    url: &str,
    instances: &[&str],
    deadline: Duration,
) {
    for c in clients {
        wait_for(
            &format!("{} answered by {instances:?}", c.who),
            deadline,
            || {
                let seen = lab.split(c.host, url, 8 * instances.len());
                (!seen.contains_key("FAILED") && instances.iter().all(|i| seen.contains_key(*i)))
                    .then_some(())
            },
        );
    }
}

/// Load from every client to `url` on `schedule`, with `cut("-I")` after `before` and
/// `cut("-D")` after `cut`; what each client saw, in `clients` order.
pub fn run(
    lab: &Lab,
    clients: &[Client],
    url: &str,
    schedule: &Schedule,
    cut: impl Fn(&str),
) -> Vec<Seen> {
    let secs = (schedule.before + schedule.cut + schedule.after)
        .as_secs()
        .to_string();
    let (rate, timeout) = (schedule.rate.to_string(), schedule.timeout_ms.to_string());
    let start = unix_ms();
    let gens: Vec<LoadGen> = clients
        .iter()
        .map(|c| LoadGen::start(lab, c.host, c.who, &["load", url, &rate, &secs, &timeout]))
        .collect();
    // The fault is placed inside the load's fixed schedule (an open loop): these sleeps time
    // the fault, they do not wait for anything.
    std::thread::sleep(schedule.before);
    let cut_at = unix_ms();
    cut("-I");
    std::thread::sleep(schedule.cut);
    cut("-D");
    let heal = unix_ms();
    gens.into_iter()
        .map(|g| {
            let load = g.finish();
            let start = u128::from(load["start_unix_ms"].as_u64().unwrap_or(0)).max(start);
            Seen {
                load,
                start,
                cut: cut_at,
                heal,
            }
        })
        .collect()
}

/// What one client saw: the load generator's report, and the Unix ms of the load's start, the
/// cut and the heal.
#[derive(Debug)]
pub struct Seen {
    pub load: Value,
    pub start: u128,
    pub cut: u128,
    pub heal: u128,
}

impl Seen {
    /// `(start offset from the load's start, body)` of each answer.
    pub fn answers(&self) -> Vec<(u128, String)> {
        self.load["answers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| {
                Some((
                    u128::from(a[0].as_u64()?),
                    a[1].as_str().unwrap_or("").to_string(),
                ))
            })
            .collect()
    }

    /// `instance`'s share of the requests started in `[from, to)` (Unix ms), failures counted
    /// in the whole, and how many started.
    pub fn share(&self, instance: &str, from: u128, to: u128) -> (f64, u64) {
        let started = |at: u128| (from..to).contains(&(self.start + at));
        let answers = self.answers();
        let hits = answers
            .iter()
            .filter(|(at, b)| started(*at) && b == instance)
            .count();
        let failed = self.failures().filter(|at| started(*at)).count();
        let all = answers.iter().filter(|(at, _)| started(*at)).count() + failed;
        let share = if all == 0 {
            0.0
        } else {
            hits as f64 / all as f64
        };
        (share, all as u64)
    }

    /// Start offsets of the failed requests.
    fn failures(&self) -> impl Iterator<Item = u128> + '_ {
        self.load["failures"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| u128::from(f["at_ms"].as_u64().unwrap_or(0)))
    }

    /// Failed and lost requests.
    pub fn failed(&self) -> u64 {
        self.load["failed"].as_u64().unwrap_or(u64::MAX) + self.load["lost"].as_u64().unwrap_or(0)
    }

    /// From the cut to the start of the last request that failed (traffic was re-routed then);
    /// 0 when none failed.
    pub fn reroute_ms(&self) -> u128 {
        self.failures()
            .map(|at| self.start + at)
            .max()
            .map_or(0, |last| last.saturating_sub(self.cut))
    }

    /// From the heal to the start of the first request `instance` answered after it.
    pub fn recover_ms(&self, instance: &str) -> Option<u128> {
        self.answers()
            .iter()
            .filter(|(_, b)| b == instance)
            .map(|(at, _)| self.start + at)
            .filter(|at| *at >= self.heal)
            .min()
            .map(|at| at - self.heal)
    }
}
