//! Inspecting a zone's proxies from global (a config dump, the policy rules): global cannot dial
//! zones, so each zone keeps an `Inspect` stream open on which global sends requests and the zone
//! answers. Global's side is the [`InspectHub`]; the zone's side answers with a [`LocalDumpFn`]
//! or a [`LocalRulesFn`]. A request names what it wants ([`CONFIG_DUMP`], [`RULES`]); a zone that
//! does not know a kind answers with an error, so new kinds stay compatible with older zones.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshzone_lifecycle::Shutdown;
use meshzone_model::{ResourceKey, ResourceType};
use meshzone_store::Store;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::{Stream, StreamExt};
use tonic::Status;
use tracing::{debug, info};

use crate::proto::{InspectRequest, InspectResponse};
use crate::sync::global_name;
use crate::wire::{key_from_wire, key_to_wire};

/// How long global waits for a zone's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The zone's lookup of a connected proxy's configuration, by its local key.
pub type LocalDumpFn = Arc<dyn Fn(&ResourceKey) -> Option<Value> + Send + Sync>;

/// The zone's `_rules` answer for one of its Dataplanes, by its local key; `Err` says why not.
pub type LocalRulesFn = Arc<
    dyn Fn(ResourceKey) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send>>
        + Send
        + Sync,
>;

/// Request kind: what the zone's DP server last sent to the proxy.
pub const CONFIG_DUMP: &str = "config-dump";
/// Request kind: the policies' rules on the proxy (`GET .../dataplanes/{name}/_rules`).
pub const RULES: &str = "rules";

/// Why global got no answer about a zone's proxy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InspectError {
    #[error("zone {0:?} is not connected to global: its proxies cannot be inspected now")]
    Offline(String),
    #[error("zone {0:?} went away")]
    Gone(String),
    #[error("zone {zone:?} did not answer within {after:?}")]
    Timeout { zone: String, after: Duration },
    /// The zone answered with an error (its own words, which name the zone where it matters).
    #[error("{message}")]
    Refused { zone: String, message: String },
    #[error("zone {zone:?} sent an unreadable answer: {message}")]
    Unreadable { zone: String, message: String },
}

impl InspectError {
    /// The zone could not be reached (rather than answering that it cannot help).
    pub fn unavailable(&self) -> bool {
        matches!(
            self,
            InspectError::Offline(_) | InspectError::Gone(_) | InspectError::Timeout { .. }
        )
    }
}

type Requests = mpsc::Sender<Result<InspectRequest, Status>>;

#[derive(Default)]
struct Hub {
    /// The open Inspect stream of each zone, with an id telling streams of one zone apart.
    zones: HashMap<String, (u64, Requests)>,
    /// Requests waiting for an answer, with the stream they went out on.
    pending: HashMap<String, (u64, oneshot::Sender<InspectResponse>)>,
    next: u64,
}

/// Global's side: routes requests to the zone that owns a proxy and waits for the answer.
#[derive(Clone, Default)]
pub struct InspectHub {
    hub: Arc<Mutex<Hub>>,
}

impl InspectHub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves one zone's Inspect stream until it ends (the hello was already read).
    pub(crate) fn attach<S>(
        &self,
        zone: String,
        mut answers: S,
        shutdown: Shutdown,
    ) -> mpsc::Receiver<Result<InspectRequest, Status>>
    where
        S: Stream<Item = Result<InspectResponse, Status>> + Unpin + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(16);
        let stream_id = {
            let mut h = self.lock();
            h.next += 1;
            let id = h.next;
            h.zones.insert(zone.clone(), (id, tx.clone()));
            id
        };
        info!(zone, "zone inspect stream open");
        let me = self.clone();
        shutdown.clone().spawn(async move {
            loop {
                match shutdown.unless_stopped(answers.next()).await {
                    Some(Some(Ok(answer))) => {
                        if let Some((_, waiting)) = me.lock().pending.remove(&answer.id) {
                            let _ = waiting.send(answer);
                        }
                    }
                    Some(_) => break,
                    None => {
                        let _ = tx.send(Err(crate::global::shutting_down())).await;
                        break;
                    }
                }
            }
            {
                let mut h = me.lock();
                if h.zones.get(&zone).is_some_and(|(id, _)| *id == stream_id) {
                    h.zones.remove(&zone);
                }
                // Nobody will answer what went out on this stream: the waiters learn it now.
                h.pending.retain(|_, (id, _)| *id != stream_id);
            }
            debug!(zone, "zone inspect stream closed");
        });
        rx
    }

    /// The configuration of proxy `key` (as global names it) from the zone that owns it.
    pub async fn config_dump(&self, zone: &str, key: &ResourceKey) -> Result<Value, String> {
        self.ask(zone, CONFIG_DUMP, key)
            .await
            .map_err(|e| e.to_string())
    }

    /// The `_rules` of proxy `key` (as global names it), computed by the zone that owns it and
    /// returned as the zone wrote it.
    pub async fn rules(&self, zone: &str, key: &ResourceKey) -> Result<Value, InspectError> {
        self.ask(zone, RULES, key).await
    }

    async fn ask(&self, zone: &str, what: &str, key: &ResourceKey) -> Result<Value, InspectError> {
        let id = uuid::Uuid::new_v4().to_string();
        let (answer_tx, answer_rx) = oneshot::channel();
        let sender = {
            let mut h = self.lock();
            let Some((stream_id, sender)) = h.zones.get(zone).cloned() else {
                return Err(InspectError::Offline(zone.to_string()));
            };
            h.pending.insert(id.clone(), (stream_id, answer_tx));
            sender
        };
        let request = InspectRequest {
            id: id.clone(),
            what: what.into(),
            key: Some(key_to_wire(key)),
        };
        if sender.send(Ok(request)).await.is_err() {
            self.lock().pending.remove(&id);
            return Err(InspectError::Gone(zone.to_string()));
        }
        let answer = match tokio::time::timeout(ANSWER_TIMEOUT, answer_rx).await {
            Ok(Ok(a)) => a,
            Ok(Err(_)) => return Err(InspectError::Gone(zone.to_string())),
            Err(_) => {
                self.lock().pending.remove(&id);
                return Err(InspectError::Timeout {
                    zone: zone.to_string(),
                    after: ANSWER_TIMEOUT,
                });
            }
        };
        if !answer.error.is_empty() {
            return Err(InspectError::Refused {
                zone: zone.to_string(),
                message: answer.error,
            });
        }
        serde_json::from_slice(&answer.body).map_err(|e| InspectError::Unreadable {
            zone: zone.to_string(),
            message: e.to_string(),
        })
    }
}

/// How a zone answers each request kind; a kind without an answerer is refused.
#[derive(Clone, Default)]
pub struct LocalAnswers {
    pub config_dump: Option<LocalDumpFn>,
    pub rules: Option<LocalRulesFn>,
}

/// The zone's answer to one request: the proxy named `<zone>.<name>` on global is found among
/// the zone's own resources (names may have been shortened with a hash on global).
pub(crate) async fn answer(
    zone: &str,
    store: &Store,
    answers: &LocalAnswers,
    request: &InspectRequest,
) -> InspectResponse {
    let mut response = InspectResponse {
        id: request.id.clone(),
        zone: zone.to_string(),
        ..Default::default()
    };
    let result = async {
        if request.what != CONFIG_DUMP && request.what != RULES {
            return Err(format!("cannot show {:?}", request.what));
        }
        let key = request
            .key
            .as_ref()
            .and_then(key_from_wire)
            .ok_or("the request names no known resource")?;
        if key.resource_type != ResourceType::Dataplane {
            return Err(format!(
                "cannot show {:?} of a {}",
                request.what, key.resource_type
            ));
        }
        let local = store
            .list(ResourceType::Dataplane, Some(&key.mesh))
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|r| global_name(zone, &r.meta.name) == key.name)
            .ok_or_else(|| format!("{key} is not a Dataplane of zone {zone:?}"))?;
        if request.what == RULES {
            let rules = answers
                .rules
                .as_ref()
                .ok_or_else(|| format!("zone {zone:?} cannot compute policy rules"))?;
            return rules(local.key()).await;
        }
        let dump = answers
            .config_dump
            .as_ref()
            .ok_or("this zone control plane serves no proxies")?;
        dump(&local.key())
            .ok_or_else(|| format!("{} is not connected to zone {zone:?}", local.key()))
    }
    .await;
    match result {
        Ok(v) => response.body = serde_json::to_vec(&v).unwrap_or_default(),
        Err(e) => response.error = e,
    }
    response
}

#[cfg(test)]
mod tests;
