//! Keeps the VIP table current from store events, persists it, and answers DNS over UDP.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use hickory_proto::op::Message;
use meshzone_model::specs::ConfigSpec;
use meshzone_model::{Meta, Resource, ResourceKey, ResourceType, Spec};
use meshzone_store::{Store, StoreError};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::answer::answer;
use crate::vips::{Cidr, allocate, names};

/// Name of the Config resource holding the assignments (service → VIP).
pub const VIPS_CONFIG: &str = "meshzone-dns-vips";

/// DNS name (lowercase, without the trailing dot) → VIP.
pub type Table = Arc<BTreeMap<String, Ipv4Addr>>;

/// Services that should have a VIP: every inbound service of the zone's Dataplanes, and every
/// service other zones' ingresses offer.
async fn wanted(store: &Store) -> Result<BTreeSet<String>, StoreError> {
    let mut out = BTreeSet::new();
    for r in store.list(ResourceType::Dataplane, None).await? {
        if let Spec::Dataplane(d) = &r.spec {
            out.extend(
                d.networking
                    .inbound
                    .iter()
                    .filter_map(|i| i.service().map(str::to_string)),
            );
        }
    }
    for r in store.list(ResourceType::ZoneIngress, None).await? {
        if let Spec::ZoneIngress(z) = &r.spec {
            out.extend(
                z.available_services
                    .iter()
                    .filter_map(|s| s.tags.get(meshzone_model::specs::SERVICE_TAG).cloned()),
            );
        }
    }
    Ok(out)
}

async fn load(store: &Store) -> Result<(Option<Resource>, BTreeMap<String, Ipv4Addr>), StoreError> {
    let stored = store
        .find(&ResourceKey::global(ResourceType::Config, VIPS_CONFIG))
        .await?;
    let table = match &stored {
        Some(Resource {
            spec: Spec::Config(c),
            ..
        }) => serde_json::from_str(&c.config).unwrap_or_default(),
        _ => BTreeMap::new(),
    };
    Ok((stored, table))
}

/// The persisted assignments: service → VIP.
pub async fn load_vips(store: &Store) -> Result<BTreeMap<String, Ipv4Addr>, StoreError> {
    Ok(load(store).await?.1)
}

/// Recomputes and persists the assignments; returns the name table.
async fn refresh(store: &Store, cidr: Cidr, domain: &str) -> Result<Table, StoreError> {
    loop {
        let (stored, previous) = load(store).await?;
        let assigned = allocate(&previous, &wanted(store).await?, cidr);
        if assigned != previous {
            let config = ConfigSpec {
                config: serde_json::to_string(&assigned).unwrap_or_default(),
            };
            let result = match stored {
                Some(mut r) => {
                    r.spec = Spec::Config(config);
                    store.update(r).await.map(|_| ())
                }
                None => store
                    .create(Resource::new(
                        Meta::named(VIPS_CONFIG, ""),
                        Spec::Config(config),
                    ))
                    .await
                    .map(|_| ()),
            };
            match result {
                Ok(()) => {}
                Err(StoreError::Conflict { .. } | StoreError::AlreadyExists(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        let mut table = BTreeMap::new();
        for (service, ip) in &assigned {
            for name in names(service, domain) {
                table.insert(name, *ip);
            }
        }
        return Ok(Arc::new(table));
    }
}

/// Keeps `table` current: recomputes on every change of Dataplanes or ZoneIngresses.
pub async fn maintain(store: Store, cidr: Cidr, domain: String, table: watch::Sender<Table>) {
    let mut events = store.subscribe();
    loop {
        match refresh(&store, cidr, &domain).await {
            Ok(t) => {
                table.send_replace(t);
            }
            Err(e) => warn!(error = %e, "cannot update DNS virtual IPs"),
        }
        if !meshzone_store::changed(
            &mut events,
            &[ResourceType::Dataplane, ResourceType::ZoneIngress],
        )
        .await
        {
            return;
        }
    }
}

/// Serves DNS on a bound UDP socket until the task is dropped.
pub async fn serve(socket: UdpSocket, table: watch::Receiver<Table>, domain: String) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "DNS receive failed");
                continue;
            }
        };
        let Ok(query) = Message::from_vec(&buf[..n]) else {
            debug!(%peer, "ignoring a malformed DNS message");
            continue;
        };
        let current = table.borrow().clone();
        let response = answer(&query, &current, &domain);
        if let Ok(bytes) = response.to_vec() {
            let _ = socket.send_to(&bytes, peer).await;
        }
    }
}
