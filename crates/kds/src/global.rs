//! The global side of KDS: serves both streams to zones, keeps Zone and ZoneInsight.

use std::sync::Arc;

use chrono::Utc;
use meshzone_lifecycle::Shutdown;
use meshzone_model::specs::{
    BuildVersion, ComponentVersions, KdsSubscription, Subscriptions, ZoneInsightSpec,
};
use meshzone_model::{Meta, Resource, ResourceKey, ResourceType, Spec, proxy_insight_types};
use meshzone_store::{Store, StoreError};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::inspect::InspectHub;
use crate::metrics::{KdsMetrics, Reason};
use crate::proto::kds_sync_server::{KdsSync, KdsSyncServer};
use crate::proto::{Ack, Changes, ForwardedInspect, InspectRequest, InspectResponse};
use crate::sync::{self, Received, Set};
use crate::wire;

/// Turns a private zone-token signing key (PEM) into its public PEM.
pub type PublicKeyFn = Arc<dyn Fn(&[u8]) -> Option<Vec<u8>> + Send + Sync>;

#[derive(Clone)]
pub struct GlobalKds {
    store: Store,
    instance_id: String,
    public_key: PublicKeyFn,
    require_zone_token: bool,
    inspect: InspectHub,
    /// The token other global instances on the same database present with forwarded requests;
    /// `None`: this instance takes none.
    forward_token: Option<Arc<str>>,
    /// When it begins, every stream ends with `UNAVAILABLE` and records that it ended.
    shutdown: Shutdown,
    metrics: KdsMetrics,
}

impl GlobalKds {
    /// `require_zone_token`: zones must present a zone token with the `cp` scope
    /// (`KUMA_MULTIZONE_GLOBAL_KDS_AUTH_TYPE=zoneToken`).
    /// `inspect` routes requests about zones' proxies (config dumps) over their Inspect streams.
    pub fn new(
        store: Store,
        instance_id: String,
        public_key: PublicKeyFn,
        require_zone_token: bool,
        inspect: InspectHub,
        shutdown: Shutdown,
        metrics: KdsMetrics,
    ) -> Self {
        GlobalKds {
            metrics,
            store,
            instance_id,
            inspect,
            public_key,
            require_zone_token,
            shutdown,
            forward_token: None,
        }
    }

    /// Takes requests forwarded by other global instances that present `token` (the instances'
    /// shared secret).
    pub fn taking_forwarded_requests(mut self, token: String) -> Self {
        self.forward_token = Some(token.into());
        self
    }

    /// Checks the zone token of a connecting zone CP, when global requires one.
    async fn authenticate<T>(&self, request: &Request<T>, zone: &str) -> Result<(), Status> {
        if !self.require_zone_token {
            return Ok(());
        }
        let token = meshzone_identity::bearer_token(meshzone_tls_client::bearer::authorization(
            request.metadata(),
        ));
        meshzone_identity::verify_zone_token(&self.store, &token, zone, "cp", std::time::SystemTime::now())
            .await
            .map(|_| ())
            .map_err(|e| {
                warn!(zone, reason = %e, "refused a zone control plane");
                Status::unauthenticated(format!(
                    "zone {zone:?} refused: {e} (generate one with kumactl generate zone-token --zone {zone} --scope cp and set KUMA_MULTIZONE_ZONE_KDS_AUTH_TOKEN_FILE)"
                ))
            })
    }

    /// Reads a stream's first message (every stream opens with the zone's name and protocol
    /// version), checks it and authenticates the zone.
    async fn handshake<T: Hello + Send + 'static>(
        &self,
        request: &mut Request<Streaming<T>>,
    ) -> Result<(T, String), Status> {
        if self.shutdown.has_begun() {
            return Err(shutting_down());
        }
        let hello = request
            .get_mut()
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream closed before the handshake"))?;
        let zone = hello.zone().to_string();
        check_handshake(&zone, hello.protocol_version())?;
        self.authenticate(request, &zone).await?;
        Ok((hello, zone))
    }

    pub fn into_server(self) -> KdsSyncServer<GlobalKds> {
        KdsSyncServer::new(self).max_decoding_message_size(64 * 1024 * 1024)
    }
}

/// The first message of a zone's stream names the zone and the protocol version.
trait Hello {
    fn zone(&self) -> &str;
    fn protocol_version(&self) -> &str;
}

macro_rules! hello {
    ($($t:ty),*) => {$(
        impl Hello for $t {
            fn zone(&self) -> &str {
                &self.zone
            }
            fn protocol_version(&self) -> &str {
                &self.protocol_version
            }
        }
    )*};
}
hello!(Ack, Changes, InspectResponse);

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// What a zone is told when global stops: reconnect (to another instance, or to this one once it
/// is back).
pub(crate) fn shutting_down() -> Status {
    Status::unavailable("global control plane is shutting down; reconnect")
}

fn check_handshake(zone: &str, version: &str) -> Result<(), Status> {
    if !meshzone_model::validate::is_dns_label(zone) {
        return Err(Status::invalid_argument(format!(
            "zone name {zone:?} is not valid (a DNS label is required)"
        )));
    }
    if !wire::compatible(version) {
        return Err(Status::failed_precondition(format!(
            "zone {zone:?} speaks KDS protocol {version:?}, global speaks {}: upgrade the older side",
            wire::PROTOCOL_VERSION
        )));
    }
    Ok(())
}

/// Creates the Zone on first contact (enabled).
async fn ensure_zone(store: &Store, zone: &str) -> Result<(), Status> {
    match store.create(sync::zone_resource(zone)).await {
        Ok(_) => {
            info!(zone, "a new zone connected: created its Zone resource");
            Ok(())
        }
        Err(StoreError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(internal(e)),
    }
}

/// Read-modify-write of a zone's insight, retried on concurrent change.
async fn edit_insight(store: &Store, zone: &str, change: impl Fn(&mut ZoneInsightSpec)) {
    let key = ResourceKey::global(ResourceType::ZoneInsight, zone);
    for _ in 0..5 {
        let stored = match store.find(&key).await {
            Ok(s) => s,
            Err(e) => {
                warn!(zone, error = %e, "cannot read zone insight");
                return;
            }
        };
        let result = match stored {
            Some(mut r) => {
                if let Spec::ZoneInsight(s) = &mut r.spec {
                    change(s);
                }
                store.update(r).await.map(|_| ())
            }
            None => {
                let mut spec = ZoneInsightSpec::default();
                change(&mut spec);
                let mut r = Resource::new(Meta::named(zone, ""), Spec::ZoneInsight(spec));
                r.meta.owner = Some(ResourceKey::global(ResourceType::Zone, zone));
                store.create(r).await.map(|_| ())
            }
        };
        match result {
            Ok(()) => return,
            Err(StoreError::Conflict { .. } | StoreError::AlreadyExists(_)) => continue,
            Err(StoreError::OwnerNotFound(_) | StoreError::NotFound(_)) => return,
            Err(e) => {
                warn!(zone, error = %e, "cannot write zone insight");
                return;
            }
        }
    }
}

/// Marks the proxies of a zone that is not connected as disconnected in global's copies of their
/// insights, so global never shows a proxy Online behind an offline zone. When the zone
/// reconnects, its first (full) batch brings back their real state. `None`: every zone.
pub async fn mark_zone_proxies_offline(
    store: &Store,
    zone: Option<&str>,
) -> Result<usize, StoreError> {
    let now = Utc::now();
    let mut closed = 0;
    for &rt in proxy_insight_types() {
        for mut r in store.list(rt, None).await? {
            let Some(of) = r.meta.labels.get(sync::ZONE_LABEL) else {
                continue;
            };
            if zone.is_some_and(|z| z != of) {
                continue;
            }
            let n = r.spec.close_open_subscriptions(now);
            if n == 0 {
                continue;
            }
            closed += n;
            match store.update(r).await {
                // A concurrent write came from the zone itself: it knows better.
                Ok(_) | Err(StoreError::NotFound(_) | StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(closed)
}

/// Ends the open zone subscriptions held by a global instance that `dead` names (by its id):
/// after a restart of global no stream of the previous process can still be alive, while other
/// live global instances sharing the store keep theirs. The proxies of every zone without an
/// open subscription are marked Offline. Returns how many zones had subscriptions closed.
pub async fn close_stale_subscriptions(
    store: &Store,
    dead: impl Fn(&str) -> bool,
) -> Result<usize, StoreError> {
    let mut closed = 0;
    for r in store.list(ResourceType::ZoneInsight, None).await? {
        let Spec::ZoneInsight(spec) = &r.spec else {
            continue;
        };
        let stale = |sub: &meshzone_model::specs::KdsSubscription| {
            sub.disconnect_time.is_none() && dead(&sub.global_instance_id)
        };
        let mut online = spec.is_online();
        if spec.subscriptions.iter().any(stale) {
            closed += 1;
            edit_insight(store, &r.meta.name, |s| {
                for sub in s.subscriptions.iter_mut().filter(|sub| stale(sub)) {
                    sub.disconnect_time = Some(Utc::now());
                }
            })
            .await;
            online = store
                .find(&r.key())
                .await?
                .is_some_and(|now| matches!(&now.spec, Spec::ZoneInsight(s) if s.is_online()));
        }
        // Proxies of a zone without a live stream cannot be Online (whatever left them so).
        if !online {
            mark_zone_proxies_offline(store, Some(&r.meta.name)).await?;
        }
    }
    Ok(closed)
}

/// The receiver's copies a batch can touch: everything of its types for an initial batch, only
/// the named keys otherwise (so a one-resource change costs one lookup, not a full listing).
pub(crate) async fn local_copies(
    store: &Store,
    received: &Received,
    types: &[ResourceType],
) -> Result<Vec<Resource>, StoreError> {
    let mut local = Vec::new();
    if received.initial {
        for t in types {
            local.extend(store.list(*t, None).await?);
        }
        return Ok(local);
    }
    let keys: std::collections::BTreeSet<ResourceKey> = received
        .upserted
        .iter()
        .map(Resource::key)
        .chain(received.removed.iter().cloned())
        .collect();
    for k in keys {
        if let Some(r) = store.find(&k).await? {
            local.push(r);
        }
    }
    Ok(local)
}

/// Kept subscriptions per zone.
const KEPT: usize = 10;

/// How long global waits for a zone to acknowledge a batch before it resets the stream.
pub const ACK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + std::time::Duration::from_secs(86_400)
}

async fn all_offered_types(store: &Store) -> Result<Vec<Resource>, Status> {
    let mut all = Vec::new();
    for &t in ResourceType::sent_to_zones() {
        all.extend(store.list(t, None).await.map_err(internal)?);
    }
    Ok(all)
}

async fn disabled_zones(store: &Store) -> Result<Vec<String>, Status> {
    Ok(store
        .list(ResourceType::Zone, None)
        .await
        .map_err(internal)?
        .into_iter()
        .filter(|z| matches!(&z.spec, Spec::Zone(s) if !s.is_enabled()))
        .map(|z| z.meta.name)
        .collect())
}

#[tonic::async_trait]
impl KdsSync for GlobalKds {
    async fn forward_inspect(
        &self,
        request: Request<ForwardedInspect>,
    ) -> Result<Response<InspectResponse>, Status> {
        let Some(expected) = &self.forward_token else {
            return Err(Status::unimplemented(
                "this global instance takes no forwarded requests: it shares no Postgres store with other instances",
            ));
        };
        let token = meshzone_identity::bearer_token(meshzone_tls_client::bearer::authorization(
            request.metadata(),
        ));
        if !meshzone_identity::same_secret(&token, expected) {
            warn!("refused a forwarded inspect request without the instances' token");
            return Err(Status::unauthenticated(
                "forwarded requests need the token the global instances share in their store",
            ));
        }
        let ForwardedInspect { zone, request } = request.into_inner();
        let request = request
            .ok_or_else(|| Status::invalid_argument("a forwarded request names no request"))?;
        self.inspect
            .ask_here(&zone, request)
            .await
            .map(Response::new)
            .map_err(|e| Status::unavailable(e.to_string()))
    }

    type GlobalToZoneStream = ReceiverStream<Result<Changes, Status>>;

    async fn global_to_zone(
        &self,
        mut request: Request<Streaming<Ack>>,
    ) -> Result<Response<Self::GlobalToZoneStream>, Status> {
        let (hello, zone) = self.handshake(&mut request).await?;
        let inbound = request.into_inner();
        ensure_zone(&self.store, &zone).await?;
        let sub_id = uuid::Uuid::new_v4().to_string();
        let subscription = KdsSubscription {
            id: sub_id.clone(),
            global_instance_id: self.instance_id.clone(),
            zone_instance_id: hello.instance_id.clone(),
            connect_time: Some(Utc::now()),
            config: hello.config.clone(),
            version: Some(ComponentVersions {
                kuma_cp: Some(BuildVersion {
                    version: hello.cp_version.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        edit_insight(&self.store, &zone, |s| {
            // A zone has one live connection: older ones (e.g. from before a cut) are over.
            for old in &mut s.subscriptions {
                old.disconnect_time.get_or_insert_with(Utc::now);
            }
            s.subscriptions.push(subscription.clone());
            let excess = s.subscriptions.len().saturating_sub(KEPT);
            s.subscriptions.drain(..excess);
        })
        .await;
        info!(zone, "zone connected (global→zone stream)");
        let (tx, rx) = mpsc::channel(16);
        let me = self.clone();
        let events = self.store.subscribe();
        self.shutdown.spawn(async move {
            let connection = me.metrics.zone_connection(&zone);
            let (_stream, _connection) = (me.metrics.ds.streams_active.track(), connection.track());
            if let Err(status) = me.send_loop(&zone, &sub_id, inbound, events, &tx).await {
                let _ = tx.send(Err(status)).await;
            }
            edit_insight(&me.store, &zone, |s| {
                if let Some(sub) = s.subscriptions.iter_mut().find(|x| x.id == sub_id) {
                    sub.disconnect_time.get_or_insert_with(Utc::now);
                }
            })
            .await;
            info!(zone, "zone disconnected");
            // Stopping: the next global marks what is left offline at its start, and the zone
            // brings the truth when it reconnects.
            if me.shutdown.has_begun() {
                return;
            }
            // Unless it already reconnected, its proxies' status on global is unknown now.
            let reconnected = match me
                .store
                .find(&ResourceKey::global(ResourceType::ZoneInsight, &zone))
                .await
            {
                Ok(Some(Resource {
                    spec: Spec::ZoneInsight(s),
                    ..
                })) => s.is_online(),
                _ => false,
            };
            if !reconnected {
                match mark_zone_proxies_offline(&me.store, Some(&zone)).await {
                    Ok(n) if n > 0 => info!(
                        zone,
                        proxies = n,
                        "marked the zone's proxies offline on global"
                    ),
                    Ok(_) => {}
                    Err(e) => warn!(zone, error = %e, "cannot mark the zone's proxies offline"),
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type InspectStream = ReceiverStream<Result<InspectRequest, Status>>;

    async fn inspect(
        &self,
        mut request: Request<Streaming<InspectResponse>>,
    ) -> Result<Response<Self::InspectStream>, Status> {
        let (_, zone) = self.handshake(&mut request).await?;
        let rx = self
            .inspect
            .attach(zone, request.into_inner(), self.shutdown.clone());
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type ZoneToGlobalStream = ReceiverStream<Result<Ack, Status>>;

    async fn zone_to_global(
        &self,
        mut request: Request<Streaming<Changes>>,
    ) -> Result<Response<Self::ZoneToGlobalStream>, Status> {
        let (first, zone) = self.handshake(&mut request).await?;
        let mut inbound = request.into_inner();
        ensure_zone(&self.store, &zone).await?;
        let (tx, rx) = mpsc::channel(16);
        let me = self.clone();
        self.shutdown.spawn(async move {
            let _stream = me.metrics.ds.streams_active.track();
            let mut next = Some(first);
            loop {
                let changes = match next.take() {
                    Some(c) => c,
                    None => match me.shutdown.unless_stopped(inbound.message()).await {
                        Some(Ok(Some(c))) => c,
                        Some(_) => break,
                        None => {
                            let _ = tx.send(Err(shutting_down())).await;
                            break;
                        }
                    },
                };
                match me.receive_from_zone(&zone, &changes).await {
                    Ok(ack) => {
                        if tx.send(Ok(ack)).await.is_err() {
                            break;
                        }
                    }
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl GlobalKds {
    /// Sends the full offer, then every change, until the zone goes away.
    async fn send_loop(
        &self,
        zone: &str,
        sub_id: &str,
        mut inbound: Streaming<Ack>,
        mut events: broadcast::Receiver<meshzone_store::StoreEvent>,
        tx: &mpsc::Sender<Result<Changes, Status>>,
    ) -> Result<(), Status> {
        let mut sent = Set::new();
        let mut nonce = 0u64;
        let mut initial = true;
        // Set while a batch is unacknowledged: a zone that stops acknowledging is cut off, so it
        // reconnects and resyncs instead of silently stalling.
        let mut awaiting_ack: Option<tokio::time::Instant> = None;
        let mut last_batch_types: std::collections::BTreeSet<&'static str> = Default::default();
        let mut sent_at = tokio::time::Instant::now();
        loop {
            let started = std::time::Instant::now();
            let read = async {
                Ok::<_, Status>((
                    all_offered_types(&self.store).await?,
                    disabled_zones(&self.store).await?,
                ))
            };
            let (offered, disabled) = read.await.inspect_err(|_| {
                self.metrics.generation_errors.inc();
            })?;
            let offer =
                sync::offer_to_zone(zone, &offered, &disabled, |pem| (self.public_key)(pem));
            let d = sync::delta(&sent, &offer);
            let reason = if initial {
                Reason::Resync
            } else {
                Reason::Event
            };
            self.metrics
                .generated(zone, reason, !d.is_empty(), started.elapsed());
            if initial || !d.is_empty() {
                nonce += 1;
                let changes = Changes {
                    nonce: nonce.to_string(),
                    initial,
                    types: ResourceType::sent_to_zones()
                        .iter()
                        .map(|t| t.name().to_string())
                        .collect(),
                    upserted: d.upserted.iter().map(wire::to_wire).collect(),
                    removed: d.removed.iter().map(wire::key_to_wire).collect(),
                    ..Default::default()
                };
                tx.send(Ok(changes))
                    .await
                    .map_err(|_| Status::cancelled("zone went away"))?;
                let batch_types: std::collections::BTreeSet<&'static str> = d
                    .upserted
                    .iter()
                    .map(|r| r.resource_type().name())
                    .chain(d.removed.iter().map(|k| k.resource_type.name()))
                    .collect();
                edit_insight(&self.store, zone, |s| {
                    if let Some(sub) = s.subscriptions.iter_mut().find(|x| x.id == sub_id) {
                        sub.status.total.responses_sent += 1;
                        sub.status.last_update_time = Some(Utc::now());
                        for t in &batch_types {
                            sub.status
                                .stat
                                .entry(t.to_string())
                                .or_default()
                                .responses_sent += 1;
                        }
                    }
                })
                .await;
                self.metrics.sent(&batch_types);
                sent_at = tokio::time::Instant::now();
                last_batch_types = batch_types;
                sent = offer;
                initial = false;
                awaiting_ack.get_or_insert_with(tokio::time::Instant::now);
            }
            // Wait for something that can change the offer, or an ACK.
            loop {
                let deadline = awaiting_ack.map(|t| t + ACK_DEADLINE);
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                        warn!(zone, "zone did not acknowledge within {ACK_DEADLINE:?}; closing its stream to resync");
                        return Err(Status::deadline_exceeded(format!(
                            "no acknowledgement within {ACK_DEADLINE:?}; reconnect to resync"
                        )));
                    }
                    ack = inbound.message() => match ack {
                        Ok(Some(ack)) => {
                            if ack.response_nonce == nonce.to_string() {
                                awaiting_ack = None;
                                self.metrics.ds.delivery.observe_ms(sent_at.elapsed());
                            }
                            let rejected = !ack.rejections.is_empty();
                            let rejected_types: std::collections::BTreeSet<String> = ack
                                .rejections
                                .iter()
                                .filter_map(|r| r.key.as_ref().map(|k| k.r#type.clone()))
                                .collect();
                            for r in &ack.rejections {
                                warn!(zone, resource = ?r.key, reason = r.reason, "zone rejected a resource (NACK)");
                            }
                            let rejected_each: Vec<String> = ack
                                .rejections
                                .iter()
                                .filter_map(|r| r.key.as_ref().map(|k| k.r#type.clone()))
                                .collect();
                            self.metrics.answered(Some(zone), &last_batch_types, &rejected_each);
                            edit_insight(&self.store, zone, |s| {
                                if let Some(sub) = s.subscriptions.iter_mut().find(|x| x.id == sub_id) {
                                    if rejected {
                                        sub.status.total.responses_rejected += 1;
                                    } else {
                                        sub.status.total.responses_acknowledged += 1;
                                    }
                                    for t in &last_batch_types {
                                        let c = sub.status.stat.entry(t.to_string()).or_default();
                                        if rejected_types.contains(*t) {
                                            c.responses_rejected += 1;
                                        } else {
                                            c.responses_acknowledged += 1;
                                        }
                                    }
                                }
                            })
                            .await;
                        }
                        _ => return Ok(()),
                    },
                    event = events.recv() => match event {
                        Ok(e) if ResourceType::sent_to_zones().contains(&e.key.resource_type)
                            || e.key.resource_type == ResourceType::Zone => {
                            while events.try_recv().is_ok() {}
                            break;
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    },
                    _ = tx.closed() => return Ok(()),
                    () = self.shutdown.begun() => return Err(shutting_down()),
                }
            }
        }
    }

    /// Applies a batch from a zone to global's store and answers with the ACK.
    async fn receive_from_zone(&self, zone: &str, changes: &Changes) -> Result<Ack, Status> {
        let (received, mut refusals) = wire::received_from_zone(zone, changes);
        let local = local_copies(&self.store, &received, ResourceType::sent_to_global())
            .await
            .map_err(internal)?;
        let (ops, planned_refusals) =
            sync::reconcile(&local, &received, |r| sync::from_zone(zone, r), |_| false);
        refusals.extend(planned_refusals);
        refusals.extend(
            wire::apply(&self.store, ops, ResourceType::sent_to_global())
                .await
                .map_err(internal)?,
        );
        for r in &refusals {
            warn!(zone, resource = %r.key, reason = r.reason, "refused a resource from the zone");
        }
        Ok(Ack {
            response_nonce: changes.nonce.clone(),
            rejections: refusals.iter().map(wire::refusal_to_wire).collect(),
            ..Default::default()
        })
    }
}
