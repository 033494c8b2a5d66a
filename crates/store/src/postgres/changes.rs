//! Change events across instances. Each instance LISTENs on a dedicated connection; a
//! notification carries only a key, so the listener reads that row's revision and announces a
//! change when it differs from what this instance last announced. Notifications sent while the
//! connection is down are lost (Postgres keeps none for an absent listener), so every
//! (re)connection LISTENs first and then resyncs: it compares every row's revision with what was
//! announced and emits the missed creates, updates and deletes. No subscriber stays stale.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use meshzone_model::ResourceKey;
use sqlx::postgres::PgListener;
use tracing::{debug, info, warn};

use super::{CHANNEL, PostgresBackend, Recycle, connect_pool};
use crate::{EventKind, EventSink, Result, StoreError};

/// Most notifications read back in one query.
const BATCH: usize = 500;

/// Reconnection pacing of the listener.
#[derive(Debug, Clone, Copy)]
pub struct FollowSettings {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for FollowSettings {
    fn default() -> Self {
        FollowSettings {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// What a row's current revision (`None`: gone) means against what was announced, recording it.
/// `None` when there is nothing new to announce. Pure.
pub fn observe_revision(
    announced: &mut HashMap<ResourceKey, i64>,
    key: &ResourceKey,
    now: Option<i64>,
) -> Option<EventKind> {
    match (announced.get(key).copied(), now) {
        (None, None) => None,
        (Some(_), None) => {
            announced.remove(key);
            Some(EventKind::Deleted)
        }
        (None, Some(r)) => {
            announced.insert(key.clone(), r);
            Some(EventKind::Created)
        }
        (Some(old), Some(r)) if old == r => None,
        (Some(_), Some(r)) => {
            announced.insert(key.clone(), r);
            Some(EventKind::Updated)
        }
    }
}

/// The events that take `announced` to `table`, ordered by key. Pure.
pub fn diff_announced(
    announced: &HashMap<ResourceKey, i64>,
    table: &HashMap<ResourceKey, i64>,
) -> Vec<(EventKind, ResourceKey)> {
    let mut out: Vec<(EventKind, ResourceKey)> = Vec::new();
    for (key, revision) in table {
        match announced.get(key) {
            None => out.push((EventKind::Created, key.clone())),
            Some(old) if old != revision => out.push((EventKind::Updated, key.clone())),
            Some(_) => {}
        }
    }
    for key in announced.keys() {
        if !table.contains_key(key) {
            out.push((EventKind::Deleted, key.clone()));
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// The key in a notification: `{"type": …, "mesh": …, "name": …}`.
fn parse_payload(payload: &str) -> Option<ResourceKey> {
    let v: serde_json::Value = serde_json::from_str(payload).ok()?;
    let field = |f: &str| v.get(f).and_then(serde_json::Value::as_str);
    Some(ResourceKey {
        resource_type: field("type")?.parse().ok()?,
        mesh: field("mesh")?.to_string(),
        name: field("name")?.to_string(),
    })
}

impl PostgresBackend {
    /// Follows every instance's writes into `sink` until the task is dropped: LISTEN, resync,
    /// then one event per notification that changes something; on a lost connection it
    /// reconnects with backoff and resyncs. Returns only if the sink has no store left.
    pub async fn follow_changes(self, sink: EventSink, pacing: FollowSettings) -> Result<()> {
        let mut backoff = pacing.initial_backoff;
        loop {
            // Until the listener has resynced, another instance's write may be unheard: the
            // store's read cache must not serve a list from before it.
            sink.distrust_cache();
            match self.listen(&sink, &mut backoff, pacing).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.following.store(false, Ordering::SeqCst);
                    sink.distrust_cache();
                    warn!(error = %e, retry_in = ?backoff, "store change listener lost its database connection; it reconnects and resyncs");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(pacing.max_backoff);
                }
            }
        }
    }

    /// One connection's life: returns `Err` when it is lost, `Ok` when the store is gone.
    async fn listen(
        &self,
        sink: &EventSink,
        backoff: &mut Duration,
        pacing: FollowSettings,
    ) -> Result<()> {
        let mut settings = (*self.settings).clone();
        settings.application_name = format!("{} listener", settings.application_name);
        let pool = connect_pool(&settings, 1, Recycle::Never).await?;
        let mut listener = PgListener::connect_with(&pool)
            .await
            .map_err(|e| StoreError::Backend(format!("listener cannot connect: {e}")))?;
        listener.eager_reconnect(false);
        listener
            .listen(CHANNEL)
            .await
            .map_err(|e| StoreError::Backend(format!("LISTEN {CHANNEL}: {e}")))?;
        let missed = self.resync(sink).await?;
        sink.trust_cache();
        self.following.store(true, Ordering::SeqCst);
        info!(missed, "store change listener is listening");
        *backoff = pacing.initial_backoff;
        loop {
            if sink.is_closed() {
                return Ok(());
            }
            match listener.try_recv().await {
                Ok(Some(first)) => {
                    // This one and whatever else already arrived, read back in one query.
                    let mut keys: Vec<ResourceKey> = Vec::new();
                    for notification in std::iter::once(first)
                        .chain(std::iter::from_fn(|| listener.next_buffered()))
                    {
                        match parse_payload(notification.payload()) {
                            Some(key) if !keys.contains(&key) => keys.push(key),
                            Some(_) => {}
                            None => debug!(
                                payload = notification.payload(),
                                "ignoring a notification for a type this kuma-cp does not know"
                            ),
                        }
                        if keys.len() >= BATCH {
                            break;
                        }
                    }
                    self.announce(sink, &keys).await?;
                }
                // The connection dropped: whatever was sent since is lost. Reconnect (after the
                // backoff), LISTEN, and only then resync, so nothing falls between the two.
                Ok(None) => {
                    return Err(StoreError::Backend(
                        "the listener's connection was closed".into(),
                    ));
                }
                Err(e) => return Err(StoreError::Backend(format!("listener: {e}"))),
            }
        }
    }

    /// Reads the current revisions of `keys` and announces those that changed.
    async fn announce(&self, sink: &EventSink, keys: &[ResourceKey]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let _no_own_write_in_flight = self.write_gate.write().await;
        let now = self.revisions_of(keys).await?;
        let events: Vec<(EventKind, ResourceKey)> = {
            let mut announced = self.lock_announced();
            keys.iter()
                .filter_map(|k| {
                    observe_revision(&mut announced, k, now.get(k).copied()).map(|e| (e, k.clone()))
                })
                .collect()
        };
        for (kind, key) in events {
            sink.emit(kind, key);
        }
        Ok(())
    }

    /// Announces every difference between the table and what was announced. Returns how many.
    async fn resync(&self, sink: &EventSink) -> Result<usize> {
        let _no_own_write_in_flight = self.write_gate.write().await;
        let table = self.revisions().await?;
        let events = {
            let mut announced = self.lock_announced();
            let events = diff_announced(&announced, &table);
            *announced = table;
            events
        };
        for (kind, key) in &events {
            sink.emit(*kind, key.clone());
        }
        Ok(events.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshzone_model::ResourceType;

    fn key(name: &str) -> ResourceKey {
        ResourceKey::new(ResourceType::Dataplane, "default", name)
    }

    #[test]
    fn observing_a_revision() {
        let mut announced = HashMap::from([(key("a"), 5)]);
        let cases = [
            ("a", Some(5), None),
            ("a", Some(7), Some(EventKind::Updated)),
            ("a", Some(7), None),
            ("a", None, Some(EventKind::Deleted)),
            ("a", None, None),
            ("b", Some(9), Some(EventKind::Created)),
        ];
        for (name, now, want) in cases {
            assert_eq!(
                observe_revision(&mut announced, &key(name), now),
                want,
                "{name} {now:?}"
            );
        }
        assert_eq!(announced, HashMap::from([(key("b"), 9)]));
    }

    #[test]
    fn resync_diff_finds_every_missed_change() {
        let announced = HashMap::from([(key("same"), 1), (key("changed"), 2), (key("gone"), 3)]);
        // "recreated" was deleted and created again at the same version: its revision differs.
        let table = HashMap::from([(key("same"), 1), (key("changed"), 4), (key("new"), 5)]);
        assert_eq!(
            diff_announced(&announced, &table),
            vec![
                (EventKind::Updated, key("changed")),
                (EventKind::Deleted, key("gone")),
                (EventKind::Created, key("new")),
            ]
        );
        assert!(diff_announced(&table, &table).is_empty());
    }

    #[test]
    fn payloads_carry_only_the_key() {
        assert_eq!(
            parse_payload(r#"{"type" : "Dataplane", "mesh" : "default", "name" : "dp-1"}"#),
            Some(key("dp-1"))
        );
        assert_eq!(
            parse_payload(r#"{"type":"NoSuchType","mesh":"","name":"x"}"#),
            None
        );
        assert_eq!(parse_payload("not json"), None);
    }
}
