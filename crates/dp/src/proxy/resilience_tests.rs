//! TCP connect attempts (MeshRetry `tcp.maxConnectAttempt`) and the TCP idle timeout
//! (MeshTimeout `idleTimeout`) with real loopback sockets.

use std::time::Instant;

use meshzone_xds::decode::balancing::{BalancerPlan, ClusterBalancing};
use meshzone_xds::decode::{ClusterPlan, EndpointPlan, ProxyConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// An echo server.
async fn echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// A server that writes its `name` on every connection and closes it.
async fn named(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let _ = conn.write_all(name.as_bytes()).await;
        }
    });
    addr
}

/// A port nothing listens on.
async fn dead() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

fn runtime(endpoints: &[SocketAddr]) -> Runtime {
    runtime_with(endpoints, BalancerPlan::RoundRobin)
}

fn runtime_with(endpoints: &[SocketAddr], balancer: BalancerPlan) -> Runtime {
    let mut config = ProxyConfig::default();
    config.balancers.insert(
        "db".into(),
        ClusterBalancing {
            balancer,
            locality_weighted: false,
        },
    );
    config.clusters.insert(
        "db".into(),
        ClusterPlan {
            name: "db".into(),
            static_endpoints: None,
            tls: None,
            http2: false,
            original_dst: false,
            ..Default::default()
        },
    );
    config.endpoints.insert(
        "db".into(),
        endpoints
            .iter()
            .map(|a| EndpointPlan {
                address: *a,
                weight: 1,
                zone: None,
                priority: 0,
                via_zone_egress: false,
                no_active_health_check: false,
            })
            .collect(),
    );
    let (rt, problems) = Runtime::build(config, &Runtime::empty());
    assert!(problems.is_empty(), "{problems:?}");
    rt
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_attempts_move_to_a_live_endpoint() {
    let rt = runtime(&[dead().await, echo().await]);
    let stats = Stats::default();
    // One attempt: the dead endpoint (the first pick) ends the connection.
    let one = ListenerTimeouts {
        max_connect_attempts: 1,
        ..Default::default()
    };
    let (client, proxied) = tokio::io::duplex(1024);
    drop(client);
    let err = forward(
        proxied,
        "db",
        &rt,
        &stats,
        &[],
        &one,
        None,
        &Default::default(),
    )
    .await;
    assert!(err.is_err(), "{err:?}");

    // Two attempts: the second goes to the live endpoint, and bytes flow.
    let two = ListenerTimeouts {
        max_connect_attempts: 2,
        ..Default::default()
    };
    let rt = runtime(&[dead().await, echo().await]);
    let (mut client, proxied) = tokio::io::duplex(1024);
    let task = tokio::spawn(async move {
        let stats = Stats::default();
        forward(
            proxied,
            "db",
            &rt,
            &stats,
            &[],
            &two,
            None,
            &Default::default(),
        )
        .await
    });
    client.write_all(b"ping").await.expect("write");
    let mut got = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut got))
        .await
        .expect("echo in time")
        .expect("read");
    assert_eq!(&got, b"ping");
    drop(client);
    let done = tokio::time::timeout(Duration::from_secs(10), task).await;
    assert!(matches!(done, Ok(Ok(Ok(())))), "{done:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tcp_connection_is_closed_after_the_idle_timeout() {
    let rt = runtime(&[echo().await]);
    let stats = Stats::default();
    let limits = ListenerTimeouts {
        tcp_idle: Some(Duration::from_millis(300)),
        ..Default::default()
    };
    let (mut client, proxied) = tokio::io::duplex(1024);
    let started = Instant::now();
    let upstream = std::sync::OnceLock::new();
    let forwarding = forward(proxied, "db", &rt, &stats, &[], &limits, None, &upstream);
    let talk = async {
        // Activity keeps it open past the timeout…
        for _ in 0..4 {
            client.write_all(b"x").await.expect("write");
            let mut b = [0u8; 1];
            client.read_exact(&mut b).await.expect("echo");
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        // …then silence closes it: the client reads the end.
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest).await;
    };
    let (result, ()) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(forwarding, talk)
    })
    .await
    .expect("closed well before 10 s");
    assert!(result.is_ok(), "{result:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(600),
        "closed while active: {took:?}"
    );
    assert!(
        stats
            .text()
            .contains("cluster.db.upstream_cx_idle_timeout: 1"),
        "{}",
        stats.text()
    );
}

/// Which server a TCP connection forwarded with `hash` reached.
async fn reached(rt: &Runtime, hash: Option<u64>) -> String {
    let stats = Stats::default();
    let (mut client, proxied) = tokio::io::duplex(1024);
    let upstream = std::sync::OnceLock::new();
    let forwarding = forward(
        proxied,
        "db",
        rt,
        &stats,
        &[],
        &EVERY_ENDPOINT,
        hash,
        &upstream,
    );
    let read = async move {
        let mut got = Vec::new();
        let _ = client.read_to_end(&mut got).await;
        // The client's end closes too, so that the forwarding ends.
        drop(client);
        String::from_utf8_lossy(&got).to_string()
    };
    let (_, name) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(forwarding, read)
    })
    .await
    .expect("forwarded in time");
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_hash_cluster_keeps_one_source_on_one_endpoint() {
    let endpoints = [named("a").await, named("b").await, named("c").await];
    let ring = BalancerPlan::RingHash {
        min_ring_size: 1024,
        max_ring_size: 8_388_608,
        murmur: false,
    };
    let rt = runtime_with(&endpoints, ring);
    let mut chosen = std::collections::BTreeSet::new();
    for source in 0..12u8 {
        let hash = crate::balancer::fnv64(format!("10.0.0.{source}").as_bytes());
        let first = reached(&rt, Some(hash)).await;
        for _ in 0..4 {
            assert_eq!(
                reached(&rt, Some(hash)).await,
                first,
                "source {source} moved"
            );
        }
        chosen.insert(first);
    }
    assert!(
        chosen.len() >= 2,
        "sources spread over endpoints: {chosen:?}"
    );
    // The three servers are distinct: round robin reaches each.
    let rt = runtime_with(&endpoints, BalancerPlan::RoundRobin);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        seen.insert(reached(&rt, None).await);
    }
    assert_eq!(seen.len(), 3, "round robin reaches all: {seen:?}");
}
