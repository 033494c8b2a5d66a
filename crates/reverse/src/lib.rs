//! Reverse calls: the side that accepted a connection asks the side that dialed it.
//!
//! Global cannot dial zones, and a zone CP should not dial its proxies (they may sit behind NAT,
//! and their admin API listens on localhost only). So the peer opens a stream and keeps it open;
//! the server sends requests down it and the peer answers each one on the way up. A
//! [`ReverseCalls`] holds the open stream of every peer, gives each request a fresh id and hands
//! the answer carrying that id back to whoever asked.
//!
//! One peer has at most one stream: a newer stream of the same peer replaces the older one, and
//! requests that went out on a stream that ended learn it at once ([`CallError::Gone`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshzone_lifecycle::Shutdown;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

/// Why no answer came.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The peer has no open stream.
    #[error("not connected")]
    Offline,
    /// The stream ended before the answer came.
    #[error("went away before answering")]
    Gone,
    #[error("did not answer within {0:?}")]
    Timeout(Duration),
}

type Requests<Q> = mpsc::Sender<Result<Q, Status>>;

struct State<Q, A> {
    /// The open stream of each peer, with an id telling two streams of one peer apart.
    peers: HashMap<String, (u64, Requests<Q>)>,
    /// Requests waiting for an answer, with the stream they went out on.
    pending: HashMap<String, (u64, oneshot::Sender<A>)>,
    next: u64,
}

/// The open streams of many peers and the requests waiting on them. Cheap to clone.
pub struct ReverseCalls<Q, A> {
    state: Arc<Mutex<State<Q, A>>>,
}

impl<Q, A> Clone for ReverseCalls<Q, A> {
    fn clone(&self) -> Self {
        ReverseCalls {
            state: self.state.clone(),
        }
    }
}

impl<Q, A> Default for ReverseCalls<Q, A> {
    fn default() -> Self {
        ReverseCalls {
            state: Arc::new(Mutex::new(State {
                peers: HashMap::new(),
                pending: HashMap::new(),
                next: 0,
            })),
        }
    }
}

impl<Q, A> ReverseCalls<Q, A>
where
    Q: Send + 'static,
    A: Send + 'static,
{
    fn lock(&self) -> std::sync::MutexGuard<'_, State<Q, A>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves `peer`'s stream of answers until it ends (or the shutdown begins, when the peer
    /// is sent `on_shutdown`); `id_of` reads which request an answer answers. Returns the
    /// requests to send down to the peer.
    pub fn attach<S>(
        &self,
        peer: String,
        mut answers: S,
        id_of: fn(&A) -> &str,
        shutdown: Shutdown,
        on_shutdown: Status,
    ) -> mpsc::Receiver<Result<Q, Status>>
    where
        S: Stream<Item = Result<A, Status>> + Unpin + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(16);
        let stream_id = {
            let mut s = self.lock();
            s.next += 1;
            let id = s.next;
            s.peers.insert(peer.clone(), (id, tx.clone()));
            id
        };
        let me = self.clone();
        shutdown.clone().spawn(async move {
            loop {
                match shutdown.unless_stopped(answers.next()).await {
                    Some(Some(Ok(answer))) => {
                        let waiting = me.lock().pending.remove(id_of(&answer));
                        if let Some((_, waiting)) = waiting {
                            let _ = waiting.send(answer);
                        }
                    }
                    Some(_) => break,
                    None => {
                        let _ = tx.send(Err(on_shutdown)).await;
                        break;
                    }
                }
            }
            let mut s = me.lock();
            if s.peers.get(&peer).is_some_and(|(id, _)| *id == stream_id) {
                s.peers.remove(&peer);
            }
            // Nobody will answer what went out on this stream: the waiters learn it now.
            s.pending.retain(|_, (id, _)| *id != stream_id);
        });
        rx
    }

    /// Whether `peer` has an open stream.
    pub fn is_attached(&self, peer: &str) -> bool {
        self.lock().peers.contains_key(peer)
    }

    /// Sends `request(id)` to `peer` and waits up to `timeout` for the answer carrying `id`.
    pub async fn call(
        &self,
        peer: &str,
        request: impl FnOnce(String) -> Q,
        timeout: Duration,
    ) -> Result<A, CallError> {
        let id = uuid::Uuid::new_v4().to_string();
        let (answer_tx, answer_rx) = oneshot::channel();
        let sender = {
            let mut s = self.lock();
            let Some((stream_id, sender)) = s.peers.get(peer).cloned() else {
                return Err(CallError::Offline);
            };
            s.pending.insert(id.clone(), (stream_id, answer_tx));
            sender
        };
        if sender.send(Ok(request(id.clone()))).await.is_err() {
            self.lock().pending.remove(&id);
            return Err(CallError::Gone);
        }
        match tokio::time::timeout(timeout, answer_rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(CallError::Gone),
            Err(_) => {
                self.lock().pending.remove(&id);
                Err(CallError::Timeout(timeout))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Ask(String, &'static str);
    #[derive(Debug)]
    struct Reply(String, String);

    fn id_of(r: &Reply) -> &str {
        &r.0
    }

    fn ask(what: &'static str) -> impl FnOnce(String) -> Ask {
        move |id| Ask(id, what)
    }

    type Calls = ReverseCalls<Ask, Reply>;

    /// A peer that answers each request with `<what>!`, until it is told to stop.
    fn peer(calls: &Calls, name: &str, shutdown: &Shutdown) -> mpsc::Sender<()> {
        let (up_tx, up_rx) = mpsc::channel::<Result<Reply, Status>>(4);
        let mut down = calls.attach(
            name.to_string(),
            tokio_stream::wrappers::ReceiverStream::new(up_rx),
            id_of,
            shutdown.clone(),
            Status::unavailable("stopping"),
        );
        let (stop_tx, mut stop_rx) = mpsc::channel(1);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(Ok(Ask(id, what))) = down.recv() => {
                        let _ = up_tx.send(Ok(Reply(id, format!("{what}!")))).await;
                    }
                    _ = stop_rx.recv() => break,
                }
            }
        });
        stop_tx
    }

    #[tokio::test]
    async fn answers_go_to_whoever_asked() {
        let shutdown = Shutdown::default();
        let calls = Calls::default();
        let _a = peer(&calls, "a", &shutdown);
        let _b = peer(&calls, "b", &shutdown);
        let t = Duration::from_secs(5);
        let (x, y) = tokio::join!(
            calls.call("a", ask("stats"), t),
            calls.call("b", ask("clusters"), t)
        );
        assert_eq!(x.map(|r| r.1), Ok("stats!".to_string()));
        assert_eq!(y.map(|r| r.1), Ok("clusters!".to_string()));
    }

    #[tokio::test]
    async fn an_unknown_or_ended_peer_is_said_so() {
        let shutdown = Shutdown::default();
        let calls = Calls::default();
        let t = Duration::from_secs(5);
        let err = calls.call("nobody", ask("x"), t).await;
        assert_eq!(err.map(|r| r.1), Err(CallError::Offline));

        let stop = peer(&calls, "a", &shutdown);
        assert!(calls.is_attached("a"));
        let _ = stop.send(()).await;
        // The peer task dropped its end: the stream ends and the peer is forgotten.
        let deadline = tokio::time::Instant::now() + t;
        while calls.is_attached("a") {
            assert!(
                tokio::time::Instant::now() < deadline,
                "peer still attached"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let err = calls.call("a", ask("x"), t).await;
        assert_eq!(err.map(|r| r.1), Err(CallError::Offline));
    }

    #[tokio::test]
    async fn a_silent_peer_times_out() {
        let shutdown = Shutdown::default();
        let calls = Calls::default();
        let (_up_tx, up_rx) = mpsc::channel::<Result<Reply, Status>>(4);
        let _down = calls.attach(
            "mute".into(),
            tokio_stream::wrappers::ReceiverStream::new(up_rx),
            id_of,
            shutdown.clone(),
            Status::unavailable("stopping"),
        );
        let t = Duration::from_millis(50);
        let err = calls.call("mute", ask("x"), t).await;
        assert_eq!(err.map(|r| r.1), Err(CallError::Timeout(t)));
    }
}
