//! What every proxy of a mesh shares, read from the store once per change instead of once per
//! proxy: the Mesh, its Dataplanes, the endpoints of every service (local and cross-zone), the
//! services' protocols, the zone's VIPs and the mesh's policies (in the engine's form).
//!
//! Freshness rides on the store's change sequence: a stream that has heard of change `n` reuses a
//! view only if the view was read after change `n` was committed ([`Store::sequence`] before the
//! reads), so no stream ever configures its proxy from a view older than what it was woken for.
//!
//! [`Store::sequence`]: meshzone_store::Store::sequence

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meshzone_model::policies::MeshPolicies;
use meshzone_model::specs::MeshSpec;
use meshzone_model::virtual_outbound::{VirtualOutboundSpec, entries};
use meshzone_model::{Resource, ResourceKey, ResourceType, Spec};
use meshzone_xds::generate::{EndpointInfo, ExternalUpstream, VirtualListener};
use tonic::Status;
use tracing::{debug, warn};

use crate::Shared;
use crate::endpoints::{LocalEgress, RemoteIngress, mesh_endpoints};
use crate::external_services::{
    EgressServed, ExternalInput, ExternalServices, ZoneSide, external_services, served_by_egress,
};

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

pub(crate) struct MeshView {
    pub(crate) mesh: MeshSpec,
    pub(crate) dataplanes: Vec<Resource>,
    pub(crate) endpoints: BTreeMap<String, Vec<EndpointInfo>>,
    pub(crate) protocols: BTreeMap<String, String>,
    /// Service → VIP (for transparent proxies).
    pub(crate) vips: BTreeMap<String, String>,
    /// The `hostname:port`s of the mesh's VirtualOutbounds that have a VIP (transparent
    /// proxies get a listener for each).
    pub(crate) virtual_outbounds: Vec<VirtualListener>,
    /// The mesh's policies, in the engine's form.
    pub(crate) policies: MeshPolicies,
    /// The mesh's ExternalServices reached directly (their endpoints and protocols are in
    /// `endpoints` and `protocols`).
    pub(crate) external: BTreeMap<String, ExternalUpstream>,
    /// The mesh's ExternalServices this zone's egresses serve.
    pub(crate) egress_served: Vec<EgressServed>,
    /// Why some of its ExternalServices are not served (logged when they first appear).
    pub(crate) external_refused: Vec<String>,
}

/// The cached views, by mesh, with the store sequence each was read at.
#[derive(Default)]
pub(crate) struct MeshViews {
    views: tokio::sync::Mutex<BTreeMap<String, (u64, Arc<MeshView>)>>,
}

impl Shared {
    /// A view of `mesh` read after every change up to `seen` (reused when one is cached).
    /// One reader at a time: the streams woken by one change wait for the first one's read.
    pub(crate) async fn mesh_view(&self, mesh: &str, seen: u64) -> Result<Arc<MeshView>, Status> {
        let mut views = self.views.views.lock().await;
        if let Some((seq, view)) = views.get(mesh)
            && *seq >= seen
        {
            return Ok(view.clone());
        }
        let seq = self.store.sequence();
        let previous = views.get(mesh).map(|(_, v)| v.clone());
        let view = Arc::new(read_view(self, mesh, previous.as_deref()).await?);
        views.insert(mesh.to_string(), (seq, view.clone()));
        Ok(view)
    }
}

async fn read_view(
    shared: &Shared,
    mesh: &str,
    previous: Option<&MeshView>,
) -> Result<MeshView, Status> {
    let store = &shared.store;
    let mesh_spec = match store
        .find(&ResourceKey::global(ResourceType::Mesh, mesh))
        .await
        .map_err(internal)?
    {
        Some(Resource {
            spec: Spec::Mesh(m),
            ..
        }) => m,
        _ => return Err(Status::not_found(format!("mesh {mesh:?} was deleted"))),
    };
    let dataplanes = store
        .list(ResourceType::Dataplane, Some(mesh))
        .await
        .map_err(internal)?;
    let remote = remote_ingresses(shared).await?;
    let egresses = local_egresses(shared).await?;
    let mut endpoints = mesh_endpoints(mesh, &mesh_spec, &dataplanes, &remote, &egresses);
    let vips = match meshzone_dns::load_vips(store).await {
        Ok(vips) => vips
            .into_iter()
            .map(|(service, ip)| (service, ip.to_string()))
            .collect(),
        // A damaged table never reshuffles VIPs: the last good ones stay (the DNS task logs it).
        Err(meshzone_dns::VipError::Damaged(_)) if previous.is_some() => {
            previous.map(|p| p.vips.clone()).unwrap_or_default()
        }
        Err(e) => return Err(internal(e)),
    };
    let mut protocols = protocols_of(mesh, &dataplanes, &remote);
    let side = ZoneSide {
        zone: shared.settings.zone.as_deref(),
        egresses: &egresses,
    };
    let external = read_external_services(store, mesh, &mesh_spec, &endpoints, &vips, side).await?;
    // Each refusal is logged once, when it appears (views are read on every change).
    let refused: Vec<String> = external.refused.iter().map(ToString::to_string).collect();
    for r in &refused {
        if !previous.is_some_and(|p| p.external_refused.contains(r)) {
            warn!(mesh, "{r}");
        }
    }
    endpoints.extend(external.endpoints.clone());
    protocols.extend(external.protocols.clone());
    let stored = store
        .list(ResourceType::VirtualOutbound, Some(mesh))
        .await
        .map_err(internal)?;
    let virtual_outbounds = virtual_listeners(&stored, &endpoints, &vips);
    let mut policy_resources = Vec::new();
    for rt in ResourceType::policies() {
        policy_resources.extend(store.list(rt, Some(mesh)).await.map_err(internal)?);
    }
    let policies = MeshPolicies::from_resources(&policy_resources);
    Ok(MeshView {
        mesh: mesh_spec,
        dataplanes,
        endpoints,
        protocols,
        vips,
        virtual_outbounds,
        policies,
        external: external.upstreams,
        egress_served: external.egress,
        external_refused: refused,
    })
}

/// The mesh's ExternalServices with their hosts resolved and their certificates read from the
/// mesh's Secrets, with the reasons of those that cannot be served.
async fn read_external_services(
    store: &meshzone_store::Store,
    mesh: &str,
    mesh_spec: &MeshSpec,
    internal_services: &BTreeMap<String, Vec<EndpointInfo>>,
    vips: &BTreeMap<String, String>,
    side: ZoneSide<'_>,
) -> Result<ExternalServices, Status> {
    let stored = store
        .list(ResourceType::ExternalService, Some(mesh))
        .await
        .map_err(internal)?;
    if stored.is_empty() {
        return Ok(ExternalServices::default());
    }
    let secrets: BTreeMap<String, String> = store
        .list(ResourceType::Secret, Some(mesh))
        .await
        .map_err(internal)?
        .into_iter()
        .filter_map(|r| match r.spec {
            Spec::Secret(s) => Some((r.meta.name, s.data)),
            _ => None,
        })
        .collect();
    let mut inputs = Vec::new();
    for r in &stored {
        let Spec::ExternalService(spec) = &r.spec else {
            continue;
        };
        let resolved = match spec.host_port() {
            Some((host, port)) => resolve(host, u32::from(port)).await,
            None => None,
        };
        let host_vip = spec
            .host_dns_entry()
            .and_then(|h| vips.get(&meshzone_dns::vips::host_key(h)).cloned());
        inputs.push(ExternalInput {
            name: &r.meta.name,
            spec,
            resolved,
            host_vip,
        });
    }
    let mut out = external_services(mesh_spec, &inputs, internal_services, &secrets, side);
    let (egress, refused) =
        served_by_egress(mesh_spec, &inputs, internal_services, &secrets, side.zone);
    out.egress = egress;
    out.refused.extend(refused);
    Ok(out)
}

/// The VirtualOutbound entries for the tag sets of the mesh's endpoints (local instances and
/// remote offers), each with the VIP of its hostname; entries without a VIP yet (the DNS task
/// assigns them) are left out until it has one.
fn virtual_listeners(
    stored: &[Resource],
    endpoints: &BTreeMap<String, Vec<EndpointInfo>>,
    vips: &BTreeMap<String, String>,
) -> Vec<VirtualListener> {
    let specs: Vec<(&str, &VirtualOutboundSpec)> = stored
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::VirtualOutbound(s) => Some((r.meta.name.as_str(), s)),
            _ => None,
        })
        .collect();
    if specs.is_empty() {
        return Vec::new();
    }
    let tag_sets = endpoints.values().flatten().map(|e| &e.tags);
    entries(&specs, tag_sets)
        .into_iter()
        .filter_map(|e| {
            let vip = vips.get(&meshzone_dns::vips::host_key(&e.host))?;
            Some(VirtualListener {
                hostname: e.host,
                vip: vip.clone(),
                port: u32::from(e.port),
                tags: e.tags,
            })
        })
        .collect()
}

/// The `kuma.io/protocol` of each service of `mesh`, when all its inbounds agree on one,
/// otherwise tcp: the inbounds of this zone's Dataplanes and those other zones offer through
/// their ingresses (the tags of their available services), so that a service living only in
/// another zone keeps its protocol (HTTP routes, retries and stats) here.
pub(crate) fn protocols_of(
    mesh: &str,
    dataplanes: &[Resource],
    remote: &[RemoteIngress],
) -> BTreeMap<String, String> {
    let local = dataplanes
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::Dataplane(dp) => Some(dp),
            _ => None,
        })
        .flat_map(|dp| dp.networking.inbound.iter().map(|i| &i.tags));
    let offered = remote
        .iter()
        .flat_map(|ingress| &ingress.available)
        .filter(|a| a.mesh == mesh && !a.external_service)
        .map(|a| &a.tags);
    let mut seen: BTreeMap<String, Option<String>> = BTreeMap::new();
    for tags in local.chain(offered) {
        let Some(service) = tags.get(meshzone_model::specs::SERVICE_TAG) else {
            continue;
        };
        let p = tags
            .get(meshzone_model::specs::PROTOCOL_TAG)
            .cloned()
            .unwrap_or_else(|| "tcp".into());
        seen.entry(service.clone())
            .and_modify(|known| {
                if known.as_deref() != Some(p.as_str()) {
                    *known = None;
                }
            })
            .or_insert(Some(p));
    }
    seen.into_iter()
        .map(|(s, p)| (s, p.unwrap_or_else(|| "tcp".into())))
        .collect()
}

/// Other zones' ingresses that can be reached: synced copies with an advertised address. A
/// hostname is resolved here, since proxies take IP addresses only.
pub(crate) async fn remote_ingresses(shared: &Shared) -> Result<Vec<RemoteIngress>, Status> {
    let own_zone = shared.settings.zone.as_deref().unwrap_or_default();
    let mut out = Vec::new();
    for r in shared
        .store
        .list(ResourceType::ZoneIngress, None)
        .await
        .map_err(internal)?
    {
        let Spec::ZoneIngress(z) = r.spec else {
            continue;
        };
        if z.zone.is_empty() || z.zone == own_zone {
            continue;
        }
        let (Some(host), Some(port)) = (
            &z.networking.advertised_address,
            z.networking.advertised_port,
        ) else {
            debug!(
                ingress = r.meta.name,
                zone = z.zone,
                "remote ingress has no advertised address; not used"
            );
            continue;
        };
        let Some(address) = resolve(host, port).await else {
            warn!(
                ingress = r.meta.name,
                host, "cannot resolve the advertised address of a remote zone ingress"
            );
            continue;
        };
        out.push(RemoteIngress {
            zone: z.zone,
            address,
            port,
            available: z.available_services,
        });
    }
    Ok(out)
}

/// The IP address proxies dial for an advertised address (an IP, or a hostname the CP resolves).
async fn resolve(host: &str, port: u32) -> Option<String> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Some(host.to_string());
    }
    let port = u16::try_from(port).ok()?;
    let lookup = tokio::net::lookup_host((host, port));
    let addrs: Vec<std::net::SocketAddr> = tokio::time::timeout(Duration::from_secs(2), lookup)
        .await
        .ok()?
        .ok()?
        .collect();
    // One endpoint per ingress: an IPv4 address when there is one (ingresses usually listen on
    // IPv4; `localhost` often resolves to ::1 first).
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .map(|a| a.ip().to_string())
}

/// This zone's egresses.
pub(crate) async fn local_egresses(shared: &Shared) -> Result<Vec<LocalEgress>, Status> {
    let own_zone = shared.settings.zone.as_deref().unwrap_or_default();
    Ok(shared
        .store
        .list(ResourceType::ZoneEgress, None)
        .await
        .map_err(internal)?
        .into_iter()
        .filter_map(|r| match r.spec {
            Spec::ZoneEgress(z) if z.zone.is_empty() || z.zone == own_zone => Some(LocalEgress {
                address: z.networking.address,
                port: z.networking.port,
            }),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use meshzone_model::specs::AvailableService;

    use super::*;

    fn dataplane(service: &str, protocol: Option<&str>) -> Resource {
        let protocol = protocol
            .map(|p| format!(", kuma.io/protocol: {p}"))
            .unwrap_or_default();
        let yaml = format!(
            "type: Dataplane\nmesh: default\nname: {service}-1\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 8080\n    tags: {{kuma.io/service: {service}{protocol}}}\n"
        );
        Resource::from_value(serde_norway::from_str(&yaml).expect("yaml")).expect("dataplane")
    }

    fn offered(mesh: &str, service: &str, protocol: Option<&str>) -> AvailableService {
        let mut tags = meshzone_model::specs::Tags::new();
        tags.insert("kuma.io/service".into(), service.into());
        if let Some(p) = protocol {
            tags.insert("kuma.io/protocol".into(), p.into());
        }
        AvailableService {
            tags,
            instances: 1,
            mesh: mesh.into(),
            external_service: false,
        }
    }

    #[test]
    fn protocols_come_from_local_inbounds_and_other_zones_offers() {
        let local = [
            dataplane("web", Some("http")),
            dataplane("db", None),
            dataplane("api", Some("grpc")),
        ];
        let remote = [RemoteIngress {
            zone: "zone-1".into(),
            address: "10.1.0.1".into(),
            port: 10001,
            available: vec![
                // Only in the other zone: its protocol holds here.
                offered("default", "billing", Some("http")),
                // The same protocol on both sides.
                offered("default", "web", Some("http")),
                // The zones disagree: tcp.
                offered("default", "api", Some("http")),
                // Another mesh's service says nothing about this mesh.
                offered("other", "db", Some("http")),
                offered("other", "reports", Some("http")),
            ],
        }];
        let got = protocols_of("default", &local, &remote);
        let want: BTreeMap<String, String> = [
            ("api", "tcp"),
            ("billing", "http"),
            ("db", "tcp"),
            ("web", "http"),
        ]
        .into_iter()
        .map(|(s, p)| (s.to_string(), p.to_string()))
        .collect();
        assert_eq!(got, want);
    }
}
