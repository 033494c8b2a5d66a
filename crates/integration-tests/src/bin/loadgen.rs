//! A bounded load generator and config sampler for the chaos tests, run inside a host's network
//! namespace (`ip netns exec <ns> loadgen …`) so its sockets are that host's.
//!
//! `loadgen load <url> <rate/s> <seconds> <timeout-ms>`: `rate × seconds` HTTP/1.1 GETs, one
//! new connection each, started on a fixed schedule whether or not earlier ones finished (open
//! loop, so a hang shows as a timeout and does not slow the schedule). Prints one JSON object:
//! counts, answers by body, failure reasons, each failure's start offset and duration, and each
//! answer's start offset and body.
//!
//! `loadgen sample <url> <interval-ms> <seconds>`: GETs a kuma-dp `/config_dump` on a fixed
//! interval and prints, per cluster, every change of its endpoint set (with its offset), so a
//! test can check that an endpoint set never shrank.
//!
//! Both stop on their own after `seconds` (plus one timeout) and send only to the given URL.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// Failures listed one by one (the counts cover them all).
const MAX_LISTED: usize = 5_000;

struct Target {
    addr: SocketAddr,
    host: String,
    path: String,
}

fn target(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = host
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    Ok(Target {
        addr,
        host: host.to_string(),
        path: path.to_string(),
    })
}

/// One GET with a new connection and an overall deadline: the body of a 200, or why not.
fn get(t: &Target, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| "timeout".to_string())
    };
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => "timeout".to_string(),
        k => format!("{k:?}"),
    };
    let mut s = TcpStream::connect_timeout(&t.addr, left()?).map_err(io)?;
    s.set_write_timeout(Some(left()?)).map_err(io)?;
    write!(
        s,
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        t.path, t.host
    )
    .map_err(io)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        s.set_read_timeout(Some(left()?)).map_err(io)?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return Err(io(e)),
        }
    }
    let text = String::from_utf8_lossy(&out);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(if out.is_empty() {
            "closed without an answer".into()
        } else {
            "truncated answer".into()
        });
    };
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        // kuma-dp says why in one line (`no healthy upstream`, `upstream connect error`, …).
        let why: String = body.lines().next().unwrap_or("").chars().take(80).collect();
        return Err(format!("status {status}: {why}")
            .trim_end_matches([':', ' '])
            .to_string());
    }
    Ok(body.to_string())
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn load(t: Target, rate: u32, seconds: u64, timeout: Duration) -> Value {
    let total = u64::from(rate) * seconds;
    let start_unix_ms = unix_ms();
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    let t = std::sync::Arc::new(t);
    for i in 0..total {
        let at = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let (tx, t) = (tx.clone(), t.clone());
        std::thread::spawn(move || {
            let began = Instant::now();
            let result = get(&t, timeout);
            let _ = tx.send((began.duration_since(start), began.elapsed(), result));
        });
    }
    drop(tx);
    let mut ok = 0u64;
    let mut failed = 0u64;
    let mut bodies: BTreeMap<String, u64> = BTreeMap::new();
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut answers = Vec::new();
    let mut max_ok_ms = 0u128;
    let mut max_failed_ms = 0u128;
    // Every request ends by its own deadline; this one only guards against a stuck thread.
    let guard = Instant::now() + timeout + Duration::from_secs(5);
    while let Ok((at, took, result)) =
        rx.recv_timeout(guard.saturating_duration_since(Instant::now()))
    {
        match result {
            Ok(body) => {
                ok += 1;
                max_ok_ms = max_ok_ms.max(took.as_millis());
                if answers.len() < MAX_LISTED {
                    answers.push(json!([at.as_millis(), body.trim()]));
                }
                *bodies.entry(body.trim().to_string()).or_default() += 1;
            }
            Err(reason) => {
                failed += 1;
                max_failed_ms = max_failed_ms.max(took.as_millis());
                if failures.len() < MAX_LISTED {
                    failures.push(json!({
                        "at_ms": at.as_millis(),
                        "took_ms": took.as_millis(),
                        "reason": reason,
                    }));
                }
                *reasons.entry(reason).or_default() += 1;
            }
        }
    }
    json!({
        "start_unix_ms": start_unix_ms,
        "requests": total,
        "ok": ok,
        "failed": failed,
        // Requests that never reported back (none unless a thread got stuck).
        "lost": total - ok - failed,
        "bodies": bodies,
        "reasons": reasons,
        "failures": failures,
        // `[start offset ms, body]` of each answered request, in the order they ended.
        "answers": answers,
        "max_ok_ms": max_ok_ms,
        "max_failed_ms": max_failed_ms,
    })
}

/// Sorted `address` of each endpoint, per cluster, of a kuma-dp config dump.
fn endpoint_sets(dump: &Value) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    if let Some(clusters) = dump["endpoints"].as_object() {
        for (name, list) in clusters {
            let mut set: Vec<String> = list
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["address"].as_str().map(str::to_string))
                .collect();
            set.sort();
            out.insert(name.clone(), set);
        }
    }
    out
}

fn sample(t: Target, interval: Duration, seconds: u64) -> Value {
    let start_unix_ms = unix_ms();
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut last: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut changes: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let (mut samples, mut errors) = (0u64, 0u64);
    let mut i = 0u32;
    while Instant::now() < end {
        let at = start + interval * i;
        i += 1;
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let Some(dump) = get(&t, Duration::from_secs(2))
            .ok()
            .and_then(|b| serde_json::from_str::<Value>(&b).ok())
        else {
            errors += 1;
            continue;
        };
        samples += 1;
        let now = endpoint_sets(&dump);
        for name in now.keys().chain(last.keys()) {
            if now.get(name) != last.get(name) || !changes.contains_key(name) {
                let set = now.get(name).cloned().unwrap_or_default();
                let list = changes.entry(name.clone()).or_default();
                if list.last().map(|v| &v["endpoints"]) != Some(&json!(set)) {
                    list.push(json!({"at_ms": start.elapsed().as_millis(), "endpoints": set}));
                }
            }
        }
        last = now;
    }
    json!({
        "start_unix_ms": start_unix_ms,
        "samples": samples,
        "errors": errors,
        "clusters": changes,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| -> u64 {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| usage())
    };
    let url = args.get(1).map(String::as_str).unwrap_or_else(|| usage());
    let t = target(url).unwrap_or_else(|e| {
        eprintln!("loadgen: {e}");
        std::process::exit(2)
    });
    let out = match args.first().map(String::as_str) {
        Some("load") => load(
            t,
            u32::try_from(num(2)).unwrap_or_else(|_| usage()).max(1),
            num(3),
            Duration::from_millis(num(4)),
        ),
        Some("sample") => sample(t, Duration::from_millis(num(2).max(1)), num(3)),
        _ => usage(),
    };
    println!("{out}");
}

fn usage() -> ! {
    eprintln!(
        "usage: loadgen load <url> <rate/s> <seconds> <timeout-ms> | loadgen sample <url> <interval-ms> <seconds>"
    );
    std::process::exit(2)
}
