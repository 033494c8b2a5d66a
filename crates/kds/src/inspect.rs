//! Inspecting a zone's proxies from global (e.g. a config dump): global cannot dial zones, so
//! each zone keeps an `Inspect` stream open on which global sends requests and the zone answers.
//! Global's side is the [`InspectHub`]; the zone's side answers with a [`LocalDumpFn`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshzone_lifecycle::Shutdown;
use meshzone_model::{ResourceKey, ResourceType};
use meshzone_store::Store;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tonic::{Status, Streaming};
use tracing::{debug, info};

use crate::proto::{InspectRequest, InspectResponse};
use crate::sync::global_name;
use crate::wire::{key_from_wire, key_to_wire};

/// How long global waits for a zone's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The zone's lookup of a connected proxy's configuration, by its local key.
pub type LocalDumpFn = Arc<dyn Fn(&ResourceKey) -> Option<Value> + Send + Sync>;

type Requests = mpsc::Sender<Result<InspectRequest, Status>>;

#[derive(Default)]
struct Hub {
    /// The open Inspect stream of each zone, with an id telling streams of one zone apart.
    zones: HashMap<String, (u64, Requests)>,
    pending: HashMap<String, oneshot::Sender<InspectResponse>>,
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
    pub(crate) fn attach(
        &self,
        zone: String,
        mut answers: Streaming<InspectResponse>,
        shutdown: Shutdown,
    ) -> mpsc::Receiver<Result<InspectRequest, Status>> {
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
                match shutdown.unless_stopped(answers.message()).await {
                    Some(Ok(Some(answer))) => {
                        if let Some(waiting) = me.lock().pending.remove(&answer.id) {
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
            }
            debug!(zone, "zone inspect stream closed");
        });
        rx
    }

    /// The configuration of proxy `key` (as global names it) from the zone that owns it.
    pub async fn config_dump(&self, zone: &str, key: &ResourceKey) -> Result<Value, String> {
        let id = uuid::Uuid::new_v4().to_string();
        let (answer_tx, answer_rx) = oneshot::channel();
        let sender = {
            let mut h = self.lock();
            let Some((_, sender)) = h.zones.get(zone).cloned() else {
                return Err(format!(
                    "zone {zone:?} is not connected to global: its proxies cannot be inspected now"
                ));
            };
            h.pending.insert(id.clone(), answer_tx);
            sender
        };
        let request = InspectRequest {
            id: id.clone(),
            what: "config-dump".into(),
            key: Some(key_to_wire(key)),
        };
        if sender.send(Ok(request)).await.is_err() {
            self.lock().pending.remove(&id);
            return Err(format!("zone {zone:?} went away"));
        }
        let answer = match tokio::time::timeout(ANSWER_TIMEOUT, answer_rx).await {
            Ok(Ok(a)) => a,
            _ => {
                self.lock().pending.remove(&id);
                return Err(format!(
                    "zone {zone:?} did not answer within {ANSWER_TIMEOUT:?}"
                ));
            }
        };
        if !answer.error.is_empty() {
            return Err(answer.error);
        }
        serde_json::from_slice(&answer.body)
            .map_err(|e| format!("zone {zone:?} sent an unreadable answer: {e}"))
    }
}

/// The zone's answer to one request: the proxy named `<zone>.<name>` on global is found among
/// the zone's own resources (names may have been shortened with a hash on global).
pub(crate) async fn answer(
    zone: &str,
    store: &Store,
    dump: Option<&LocalDumpFn>,
    request: &InspectRequest,
) -> InspectResponse {
    let mut response = InspectResponse {
        id: request.id.clone(),
        zone: zone.to_string(),
        ..Default::default()
    };
    let result = async {
        if request.what != "config-dump" {
            return Err(format!("cannot show {:?}", request.what));
        }
        let key = request
            .key
            .as_ref()
            .and_then(key_from_wire)
            .ok_or("the request names no known resource")?;
        if key.resource_type != ResourceType::Dataplane {
            return Err(format!(
                "cannot show the configuration of a {}",
                key.resource_type
            ));
        }
        let dump = dump.ok_or("this zone control plane serves no proxies")?;
        let local = store
            .list(ResourceType::Dataplane, Some(&key.mesh))
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|r| global_name(zone, &r.meta.name) == key.name)
            .ok_or_else(|| format!("{key} is not a Dataplane of zone {zone:?}"))?;
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
