//! MeshTimeout `http.maxConnectionDuration` (a cluster's `common_http_protocol_options.
//! max_connection_duration`): a pooled upstream connection older than the limit is not used for
//! another request. Each connection stamps its responses with when it was opened
//! ([`Opened`], set by the connector); the request that finds its connection past the limit
//! completes on it, and the connection is then retired from the pool (poisoned), so it closes.
//! Envoy also closes an expired connection that sits idle at the deadline; here an idle one
//! serves at most the one request that takes it from the pool after the deadline.

use std::time::{Duration, Instant};

use hyper_util::client::legacy::connect::CaptureConnection;

use crate::stats::Stats;

/// When an upstream connection was opened (a response extension).
#[derive(Debug, Clone, Copy)]
pub struct Opened(pub Instant);

/// Whether a connection opened at `opened` has outlived `max` at `now`.
pub fn expired(opened: Instant, max: Duration, now: Instant) -> bool {
    now.saturating_duration_since(opened) >= max
}

/// Retires the connection that carried a response with `extensions` when it is older than `max`.
pub fn retire_if_expired(
    extensions: &hyper::http::Extensions,
    captured: &CaptureConnection,
    max: Duration,
    stats: &Stats,
    cluster: &str,
) {
    let Some(Opened(opened)) = extensions.get::<Opened>() else {
        return;
    };
    if !expired(*opened, max, Instant::now()) {
        return;
    }
    if let Some(connection) = captured.connection_metadata().as_ref() {
        connection.poison();
        stats.inc(format!(
            "cluster.{cluster}.upstream_cx_max_duration_reached"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_expires_at_its_limit() {
        let opened = Instant::now();
        let max = Duration::from_secs(2);
        for (after, expired_then) in [(0, false), (1999, false), (2000, true), (5000, true)] {
            let now = opened + Duration::from_millis(after);
            assert_eq!(expired(opened, max, now), expired_then, "{after} ms");
        }
        // A clock read before the connection was opened: not expired.
        assert!(!expired(opened + max, max, opened));
    }
}
