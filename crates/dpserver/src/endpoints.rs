//! Where the instances of each service are, seen from one zone: local inbounds, plus (for meshes
//! with mTLS) every other zone's ingress that offers the service, or the local zone egress in
//! front of them. Pure: the caller lists the store and resolves ingress hostnames.

use std::collections::{BTreeMap, BTreeSet};

use meshzone_model::policy::Policy;
use meshzone_model::specs::{AvailableService, MeshSpec, SERVICE_TAG, Tags, ZONE_TAG};
use meshzone_model::virtual_outbound::{VirtualOutboundSpec, entries};
use meshzone_model::{Resource, Spec};
use meshzone_xds::generate::{EndpointInfo, sni};
use meshzone_xds::policy::backend_refs::{Subset, carries, requested_subsets, subset_endpoints};

/// Another zone's ingress, as this zone can reach it (its advertised address, resolved to IP).
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteIngress {
    pub zone: String,
    pub address: String,
    pub port: u32,
    pub available: Vec<AvailableService>,
}

/// A zone egress of this zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEgress {
    pub address: String,
    pub port: u32,
}

/// Zone → the ingresses of that zone offering a service, with their instance counts per tag set.
type OfferByZone<'a> = BTreeMap<&'a str, Vec<(&'a RemoteIngress, Vec<(Tags, u32)>)>>;

/// Largest weight scale used to keep the per-zone split exact; beyond it, shares are rounded.
const MAX_SCALE: u32 = 10_000;

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Instances of every service in a mesh, each ready inbound of each Dataplane.
pub fn local_endpoints(dataplanes: &[Resource]) -> BTreeMap<String, Vec<EndpointInfo>> {
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
                    priority: 0,
                    tags: inbound.tags.clone(),
                    via_egress: false,
                });
        }
    }
    out
}

/// What a remote ingress offers of each service of `mesh`: every tag set with its instances
/// (`kuma.io/zone` set to the ingress's zone where the tags lack it).
fn offered<'a>(ingress: &'a RemoteIngress, mesh: &str) -> BTreeMap<&'a str, Vec<(Tags, u32)>> {
    let mut out: BTreeMap<&str, Vec<(Tags, u32)>> = BTreeMap::new();
    for a in ingress
        .available
        .iter()
        .filter(|a| a.mesh == mesh && a.instances > 0)
    {
        if let Some(service) = a.tags.get(SERVICE_TAG) {
            let mut tags = a.tags.clone();
            tags.entry(ZONE_TAG.to_string())
                .or_insert_with(|| ingress.zone.clone());
            out.entry(service.as_str())
                .or_default()
                .push((tags, a.instances));
        }
    }
    out
}

/// Every endpoint of every service of `mesh` for a proxy of this zone.
///
/// A remote ingress comes once per tag set it offers (each carrying those tags, weighted by
/// their instances), so subset clusters can take the matching share; the proxy's own cluster of
/// the service merges them back into one endpoint per address. Weights keep the split fair per
/// instance: a local instance weighs `S`, and a remote zone
/// with `n` instances behind `k` ingresses gives each ingress `n·S/k`, where `S` is the least
/// common multiple of the `k`s. With `localityAwareLoadBalancing`, remote endpoints get priority
/// 1 (used only when no local endpoint is healthy). With `zoneEgress` and a local egress, the
/// remote share goes to the egresses instead, which route by SNI to the remote ingresses.
/// Without mTLS there are no remote endpoints: ingresses route by the SNI of the mesh's TLS.
pub fn mesh_endpoints(
    mesh: &str,
    mesh_spec: &MeshSpec,
    dataplanes: &[Resource],
    remote: &[RemoteIngress],
    egresses: &[LocalEgress],
) -> BTreeMap<String, Vec<EndpointInfo>> {
    let mut out = local_endpoints(dataplanes);
    if mesh_spec.enabled_mtls_backend().is_none() {
        return out;
    }
    let routing = mesh_spec.routing.clone().unwrap_or_default();
    let remote_priority = u32::from(routing.locality_aware_load_balancing);
    let via_egress = routing.zone_egress && !egresses.is_empty();

    let mut by_service: BTreeMap<&str, OfferByZone> = BTreeMap::new();
    for ingress in remote {
        for (service, sets) in offered(ingress, mesh) {
            by_service
                .entry(service)
                .or_default()
                .entry(ingress.zone.as_str())
                .or_default()
                .push((ingress, sets));
        }
    }
    for (service, zones) in by_service {
        let mut scale = zones
            .values()
            .map(|ingresses| ingresses.len() as u32)
            .fold(1u32, |s, k| s / gcd(s, k) * k);
        if scale > MAX_SCALE {
            scale = 1;
        }
        let mut remote_endpoints = Vec::new();
        for (zone, ingresses) in &zones {
            let k = ingresses.len() as u32;
            for (ingress, sets) in ingresses {
                for (tags, n) in sets {
                    remote_endpoints.push(EndpointInfo {
                        address: ingress.address.clone(),
                        port: ingress.port,
                        weight: (n.saturating_mul(scale) / k).max(1),
                        zone: Some(zone.to_string()),
                        priority: remote_priority,
                        tags: tags.clone(),
                        via_egress: false,
                    });
                }
            }
        }
        let endpoints = out.entry(service.to_string()).or_default();
        if via_egress {
            // The remote share per tag set, each egress carrying it.
            let mut remote_by_tags: BTreeMap<&Tags, u32> = BTreeMap::new();
            for r in &remote_endpoints {
                *remote_by_tags.entry(&r.tags).or_default() += r.weight;
            }
            let e = egresses.len() as u32;
            for local in endpoints.iter_mut() {
                local.weight = scale.saturating_mul(e);
            }
            for egress in egresses {
                endpoints.extend(remote_by_tags.iter().map(|(tags, weight)| EndpointInfo {
                    address: egress.address.clone(),
                    port: egress.port,
                    weight: (*weight).max(1),
                    zone: None,
                    priority: remote_priority,
                    tags: (*tags).clone(),
                    via_egress: true,
                }));
            }
        } else {
            for local in endpoints.iter_mut() {
                local.weight = scale;
            }
            endpoints.extend(remote_endpoints);
        }
    }
    out
}

/// What a zone ingress routes: for every mesh with mTLS, the SNI of each local service to its
/// healthy local instances, and the SNI of every subset that a route policy of the mesh sends to
/// (`route_policies`: the MeshHTTPRoutes and MeshTCPRoutes) to the local instances carrying its
/// tags.
pub fn ingress_routes(
    meshes: &[Resource],
    dataplanes: &[Resource],
    route_policies: &[Policy],
    virtual_outbounds: &[Resource],
) -> BTreeMap<String, Vec<EndpointInfo>> {
    let mut routes = BTreeMap::new();
    for mesh in meshes {
        let Spec::Mesh(spec) = &mesh.spec else {
            continue;
        };
        if spec.enabled_mtls_backend().is_none() {
            continue;
        }
        let in_mesh: Vec<Resource> = dataplanes
            .iter()
            .filter(|d| d.meta.mesh == mesh.meta.name)
            .cloned()
            .collect();
        let local = local_endpoints(&in_mesh);
        let mut subsets = requested_subsets(route_policies, &mesh.meta.name);
        subsets.extend(virtual_outbound_subsets(
            virtual_outbounds,
            &mesh.meta.name,
            local.values().flatten().map(|e| &e.tags),
        ));
        for subset in subsets {
            let endpoints = local
                .get(&subset.service)
                .map(|all| subset_endpoints(all, &subset.tags))
                .unwrap_or_default();
            if !endpoints.is_empty() {
                routes.insert(subset.sni(&mesh.meta.name), endpoints);
            }
        }
        for (service, endpoints) in local {
            routes.insert(sni(&service, &mesh.meta.name), endpoints);
        }
    }
    routes
}

/// A zone egress's SNI routes, and the `(mesh, service)` each SNI leads to (whose policies
/// configure the route's cluster).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EgressRoutes {
    pub routes: BTreeMap<String, Vec<EndpointInfo>>,
    pub services: BTreeMap<String, (String, String)>,
}

/// What a zone egress routes: for every mesh with mTLS, the SNI of each service offered by
/// another zone to that zone's ingresses, weighted by instances, and likewise the SNI of every
/// subset a route policy sends to, to the ingresses offering instances with its tags. Each
/// remote ingress is its own endpoint, so health and outlier state is kept per remote zone.
pub fn egress_routes(
    meshes: &[Resource],
    remote: &[RemoteIngress],
    route_policies: &[Policy],
    virtual_outbounds: &[Resource],
) -> EgressRoutes {
    let mut routes: BTreeMap<String, Vec<EndpointInfo>> = BTreeMap::new();
    let mut services = BTreeMap::new();
    for mesh in meshes {
        let Spec::Mesh(spec) = &mesh.spec else {
            continue;
        };
        if spec.enabled_mtls_backend().is_none() {
            continue;
        }
        let mut subsets = requested_subsets(route_policies, &mesh.meta.name);
        let offers: Vec<_> = remote.iter().map(|i| offered(i, &mesh.meta.name)).collect();
        subsets.extend(virtual_outbound_subsets(
            virtual_outbounds,
            &mesh.meta.name,
            offers
                .iter()
                .flat_map(|o| o.values().flatten().map(|(tags, _)| tags)),
        ));
        for ingress in remote {
            let offers = offered(ingress, &mesh.meta.name);
            let endpoint = |weight: u32| EndpointInfo {
                address: ingress.address.clone(),
                port: ingress.port,
                weight,
                zone: Some(ingress.zone.clone()),
                priority: 0,
                tags: Tags::new(),
                via_egress: false,
            };
            for (service, sets) in &offers {
                let n = sets.iter().map(|(_, n)| n).sum();
                let name = sni(service, &mesh.meta.name);
                services.insert(name.clone(), (mesh.meta.name.clone(), service.to_string()));
                routes.entry(name).or_default().push(endpoint(n));
            }
            for subset in &subsets {
                let n: u32 = offers
                    .get(subset.service.as_str())
                    .into_iter()
                    .flatten()
                    .filter(|(tags, _)| carries(tags, &subset.tags))
                    .map(|(_, n)| n)
                    .sum();
                if n > 0 {
                    let name = subset.sni(&mesh.meta.name);
                    services.insert(
                        name.clone(),
                        (mesh.meta.name.clone(), subset.service.clone()),
                    );
                    routes.entry(name).or_default().push(endpoint(n));
                }
            }
        }
    }
    EgressRoutes { routes, services }
}

/// The tag subsets (beyond the service) that the VirtualOutbounds of `mesh` give
/// `hostname:port`s for, for instances carrying `tag_sets`: zone proxies route their SNIs like
/// those of route policies.
pub fn virtual_outbound_subsets<'a>(
    virtual_outbounds: &[Resource],
    mesh: &str,
    tag_sets: impl IntoIterator<Item = &'a Tags>,
) -> BTreeSet<Subset> {
    let specs: Vec<(&str, &VirtualOutboundSpec)> = virtual_outbounds
        .iter()
        .filter(|r| r.meta.mesh == mesh)
        .filter_map(|r| match &r.spec {
            Spec::VirtualOutbound(s) => Some((r.meta.name.as_str(), s)),
            _ => None,
        })
        .collect();
    if specs.is_empty() {
        return BTreeSet::new();
    }
    entries(&specs, tag_sets)
        .into_iter()
        .filter(|e| e.tags.keys().any(|k| k != SERVICE_TAG))
        .map(|e| Subset {
            service: e.service().to_string(),
            tags: e.tags,
        })
        .collect()
}

#[cfg(test)]
mod tests;
