//! One ADS stream: handshake (identify, authenticate, register), then a loop that answers
//! requests and pushes changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::Utc;
use meshzone_identity::{builtin_backend, cert_lifetime, ensure_mesh_ca, find_mesh_ca};
use meshzone_model::specs::{
    BuildVersion, ComponentVersions, DataplaneInsightSpec, DataplaneSpec, DiscoverySubscription,
    MeshSpec, MtlsInsight, ResponseCounters, ZoneProxyInsightSpec,
};
use meshzone_model::{Meta, Resource, ResourceKey, ResourceType, Spec};
use meshzone_store::{EventKind, StoreError, StoreEvent};
use meshzone_xds::discovery::{DiscoveryRequest, DiscoveryResponse};
use meshzone_xds::envoy_types::pb::envoy::config::core::v3::ControlPlane;
use meshzone_xds::generate::{
    EgressExternal, ProxyInput, Snapshot, SniRouterInput, TlsMaterial, Transparent, generate,
    generate_sni_router,
};

/// Kuma's default outbound redirect port (`redirectPortOutbound`).
const DEFAULT_REDIRECT_PORT_OUTBOUND: u32 = 15001;
use meshzone_xds::names::TypeUrl;
use tokio::sync::{broadcast, mpsc};
use tonic::{Status, Streaming};
use tracing::{debug, info, warn};

use crate::endpoints::{egress_routes, ingress_routes};
use crate::handshake::{
    DATAPLANE_METADATA_KEY, ProxyKind, deregister_later, identify, metadata_string, register,
};
use crate::metrics::Generation;
use crate::policies::EgressRules;
use crate::view::remote_ingresses;
use crate::{Change, Shared};
use meshzone_metrics::Confirmation;
use meshzone_xds::policy::zone_egress::EgressRouteRules;

/// How many past subscriptions a DataplaneInsight keeps.
const KEPT_SUBSCRIPTIONS: usize = 5;

/// Renew a workload certificate when this share of its life has passed.
const RENEW_AT: f64 = 0.7;

type Out = mpsc::Sender<Result<DiscoveryResponse, Status>>;

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// The status a proxy gets when this control plane stops: reconnect (to another instance, or to
/// this one once it is back).
pub(crate) fn shutting_down() -> Status {
    Status::unavailable("the control plane is shutting down; reconnect")
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
    let (kind, key) = identify(&shared, &token, &node).await?;
    let store = &shared.store;
    let registered = match metadata_string(&node, DATAPLANE_METADATA_KEY) {
        Some(text) => {
            register(&shared, &key, &text).await?;
            true
        }
        None => {
            if store.find(&key).await.map_err(internal)?.is_none() {
                return Err(Status::not_found(format!(
                    "{key} does not exist: apply it first or start kuma-dp with --dataplane-file"
                )));
            }
            false
        }
    };
    let generation = shared.claim(&key);
    let (tx, rx) = mpsc::channel(16);
    let events = shared.changes.subscribe();
    let mut stream = ProxyStream::new(shared.clone(), key.clone(), kind, tx);
    stream.generation = generation;
    stream.version = node_version(&node);
    // gRPC's own xDS client announces itself as "gRPC <language>".
    stream.proxyless = node.user_agent_name.starts_with("gRPC");
    stream.open_insight().await;
    info!(%key, registered, "proxy connected");
    shared.shutdown.spawn(async move {
        let _active = stream.shared.metrics.ds.streams_active.track();
        let outcome = stream.run(first, inbound, events).await;
        if let Err(status) = &outcome {
            let _ = stream.tx.send(Err(status.clone())).await;
        }
        stream.close_insight().await;
        stream.shared.unpublish(&stream.key, generation);
        info!(key = %stream.key, "proxy disconnected");
        // A proxy whose stream ended because this CP stops reconnects to the next one: its
        // Dataplane stays.
        if registered && !stream.shared.shutdown.has_begun() {
            deregister_later(stream.shared.clone(), stream.key.clone(), generation);
        }
    });
    Ok(rx)
}

/// The proxy's current certificate and when to renew it.
struct Identity {
    material: TlsMaterial,
    /// The certificate's URI SANs (SPIFFE IDs and tags): a change reissues it.
    uris: Vec<String>,
    renew_at: SystemTime,
    expires: SystemTime,
    backend: String,
}

impl Identity {
    /// Still the right certificate: the same URIs and CA backend, not yet due for renewal.
    fn fits(&self, uris: &[String], backend: &str, now: SystemTime) -> bool {
        self.uris == uris && self.backend == backend && now < self.renew_at
    }
}

struct Sent {
    version: String,
    nonce: String,
    /// When it was sent: its ACK observes `xds_delivery`.
    at: std::time::Instant,
}

struct ProxyStream {
    shared: Arc<Shared>,
    key: ResourceKey,
    kind: ProxyKind,
    /// The latest store change affecting this proxy that the stream has heard of: a shared mesh
    /// view at least this recent may be reused.
    seen_seq: u64,
    tx: super::stream::Out,
    subscribed: HashMap<TypeUrl, Vec<String>>,
    sent: HashMap<TypeUrl, Sent>,
    nonce: u64,
    snapshot: Arc<Snapshot>,
    /// Which stream of this proxy this is (see `Shared::claim`).
    generation: u64,
    identity: Option<Identity>,
    /// A zone egress's certificate in each mesh whose ExternalServices it serves.
    egress_identities: BTreeMap<String, Identity>,
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
    fn new(shared: Arc<Shared>, key: ResourceKey, kind: ProxyKind, tx: Out) -> Self {
        let seen_seq = shared.store.sequence();
        ProxyStream {
            shared,
            key,
            kind,
            seen_seq,
            tx,
            subscribed: HashMap::new(),
            sent: HashMap::new(),
            nonce: 0,
            snapshot: Arc::default(),
            generation: 0,
            identity: None,
            egress_identities: BTreeMap::new(),
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
        mut events: broadcast::Receiver<Change>,
    ) -> Result<(), Status> {
        self.recompute().await?;
        self.handle_request(first).await?;
        let flush = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(flush);
        let mut flush_armed = false;
        loop {
            let renew_in = self
                .identity
                .iter()
                .chain(self.egress_identities.values())
                .filter_map(|i| i.renew_at.duration_since(SystemTime::now()).ok())
                .min()
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
                    Ok(Change::Store(e)) if self.affects(&e) => {
                        self.seen_seq = self.seen_seq.max(e.seq);
                        // Coalesce a burst of changes into one recomputation.
                        while let Ok(more) = events.try_recv() {
                            match more {
                                Change::Store(more) if self.affects(&more) => {
                                    self.seen_seq = self.seen_seq.max(more.seq);
                                }
                                Change::Store(_) => {}
                                Change::Missed => {
                                    self.seen_seq = self.shared.store.sequence();
                                }
                            }
                        }
                        if e.key == self.key && e.kind == EventKind::Deleted {
                            return Err(Status::not_found(format!("{} was deleted", self.key)));
                        }
                        self.recompute().await?;
                        self.push().await?;
                    }
                    Ok(Change::Store(_)) => {}
                    Ok(Change::Missed) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.seen_seq = self.shared.store.sequence();
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
                () = self.shared.shutdown.begun() => return Err(shutting_down()),
            }
        }
    }

    /// Store changes that can change this proxy's configuration: anything in its mesh except
    /// insights (which this very stream writes), and the Mesh itself.
    /// Zone proxies follow every mesh; sidecars also follow the zone proxies (cross-zone
    /// endpoints come from ingresses and egresses).
    fn affects(&self, e: &StoreEvent) -> bool {
        if e.key == self.key {
            return true;
        }
        match (self.kind, e.key.resource_type) {
            (_, ResourceType::DataplaneInsight | ResourceType::ServiceInsight) => false,
            (ProxyKind::Dataplane, ResourceType::Mesh) => e.key.name == self.key.mesh,
            (ProxyKind::Dataplane, ResourceType::ZoneIngress | ResourceType::ZoneEgress) => true,
            (ProxyKind::Dataplane, ResourceType::Config) => e.key.name == meshzone_dns::VIPS_CONFIG,
            (ProxyKind::Dataplane, t) if t.is_mesh_scoped() => e.key.mesh == self.key.mesh,
            (ProxyKind::Ingress, ResourceType::Mesh | ResourceType::Dataplane) => true,
            // This zone's ExternalServices go on to its egresses.
            (ProxyKind::Ingress, ResourceType::ExternalService | ResourceType::ZoneEgress) => true,
            (ProxyKind::Egress, ResourceType::Mesh | ResourceType::ZoneIngress) => true,
            // The ExternalServices an egress serves: their certificates, permissions, and
            // the mesh services that shadow them.
            (
                ProxyKind::Egress,
                ResourceType::ExternalService
                | ResourceType::Secret
                | ResourceType::MeshTrafficPermission
                | ResourceType::Dataplane,
            ) => true,
            // Top-level `Mesh` policies that configure an egress's routes.
            (ProxyKind::Egress, ResourceType::MeshHealthCheck | ResourceType::MeshTimeout) => true,
            // Route backendRefs to tag subsets get SNI routes of their own on zone proxies.
            (
                ProxyKind::Ingress | ProxyKind::Egress,
                ResourceType::MeshHTTPRoute
                | ResourceType::MeshTCPRoute
                | ResourceType::VirtualOutbound,
            ) => true,
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
                self.shared
                    .metrics
                    .ds
                    .request_received(type_url.as_str(), Confirmation::Nack);
                warn!(
                    proxy = %self.key, type_url = type_url.short(), version = r.version_info,
                    error = detail.message, "proxy rejected its configuration (NACK)"
                );
                self.write_insight(false).await;
            } else if current {
                c.responses_acknowledged += 1;
                let ds = &self.shared.metrics.ds;
                ds.request_received(type_url.as_str(), Confirmation::Ack);
                if let Some(sent) = self.sent.get(&type_url) {
                    ds.delivery.observe_ms(sent.at.elapsed());
                }
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

    /// Sends every subscribed type whose content changed since it was last sent. After new
    /// clusters the load assignments go again even when unchanged: Envoy re-creates an updated
    /// cluster and keeps it warming (the old one in use) until an EDS response arrives for it,
    /// and its request for one repeats the version it has, which is no reason to answer.
    async fn push(&mut self) -> Result<(), Status> {
        let types: Vec<TypeUrl> = self.subscribed.keys().copied().collect();
        let mut clusters_sent = false;
        for t in TypeUrl::ALL.into_iter().filter(|t| types.contains(t)) {
            let current = self
                .snapshot
                .get(t)
                .map(|s| s.version.as_str())
                .unwrap_or("");
            let stale = self.sent.get(&t).map(|s| s.version.as_str()) != Some(current);
            if stale || (t == TypeUrl::ClusterLoadAssignment && clusters_sent) {
                self.send(t).await?;
                clusters_sent |= t == TypeUrl::Cluster;
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
                at: std::time::Instant::now(),
            },
        );
        self.counters.entry(type_url).or_default().responses_sent += 1;
        self.shared.metrics.ds.response_sent(type_url.as_str());
        self.insight_dirty = true;
        self.tx
            .send(Ok(response))
            .await
            .map_err(|_| Status::cancelled("proxy went away"))
    }

    /// Rebuilds the proxy's configuration from the store, observing `xds_generation`.
    async fn recompute(&mut self) -> Result<(), Status> {
        let started = std::time::Instant::now();
        let before = self.snapshot.clone();
        let outcome = self.generate_config().await;
        let metrics = &self.shared.metrics;
        if outcome.is_err() {
            metrics.generation_errors.inc();
            return outcome;
        }
        let result = if Arc::ptr_eq(&before, &self.snapshot) {
            Generation::Skip
        } else if self.sent.is_empty() {
            Generation::Generated
        } else {
            Generation::Changed
        };
        metrics.generated(self.kind, result, started.elapsed());
        outcome
    }

    async fn generate_config(&mut self) -> Result<(), Status> {
        if self.kind != ProxyKind::Dataplane {
            return self.recompute_zone_proxy().await;
        }
        let view = self.shared.mesh_view(&self.key.mesh, self.seen_seq).await?;
        let Some(own) = view
            .dataplanes
            .iter()
            .find(|d| d.meta.name == self.key.name)
        else {
            return Err(Status::not_found(format!("{} was deleted", self.key)));
        };
        let policies = match crate::policies::proxy_policies(
            &view.policies,
            own,
            self.shared.settings.zone.as_deref(),
        ) {
            Ok(p) => p,
            // Never a half configuration: the proxy keeps the last good one.
            Err(e) => {
                self.shared.metrics.generation_errors.inc();
                warn!(key = %self.key, error = %e, "cannot compute the proxy's policy rules; it keeps its last configuration");
                return Ok(());
            }
        };
        let Spec::Dataplane(own) = own.spec.clone() else {
            return Err(internal("stored Dataplane has another spec"));
        };
        let (mesh, endpoints, protocols, vips) =
            (&view.mesh, &view.endpoints, &view.protocols, &view.vips);
        self.ensure_identity(mesh, &own).await?;
        let material = self.identity.as_ref().map(|i| &i.material);
        let snapshot = generate(&ProxyInput {
            transparent: own
                .networking
                .transparent_proxying
                .as_ref()
                .map(|t| Transparent {
                    redirect_port_outbound: t
                        .redirect_port_outbound
                        .unwrap_or(DEFAULT_REDIRECT_PORT_OUTBOUND),
                    redirect_port_inbound: t.redirect_port_inbound,
                    vips,
                    virtual_outbounds: &view.virtual_outbounds,
                }),
            mesh: &self.key.mesh,
            mesh_spec: mesh,
            dataplane: &own,
            endpoints,
            tls: material,
            protocols,
            proxyless: self.proxyless,
            policies: &policies,
            external_services: &view.external,
        });
        self.set_snapshot(snapshot);
        Ok(())
    }

    /// Takes a newly computed configuration (and publishes it for config dumps) when it differs.
    fn set_snapshot(&mut self, snapshot: Snapshot) {
        if self.snapshot.same_versions(&snapshot) {
            return;
        }
        self.snapshot = Arc::new(snapshot);
        self.shared
            .publish(&self.key, self.generation, self.snapshot.clone());
    }

    /// A zone ingress routes SNI to local instances; a zone egress routes SNI to other zones'
    /// ingresses. Neither holds a certificate: TLS passes through them end to end.
    async fn recompute_zone_proxy(&mut self) -> Result<(), Status> {
        let store = &self.shared.store;
        let meshes = store
            .list(ResourceType::Mesh, None)
            .await
            .map_err(internal)?;
        // Every mesh's MeshHTTPRoutes and MeshTCPRoutes: the subsets their backendRefs ask for
        // get SNI routes of their own.
        let mut route_policies = Vec::new();
        for t in [ResourceType::MeshHTTPRoute, ResourceType::MeshTCPRoute] {
            let stored = store.list(t, None).await.map_err(internal)?;
            route_policies.extend(
                stored
                    .iter()
                    .filter_map(meshzone_model::policies::to_engine_policy),
            );
        }
        // VirtualOutbounds to tag subsets: those subsets get SNI routes too.
        let virtual_outbounds = store
            .list(ResourceType::VirtualOutbound, None)
            .await
            .map_err(internal)?;
        let mut route_rules = BTreeMap::new();
        let (address, port, routes) = match store.find(&self.key).await.map_err(internal)? {
            Some(Resource {
                spec: Spec::ZoneIngress(z),
                ..
            }) => {
                let dataplanes = store
                    .list_all(ResourceType::Dataplane)
                    .await
                    .map_err(internal)?;
                let mut routes =
                    ingress_routes(&meshes, &dataplanes, &route_policies, &virtual_outbounds);
                if let Some(zone) = self.shared.settings.zone.as_deref() {
                    let external = store
                        .list(ResourceType::ExternalService, None)
                        .await
                        .map_err(internal)?;
                    let egresses = crate::view::local_egresses(&self.shared).await?;
                    for (sni, endpoints) in crate::external_services::ingress_external_routes(
                        &meshes, &external, &egresses, zone,
                    ) {
                        routes.entry(sni).or_insert(endpoints);
                    }
                }
                (z.networking.address, z.networking.port, routes)
            }
            Some(Resource {
                spec: Spec::ZoneEgress(z),
                ..
            }) => {
                let remote = remote_ingresses(&self.shared).await?;
                let egress = egress_routes(&meshes, &remote, &route_policies, &virtual_outbounds);
                route_rules = self.egress_route_rules(&egress.services).await?;
                (z.networking.address, z.networking.port, egress.routes)
            }
            _ => return Err(Status::not_found(format!("{} was deleted", self.key))),
        };
        let (external, tls) = if self.kind == ProxyKind::Egress {
            self.egress_externals(&meshes).await?
        } else {
            Default::default()
        };
        let listener_name = meshzone_xds::names::inbound_listener(&address, port);
        let snapshot = generate_sni_router(&SniRouterInput {
            listener_name: &listener_name,
            address: &address,
            port,
            routes: &routes,
            external: &external,
            tls: &tls,
            route_rules: &route_rules,
        });
        self.set_snapshot(snapshot);
        Ok(())
    }

    /// The policies of each SNI route of a zone egress (`services`: SNI → mesh and service):
    /// the top-level `Mesh` MeshHealthChecks and MeshTimeouts of the route's mesh.
    async fn egress_route_rules(
        &self,
        services: &BTreeMap<String, (String, String)>,
    ) -> Result<BTreeMap<String, EgressRouteRules>, Status> {
        let mut by_mesh = BTreeMap::new();
        let mut out = BTreeMap::new();
        for (sni, (mesh, service)) in services {
            if !by_mesh.contains_key(mesh) {
                let view = self.shared.mesh_view(mesh, self.seen_seq).await?;
                let rules = EgressRules::of(&view.policies, mesh).map_err(|e| {
                    // Never a half configuration: the egress keeps its last one.
                    warn!(key = %self.key, mesh, error = %e, "cannot compute the zone egress's policies; it keeps its last configuration");
                    Status::internal(format!("policies of the zone egress in mesh {mesh}: {e}"))
                })?;
                by_mesh.insert(mesh.clone(), rules);
            }
            if let Some(rules) = by_mesh.get(mesh).and_then(|r| r.for_service(service)) {
                out.insert(sni.clone(), rules);
            }
        }
        Ok(out)
    }

    /// A zone egress's ExternalServices in every mesh with `routing.zoneEgress` and a builtin
    /// CA, each with its MeshTrafficPermission rules (those of a Dataplane whose inbound
    /// carries the service's tags), and the egress's certificate in each such mesh
    /// (`spiffe://<mesh>/<service>` for every service it serves there).
    async fn egress_externals(
        &mut self,
        meshes: &[Resource],
    ) -> Result<(Vec<EgressExternal>, BTreeMap<String, TlsMaterial>), Status> {
        let zone = self.shared.settings.zone.clone();
        let mut external = Vec::new();
        let mut tls = BTreeMap::new();
        let mut kept = BTreeMap::new();
        for m in meshes {
            let Spec::Mesh(spec) = &m.spec else { continue };
            let mesh = m.meta.name.as_str();
            if !spec.routing.as_ref().is_some_and(|r| r.zone_egress) {
                continue;
            }
            let Some(backend) = builtin_backend(spec) else {
                continue;
            };
            let view = self.shared.mesh_view(mesh, self.seen_seq).await?;
            if view.egress_served.is_empty() {
                continue;
            }
            let mut uris = Vec::new();
            for served in &view.egress_served {
                let stand_in = serde_json::json!({
                    "type": "Dataplane", "mesh": mesh, "name": format!("zone-egress.{}", served.service),
                    "networking": {"address": "127.0.0.1", "inbound": [{"port": 1, "tags": served.tags}]}
                });
                let permission = match Resource::from_value(stand_in)
                    .map_err(|e| e.to_string())
                    .and_then(|r| {
                        crate::policies::proxy_policies(&view.policies, &r, zone.as_deref())
                            .map_err(|e| e.to_string())
                    }) {
                    Ok(p) => p
                        .traffic_permission
                        .from_rules
                        .into_iter()
                        .next()
                        .map(|f| f.rules)
                        .unwrap_or_default(),
                    // Never a half configuration: the egress keeps its last one.
                    Err(e) => {
                        warn!(key = %self.key, mesh, service = served.service, error = %e, "cannot compute the permissions of an external service; the egress keeps its last configuration");
                        return Ok(Default::default());
                    }
                };
                uris.push(meshzone_pki::spiffe_id(mesh, &served.service));
                external.push(EgressExternal {
                    mesh: mesh.to_string(),
                    service: served.service.clone(),
                    endpoint: served.endpoint.clone(),
                    tls: served.tls.clone(),
                    permission,
                });
            }
            let identity = self.egress_identity(mesh, spec, backend, uris).await?;
            tls.insert(mesh.to_string(), identity.material.clone());
            kept.insert(mesh.to_string(), identity);
        }
        self.egress_identities = kept;
        Ok((external, tls))
    }

    /// The egress's certificate in `mesh` with `uris`: the one it has while it still fits,
    /// else a new one from the mesh CA.
    async fn egress_identity(
        &mut self,
        mesh: &str,
        spec: &MeshSpec,
        backend: &str,
        uris: Vec<String>,
    ) -> Result<Identity, Status> {
        let now = SystemTime::now();
        if let Some(i) = self.egress_identities.remove(mesh)
            && i.fits(&uris, backend, now)
        {
            return Ok(i);
        }
        self.issue(mesh, spec, backend, uris, now).await
    }

    /// A new certificate with `uris` from the CA of `mesh` (created when this CP creates CAs).
    async fn issue(
        &mut self,
        mesh: &str,
        spec: &MeshSpec,
        backend: &str,
        uris: Vec<String>,
        now: SystemTime,
    ) -> Result<Identity, Status> {
        let ca = if self.shared.settings.create_ca {
            ensure_mesh_ca(&self.shared.store, mesh, spec, now).await
        } else {
            find_mesh_ca(&self.shared.store, mesh, spec).await
        }
        .map_err(|e| Status::unavailable(e.to_string()))?;
        let lifetime = cert_lifetime(spec);
        let cert =
            meshzone_pki::issue_workload_cert(&ca, &uris, lifetime, now).map_err(internal)?;
        self.regenerations += 1;
        self.last_regeneration = Some(Utc::now());
        self.insight_dirty = true;
        Ok(Identity {
            material: TlsMaterial {
                identity_cert_pem: cert.cert_pem,
                identity_key_pem: cert.key_pem,
                ca_cert_pem: ca.cert_pem,
            },
            uris,
            renew_at: now + lifetime.mul_f64(RENEW_AT),
            expires: now + lifetime,
            backend: backend.to_string(),
        })
    }

    /// Issues (or keeps) the proxy's workload certificate when its mesh uses a builtin CA.
    async fn ensure_identity(&mut self, mesh: &MeshSpec, dp: &DataplaneSpec) -> Result<(), Status> {
        let Some(backend) = builtin_backend(mesh) else {
            self.identity = None;
            return Ok(());
        };
        let uris = meshzone_identity::workload_uris(
            &self.key.mesh,
            dp,
            self.shared.settings.zone.as_deref(),
        );
        let now = SystemTime::now();
        if self
            .identity
            .as_ref()
            .is_some_and(|i| i.fits(&uris, backend, now))
        {
            return Ok(());
        }
        let mesh_name = self.key.mesh.clone();
        self.identity = Some(self.issue(&mesh_name, mesh, backend, uris, now).await?);
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
        let key = ResourceKey::new(self.kind.insight_type(), &self.key.mesh, &self.key.name);
        for _ in 0..5 {
            let stored = match store.find(&key).await {
                Ok(s) => s,
                Err(e) => {
                    warn!(%key, error = %e, "cannot read insight");
                    return;
                }
            };
            let mut subscriptions = stored
                .as_ref()
                .and_then(|r| r.spec.proxy_subscriptions().cloned())
                .unwrap_or_default();
            change(&mut subscriptions, self);
            let excess = subscriptions.len().saturating_sub(KEPT_SUBSCRIPTIONS);
            subscriptions.drain(..excess);
            let spec = match self.kind {
                ProxyKind::Dataplane => Spec::DataplaneInsight(DataplaneInsightSpec {
                    subscriptions,
                    mtls: self.identity.as_ref().map(|i| MtlsInsight {
                        certificate_expiration_time: Some(i.expires.into()),
                        last_certificate_regeneration: self.last_regeneration,
                        certificate_regenerations: self.regenerations,
                        issued_backend: i.backend.clone(),
                        supported_backends: vec![i.backend.clone()],
                    }),
                }),
                ProxyKind::Ingress => {
                    Spec::ZoneIngressInsight(ZoneProxyInsightSpec { subscriptions })
                }
                ProxyKind::Egress => {
                    Spec::ZoneEgressInsight(ZoneProxyInsightSpec { subscriptions })
                }
            };
            let result = match stored {
                Some(mut r) => {
                    r.spec = spec;
                    store.update(r).await.map(|_| ())
                }
                None => {
                    let mut r = Resource::new(Meta::named(&self.key.name, &self.key.mesh), spec);
                    r.meta.owner = Some(self.key.clone());
                    store.create(r).await.map(|_| ())
                }
            };
            match result {
                Ok(()) => return,
                Err(StoreError::Conflict { .. } | StoreError::AlreadyExists(_)) => continue,
                // The proxy's resource is gone (deregistered or deleted): nothing to record.
                Err(StoreError::OwnerNotFound(_) | StoreError::NotFound(_)) => return,
                Err(e) => {
                    warn!(%key, error = %e, "cannot write insight");
                    return;
                }
            }
        }
    }
}
