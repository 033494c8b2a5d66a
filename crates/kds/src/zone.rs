//! The zone side of KDS: opens both streams to global, applies what global sends, reports the
//! zone's own resources, and reconnects with jittered exponential backoff. The zone keeps
//! working from its own store whenever global is unreachable.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use meshzone_model::{Resource, ResourceType};
use meshzone_store::{Store, StoreEvent};
use meshzone_tls_client::{Connector, Roots, Trust};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tracing::{info, warn};

use crate::metrics::Reason;
use crate::proto::kds_sync_client::KdsSyncClient;
use crate::proto::{Ack, Changes, InspectResponse};
use crate::sync::{self, Set};
use crate::wire;

/// Unanswered batches whose delivery time is kept.
const MAX_PENDING: usize = 1024;

#[derive(Clone)]
pub struct ZoneSettings {
    pub zone: String,
    /// `https://host:port` or `http://host:port`.
    pub global_url: String,
    pub tls: bool,
    /// PEM of the CA that signed global's KDS certificate.
    pub root_ca: Option<String>,
    /// Do not check global's certificate (`KUMA_MULTIZONE_ZONE_KDS_TLS_SKIP_VERIFY`).
    pub skip_verify: bool,
    pub instance_id: String,
    pub cp_version: String,
    /// This zone CP's configuration, shown on global.
    pub config: String,
    /// Zone token (scope `cp`) presented to global, if global requires one.
    pub token: Option<String>,
    /// Answers global's questions about this zone's proxies (config dumps, policy rules).
    pub inspect: crate::inspect::LocalAnswers,
    pub metrics: crate::KdsMetrics,
}

/// A call presenting the zone token, when there is one.
fn authorized<T>(settings: &ZoneSettings, message: T) -> Result<Request<T>, String> {
    let mut request = Request::new(message);
    if let Some(token) = &settings.token {
        meshzone_tls_client::bearer::present(request.metadata_mut(), token).map_err(|e| {
            format!("the zone token (KUMA_MULTIZONE_ZONE_KDS_AUTH_TOKEN_FILE): {e}")
        })?;
    }
    Ok(request)
}

const BACKOFF_START: Duration = Duration::from_millis(500);
// Short enough that a zone is back within a few seconds of a restarted global's start.
const BACKOFF_MAX: Duration = Duration::from_secs(3);

fn jitter(d: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d.mul_f64(0.8 + f64::from(nanos % 400) / 1000.0)
}

/// Runs forever: connect, sync both ways, reconnect when anything breaks.
pub async fn run(settings: ZoneSettings, store: Store) {
    let mut backoff = BACKOFF_START;
    loop {
        let started = SystemTime::now();
        match session(&settings, &store).await {
            Ok(()) => info!(
                global = settings.global_url,
                "KDS session with global ended"
            ),
            Err(reason) => warn!(
                global = settings.global_url,
                reason, "KDS session with global failed; the zone keeps serving from its store"
            ),
        }
        if started.elapsed().unwrap_or_default() > BACKOFF_MAX {
            backoff = BACKOFF_START;
        }
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn channel(settings: &ZoneSettings) -> Result<Channel, String> {
    let endpoint = |url: String| {
        Channel::from_shared(url)
            .map(|e| {
                e.connect_timeout(Duration::from_secs(5))
                    .http2_keep_alive_interval(Duration::from_secs(2))
                    .keep_alive_timeout(Duration::from_secs(2))
                    .keep_alive_while_idle(true)
            })
            .map_err(|e| format!("bad global address: {e}"))
    };
    if !settings.tls {
        return endpoint(settings.global_url.clone())?
            .connect()
            .await
            .map_err(|e| error_chain(&e));
    }
    // Global's CA (or its self-signed certificate, pinned) from
    // KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE, else the system's roots (a global with a publicly
    // trusted certificate); the connect error below says what to set when neither verifies it.
    let trust = if settings.skip_verify {
        Trust::SkipVerify
    } else {
        let roots = match &settings.root_ca {
            Some(pem) => Roots::from_pem(pem)
                .map_err(|e| format!("KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE: {e}"))?,
            None => Roots::native().map_err(|e| {
                format!("{e}: set KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE to the CA of global's KDS certificate")
            })?,
        };
        Trust::Roots(roots)
    };
    let connector = Connector::new(&trust, 5685).map_err(|e| e.to_string())?;
    endpoint(Connector::tonic_address(&settings.global_url))?
        .connect_with_connector(connector)
        .await
        .map_err(|e| {
            let mut msg = error_chain(&e);
            if msg.contains("certificate") {
                msg.push_str(
                    " (set KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE to the CA of global's KDS certificate, or KUMA_MULTIZONE_ZONE_KDS_TLS_SKIP_VERIFY=true for a trial)",
                );
            }
            msg
        })
}

/// An error with its sources, one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    msg
}

async fn session(settings: &ZoneSettings, store: &Store) -> Result<(), String> {
    let channel = channel(settings).await?;
    let down = global_to_zone(settings, store, KdsSyncClient::new(channel.clone()));
    let up = zone_to_global(settings, store, KdsSyncClient::new(channel.clone()));
    let inspect = answer_inspections(settings, store, KdsSyncClient::new(channel));
    // Either direction ending ends the session; both restart together. The inspect stream is
    // an extra: when it fails the sync goes on.
    tokio::select! {
        r = down => r,
        r = up => r,
        () = inspect => Ok(()),
    }
}

/// Keeps the Inspect stream open and answers global's requests; never returns while it works,
/// and after a failure waits for the session to end.
async fn answer_inspections(
    settings: &ZoneSettings,
    store: &Store,
    mut client: KdsSyncClient<Channel>,
) {
    let (tx, rx) = mpsc::channel::<InspectResponse>(16);
    let _ = tx
        .send(InspectResponse {
            zone: settings.zone.clone(),
            protocol_version: wire::PROTOCOL_VERSION.into(),
            ..Default::default()
        })
        .await;
    let request = match authorized(settings, ReceiverStream::new(rx)) {
        Ok(r) => r,
        Err(reason) => {
            warn!(
                zone = settings.zone,
                reason, "no inspection stream to global"
            );
            return std::future::pending().await;
        }
    };
    let mut requests = match client.inspect(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            warn!(zone = settings.zone, %status, "global does not take inspection requests from this zone");
            return std::future::pending().await;
        }
    };
    while let Ok(Some(request)) = requests.message().await {
        let response =
            crate::inspect::answer(&settings.zone, store, &settings.inspect, &request).await;
        if tx.send(response).await.is_err() {
            break;
        }
    }
    std::future::pending().await
}

fn status_text(s: tonic::Status) -> String {
    match s.code() {
        Code::FailedPrecondition | Code::InvalidArgument => {
            format!("global refused this zone: {}", s.message())
        }
        _ => format!("{}: {}", s.code(), s.message()),
    }
}

async fn global_to_zone(
    settings: &ZoneSettings,
    store: &Store,
    mut client: KdsSyncClient<Channel>,
) -> Result<(), String> {
    let (tx, rx) = mpsc::channel::<Ack>(16);
    let _ = tx
        .send(Ack {
            protocol_version: wire::PROTOCOL_VERSION.into(),
            zone: settings.zone.clone(),
            instance_id: settings.instance_id.clone(),
            cp_version: settings.cp_version.clone(),
            config: settings.config.clone(),
            ..Default::default()
        })
        .await;
    let mut inbound = client
        .global_to_zone(authorized(settings, ReceiverStream::new(rx))?)
        .await
        .map_err(status_text)?
        .into_inner();
    info!(
        zone = settings.zone,
        "connected to global: receiving policies and meshes"
    );
    loop {
        let changes = match inbound.message().await {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(()),
            Err(s) => return Err(status_text(s)),
        };
        let ack = apply_from_global(store, &changes).await?;
        if tx.send(ack).await.is_err() {
            return Ok(());
        }
    }
}

/// Applies a batch from global: only copies that came from global (and policies left from the
/// zone's standalone days, see [`sync::managed_by_global_sync`]) are touched; a Mesh created
/// locally (a standalone zone joining) is replaced by global's.
pub async fn apply_from_global(store: &Store, changes: &Changes) -> Result<Ack, String> {
    let (received, mut refusals) = wire::received_from_global(changes);
    let local = crate::global::local_copies(store, &received, ResourceType::sent_to_zones())
        .await
        .map_err(|e| e.to_string())?;
    let (ops, planned) = sync::reconcile(&local, &received, sync::managed_by_global_sync, |r| {
        r.resource_type() == ResourceType::Mesh
    });
    refusals.extend(planned);
    refusals.extend(
        wire::apply(store, ops, ResourceType::sent_to_zones())
            .await
            .map_err(|e| e.to_string())?,
    );
    for r in &refusals {
        warn!(resource = %r.key, reason = r.reason, "refused a resource from global (NACK)");
    }
    Ok(Ack {
        response_nonce: changes.nonce.clone(),
        rejections: refusals.iter().map(wire::refusal_to_wire).collect(),
        ..Default::default()
    })
}

async fn local_offer(store: &Store) -> Result<Set, String> {
    let mut all: Vec<Resource> = Vec::new();
    for &t in ResourceType::sent_to_global() {
        all.extend(store.list(t, None).await.map_err(|e| e.to_string())?);
    }
    Ok(sync::offer_to_global(&all))
}

async fn zone_to_global(
    settings: &ZoneSettings,
    store: &Store,
    mut client: KdsSyncClient<Channel>,
) -> Result<(), String> {
    let metrics = &settings.metrics;
    let _stream = metrics.ds.streams_active.track();
    let mut events = store.subscribe();
    let (tx, rx) = mpsc::channel::<Changes>(16);
    let started = std::time::Instant::now();
    let mut sent = local_offer(store)
        .await
        .inspect_err(|_| metrics.generation_errors.inc())?;
    metrics.generated(&settings.zone, Reason::Resync, true, started.elapsed());
    // Batches global has not answered yet, oldest first: their nonce, types and send time.
    let mut pending = std::collections::VecDeque::new();
    let initial_types: BTreeSet<&'static str> =
        sent.values().map(|r| r.resource_type().name()).collect();
    metrics.sent(&initial_types);
    pending.push_back((1u64, initial_types, std::time::Instant::now()));
    let mut nonce = 1u64;
    let _ = tx
        .send(Changes {
            nonce: nonce.to_string(),
            initial: true,
            types: ResourceType::sent_to_global()
                .iter()
                .map(|t| t.name().to_string())
                .collect(),
            upserted: sent.values().map(wire::to_wire).collect(),
            protocol_version: wire::PROTOCOL_VERSION.into(),
            zone: settings.zone.clone(),
            instance_id: settings.instance_id.clone(),
            ..Default::default()
        })
        .await;
    let mut acks = client
        .zone_to_global(authorized(settings, ReceiverStream::new(rx))?)
        .await
        .map_err(status_text)?
        .into_inner();
    loop {
        tokio::select! {
            ack = acks.message() => match ack {
                Ok(Some(ack)) => {
                    for r in &ack.rejections {
                        warn!(resource = ?r.key, reason = r.reason, "global rejected a resource of this zone");
                    }
                    let rejected: Vec<String> = ack
                        .rejections
                        .iter()
                        .filter_map(|r| r.key.as_ref().map(|k| k.r#type.clone()))
                        .collect();
                    let answered: u64 = ack.response_nonce.parse().unwrap_or(0);
                    while let Some((n, types, at)) = pending.pop_front() {
                        if n < answered {
                            continue;
                        }
                        if n == answered {
                            metrics.ds.delivery.observe_ms(at.elapsed());
                            metrics.answered(None, &types, &rejected);
                        } else {
                            pending.push_front((n, types, at));
                        }
                        break;
                    }
                }
                Ok(None) => return Ok(()),
                Err(s) => return Err(status_text(s)),
            },
            event = events.recv() => {
                // Collect the changed keys of a burst; a lagged receiver falls back to a full diff.
                let mut keys = std::collections::BTreeSet::new();
                let mut full = false;
                let mut next = Some(event);
                while let Some(e) = next.take() {
                    match e {
                        Ok(StoreEvent { key, .. }) if ResourceType::sent_to_global().contains(&key.resource_type) => {
                            keys.insert(key);
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => full = true,
                        Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    }
                    next = match events.try_recv() {
                        Ok(e) => Some(Ok(e)),
                        Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Err(broadcast::error::RecvError::Lagged(n))),
                        Err(_) => None,
                    };
                }
                if keys.is_empty() && !full {
                    continue;
                }
                let started = std::time::Instant::now();
                let d = if full {
                    let offer = local_offer(store)
                        .await
                        .inspect_err(|_| metrics.generation_errors.inc())?;
                    let d = sync::delta(&sent, &offer);
                    sent = offer;
                    d
                } else {
                    let mut current = sync::Set::new();
                    for k in &keys {
                        let found = store.find(k).await.map_err(|e| {
                            metrics.generation_errors.inc();
                            e.to_string()
                        })?;
                        if let Some(r) = found {
                            current.extend(sync::offer_to_global(std::slice::from_ref(&r)));
                        }
                    }
                    sync::delta_of(&mut sent, &keys, current)
                };
                let reason = if full { Reason::Resync } else { Reason::Event };
                metrics.generated(&settings.zone, reason, !d.is_empty(), started.elapsed());
                if d.is_empty() {
                    continue;
                }
                nonce += 1;
                let types: BTreeSet<&'static str> = d
                    .upserted
                    .iter()
                    .map(|r| r.resource_type().name())
                    .chain(d.removed.iter().map(|k| k.resource_type.name()))
                    .collect();
                metrics.sent(&types);
                // Bounded: global answers in order, and a stalled global ends the stream.
                if pending.len() >= MAX_PENDING {
                    pending.pop_front();
                }
                pending.push_back((nonce, types, std::time::Instant::now()));
                let changes = Changes {
                    nonce: nonce.to_string(),
                    upserted: d.upserted.iter().map(wire::to_wire).collect(),
                    removed: d.removed.iter().map(wire::key_to_wire).collect(),
                    ..Default::default()
                };
                if tx.send(changes).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;
    use meshzone_model::{ResourceKey, ResourceType};
    use meshzone_store::{AnyBackend, MemoryBackend};

    #[tokio::test]
    async fn a_bad_resource_is_refused_alone_and_the_rest_applies() {
        let store = Store::new(AnyBackend::Memory(MemoryBackend::new()));
        let good = proto::Resource {
            r#type: "Mesh".into(),
            name: "good".into(),
            spec: b"{}".to_vec(),
            ..Default::default()
        };
        let bad = proto::Resource {
            r#type: "Mesh".into(),
            name: "bad".into(),
            spec: br#"{"mtls": {"enabledBackend": "nope"}}"#.to_vec(),
            ..Default::default()
        };
        let unknown = proto::Resource {
            r#type: "Gadget".into(),
            name: "g".into(),
            spec: b"{}".to_vec(),
            ..Default::default()
        };
        let changes = Changes {
            nonce: "7".into(),
            initial: true,
            types: vec!["Mesh".into()],
            upserted: vec![bad, good, unknown],
            ..Default::default()
        };
        let ack = apply_from_global(&store, &changes).await.expect("applied");
        assert_eq!(ack.response_nonce, "7");
        assert_eq!(ack.rejections.len(), 2, "{:?}", ack.rejections);
        assert!(
            ack.rejections
                .iter()
                .any(|r| r.reason.contains("enabledBackend"))
        );
        let stored = store
            .find(&ResourceKey::global(ResourceType::Mesh, "good"))
            .await
            .expect("find");
        let stored = stored.expect("the good resource of the batch is applied");
        assert_eq!(sync::origin(&stored), Some("global"));
    }

    /// A zone that ran standalone made its own `allow-all-default`; once federated it cannot
    /// write policies, so global's first full batch replaces it with global's hashed copy.
    #[tokio::test]
    async fn a_joining_zone_drops_the_policies_it_made_while_standalone() {
        let store = Store::new(AnyBackend::Memory(MemoryBackend::new()));
        let mesh = store
            .create(meshzone_model::Resource::new(
                meshzone_model::Meta::named("default", ""),
                meshzone_model::Spec::Mesh(Default::default()),
            ))
            .await
            .expect("mesh");
        let own = meshzone_model::policies::initial_policies("default", &Default::default());
        for p in &own {
            store.create(p.clone()).await.expect("standalone allow-all");
        }
        let mut global_copy = own[0].clone();
        global_copy.meta.name = sync::hashed_name("default", &own[0].meta.name, &[]);
        global_copy
            .meta
            .labels
            .insert(sync::DISPLAY_NAME_LABEL.into(), own[0].meta.name.clone());
        let changes = Changes {
            nonce: "1".into(),
            initial: true,
            types: ResourceType::sent_to_zones()
                .iter()
                .map(|t| t.name().to_string())
                .collect(),
            upserted: vec![
                crate::wire::to_wire(&mesh),
                crate::wire::to_wire(&global_copy),
            ],
            ..Default::default()
        };
        let ack = apply_from_global(&store, &changes).await.expect("applied");
        assert!(ack.rejections.is_empty(), "{:?}", ack.rejections);
        let names: Vec<String> = store
            .list(ResourceType::MeshTrafficPermission, Some("default"))
            .await
            .expect("list")
            .into_iter()
            .map(|r| r.meta.name)
            .collect();
        assert_eq!(names, [global_copy.meta.name.clone()]);
    }
}
