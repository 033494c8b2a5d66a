//! The DP server of a zone control plane: Envoy ADS (state of the world) over gRPC for data plane
//! proxies — our `kuma-dp` and Envoy alike.
//!
//! Per stream: authenticate the proxy's token, register its Dataplane when it sent one, compute
//! its configuration with the pure generator, and push a new version of exactly the types that
//! changed whenever the store changes something in its mesh or its certificate nears expiry.
//! ACKs and NACKs are counted into the proxy's DataplaneInsight. No polling.

pub mod available_services;
pub mod endpoints;
pub mod external_services;
mod forward;
mod handshake;
mod metrics;
mod policies;
mod proxy_admin;
mod refuser;
mod stream;
mod view;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use metrics::XdsMetrics;
pub use proxy_admin::{ProxyAdminService, ProxyAdmins};
pub use refuser::AdsRefuser;

use meshzone_lifecycle::Shutdown;
use meshzone_store::{Store, StoreEvent};
use meshzone_xds::decode::ProxyConfig;
use meshzone_xds::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use meshzone_xds::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use meshzone_xds::generate::Snapshot;
use meshzone_xds::names::TypeUrl;
use tokio::sync::broadcast;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// How the DP server behaves.
#[derive(Debug, Clone)]
pub struct DpServerSettings {
    /// Instance id of this control plane, reported in responses and insights.
    pub instance_id: String,
    /// Require a data-plane token (`KUMA_DP_SERVER_AUTHN_DP_PROXY_TYPE` other than `none`).
    pub require_token: bool,
    /// How long a Dataplane registered by a proxy outlives the proxy's stream.
    pub deregistration_delay: Duration,
    /// The zone this CP serves; stamped as `kuma.io/zone` on registered inbounds.
    pub zone: Option<String>,
    /// Create a mesh's CA when missing (standalone zone). A zone connected to global waits for
    /// global's CA instead, so that every zone of a mesh shares one trust root.
    pub create_ca: bool,
}

/// Which stream currently owns each registered proxy, so a late deregistration of an old stream
/// does not remove a proxy that reconnected.
#[derive(Default)]
struct Owners {
    next: u64,
    current: HashMap<meshzone_model::ResourceKey, u64>,
}

pub(crate) struct Shared {
    pub(crate) store: Store,
    /// The store's changes that can matter to a proxy (see [`relay_changes`]).
    pub(crate) changes: broadcast::Sender<Change>,
    pub(crate) settings: DpServerSettings,
    /// Streams end with `UNAVAILABLE` when it begins; the process waits for them to record it.
    pub(crate) shutdown: Shutdown,
    pub(crate) metrics: XdsMetrics,
    owners: Mutex<Owners>,
    views: view::MeshViews,
    /// The configuration each connected proxy was last given, by the stream that owns it.
    configs: Mutex<HashMap<meshzone_model::ResourceKey, (u64, Arc<Snapshot>)>>,
    /// The proxies' admin streams (stats, clusters).
    admin_calls: proxy_admin::AdminCalls,
    /// Several instances on one database: where requests about other instances' proxies go.
    forwarder: std::sync::OnceLock<forward::Forwarder>,
}

impl Shared {
    pub(crate) fn claim(&self, key: &meshzone_model::ResourceKey) -> u64 {
        let mut o = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        o.next += 1;
        let generation = o.next;
        o.current.insert(key.clone(), generation);
        generation
    }

    pub(crate) fn still_owner(&self, key: &meshzone_model::ResourceKey, generation: u64) -> bool {
        let o = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        o.current.get(key) == Some(&generation)
    }

    /// Records the configuration a stream just computed for its proxy.
    pub(crate) fn publish(
        &self,
        key: &meshzone_model::ResourceKey,
        generation: u64,
        snapshot: Arc<Snapshot>,
    ) {
        let mut c = self.configs.lock().unwrap_or_else(|e| e.into_inner());
        c.insert(key.clone(), (generation, snapshot));
    }

    /// Whether a proxy has a live ADS stream with a configuration.
    pub(crate) fn is_configured(&self, key: &meshzone_model::ResourceKey) -> bool {
        let c = self.configs.lock().unwrap_or_else(|e| e.into_inner());
        c.contains_key(key)
    }

    /// Forgets a proxy's configuration when its stream ends (unless a newer stream took over).
    pub(crate) fn unpublish(&self, key: &meshzone_model::ResourceKey, generation: u64) {
        let mut c = self.configs.lock().unwrap_or_else(|e| e.into_inner());
        if c.get(key).is_some_and(|(g, _)| *g == generation) {
            c.remove(key);
        }
    }
}

/// What a stream hears of the store.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    Store(StoreEvent),
    /// The relay fell behind the store: every stream must re-read.
    Missed,
}

/// How many changes a stream may fall behind before it re-reads.
const CHANGE_BUFFER: usize = 16 * 1024;

/// Whether a change of this type can matter to a proxy's configuration. Insights never do
/// (they are status, written by the streams themselves on every ACK), so a burst of insight
/// writes after a change wakes this relay once per write instead of every stream.
fn may_configure(e: &StoreEvent) -> bool {
    e.key.resource_type.descriptor().insight_of.is_none()
}

/// Relays the store's changes that [`may_configure`] a proxy to the streams, until the
/// shutdown begins.
fn relay_changes(store: &Store, shutdown: &Shutdown) -> broadcast::Sender<Change> {
    let (tx, _) = broadcast::channel(CHANGE_BUFFER);
    let mut events = store.subscribe();
    let (out, stop) = (tx.clone(), shutdown.clone());
    shutdown.spawn(async move {
        loop {
            let event = tokio::select! {
                e = events.recv() => e,
                () = stop.begun() => return,
            };
            // A send fails only when no stream listens right now.
            match event {
                Ok(e) if may_configure(&e) => drop(out.send(Change::Store(e))),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => drop(out.send(Change::Missed)),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    tx
}

/// Read access to what connected proxies were configured with (`GET …/xds`, "config dump").
#[derive(Clone)]
pub struct ConfigDumps {
    shared: Arc<Shared>,
}

impl ConfigDumps {
    /// The configuration the CP last sent to a connected proxy (`key` of a Dataplane, ZoneIngress
    /// or ZoneEgress), decoded the way kuma-dp runs it: listeners, clusters, endpoints and
    /// secrets (certificates only; private keys never leave), with the version of each type.
    /// [`Self::dump`], or, for a proxy connected to another instance on the same database, that
    /// instance's answer; `Err` says why there is none.
    pub async fn dump_anywhere(
        &self,
        key: &meshzone_model::ResourceKey,
    ) -> Result<serde_json::Value, String> {
        if let Some(d) = self.dump(key) {
            return Ok(d);
        }
        let not_connected = || format!("{key} is not connected (no configuration to show)");
        let Some(forwarder) = self.shared.forwarder.get() else {
            return Err(not_connected());
        };
        let body = forwarder
            .ask(
                &self.shared.store,
                key,
                meshzone_xds::proxy_admin::CONFIG_DUMP,
            )
            .await?
            .ok_or_else(not_connected)?;
        serde_json::from_slice(&body).map_err(|e| format!("{key}: an unreadable config dump: {e}"))
    }

    pub fn dump(&self, key: &meshzone_model::ResourceKey) -> Option<serde_json::Value> {
        let snapshot = {
            let c = self
                .shared
                .configs
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            c.get(key).map(|(_, s)| s.clone())?
        };
        let (config, _) = ProxyConfig::from_snapshot(&snapshot);
        let versions: serde_json::Map<_, _> = TypeUrl::ALL
            .into_iter()
            .filter_map(|t| {
                Some((
                    t.short().to_string(),
                    snapshot.get(t)?.version.clone().into(),
                ))
            })
            .collect();
        Some(serde_json::json!({
            "type": "ConfigDump",
            "proxy": key.to_string(),
            "controlPlaneInstanceId": self.shared.settings.instance_id,
            "versions": versions,
            "config": serde_json::to_value(&config).unwrap_or_default(),
        }))
    }
}

/// The ADS gRPC service.
#[derive(Clone)]
pub struct AdsService {
    shared: Arc<Shared>,
}

impl AdsService {
    pub fn new(
        store: Store,
        settings: DpServerSettings,
        shutdown: Shutdown,
        metrics: XdsMetrics,
    ) -> Self {
        AdsService {
            shared: Arc::new(Shared {
                changes: relay_changes(&store, &shutdown),
                store,
                settings,
                shutdown,
                metrics,
                owners: Mutex::new(Owners::default()),
                views: view::MeshViews::default(),
                configs: Mutex::new(HashMap::new()),
                admin_calls: proxy_admin::AdminCalls::default(),
                forwarder: std::sync::OnceLock::new(),
            }),
        }
    }

    /// A handle to read connected proxies' configuration.
    pub fn config_dumps(&self) -> ConfigDumps {
        ConfigDumps {
            shared: self.shared.clone(),
        }
    }

    /// Several instances on one Postgres store: requests about a proxy connected to another
    /// instance go to it (authenticated with `token`); requests from them are taken.
    pub fn forward_between_instances(
        &self,
        backend: meshzone_store::postgres::PostgresBackend,
        own: String,
        token: String,
    ) {
        let _ = self.shared.forwarder.set(forward::Forwarder {
            backend,
            own,
            token: token.into(),
        });
    }

    /// A handle to read connected proxies' stats and clusters.
    pub fn proxy_admins(&self) -> ProxyAdmins {
        ProxyAdmins {
            shared: self.shared.clone(),
        }
    }

    /// The gRPC service proxies open their admin stream on; serve it next to ADS.
    pub fn proxy_admin_service(&self) -> ProxyAdminService {
        ProxyAdminService {
            shared: self.shared.clone(),
        }
    }

    pub fn into_server(self) -> AggregatedDiscoveryServiceServer<AdsService> {
        AggregatedDiscoveryServiceServer::new(self).max_decoding_message_size(16 * 1024 * 1024)
    }
}

/// Marks as ended every still-open proxy subscription (DataplaneInsight, ZoneIngressInsight,
/// ZoneEgressInsight) held by a control-plane instance that `dead` names: after a restart, no
/// stream of the previous process can still be alive, while other live instances sharing the
/// store keep theirs.
pub async fn close_stale_subscriptions(
    store: &Store,
    dead: impl Fn(&str) -> bool,
) -> Result<usize, meshzone_store::StoreError> {
    let now = chrono::Utc::now();
    let mut closed = 0;
    for &rt in meshzone_model::proxy_insight_types() {
        for mut insight in store.list(rt, None).await? {
            let n = insight.spec.close_open_subscriptions_of(now, &dead);
            if n == 0 {
                continue;
            }
            closed += n;
            match store.update(insight).await {
                Ok(_) | Err(meshzone_store::StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(closed)
}

/// Deletes the proxies (Dataplane, ZoneIngress, ZoneEgress, with their insights) whose every
/// stream ended at least `age` before `now`: the ones a control plane that stopped without
/// deregistering them left behind (Kuma's `dataplaneCleanupAge`). A proxy that never connected
/// (a Dataplane applied by hand, waiting for its kuma-dp) is kept. Returns what it deleted.
pub async fn delete_offline_proxies(
    store: &Store,
    now: chrono::DateTime<chrono::Utc>,
    age: Duration,
) -> Result<Vec<meshzone_model::ResourceKey>, meshzone_store::StoreError> {
    let age = chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
    let gone_long_enough = |insight: &meshzone_model::Resource| {
        insight
            .spec
            .offline_since()
            .is_some_and(|since| now.signed_duration_since(since) >= age)
    };
    let mut deleted = Vec::new();
    for &rt in meshzone_model::proxy_insight_types() {
        for insight in store.list_all(rt).await?.iter() {
            let Some(proxy) = insight.meta.owner.clone() else {
                continue;
            };
            if !gone_long_enough(insight) {
                continue;
            }
            // Read again just before deleting: the proxy may have come back since the list.
            match store.find(&insight.key()).await? {
                Some(fresh) if gone_long_enough(&fresh) => {}
                _ => continue,
            }
            match store.delete(&proxy, None).await {
                Ok(_) => deleted.push(proxy),
                Err(meshzone_store::StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(deleted)
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (token, inbound) = handshake::admit(&self.shared, request)?;
        let rx = stream::start(self.shared.clone(), token, inbound).await?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "delta xDS is not served yet; use state-of-the-world ADS (StreamAggregatedResources)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use meshzone_model::{ResourceKey, ResourceType};
    use meshzone_store::{EventKind, StoreEvent};

    use super::may_configure;

    #[tokio::test]
    async fn only_proxies_gone_for_the_cleanup_age_are_deleted() {
        use meshzone_model::specs::{DataplaneInsightSpec, DiscoverySubscription};
        use meshzone_model::{Meta, Resource, Spec};
        use meshzone_store::{AnyBackend, MemoryBackend, Store};
        let store = Store::new(AnyBackend::Memory(MemoryBackend::new()));
        let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("a time");
        let age = std::time::Duration::from_secs(3600);
        let ago = |secs: i64| Some(now - chrono::Duration::seconds(secs));
        store
            .create(Resource::new(
                Meta::named("default", ""),
                Spec::default_for(ResourceType::Mesh),
            ))
            .await
            .expect("mesh");
        // When each subscription ended (None: still open); no list: no insight at all.
        type Ends = Option<Vec<Option<chrono::DateTime<chrono::Utc>>>>;
        let proxies: [(&str, Ends); 5] = [
            ("gone-long-ago", Some(vec![ago(7200), ago(3600)])),
            ("gone-recently", Some(vec![ago(7200), ago(60)])),
            ("connected", Some(vec![ago(7200), None])),
            ("never-connected", Some(vec![])),
            ("applied-by-hand", None),
        ];
        for (name, subscriptions) in &proxies {
            let yaml = format!(
                "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 8080\n    tags: {{kuma.io/service: web}}\n"
            );
            let value = serde_norway::from_str(&yaml).expect("yaml");
            let dataplane = Resource::from_value(value).expect("a valid Dataplane");
            store.create(dataplane).await.expect("dataplane");
            let Some(ends) = subscriptions else { continue };
            let mut insight = Resource::new(
                Meta::named(name, "default"),
                Spec::DataplaneInsight(DataplaneInsightSpec {
                    subscriptions: ends
                        .iter()
                        .map(|end| DiscoverySubscription {
                            id: "s".into(),
                            connect_time: ago(9000),
                            disconnect_time: *end,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }),
            );
            insight.meta.owner = Some(ResourceKey::new(ResourceType::Dataplane, "default", name));
            store.create(insight).await.expect("insight");
        }
        let deleted = super::delete_offline_proxies(&store, now, age)
            .await
            .expect("cleanup");
        let dataplane = |name| ResourceKey::new(ResourceType::Dataplane, "default", name);
        assert_eq!(deleted, vec![dataplane("gone-long-ago")]);
        for (name, _) in &proxies {
            let kept = store.find(&dataplane(name)).await.expect("find").is_some();
            assert_eq!(kept, *name != "gone-long-ago", "{name}");
        }
        let insight = ResourceKey::new(ResourceType::DataplaneInsight, "default", "gone-long-ago");
        assert!(
            store.find(&insight).await.expect("find").is_none(),
            "its insight goes with it"
        );
        // Nothing is left to delete on the next round.
        let again = super::delete_offline_proxies(&store, now, age)
            .await
            .expect("cleanup");
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn insight_writes_wake_no_stream() {
        let event = |t| StoreEvent {
            kind: EventKind::Updated,
            key: ResourceKey::new(t, "default", "dp-1"),
            seq: 1,
        };
        assert!(!may_configure(&event(ResourceType::DataplaneInsight)));
        assert!(!may_configure(&event(ResourceType::ZoneIngressInsight)));
        assert!(may_configure(&event(ResourceType::Dataplane)));
        assert!(may_configure(&event(ResourceType::MeshTrafficPermission)));
    }
}
