//! Connection limits of one cluster (Envoy's circuit breakers, `LimitsPlan`): at most
//! `max_requests` requests in flight; over HTTP/1, where each request in flight holds a
//! connection, at most `max_connections` of them run and up to `max_pending_requests` more
//! wait for a connection; at most `max_retries` retries in flight; at most `max_connections`
//! TCP connections. What is over a limit fails at once: a 503 with `x-envoy-overloaded: true`
//! for HTTP (`upstream_rq_pending_overflow`), a closed connection for TCP
//! (`upstream_cx_overflow`), as Envoy does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use meshzone_xds::decode::LimitsPlan;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limits in force for one cluster and what is in flight under them.
pub struct Limits {
    plan: LimitsPlan,
    http2: bool,
    requests: Arc<AtomicU32>,
    pending: Arc<AtomicU32>,
    retries: Arc<AtomicU32>,
    tcp: Arc<AtomicU32>,
    connections: Arc<Semaphore>,
}

/// Which limit a request or connection ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// `max_requests`, or `max_pending_requests` with every connection busy.
    Requests,
    /// `max_connections` (TCP).
    Connections,
}

/// Holds one unit of a counter until dropped.
pub struct Slot {
    counter: Arc<AtomicU32>,
    _connection: Option<OwnedSemaphorePermit>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes one unit of `counter` if it stays within `max`.
fn take(counter: &Arc<AtomicU32>, max: u32) -> Option<Slot> {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot {
            counter: counter.clone(),
            _connection: None,
        })
}

impl Limits {
    pub fn new(plan: LimitsPlan, http2: bool) -> Self {
        Limits {
            plan,
            http2,
            requests: Arc::default(),
            pending: Arc::default(),
            retries: Arc::default(),
            tcp: Arc::default(),
            connections: Arc::new(Semaphore::new(plan.max_connections as usize)),
        }
    }

    /// Admits one HTTP request (waiting for a connection over HTTP/1 when all are busy and the
    /// pending queue has room); the slot is held until the response is done.
    pub async fn request(&self) -> Result<Slot, Overflow> {
        let mut slot = take(&self.requests, self.plan.max_requests).ok_or(Overflow::Requests)?;
        if self.http2 {
            return Ok(slot); // one multiplexed connection
        }
        let permit = match self.connections.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let _waiting = take(&self.pending, self.plan.max_pending_requests)
                    .ok_or(Overflow::Requests)?;
                self.connections
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| Overflow::Requests)?
            }
        };
        slot._connection = Some(permit);
        Ok(slot)
    }

    /// Whether every HTTP/1 connection is busy (a new request would have to wait).
    pub fn connections_busy(&self) -> bool {
        !self.http2 && self.connections.available_permits() == 0
    }

    /// Admits one retry (another endpoint after a failed attempt).
    pub fn retry(&self) -> Option<Slot> {
        take(&self.retries, self.plan.max_retries)
    }

    /// Admits one TCP connection.
    pub fn connection(&self) -> Result<Slot, Overflow> {
        take(&self.tcp, self.plan.max_connections).ok_or(Overflow::Connections)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: u32, pending: u32, requests: u32) -> Limits {
        Limits::new(
            LimitsPlan {
                max_connections,
                max_pending_requests: pending,
                max_requests: requests,
                max_retries: 1,
            },
            false,
        )
    }

    #[tokio::test]
    async fn requests_over_the_limits_overflow() {
        let l = limits(1, 1, 10);
        let first = l.request().await.expect("a connection");
        assert!(l.connections_busy());
        // The second waits for the connection (pending); a third has no room.
        let waiting = l.request();
        tokio::pin!(waiting);
        assert!(
            futures_poll_once(waiting.as_mut()).await.is_none(),
            "waits for a connection"
        );
        assert_eq!(
            l.request().await.err(),
            Some(Overflow::Requests),
            "pending queue full"
        );
        drop(first);
        assert!(
            waiting.await.is_ok(),
            "the freed connection serves the waiting request"
        );

        let l = limits(10, 10, 2);
        let _a = l.request().await.expect("1");
        let _b = l.request().await.expect("2");
        assert_eq!(
            l.request().await.err(),
            Some(Overflow::Requests),
            "max_requests"
        );
    }

    #[test]
    fn tcp_connections_and_retries_are_bounded() {
        let l = limits(2, 0, 0);
        let a = l.connection().expect("1");
        let _b = l.connection().expect("2");
        assert_eq!(l.connection().err(), Some(Overflow::Connections));
        drop(a);
        assert!(l.connection().is_ok(), "a closed connection frees its slot");
        let r = l.retry().expect("one retry");
        assert!(l.retry().is_none());
        drop(r);
        assert!(l.retry().is_some());
    }

    /// Polls a future once: `Some` if it finished.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        let mut f = f;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
