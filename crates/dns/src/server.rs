//! Keeps the VIP assignments current from store events and persists them ([`allocate_vips`],
//! run by the leader only when several instances share a store), keeps every instance's name
//! table equal to the stored assignments ([`maintain`]), and answers DNS over UDP.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use hickory_proto::op::Message;
use meshzone_model::external_service::ExternalServiceSpec;
use meshzone_model::specs::{ConfigSpec, Tags};
use meshzone_model::virtual_outbound::{VirtualOutboundSpec, entries};
use meshzone_model::{Meta, Resource, ResourceKey, ResourceType, Spec};
use meshzone_store::{Store, StoreError};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{debug, error, warn};

use crate::answer::answer;
use crate::vips::{Cidr, allocate, host_key, key_names};

/// Name of the Config resource holding the assignments (service → VIP).
pub const VIPS_CONFIG: &str = "meshzone-dns-vips";

/// DNS name (lowercase, without the trailing dot) → VIP.
pub type Table = Arc<BTreeMap<String, Ipv4Addr>>;

/// Keys that should have a VIP: every inbound service of the zone's Dataplanes, every service
/// other zones' ingresses offer, every ExternalService (and the host of its address), and every hostname the virtual outbounds of a mesh give for
/// the tags of its services' instances ([`host_key`]).
async fn wanted(store: &Store) -> Result<BTreeSet<String>, StoreError> {
    let mut out = BTreeSet::new();
    // Mesh → the tag sets of its instances (local inbounds, remote offers).
    let mut tag_sets: BTreeMap<String, Vec<Tags>> = BTreeMap::new();
    for r in store.list_all(ResourceType::Dataplane).await?.iter() {
        if let Spec::Dataplane(d) = &r.spec {
            for i in &d.networking.inbound {
                if let Some(service) = i.service() {
                    out.insert(service.to_string());
                    tag_sets
                        .entry(r.meta.mesh.clone())
                        .or_default()
                        .push(i.tags.clone());
                }
            }
        }
    }
    for r in store.list(ResourceType::ZoneIngress, None).await? {
        if let Spec::ZoneIngress(z) = &r.spec {
            for s in &z.available_services {
                if let Some(service) = s.tags.get(meshzone_model::specs::SERVICE_TAG) {
                    out.insert(service.clone());
                    tag_sets
                        .entry(s.mesh.clone())
                        .or_default()
                        .push(s.tags.clone());
                }
            }
        }
    }
    for r in store.list(ResourceType::ExternalService, None).await? {
        if let Spec::ExternalService(es) = &r.spec {
            out.extend(external_service_keys(es));
        }
    }
    let mut virtual_outbounds: BTreeMap<String, Vec<Resource>> = BTreeMap::new();
    for r in store.list(ResourceType::VirtualOutbound, None).await? {
        virtual_outbounds
            .entry(r.meta.mesh.clone())
            .or_default()
            .push(r);
    }
    for (mesh, resources) in &virtual_outbounds {
        let specs: Vec<(&str, &VirtualOutboundSpec)> = resources
            .iter()
            .filter_map(|r| match &r.spec {
                Spec::VirtualOutbound(s) => Some((r.meta.name.as_str(), s)),
                _ => None,
            })
            .collect();
        let sets = tag_sets.get(mesh).map(Vec::as_slice).unwrap_or_default();
        out.extend(entries(&specs, sets).iter().map(|e| host_key(&e.host)));
    }
    Ok(out)
}

/// The VIP table keys of an ExternalService: its service, and the host of its address as a
/// hostname key of its own when it gets a DNS entry.
fn external_service_keys(es: &ExternalServiceSpec) -> Vec<String> {
    let mut out: Vec<String> = es.service().map(str::to_string).into_iter().collect();
    if let Some(host) = es.host_dns_entry() {
        out.push(host_key(host));
    }
    out
}

/// Why the VIP table could not be read or kept.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored table does not parse. It is never replaced silently: that would give every
    /// service a new VIP under its clients' feet.
    #[error(
        "the stored VIP table (Config {VIPS_CONFIG:?}) is damaged ({0}); keeping the last good table: restore it, or delete that Config to assign every service a new VIP"
    )]
    Damaged(String),
}

/// The stored assignments (service → VIP) and the resource holding them.
fn parse_table(stored: &Option<Resource>) -> Result<BTreeMap<String, Ipv4Addr>, VipError> {
    match stored {
        Some(Resource {
            spec: Spec::Config(c),
            ..
        }) => serde_json::from_str(&c.config).map_err(|e| VipError::Damaged(e.to_string())),
        Some(_) => Err(VipError::Damaged("not a Config".into())),
        None => Ok(BTreeMap::new()),
    }
}

async fn load(store: &Store) -> Result<(Option<Resource>, BTreeMap<String, Ipv4Addr>), VipError> {
    let stored = store
        .find(&ResourceKey::global(ResourceType::Config, VIPS_CONFIG))
        .await?;
    let table = parse_table(&stored)?;
    Ok((stored, table))
}

/// The persisted assignments: service → VIP.
pub async fn load_vips(store: &Store) -> Result<BTreeMap<String, Ipv4Addr>, VipError> {
    Ok(load(store).await?.1)
}

/// Recomputes the assignments from what wants a VIP and persists them when they changed. A
/// damaged stored table is never overwritten.
async fn allocate_once(store: &Store, cidr: Cidr) -> Result<(), VipError> {
    loop {
        let (stored, previous) = load(store).await?;
        let assigned = allocate(&previous, &wanted(store).await?, cidr);
        if assigned == previous {
            return Ok(());
        }
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
            Ok(()) => return Ok(()),
            Err(StoreError::Conflict { .. } | StoreError::AlreadyExists(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The name table of the stored assignments.
async fn stored_table(store: &Store, domain: &str) -> Result<Table, VipError> {
    let mut table = BTreeMap::new();
    for (service, ip) in load_vips(store).await? {
        for name in key_names(&service, domain) {
            table.insert(name, ip);
        }
    }
    Ok(Arc::new(table))
}

/// Keeps the stored assignments current: reallocates on every change of Dataplanes,
/// ZoneIngresses, VirtualOutbounds, ExternalServices or the stored table itself. One writer per
/// store: the leader, when instances share one (as Kuma's VIP allocator).
pub async fn allocate_vips(store: Store, cidr: Cidr) {
    let mut events = store.subscribe();
    loop {
        let started = std::time::Instant::now();
        match allocate_once(&store, cidr).await {
            Ok(()) => {}
            Err(e @ VipError::Damaged(_)) => error!(error = %e, "cannot update DNS virtual IPs"),
            Err(e) => warn!(error = %e, "cannot update DNS virtual IPs"),
        }
        if !meshzone_store::changed_paced(
            &mut events,
            &[
                ResourceType::Dataplane,
                ResourceType::ZoneIngress,
                ResourceType::VirtualOutbound,
                ResourceType::ExternalService,
                ResourceType::Config,
            ],
            started.elapsed(),
        )
        .await
        {
            return;
        }
    }
}

/// Keeps `table` equal to the stored assignments (every instance answers the same VIPs): reads
/// them again on every change of the stored table. While it is damaged, the last good table
/// stays in service.
pub async fn maintain(store: Store, domain: String, table: &watch::Sender<Table>) {
    let mut events = store.subscribe();
    loop {
        let started = std::time::Instant::now();
        match stored_table(&store, &domain).await {
            Ok(t) => {
                table.send_if_modified(|current| {
                    let changed = *current != t;
                    *current = t;
                    changed
                });
            }
            Err(e @ VipError::Damaged(_)) => error!(error = %e, "cannot read DNS virtual IPs"),
            Err(e) => warn!(error = %e, "cannot read DNS virtual IPs"),
        }
        if !meshzone_store::changed_paced(&mut events, &[ResourceType::Config], started.elapsed())
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

#[cfg(test)]
mod tests {
    use super::*;
    use meshzone_store::{AnyBackend, MemoryBackend};

    fn config(text: &str) -> Resource {
        Resource::new(
            Meta::named(VIPS_CONFIG, ""),
            Spec::Config(ConfigSpec {
                config: text.to_string(),
            }),
        )
    }

    #[test]
    fn an_external_service_has_its_service_and_its_host_unless_disabled_or_an_ip() {
        let es = |address: &str, disable: bool| -> ExternalServiceSpec {
            serde_json::from_value(serde_json::json!({
                "networking": {"address": address, "disableHostDNSEntry": disable},
                "tags": {"kuma.io/service": "httpbin"}
            }))
            .expect("spec")
        };
        assert_eq!(
            external_service_keys(&es("HttpBin.org:443", false)),
            ["httpbin", "@httpbin.org"]
        );
        assert_eq!(
            external_service_keys(&es("httpbin.org:443", true)),
            ["httpbin"]
        );
        assert_eq!(
            external_service_keys(&es("10.0.0.1:443", false)),
            ["httpbin"]
        );
    }

    #[tokio::test]
    async fn a_damaged_table_is_an_error_and_is_never_overwritten() {
        let store = Store::new(AnyBackend::Memory(MemoryBackend::new()));
        let cidr = Cidr::parse("240.0.0.0/4").expect("cidr");
        store
            .create(config("{\"web\": \"240.0.0.7\""))
            .await
            .expect("create");
        let err = allocate_once(&store, cidr).await.expect_err("damaged");
        assert!(matches!(err, VipError::Damaged(_)), "{err}");
        assert!(
            err.to_string().contains("keeping the last good table"),
            "{err}"
        );
        let kept = store
            .get(&ResourceKey::global(ResourceType::Config, VIPS_CONFIG))
            .await
            .expect("still there");
        assert!(matches!(&kept.spec, Spec::Config(c) if c.config == "{\"web\": \"240.0.0.7\""));
        assert!(matches!(load_vips(&store).await, Err(VipError::Damaged(_))));
    }

    async fn add_dataplane(store: &Store, name: &str, service: &str) {
        let value = serde_json::json!({
            "type": "Dataplane", "mesh": "default", "name": name,
            "networking": {"address": "127.0.0.1", "inbound": [
                {"port": 10001, "servicePort": 8080, "tags": {"kuma.io/service": service}}
            ]}
        });
        let r = Resource::from_value(value).expect("dataplane");
        store.create(r).await.expect("create dataplane");
    }

    /// The allocator and the table keeper, as a single instance runs them.
    fn both(store: &Store, cidr: Cidr, tx: watch::Sender<Table>) -> tokio::task::JoinHandle<()> {
        let (a, b) = (store.clone(), store.clone());
        tokio::spawn(async move {
            tokio::join!(allocate_vips(a, cidr), maintain(b, "mesh".into(), &tx));
        })
    }

    async fn next_table(rx: &mut watch::Receiver<Table>, done: impl Fn(&Table) -> bool) -> Table {
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                let t = rx.borrow_and_update().clone();
                if done(&t) {
                    return t;
                }
                rx.changed().await.expect("sender alive");
            }
        })
        .await
        .expect("table in time")
    }

    /// An instance that does not lead (no `allocate_vips`) writes nothing: it answers what the
    /// leader stored, once it is stored.
    #[tokio::test]
    async fn a_follower_answers_only_the_stored_vips() {
        let store = Store::new(AnyBackend::Memory(MemoryBackend::new()));
        let mesh = Resource::new(Meta::named("default", ""), Spec::Mesh(Default::default()));
        store.create(mesh).await.expect("mesh");
        add_dataplane(&store, "web-1", "web").await;
        let (tx, mut rx) = watch::channel(Table::default());
        let follower = tokio::spawn({
            let store = store.clone();
            async move { maintain(store, "mesh".into(), &tx).await }
        });
        add_dataplane(&store, "api-1", "api").await;
        // Let the follower run its passes (the test runtime has one thread).
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        let key = ResourceKey::global(ResourceType::Config, VIPS_CONFIG);
        assert!(
            store.find(&key).await.expect("find").is_none(),
            "a follower wrote VIPs"
        );
        assert!(rx.borrow().is_empty());
        // The leader's allocation: the follower's table follows it.
        let cidr = Cidr::parse("240.0.0.0/4").expect("cidr");
        allocate_once(&store, cidr).await.expect("allocated");
        let t = next_table(&mut rx, |t| {
            t.contains_key("web.mesh") && t.contains_key("api.mesh")
        })
        .await;
        let stored = load_vips(&store).await.expect("stored");
        assert_eq!(t.get("web.mesh"), stored.get("web"));
        follower.abort();
    }

    #[tokio::test]
    async fn the_last_good_table_stays_in_service_while_the_stored_one_is_damaged() {
        let store = Store::new(AnyBackend::Memory(MemoryBackend::new()));
        let mesh = Resource::new(Meta::named("default", ""), Spec::Mesh(Default::default()));
        store.create(mesh).await.expect("mesh");
        add_dataplane(&store, "web-1", "web").await;
        let cidr = Cidr::parse("240.0.0.0/4").expect("cidr");
        let (tx, mut rx) = watch::channel(Table::default());
        let task = both(&store, cidr, tx);
        let good = next_table(&mut rx, |t| t.contains_key("web.mesh")).await;
        let web = good["web.mesh"];

        let key = ResourceKey::global(ResourceType::Config, VIPS_CONFIG);
        let mut damaged = store.get(&key).await.expect("stored table");
        let good_text = match &damaged.spec {
            Spec::Config(c) => c.config.clone(),
            other => panic!("{other:?}"),
        };
        damaged.spec = Spec::Config(ConfigSpec {
            config: "garbage".into(),
        });
        store.update(damaged).await.expect("damage it");
        // A change while the table is damaged: nothing is reassigned or written.
        add_dataplane(&store, "api-1", "api").await;
        let mut repaired = store.get(&key).await.expect("get");
        assert!(matches!(&repaired.spec, Spec::Config(c) if c.config == "garbage"));
        assert_eq!(rx.borrow().get("web.mesh"), Some(&web));
        assert!(!rx.borrow().contains_key("api.mesh"));

        // Repaired: the service added meanwhile gets its VIP, and web keeps its own.
        repaired.spec = Spec::Config(ConfigSpec { config: good_text });
        store.update(repaired).await.expect("repair");
        let next = next_table(&mut rx, |t| t.contains_key("api.mesh")).await;
        assert_eq!(next.get("web.mesh"), Some(&web));
        task.abort();
    }

    #[tokio::test]
    async fn virtual_outbound_hostnames_get_vips_of_their_own_and_follow_their_policy() {
        let store = Store::new(AnyBackend::Memory(MemoryBackend::new()));
        let mesh = Resource::new(Meta::named("default", ""), Spec::Mesh(Default::default()));
        store.create(mesh).await.expect("mesh");
        let value = serde_json::json!({
            "type": "Dataplane", "mesh": "default", "name": "web-1",
            "networking": {"address": "127.0.0.1", "inbound": [
                {"port": 10001, "servicePort": 8080, "tags": {"kuma.io/service": "web", "version": "v1"}}
            ]}
        });
        store
            .create(Resource::from_value(value).expect("dataplane"))
            .await
            .expect("create dataplane");
        let vo = Resource::from_value(serde_json::json!({
            "type": "VirtualOutbound", "mesh": "default", "name": "by-version",
            "selectors": [{"match": {"kuma.io/service": "*"}}],
            "conf": {"host": "{{.v}}.{{.s}}.mesh", "port": "8080", "parameters": [
                {"name": "s", "tagKey": "kuma.io/service"}, {"name": "v", "tagKey": "version"}]}
        }))
        .expect("virtual outbound");
        let vo_key = vo.key();
        store.create(vo).await.expect("create vo");
        let cidr = Cidr::parse("240.0.0.0/4").expect("cidr");
        let (tx, mut rx) = watch::channel(Table::default());
        let task = both(&store, cidr, tx);
        let t = next_table(&mut rx, |t| t.contains_key("v1.web.mesh")).await;
        assert_ne!(
            t["v1.web.mesh"], t["web.mesh"],
            "a hostname has a VIP of its own"
        );
        assert!(
            load_vips(&store)
                .await
                .expect("stored")
                .contains_key("@v1.web.mesh")
        );
        // The virtual outbound goes: so does its hostname, and the service keeps its VIP.
        store.delete(&vo_key, None).await.expect("delete vo");
        let after = next_table(&mut rx, |t| !t.contains_key("v1.web.mesh")).await;
        assert_eq!(after.get("web.mesh"), t.get("web.mesh"));
        task.abort();
    }
}
