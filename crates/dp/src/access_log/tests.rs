//! The sinks over real files and sockets: lines arrive in order, a collector that comes up
//! late gets every line queued meanwhile, and a full channel drops and counts.

use std::time::{Duration, Instant};

use meshzone_xds::decode::access_log::format::parse;
use meshzone_xds::decode::access_log::{AccessLogPlan, LineFormat, LogFormat, LogSink};
use tokio::io::AsyncReadExt;

use super::*;

fn plan(sink: LogSink) -> AccessLogPlan {
    AccessLogPlan {
        sink,
        format: LogFormat {
            line: LineFormat::Text(parse("%RESPONSE_CODE% %BYTES_SENT%\n").expect("format")),
            omit_empty: false,
        },
    }
}

fn entry(code: u16) -> Entry {
    Entry {
        start: std::time::SystemTime::now(),
        duration: Duration::ZERO,
        request: None,
        response_code: code,
        response_headers: None,
        response_flags: "",
        bytes_received: 0,
        bytes_sent: u64::from(code) + 1,
        upstream_host: None,
        upstream_cluster: String::new(),
        downstream_remote: None,
        downstream_local: None,
        protocol: None,
        peer_uri_sans: Vec::new(),
    }
}

async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback port nobody listens on (yet).
fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[tokio::test]
async fn a_file_sink_appends_every_line_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("access.log");
    let stats = Arc::new(Stats::default());
    let loggers = loggers(&[plan(LogSink::File(path.display().to_string()))], &stats);
    assert_eq!(loggers.len(), 1);
    for code in [200, 404, 503] {
        write_all(&loggers, &entry(code));
    }
    let text = until("three lines", || {
        std::fs::read_to_string(&path)
            .ok()
            .filter(|t| t.lines().count() == 3)
    })
    .await;
    assert_eq!(text, "200 201\n404 405\n503 504\n");
    // A second listener writing to the same file shares the writer.
    let again = super::loggers(&[plan(LogSink::File(path.display().to_string()))], &stats);
    assert!(Arc::ptr_eq(&again[0].sink, &loggers[0].sink));
}

#[tokio::test]
async fn a_late_collector_gets_every_queued_line() {
    let port = unused_port();
    let stats = Arc::new(Stats::default());
    let loggers = loggers(&[plan(LogSink::Tcp(format!("127.0.0.1:{port}")))], &stats);
    for code in 200..205 {
        write_all(&loggers, &entry(code));
    }
    // Refused at least once before the collector is up.
    until("a refused connect", || {
        stats
            .text()
            .contains("access_logs.tcp.connect_failed")
            .then_some(())
    })
    .await;
    let collector = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("collector binds");
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(10), collector.accept())
        .await
        .expect("sink reconnects")
        .expect("accept");
    let mut got = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.lines().count() < 5 && Instant::now() < deadline {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .expect("lines arrive")
            .expect("read");
        got.push_str(std::str::from_utf8(&buf[..n]).expect("utf-8"));
    }
    assert_eq!(got, "200 201\n201 202\n202 203\n203 204\n204 205\n");
}

#[tokio::test]
async fn a_full_sink_drops_and_counts_without_waiting() {
    // A collector that never answers: connects are refused, lines pile up.
    let port = unused_port();
    let stats = Arc::new(Stats::default());
    let loggers = loggers(&[plan(LogSink::Tcp(format!("127.0.0.1:{port}")))], &stats);
    let started = Instant::now();
    for _ in 0..CAPACITY + 100 {
        write_all(&loggers, &entry(200));
    }
    // Generous bound: offering never waits for the collector.
    assert!(started.elapsed() < Duration::from_secs(5));
    let text = stats.text();
    let dropped: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{DROPPED}: ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((99..=100).contains(&dropped), "{text}");
}

#[tokio::test]
async fn lines_queued_when_the_last_user_goes_away_are_still_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("last.log");
    let stats = Arc::new(Stats::default());
    let loggers = loggers(&[plan(LogSink::File(path.display().to_string()))], &stats);
    for code in 200..300 {
        write_all(&loggers, &entry(code));
    }
    drop(loggers);
    let text = until("every queued line", || {
        std::fs::read_to_string(&path)
            .ok()
            .filter(|t| t.lines().count() == 100)
    })
    .await;
    assert!(text.starts_with("200 201\n") && text.ends_with("299 300\n"));
}
