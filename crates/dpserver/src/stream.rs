//! One ADS stream: handshake (identify, authenticate, register), then a loop that answers
//! requests and pushes changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::Utc;
use meshzone_identity::{
    builtin_backend, cert_lifetime, ensure_mesh_ca, find_mesh_ca, verify_dataplane_token,
};
use meshzone_model::specs::{
    BuildVersion, ComponentVersions, DataplaneInsightSpec, DataplaneSpec, DiscoverySubscription,
    MeshSpec, MtlsInsight, ResponseCounters, ZONE_TAG,
};
use meshzone_model::{Meta, Resource, ResourceKey, ResourceType, Spec, parse_documents};
use meshzone_store::{EventKind, StoreError, StoreEvent};
use meshzone_xds::discovery::{DiscoveryRequest, DiscoveryResponse};
use meshzone_xds::envoy_types::pb::envoy::config::core::v3::ControlPlane;
use meshzone_xds::envoy_types::pb::google::protobuf::value::Kind;
use meshzone_xds::generate::{EndpointInfo, ProxyInput, Snapshot, TlsMaterial, generate};
use meshzone_xds::names::{TypeUrl, parse_node_id};
use tokio::sync::{broadcast, mpsc};
use tonic::{Status, Streaming};
use tracing::{debug, info, warn};

use crate::Shared;

/// Node metadata key carrying the proxy's Dataplane (JSON or YAML) when it registers itself.
pub const DATAPLANE_METADATA_KEY: &str = "dataplane.resource";

/// How many past subscriptions a DataplaneInsight keeps.
const KEPT_SUBSCRIPTIONS: usize = 5;

/// Renew a workload certificate when this share of its life has passed.
const RENEW_AT: f64 = 0.7;

type Out = mpsc::Sender<Result<DiscoveryResponse, Status>>;

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// Reads the first request, authenticates and registers the proxy, and spawns its loop.
pub(crate) async fn start(
    shared: Arc<Shared>,
    token: String,
    mut inbound: Streaming<DiscoveryRequest>,
) -> Result<mpsc::Receiver<Result<DiscoveryResponse, Status>>, Status> {
    let first = inbound
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("stream closed before the first request"))?;
    let node = first
        .node
        .clone()
        .ok_or_else(|| Status::invalid_argument("the first request must carry a node"))?;
    let (mesh, name) = parse_node_id(&node.id).ok_or_else(|| {
        Status::invalid_argument(format!(
            "node id {:?} must be <mesh>.<dataplane name>",
            node.id
        ))
    })?;
    let (mesh, name) = (mesh.to_string(), name.to_string());
    let store = &shared.store;
    let mesh_key = ResourceKey::global(ResourceType::Mesh, &mesh);
    if store.find(&mesh_key).await.map_err(internal)?.is_none() {
        return Err(Status::not_found(format!("mesh {mesh:?} does not exist")));
    }
    if shared.settings.require_token {
        verify_dataplane_token(store, &token, &mesh, &name, SystemTime::now())
            .await
            .map_err(|e| {
                warn!(mesh, name, reason = %e, "refused a data plane proxy");
                Status::unauthenticated(format!("data plane {mesh}.{name} refused: {e}"))
            })?;
    }
    let key = ResourceKey::new(ResourceType::Dataplane, &mesh, &name);
    let sent_resource = node.metadata.as_ref().and_then(|m| {
        m.fields
            .get(DATAPLANE_METADATA_KEY)
            .and_then(|v| match &v.kind {
                Some(Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
    });
    let registered = match sent_resource {
        Some(text) => {
            register(&shared, &key, &text).await?;
            true
        }
        None => {
            if store.find(&key).await.map_err(internal)?.is_none() {
                return Err(Status::not_found(format!(
                    "Dataplane {name:?} does not exist in mesh {mesh:?}: apply it first or start kuma-dp with --dataplane-file"
                )));
            }
            false
        }
    };
    let generation = shared.claim(&key);
    let (tx, rx) = mpsc::channel(16);
    let events = store.subscribe();
    let mut stream = ProxyStream::new(shared.clone(), key.clone(), tx);
    stream.version = node_version(&node);
    // gRPC's own xDS client announces itself as "gRPC <language>".
    stream.proxyless = node.user_agent_name.starts_with("gRPC");
    stream.open_insight().await;
    info!(mesh, name, registered, "data plane proxy connected");
    tokio::spawn(async move {
        let outcome = stream.run(first, inbound, events).await;
        if let Err(status) = &outcome {
            let _ = stream.tx.send(Err(status.clone())).await;
        }
        stream.close_insight().await;
        info!(mesh = %stream.key.mesh, name = %stream.key.name, "data plane proxy disconnected");
        if registered {
            deregister_later(stream.shared.clone(), stream.key.clone(), generation);
        }
    });
    Ok(rx)
}

/// Creates or updates the Dataplane a proxy sent, after checking it names the same proxy.
async fn register(shared: &Shared, key: &ResourceKey, text: &str) -> Result<(), Status> {
    let bad = |m: String| Status::invalid_argument(format!("dataplane resource: {m}"));
    let mut value = parse_documents(text)
        .map_err(|e| bad(e.to_string()))?
        .into_iter()
        .next()
        .ok_or_else(|| bad("empty".into()))?;
    if let Some(o) = value.as_object_mut() {
        o.entry("type").or_insert_with(|| "Dataplane".into());
        o.entry("mesh").or_insert_with(|| key.mesh.clone().into());
        o.entry("name").or_insert_with(|| key.name.clone().into());
    }
    let mut resource = Resource::from_value(value).map_err(|v| bad(v.to_string()))?;
    if resource.key() != *key {
        return Err(bad(format!(
            "it describes {}, but the proxy connected as {key}",
            resource.key()
        )));
    }
    if let (Some(zone), Spec::Dataplane(dp)) = (&shared.settings.zone, &mut resource.spec) {
        for inbound in &mut dp.networking.inbound {
            inbound.tags.insert(ZONE_TAG.into(), zone.clone());
        }
    }
    meshzone_model::validate(&resource).map_err(|v| bad(v.to_string()))?;
    let store = &shared.store;
    loop {
        let result = match store.find(key).await.map_err(internal)? {
            None => store.create(resource.clone()).await.map(|_| ()),
            Some(stored)
                if stored.spec == resource.spec && stored.meta.labels == resource.meta.labels =>
            {
                return Ok(());
            }
            Some(stored) => {
                let mut next = resource.clone();
                next.meta.version = stored.meta.version;
                store.update(next).await.map(|_| ())
            }
        };
        match result {
            Ok(()) => return Ok(()),
            Err(StoreError::AlreadyExists(_) | StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(internal(e)),
        }
    }
}

fn deregister_later(shared: Arc<Shared>, key: ResourceKey, generation: u64) {
    tokio::spawn(async move {
        tokio::time::sleep(shared.settings.deregistration_delay).await;
        if !shared.still_owner(&key, generation) {
            return;
        }
        match shared.store.delete(&key, None).await {
            Ok(_) => info!(%key, "deregistered a data plane proxy that went away"),
            Err(StoreError::NotFound(_)) => {}
            Err(e) => warn!(%key, error = %e, "could not deregister"),
        }
    });
}

/// The proxy's current certificate and when to renew it.
struct Identity {
    material: TlsMaterial,
    services: Vec<String>,
    renew_at: SystemTime,
    expires: SystemTime,
    backend: String,
}

struct Sent {
    version: String,
    nonce: String,
}

struct ProxyStream {
    shared: Arc<Shared>,
    key: ResourceKey,
    tx: super::stream::Out,
    subscribed: HashMap<TypeUrl, Vec<String>>,
    sent: HashMap<TypeUrl, Sent>,
    nonce: u64,
    snapshot: Snapshot,
    identity: Option<Identity>,
    regenerations: u32,
    last_regeneration: Option<chrono::DateTime<Utc>>,
    subscription_id: String,
    counters: BTreeMap<TypeUrl, ResponseCounters>,
    insight_dirty: bool,
    version: Option<ComponentVersions>,
    proxyless: bool,
}

/// What the proxy says it is: `kuma-dp` with its version, or Envoy.
fn node_version(
    node: &meshzone_xds::envoy_types::pb::envoy::config::core::v3::Node,
) -> Option<ComponentVersions> {
    use meshzone_xds::envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
    let version = match &node.user_agent_version_type {
        Some(UserAgentVersionType::UserAgentVersion(v)) => v.clone(),
        Some(UserAgentVersionType::UserAgentBuildVersion(b)) => b
            .version
            .as_ref()
            .map(|v| format!("{}.{}.{}", v.major_number, v.minor_number, v.patch))
            .unwrap_or_default(),
        None => return None,
    };
    let build = BuildVersion {
        version,
        ..Default::default()
    };
    Some(if node.user_agent_name == "kuma-dp" {
        ComponentVersions {
            kuma_dp: Some(build),
            ..Default::default()
        }
    } else {
        ComponentVersions {
            envoy: Some(build),
            ..Default::default()
        }
    })
}

impl ProxyStream {
    fn new(shared: Arc<Shared>, key: ResourceKey, tx: Out) -> Self {
        ProxyStream {
            shared,
            key,
            tx,
            subscribed: HashMap::new(),
            sent: HashMap::new(),
            nonce: 0,
            snapshot: Snapshot::default(),
            identity: None,
            regenerations: 0,
            last_regeneration: None,
            subscription_id: uuid::Uuid::new_v4().to_string(),
            counters: BTreeMap::new(),
            insight_dirty: false,
            version: None,
            proxyless: false,
        }
    }

    async fn run(
        &mut self,
        first: DiscoveryRequest,
        mut inbound: Streaming<DiscoveryRequest>,
        mut events: broadcast::Receiver<StoreEvent>,
    ) -> Result<(), Status> {
        self.recompute().await?;
        self.handle_request(first).await?;
        let flush = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(flush);
        let mut flush_armed = false;
        loop {
            let renew_in = self
                .identity
                .as_ref()
                .and_then(|i| i.renew_at.duration_since(SystemTime::now()).ok())
                .unwrap_or(Duration::from_secs(3600));
            if self.insight_dirty && !flush_armed {
                flush
                    .as_mut()
                    .reset(tokio::time::Instant::now() + Duration::from_secs(1));
                flush_armed = true;
            }
            tokio::select! {
                request = inbound.message() => match request {
                    Ok(Some(r)) => self.handle_request(r).await?,
                    Ok(None) => return Ok(()),
                    Err(status) => {
                        debug!(key = %self.key, %status, "stream ended with an error");
                        return Ok(());
                    }
                },
                event = events.recv() => match event {
                    Ok(e) if self.affects(&e) => {
                        // Coalesce a burst of changes into one recomputation.
                        while let Ok(more) = events.try_recv() {
                            let _ = more;
                        }
                        if e.key == self.key && e.kind == EventKind::Deleted {
                            return Err(Status::not_found(format!("{} was deleted", self.key)));
                        }
                        self.recompute().await?;
                        self.push().await?;
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.recompute().await?;
                        self.push().await?;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                _ = tokio::time::sleep(renew_in) => {
                    self.identity = None;
                    self.recompute().await?;
                    self.push().await?;
                }
                _ = &mut flush, if flush_armed => {
                    flush_armed = false;
                    self.write_insight(false).await;
                }
                _ = self.tx.closed() => return Ok(()),
            }
        }
    }

    /// Store changes that can change this proxy's configuration: anything in its mesh except
    /// insights (which this very stream writes), and the Mesh itself.
    fn affects(&self, e: &StoreEvent) -> bool {
        match e.key.resource_type {
            ResourceType::Mesh => e.key.name == self.key.mesh,
            ResourceType::DataplaneInsight | ResourceType::ServiceInsight => false,
            t if t.is_mesh_scoped() => e.key.mesh == self.key.mesh,
            _ => false,
        }
    }

    async fn handle_request(&mut self, r: DiscoveryRequest) -> Result<(), Status> {
        let Some(type_url) = TypeUrl::parse(&r.type_url) else {
            debug!(key = %self.key, type_url = r.type_url, "ignoring a request for an unserved type");
            return Ok(());
        };
        if !r.response_nonce.is_empty() {
            let current = self
                .sent
                .get(&type_url)
                .is_some_and(|s| s.nonce == r.response_nonce);
            let c = self.counters.entry(type_url).or_default();
            if let Some(detail) = &r.error_detail {
                c.responses_rejected += 1;
                warn!(
                    proxy = %self.key, type_url = type_url.short(), version = r.version_info,
                    error = detail.message, "proxy rejected its configuration (NACK)"
                );
                self.write_insight(false).await;
            } else if current {
                c.responses_acknowledged += 1;
                self.insight_dirty = true;
            }
        }
        let names = r.resource_names.clone();
        let first = !self.subscribed.contains_key(&type_url);
        let changed = self.subscribed.get(&type_url) != Some(&names);
        self.subscribed.insert(type_url, names);
        if first || changed {
            self.send(type_url).await?;
        }
        Ok(())
    }

    /// Sends every subscribed type whose content changed since it was last sent.
    async fn push(&mut self) -> Result<(), Status> {
        let types: Vec<TypeUrl> = self.subscribed.keys().copied().collect();
        for t in TypeUrl::ALL.into_iter().filter(|t| types.contains(t)) {
            let current = self
                .snapshot
                .get(t)
                .map(|s| s.version.as_str())
                .unwrap_or("");
            if self.sent.get(&t).map(|s| s.version.as_str()) != Some(current) {
                self.send(t).await?;
            }
        }
        Ok(())
    }

    async fn send(&mut self, type_url: TypeUrl) -> Result<(), Status> {
        let Some(ts) = self.snapshot.get(type_url) else {
            return Ok(());
        };
        let names = self.subscribed.get(&type_url).cloned().unwrap_or_default();
        // An empty list (Envoy's LDS/CDS) or "*" is a wildcard; otherwise send what was named.
        let wanted = |n: &str| names.is_empty() || names.iter().any(|w| w == n || w == "*");
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let response = DiscoveryResponse {
            version_info: ts.version.clone(),
            resources: ts
                .resources
                .iter()
                .filter(|r| wanted(&r.name))
                .map(|r| r.resource.clone())
                .collect(),
            type_url: type_url.as_str().to_string(),
            nonce: nonce.clone(),
            control_plane: Some(ControlPlane {
                identifier: self.shared.settings.instance_id.clone(),
            }),
            ..Default::default()
        };
        self.sent.insert(
            type_url,
            Sent {
                version: ts.version.clone(),
                nonce,
            },
        );
        self.counters.entry(type_url).or_default().responses_sent += 1;
        self.insight_dirty = true;
        self.tx
            .send(Ok(response))
            .await
            .map_err(|_| Status::cancelled("proxy went away"))
    }

    /// Rebuilds the proxy's configuration from the store.
    async fn recompute(&mut self) -> Result<(), Status> {
        let store = &self.shared.store;
        let mesh = match store
            .find(&ResourceKey::global(ResourceType::Mesh, &self.key.mesh))
            .await
            .map_err(internal)?
        {
            Some(Resource {
                spec: Spec::Mesh(m),
                ..
            }) => m,
            _ => {
                return Err(Status::not_found(format!(
                    "mesh {:?} was deleted",
                    self.key.mesh
                )));
            }
        };
        let dataplanes = store
            .list(ResourceType::Dataplane, Some(&self.key.mesh))
            .await
            .map_err(internal)?;
        let Some(own) = dataplanes.iter().find(|d| d.meta.name == self.key.name) else {
            return Err(Status::not_found(format!("{} was deleted", self.key)));
        };
        let Spec::Dataplane(own) = own.spec.clone() else {
            return Err(internal("stored Dataplane has another spec"));
        };
        let endpoints = endpoints_of(&dataplanes);
        let protocols = protocols_of(&dataplanes);
        self.ensure_identity(&mesh, &own).await?;
        let material = self.identity.as_ref().map(|i| &i.material);
        self.snapshot = generate(&ProxyInput {
            mesh: &self.key.mesh,
            mesh_spec: &mesh,
            dataplane: &own,
            endpoints: &endpoints,
            tls: material,
            protocols: &protocols,
            proxyless: self.proxyless,
        });
        Ok(())
    }

    /// Issues (or keeps) the proxy's workload certificate when its mesh uses a builtin CA.
    async fn ensure_identity(&mut self, mesh: &MeshSpec, dp: &DataplaneSpec) -> Result<(), Status> {
        let Some(backend) = builtin_backend(mesh) else {
            self.identity = None;
            return Ok(());
        };
        let mut services: Vec<String> = dp
            .networking
            .inbound
            .iter()
            .filter_map(|i| i.service().map(str::to_string))
            .collect();
        services.sort();
        services.dedup();
        let now = SystemTime::now();
        if let Some(i) = &self.identity
            && i.services == services
            && i.backend == backend
            && now < i.renew_at
        {
            return Ok(());
        }
        let ca = if self.shared.settings.create_ca {
            ensure_mesh_ca(&self.shared.store, &self.key.mesh, mesh, now).await
        } else {
            find_mesh_ca(&self.shared.store, &self.key.mesh, mesh).await
        }
        .map_err(|e| Status::unavailable(e.to_string()))?;
        let ids: Vec<String> = services
            .iter()
            .map(|s| meshzone_pki::spiffe_id(&self.key.mesh, s))
            .collect();
        let lifetime = cert_lifetime(mesh);
        let cert = meshzone_pki::issue_workload_cert(&ca, &ids, lifetime, now).map_err(internal)?;
        self.regenerations += 1;
        self.last_regeneration = Some(Utc::now());
        self.identity = Some(Identity {
            material: TlsMaterial {
                identity_cert_pem: cert.cert_pem,
                identity_key_pem: cert.key_pem,
                ca_cert_pem: ca.cert_pem,
            },
            services,
            renew_at: now + lifetime.mul_f64(RENEW_AT),
            expires: now + lifetime,
            backend: backend.to_string(),
        });
        self.insight_dirty = true;
        Ok(())
    }

    fn subscription(
        &self,
        disconnected: bool,
        connect_time: Option<chrono::DateTime<Utc>>,
    ) -> DiscoverySubscription {
        let mut total = ResponseCounters::default();
        let mut stat = BTreeMap::new();
        for (t, c) in &self.counters {
            total.responses_sent += c.responses_sent;
            total.responses_acknowledged += c.responses_acknowledged;
            total.responses_rejected += c.responses_rejected;
            stat.insert(t.short().to_string(), c.clone());
        }
        DiscoverySubscription {
            id: self.subscription_id.clone(),
            control_plane_instance_id: self.shared.settings.instance_id.clone(),
            connect_time,
            disconnect_time: disconnected.then(Utc::now),
            status: meshzone_model::specs::SubscriptionStatus {
                last_update_time: Some(Utc::now()),
                total,
                stat,
            },
            version: self.version.clone(),
            generation: 0,
        }
    }

    async fn open_insight(&mut self) {
        self.write_insight_with(|subs, me| {
            subs.push(me.subscription(false, Some(Utc::now())));
        })
        .await;
    }

    async fn close_insight(&mut self) {
        self.write_insight(true).await;
    }

    async fn write_insight(&mut self, disconnected: bool) {
        self.insight_dirty = false;
        let id = self.subscription_id.clone();
        self.write_insight_with(|subs, me| {
            if let Some(s) = subs.iter_mut().find(|s| s.id == id) {
                let connect = s.connect_time;
                *s = me.subscription(disconnected, connect);
            }
        })
        .await;
    }

    /// Read-modify-write of the DataplaneInsight, retried on a concurrent change.
    async fn write_insight_with(
        &mut self,
        change: impl Fn(&mut Vec<DiscoverySubscription>, &Self),
    ) {
        let store = &self.shared.store;
        let key = ResourceKey::new(
            ResourceType::DataplaneInsight,
            &self.key.mesh,
            &self.key.name,
        );
        for _ in 0..5 {
            let stored = match store.find(&key).await {
                Ok(s) => s,
                Err(e) => {
                    warn!(%key, error = %e, "cannot read insight");
                    return;
                }
            };
            let mut spec = match &stored {
                Some(Resource {
                    spec: Spec::DataplaneInsight(s),
                    ..
                }) => s.clone(),
                _ => DataplaneInsightSpec::default(),
            };
            change(&mut spec.subscriptions, self);
            let excess = spec.subscriptions.len().saturating_sub(KEPT_SUBSCRIPTIONS);
            spec.subscriptions.drain(..excess);
            spec.mtls = self.identity.as_ref().map(|i| MtlsInsight {
                certificate_expiration_time: Some(i.expires.into()),
                last_certificate_regeneration: self.last_regeneration,
                certificate_regenerations: self.regenerations,
                issued_backend: i.backend.clone(),
                supported_backends: vec![i.backend.clone()],
            });
            let result = match stored {
                Some(mut r) => {
                    r.spec = Spec::DataplaneInsight(spec);
                    store.update(r).await.map(|_| ())
                }
                None => {
                    let mut r = Resource::new(
                        Meta::named(&self.key.name, &self.key.mesh),
                        Spec::DataplaneInsight(spec),
                    );
                    r.meta.owner = Some(self.key.clone());
                    store.create(r).await.map(|_| ())
                }
            };
            match result {
                Ok(()) => return,
                Err(StoreError::Conflict { .. } | StoreError::AlreadyExists(_)) => continue,
                // The Dataplane is gone (deregistered or deleted): nothing to record.
                Err(StoreError::OwnerNotFound(_) | StoreError::NotFound(_)) => return,
                Err(e) => {
                    warn!(%key, error = %e, "cannot write insight");
                    return;
                }
            }
        }
    }
}

/// The `kuma.io/protocol` of each service, when all its inbounds agree on one; otherwise tcp.
fn protocols_of(dataplanes: &[Resource]) -> BTreeMap<String, String> {
    let mut seen: BTreeMap<String, Option<String>> = BTreeMap::new();
    for r in dataplanes {
        let Spec::Dataplane(dp) = &r.spec else {
            continue;
        };
        for inbound in &dp.networking.inbound {
            let Some(service) = inbound.service() else {
                continue;
            };
            let p = inbound
                .tags
                .get(meshzone_model::specs::PROTOCOL_TAG)
                .cloned()
                .unwrap_or_else(|| "tcp".into());
            seen.entry(service.to_string())
                .and_modify(|known| {
                    if known.as_deref() != Some(p.as_str()) {
                        *known = None;
                    }
                })
                .or_insert(Some(p));
        }
    }
    seen.into_iter()
        .map(|(s, p)| (s, p.unwrap_or_else(|| "tcp".into())))
        .collect()
}

/// Instances of every service in a mesh: each ready inbound of each Dataplane.
fn endpoints_of(dataplanes: &[Resource]) -> BTreeMap<String, Vec<EndpointInfo>> {
    let mut out: BTreeMap<String, Vec<EndpointInfo>> = BTreeMap::new();
    for r in dataplanes {
        let Spec::Dataplane(dp) = &r.spec else {
            continue;
        };
        let net = &dp.networking;
        for inbound in net.inbound.iter().filter(|i| i.is_healthy()) {
            let Some(service) = inbound.service() else {
                continue;
            };
            let address = inbound
                .address
                .clone()
                .or_else(|| net.advertised_address.clone())
                .unwrap_or_else(|| net.address.clone());
            out.entry(service.to_string())
                .or_default()
                .push(EndpointInfo {
                    address,
                    port: inbound.port,
                    weight: 1,
                    zone: inbound.tags.get(ZONE_TAG).cloned(),
                });
        }
    }
    out
}
