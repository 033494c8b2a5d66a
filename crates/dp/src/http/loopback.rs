//! Test fixtures: an HTTP listener routing everything to one cluster, and kuma-dp's HTTP path
//! for one listener of a runtime served on a loopback port, admitting every request (no
//! permissions).

use std::net::SocketAddr;
use std::sync::Arc;

use meshzone_xds::decode::ListenerPlan;
use meshzone_xds::decode::routes::PathMatch;
use tokio::net::TcpListener;

use crate::runtime::Runtime;
use crate::stats::Stats;

/// Serves `listener` of `rt` on 127.0.0.1; its address and the stats it counts into.
pub(crate) async fn serve_listener(rt: Arc<Runtime>, listener: &str) -> (SocketAddr, Arc<Stats>) {
    let (tx, latest) = tokio::sync::watch::channel(rt.clone());
    let guard = crate::rbac::RequestGuard {
        listener: listener.into(),
        sans: Arc::from(Vec::<String>::new()),
        started: None,
        latest,
        peer: None,
        downstream: Default::default(),
    };
    let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    let stats = Arc::new(Stats::default());
    let (name, serve_stats) = (listener.to_string(), stats.clone());
    tokio::spawn(async move {
        let _keep = tx;
        while let Ok((conn, _)) = socket.accept().await {
            tokio::spawn(super::serve(
                conn,
                name.clone(),
                rt.clone(),
                serve_stats.clone(),
                guard.clone(),
            ));
        }
    });
    (addr, stats)
}

/// An HTTP listener `out` routing every request to `cluster`.
pub(crate) fn listener_to(cluster: &str) -> ListenerPlan {
    use crate::routes::tests::fixtures::{forward, route};
    ListenerPlan {
        name: "out".into(),
        address: "127.0.0.1:1".parse().expect("addr"),
        cluster: cluster.into(),
        http: true,
        routes: vec![route(
            "all",
            PathMatch::Prefix("/".into()),
            forward(&[(cluster, 1)], vec![]),
        )],
        ..Default::default()
    }
}
