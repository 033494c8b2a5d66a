//! Inspecting a zone's proxies from global (a config dump, the policy rules): global cannot dial
//! zones, so each zone keeps an `Inspect` stream open on which global sends requests and the zone
//! answers. Global's side is the [`InspectHub`]; the zone's side answers with a [`LocalDumpFn`]
//! or a [`LocalRulesFn`]. A request names what it wants ([`CONFIG_DUMP`], [`RULES`]); a zone that
//! does not know a kind answers with an error, so new kinds stay compatible with older zones.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use meshzone_lifecycle::Shutdown;
use meshzone_model::{ResourceKey, ResourceType};
use meshzone_reverse::{CallError, ReverseCalls};
use meshzone_store::Store;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::Status;
use tracing::info;

use crate::proto::{InspectRequest, InspectResponse};
use crate::sync::global_name;
use crate::wire::{key_from_wire, key_to_wire};

/// How long global waits for a zone's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The zone's lookup of a connected proxy's configuration, by its local key.
pub type LocalDumpFn = Arc<
    dyn Fn(ResourceKey) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send>>
        + Send
        + Sync,
>;

/// The zone's `_rules` answer for one of its Dataplanes, by its local key; `Err` says why not.
pub type LocalRulesFn = Arc<
    dyn Fn(ResourceKey) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send>>
        + Send
        + Sync,
>;

/// The zone's reading of a connected proxy's admin data (`what` is [`STATS`] or [`CLUSTERS`]),
/// by its local key; `Err` says why not.
pub type LocalAdminFn = Arc<
    dyn Fn(
            ResourceKey,
            &'static str,
        ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>>
        + Send
        + Sync,
>;

/// Request kind: what the zone's DP server last sent to the proxy.
pub const CONFIG_DUMP: &str = "config-dump";
/// Request kind: the policies' rules on the proxy (`GET .../dataplanes/{name}/_rules`).
pub const RULES: &str = "rules";
/// Request kind: the proxy's Envoy-style text `/stats`, read from the proxy itself.
pub const STATS: &str = "stats";
/// Request kind: the proxy's Envoy-style text `/clusters`.
pub const CLUSTERS: &str = "clusters";

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
    /// Another global instance holds the zone's stream and could not be asked.
    #[error(
        "zone {zone:?} is connected to global instance {instance:?}, which could not be asked: {message}"
    )]
    Forward {
        zone: String,
        instance: String,
        message: String,
    },
}

impl InspectError {
    /// The zone could not be reached (rather than answering that it cannot help).
    pub fn unavailable(&self) -> bool {
        matches!(
            self,
            InspectError::Offline(_)
                | InspectError::Gone(_)
                | InspectError::Timeout { .. }
                | InspectError::Forward { .. }
        )
    }
}

fn answer_id(a: &InspectResponse) -> &str {
    &a.id
}

/// Sends a request about `zone` to the global instance holding its stream (several global
/// instances on one database); [`InspectError::Offline`] when no other instance holds it.
pub type ForwardFn = Arc<
    dyn Fn(
            String,
            InspectRequest,
        ) -> Pin<Box<dyn Future<Output = Result<InspectResponse, InspectError>> + Send>>
        + Send
        + Sync,
>;

/// Global's side: routes requests to the zone that owns a proxy and waits for the answer; a
/// zone whose stream another global instance holds is asked through that instance.
#[derive(Clone, Default)]
pub struct InspectHub {
    calls: ReverseCalls<InspectRequest, InspectResponse>,
    forward: Arc<std::sync::OnceLock<ForwardFn>>,
}

impl InspectHub {
    /// Serves one zone's Inspect stream until it ends (the hello was already read).
    pub(crate) fn attach<S>(
        &self,
        zone: String,
        answers: S,
        shutdown: Shutdown,
    ) -> mpsc::Receiver<Result<InspectRequest, Status>>
    where
        S: Stream<Item = Result<InspectResponse, Status>> + Unpin + Send + 'static,
    {
        info!(zone, "zone inspect stream open");
        self.calls.attach(
            zone,
            answers,
            answer_id,
            shutdown,
            crate::global::shutting_down(),
        )
    }

    /// The configuration of proxy `key` (as global names it) from the zone that owns it.
    pub async fn config_dump(&self, zone: &str, key: &ResourceKey) -> Result<Value, InspectError> {
        self.ask(zone, CONFIG_DUMP, key).await
    }

    /// The `_rules` of proxy `key` (as global names it), computed by the zone that owns it and
    /// returned as the zone wrote it.
    pub async fn rules(&self, zone: &str, key: &ResourceKey) -> Result<Value, InspectError> {
        self.ask(zone, RULES, key).await
    }

    /// The text `what` ([`STATS`] or [`CLUSTERS`]) of proxy `key` (as global names it: a
    /// Dataplane, ZoneIngress or ZoneEgress), which the zone reads from the proxy.
    pub async fn proxy_admin(
        &self,
        zone: &str,
        key: &ResourceKey,
        what: &'static str,
    ) -> Result<String, InspectError> {
        match self.ask(zone, what, key).await? {
            Value::String(text) => Ok(text),
            _ => Err(InspectError::Unreadable {
                zone: zone.to_string(),
                message: format!("{what} must be text"),
            }),
        }
    }

    /// From now on, requests about zones this instance has no stream of go to `forward`.
    pub fn forward_with(&self, forward: ForwardFn) {
        let _ = self.forward.set(forward);
    }

    /// Asks the zone over this instance's own stream of it (a forwarded request ends here).
    pub async fn ask_here(
        &self,
        zone: &str,
        request: InspectRequest,
    ) -> Result<InspectResponse, InspectError> {
        let InspectRequest { what, key, .. } = request;
        self.calls
            .call(zone, |id| InspectRequest { id, what, key }, ANSWER_TIMEOUT)
            .await
            .map_err(|e| match e {
                CallError::Offline => InspectError::Offline(zone.to_string()),
                CallError::Gone => InspectError::Gone(zone.to_string()),
                CallError::Timeout(after) => InspectError::Timeout {
                    zone: zone.to_string(),
                    after,
                },
            })
    }

    async fn ask(&self, zone: &str, what: &str, key: &ResourceKey) -> Result<Value, InspectError> {
        let request = InspectRequest {
            id: String::new(),
            what: what.into(),
            key: Some(key_to_wire(key)),
        };
        let answer = match (
            self.ask_here(zone, request.clone()).await,
            self.forward.get(),
        ) {
            (Err(InspectError::Offline(_)), Some(forward)) => {
                forward(zone.to_string(), request).await?
            }
            (other, _) => other?,
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
    pub proxy_admin: Option<LocalAdminFn>,
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
        let what = [CONFIG_DUMP, RULES, STATS, CLUSTERS]
            .into_iter()
            .find(|w| *w == request.what)
            .ok_or_else(|| format!("cannot show {:?}", request.what))?;
        let key = request
            .key
            .as_ref()
            .and_then(key_from_wire)
            .ok_or("the request names no known resource")?;
        let proxy_types: &[ResourceType] = match what {
            STATS | CLUSTERS => &[
                ResourceType::Dataplane,
                ResourceType::ZoneIngress,
                ResourceType::ZoneEgress,
            ],
            _ => &[ResourceType::Dataplane],
        };
        if !proxy_types.contains(&key.resource_type) {
            return Err(format!("cannot show {what:?} of a {}", key.resource_type));
        }
        let mesh = Some(key.mesh.as_str()).filter(|m| !m.is_empty());
        let local = store
            .list(key.resource_type, mesh)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|r| global_name(zone, &r.meta.name) == key.name)
            .ok_or_else(|| format!("{key} is not a {} of zone {zone:?}", key.resource_type))?;
        match what {
            RULES => {
                let rules = answers
                    .rules
                    .as_ref()
                    .ok_or_else(|| format!("zone {zone:?} cannot compute policy rules"))?;
                rules(local.key()).await
            }
            STATS | CLUSTERS => {
                let read = answers
                    .proxy_admin
                    .as_ref()
                    .ok_or("this zone control plane serves no proxies")?;
                read(local.key(), what).await.map(Value::String)
            }
            _ => {
                let dump = answers
                    .config_dump
                    .as_ref()
                    .ok_or("this zone control plane serves no proxies")?;
                dump(local.key())
                    .await
                    .map_err(|e| format!("zone {zone:?}: {e}"))
            }
        }
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
