//! TCP connect attempts (MeshRetry `tcp.maxConnectAttempt`) and the TCP idle timeout
//! (MeshTimeout `idleTimeout`) with real loopback sockets.

use std::time::Instant;

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

/// A port nothing listens on.
async fn dead() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

fn runtime(endpoints: &[SocketAddr]) -> Runtime {
    let mut config = ProxyConfig::default();
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
    let err = forward(proxied, "db", &rt, &stats, &[], &one).await;
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
        forward(proxied, "db", &rt, &stats, &[], &two).await
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
    let forwarding = forward(proxied, "db", &rt, &stats, &[], &limits);
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
