//! Resource storage: the [`Backend`] contract, the strict [`Store`] wrapper that every caller
//! uses (validation, versions, times, change events), and three backends: [`MemoryBackend`] for
//! tests, [`SqliteBackend`], the durable default in the work directory, and [`PostgresBackend`]
//! for several control-plane instances on one database (their writes reach each other's
//! subscribers through [`EventSink`]).
//!
//! Backends are dumb and atomic: each call is one transaction. Cascades (owner references and the
//! contents of a deleted Mesh) happen inside the backend's delete, so a crash never leaves half of
//! a cascade behind. This crate knows nothing about HTTP, KDS or xDS.

mod cache;
mod memory;
pub mod postgres;
mod sqlite;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;
use meshzone_metrics::{Counter, Family, Histogram, Registry};
use meshzone_model::{Resource, ResourceKey, ResourceType, Violations};
use tokio::sync::broadcast;

pub use memory::MemoryBackend;
pub use postgres::PostgresBackend;
pub use sqlite::SqliteBackend;

/// What went wrong in a store call. Each variant names the resource involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} was not found")]
    NotFound(ResourceKey),
    #[error("{0} already exists")]
    AlreadyExists(ResourceKey),
    #[error(
        "{key} was changed by someone else (expected version {expected}, stored version {actual}); read it again and retry"
    )]
    Conflict {
        key: ResourceKey,
        expected: u64,
        actual: u64,
    },
    #[error("mesh {0:?} does not exist")]
    MeshNotFound(String),
    #[error("owner {0} does not exist")]
    OwnerNotFound(ResourceKey),
    #[error("resource is not valid: {0}")]
    Invalid(Violations),
    #[error("storage failure: {0}")]
    Backend(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The contract every storage backend fulfils. Each call is atomic.
pub trait Backend: Send + Sync + 'static {
    fn get(&self, key: &ResourceKey) -> impl Future<Output = Result<Option<Resource>>> + Send;

    /// Resources of one type, ordered by mesh then name; `mesh` narrows to one mesh.
    fn list(
        &self,
        resource_type: ResourceType,
        mesh: Option<&str>,
    ) -> impl Future<Output = Result<Vec<Resource>>> + Send;

    /// Stores a new resource. Fails with `AlreadyExists`, `MeshNotFound` (mesh-scoped type
    /// whose Mesh is absent) or `OwnerNotFound`.
    fn create(&self, resource: Resource) -> impl Future<Output = Result<()>> + Send;

    /// Replaces a resource whose stored version is `expected_version`; `Conflict` otherwise.
    fn update(
        &self,
        resource: Resource,
        expected_version: u64,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Deletes a resource, everything it owns (transitively) and, for a Mesh, everything in the
    /// mesh. Returns every deleted key, the requested one first.
    fn delete(
        &self,
        key: &ResourceKey,
        expected_version: Option<u64>,
    ) -> impl Future<Output = Result<Vec<ResourceKey>>> + Send;
}

/// The backend chosen at start-up by `KUMA_STORE_TYPE`.
pub enum AnyBackend {
    Memory(MemoryBackend),
    Sqlite(SqliteBackend),
    Postgres(PostgresBackend),
}

impl AnyBackend {
    pub fn type_name(&self) -> &'static str {
        match self {
            AnyBackend::Memory(_) => "memory",
            AnyBackend::Sqlite(_) => "sqlite",
            AnyBackend::Postgres(_) => "postgres",
        }
    }
}

impl Backend for AnyBackend {
    async fn get(&self, key: &ResourceKey) -> Result<Option<Resource>> {
        match self {
            AnyBackend::Memory(b) => b.get(key).await,
            AnyBackend::Sqlite(b) => b.get(key).await,
            AnyBackend::Postgres(b) => b.get(key).await,
        }
    }
    async fn list(&self, rt: ResourceType, mesh: Option<&str>) -> Result<Vec<Resource>> {
        match self {
            AnyBackend::Memory(b) => b.list(rt, mesh).await,
            AnyBackend::Sqlite(b) => b.list(rt, mesh).await,
            AnyBackend::Postgres(b) => b.list(rt, mesh).await,
        }
    }
    async fn create(&self, resource: Resource) -> Result<()> {
        match self {
            AnyBackend::Memory(b) => b.create(resource).await,
            AnyBackend::Sqlite(b) => b.create(resource).await,
            AnyBackend::Postgres(b) => b.create(resource).await,
        }
    }
    async fn update(&self, resource: Resource, expected: u64) -> Result<()> {
        match self {
            AnyBackend::Memory(b) => b.update(resource, expected).await,
            AnyBackend::Sqlite(b) => b.update(resource, expected).await,
            AnyBackend::Postgres(b) => b.update(resource, expected).await,
        }
    }
    async fn delete(&self, key: &ResourceKey, expected: Option<u64>) -> Result<Vec<ResourceKey>> {
        match self {
            AnyBackend::Memory(b) => b.delete(key, expected).await,
            AnyBackend::Sqlite(b) => b.delete(key, expected).await,
            AnyBackend::Postgres(b) => b.delete(key, expected).await,
        }
    }
}

/// How many times its own duration a whole-type reaction rests before it looks at the next
/// change ([`changed_paced`]): such a reaction then takes at most a quarter of a core.
pub const REACTION_PACE: u32 = 3;

/// [`changed`] for a reaction that re-reads whole types on every change (DNS VIPs, the
/// ingress's available services): it first rests [`REACTION_PACE`] times as long as its last
/// run took (`last_run`), so that under a stream of writes it runs once per burst instead of
/// once per write, and writes do not slow down as the store grows. A change after a quiet spell
/// is handled at once (the rest is already over).
pub async fn changed_paced(
    events: &mut broadcast::Receiver<StoreEvent>,
    types: &[ResourceType],
    last_run: std::time::Duration,
) -> bool {
    tokio::time::sleep(last_run * REACTION_PACE).await;
    changed(events, types).await
}

/// What happened to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Updated,
    Deleted,
}

/// A change, sent to subscribers after it is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreEvent {
    pub kind: EventKind,
    pub key: ResourceKey,
    /// Position in the store's sequence of changes (1, 2, …); see [`Store::sequence`].
    pub seq: u64,
}

/// Waits for a change to any of `types`, then drains the rest of the burst so one wake-up covers
/// it. A receiver that lagged counts as changed (it must re-read). `false` when the store is gone.
pub async fn changed(events: &mut broadcast::Receiver<StoreEvent>, types: &[ResourceType]) -> bool {
    loop {
        match events.recv().await {
            Ok(e) if types.contains(&e.key.resource_type) => break,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => break,
            Err(broadcast::error::RecvError::Closed) => return false,
        }
    }
    while events.try_recv().is_ok() {}
    true
}

/// Where changes are announced: the store's subscribers. A backend shared by several
/// instances (Postgres) announces other instances' writes through it.
#[derive(Clone)]
pub struct EventSink {
    events: broadcast::Sender<StoreEvent>,
    sequence: Arc<AtomicU64>,
    cache: Arc<cache::ListCache>,
}

impl EventSink {
    /// Tells every subscriber; call only after the change is committed. The read cache forgets
    /// the type before anyone can learn of the change.
    pub fn emit(&self, kind: EventKind, key: ResourceKey) {
        self.cache.invalidate(key.resource_type);
        let seq = self.sequence.fetch_add(1, Ordering::SeqCst) + 1;
        // No subscriber is fine.
        let _ = self.events.send(StoreEvent { kind, key, seq });
    }

    /// Other instances' writes may be going unheard (the listener is not connected): lists are
    /// read from the backend, never from the cache, until [`EventSink::trust_cache`].
    pub fn distrust_cache(&self) {
        self.cache.suspend();
    }

    /// Every write is heard again (the listener has resynced): the cache may serve lists.
    pub fn trust_cache(&self) {
        self.cache.resume();
    }

    /// Whether the store it belongs to is gone (this sink is the last sender).
    pub fn is_closed(&self) -> bool {
        self.events.strong_count() <= 1
    }
}

/// The store every component uses: validates, assigns versions and times, and tells
/// subscribers about every change. Cheap to clone.
pub struct Store<B = AnyBackend> {
    backend: Arc<B>,
    events: broadcast::Sender<StoreEvent>,
    sequence: Arc<AtomicU64>,
    metrics: Option<StoreMetrics>,
    cache: Arc<cache::ListCache>,
}

/// Kuma's store metrics: `store{operation,resource_type}` (seconds) and
/// `store_conflicts{resource_type}`.
#[derive(Clone, Debug)]
struct StoreMetrics {
    durations: Family<Histogram>,
    conflicts: Family<Counter>,
}

/// A store call (the `operation` label).
#[derive(Clone, Copy)]
enum Op {
    Get,
    List,
    Create,
    Update,
    Delete,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::List => "list",
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
}

impl<B> Clone for Store<B> {
    fn clone(&self) -> Self {
        Store {
            backend: self.backend.clone(),
            events: self.events.clone(),
            sequence: self.sequence.clone(),
            metrics: self.metrics.clone(),
            cache: self.cache.clone(),
        }
    }
}

const EVENT_BUFFER: usize = 16 * 1024;

impl<B: Backend> Store<B> {
    pub fn new(backend: B) -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Store {
            backend: Arc::new(backend),
            events,
            sequence: Arc::default(),
            metrics: None,
            cache: Arc::default(),
        }
    }

    /// Observes every call's duration into `registry` (`store`, `store_conflicts`).
    pub fn with_metrics(mut self, registry: &Registry) -> Self {
        self.metrics = Some(StoreMetrics {
            durations: registry.histogram_family(
                "store",
                "Seconds a store operation took",
                &["operation", "resource_type"],
                meshzone_metrics::SECONDS_BUCKETS,
            ),
            conflicts: registry.counter_family(
                "store_conflicts",
                "Number of updates refused because the resource changed meanwhile",
                &["resource_type"],
            ),
        });
        self
    }

    /// Runs one backend call, observing its duration.
    async fn timed<T>(&self, op: Op, rt: ResourceType, call: impl Future<Output = T>) -> T {
        let Some(m) = &self.metrics else {
            return call.await;
        };
        let started = std::time::Instant::now();
        let out = call.await;
        m.durations
            .with(&[op.as_str(), rt.name()])
            .observe_secs(started.elapsed());
        out
    }

    fn conflict(&self, rt: ResourceType) {
        if let Some(m) = &self.metrics {
            m.conflicts.with(&[rt.name()]).inc();
        }
    }

    /// The `seq` of the latest change event. Every change with a `seq` up to a value read here
    /// was committed before it was read, so a read of the store that starts afterwards sees it.
    pub fn sequence(&self) -> u64 {
        self.sequence.load(Ordering::SeqCst)
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Changes from now on. A receiver that falls behind gets `Lagged` and must re-list.
    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    pub async fn get(&self, key: &ResourceKey) -> Result<Resource> {
        self.find(key)
            .await?
            .ok_or_else(|| StoreError::NotFound(key.clone()))
    }

    pub async fn find(&self, key: &ResourceKey) -> Result<Option<Resource>> {
        self.timed(Op::Get, key.resource_type, self.backend.get(key))
            .await
    }

    /// Resources of one type, ordered by mesh then name; `mesh` narrows to one mesh. Served from
    /// the read cache while the type is unchanged.
    pub async fn list(&self, rt: ResourceType, mesh: Option<&str>) -> Result<Vec<Resource>> {
        let all = self.list_all(rt).await?;
        Ok(match mesh {
            None => all.as_ref().clone(),
            Some(mesh) => all
                .iter()
                .filter(|r| r.meta.mesh == mesh)
                .cloned()
                .collect(),
        })
    }

    /// Every resource of one type, ordered by mesh then name, shared with other readers (no
    /// copy): for components that re-read a whole type on each change.
    pub async fn list_all(&self, rt: ResourceType) -> Result<Arc<Vec<Resource>>> {
        let generation = match self.cache.lookup(rt) {
            Ok(list) => return Ok(list),
            Err(generation) => generation,
        };
        let list = Arc::new(
            self.timed(Op::List, rt, self.backend.list(rt, None))
                .await?,
        );
        self.cache.fill(rt, generation, list.clone());
        Ok(list)
    }

    /// Creates a resource at version 1. Its `creationTime` is now.
    pub async fn create(&self, mut resource: Resource) -> Result<Resource> {
        meshzone_model::validate(&resource).map_err(StoreError::Invalid)?;
        let now = Utc::now();
        resource.meta.version = 1;
        resource.meta.creation_time = Some(now);
        resource.meta.modification_time = Some(now);
        let rt = resource.resource_type();
        let invalidate = self.invalidate_on_drop(Some(rt));
        let created = self
            .timed(Op::Create, rt, self.backend.create(resource.clone()))
            .await;
        invalidate.settle(&created);
        created?;
        self.emit(EventKind::Created, resource.key());
        Ok(resource)
    }

    /// Updates a resource read earlier: its `meta.version` must still be the stored one.
    /// Keeps `creationTime` and the owner of the stored copy.
    pub async fn update(&self, mut resource: Resource) -> Result<Resource> {
        meshzone_model::validate(&resource).map_err(StoreError::Invalid)?;
        let expected = resource.meta.version;
        let stored = self.get(&resource.key()).await?;
        if stored.meta.version != expected {
            self.conflict(stored.resource_type());
            return Err(StoreError::Conflict {
                key: resource.key(),
                expected,
                actual: stored.meta.version,
            });
        }
        resource.meta.version = expected + 1;
        resource.meta.creation_time = stored.meta.creation_time;
        resource.meta.modification_time = Some(Utc::now());
        if resource.meta.owner.is_none() {
            resource.meta.owner = stored.meta.owner;
        }
        let rt = resource.resource_type();
        let invalidate = self.invalidate_on_drop(Some(rt));
        let updated = self
            .timed(
                Op::Update,
                rt,
                self.backend.update(resource.clone(), expected),
            )
            .await;
        invalidate.settle(&updated);
        if let Err(StoreError::Conflict { .. }) = &updated {
            self.conflict(rt);
        }
        updated?;
        self.emit(EventKind::Updated, resource.key());
        Ok(resource)
    }

    /// Creates the resource, or replaces the stored spec and labels if it exists. With
    /// `expected_version`, the write only happens if the stored version matches.
    /// Returns the stored resource and whether it was created.
    pub async fn upsert(
        &self,
        resource: Resource,
        expected_version: Option<u64>,
    ) -> Result<(Resource, bool)> {
        let key = resource.key();
        match (self.find(&key).await?, expected_version) {
            (None, None) => self.create(resource).await.map(|r| (r, true)),
            (None, Some(_)) => Err(StoreError::NotFound(key)),
            (Some(stored), expected) => {
                let mut next = resource;
                next.meta.version = expected.unwrap_or(stored.meta.version);
                next.meta.owner = next.meta.owner.or(stored.meta.owner);
                self.update(next).await.map(|r| (r, false))
            }
        }
    }

    /// Deletes a resource and its cascade; returns every deleted key.
    pub async fn delete(
        &self,
        key: &ResourceKey,
        expected_version: Option<u64>,
    ) -> Result<Vec<ResourceKey>> {
        let invalidate = self.invalidate_on_drop(None);
        let deleted = self
            .timed(
                Op::Delete,
                key.resource_type,
                self.backend.delete(key, expected_version),
            )
            .await;
        invalidate.settle(&deleted);
        let deleted = deleted?;
        for k in &deleted {
            self.emit(EventKind::Deleted, k.clone());
        }
        Ok(deleted)
    }

    fn invalidate_on_drop(
        &self,
        resource_type: Option<ResourceType>,
    ) -> cache::InvalidateOnDrop<'_> {
        cache::InvalidateOnDrop {
            cache: &self.cache,
            resource_type,
        }
    }

    fn emit(&self, kind: EventKind, key: ResourceKey) {
        self.event_sink().emit(kind, key);
    }

    /// A handle that announces changes to this store's subscribers and keeps its read cache
    /// exact (for a backend's listener of other instances' writes). It does not keep the store
    /// alive.
    pub fn event_sink(&self) -> EventSink {
        EventSink {
            events: self.events.clone(),
            sequence: self.sequence.clone(),
            cache: self.cache.clone(),
        }
    }
}

#[cfg(test)]
mod contract_tests;
