//! Pure generation of a proxy's Envoy configuration from mesh state: one inbound listener per
//! inbound, one outbound listener per outbound, an application cluster per inbound, an EDS cluster
//! and a load assignment per outbound service, and (with mTLS) the identity certificate and mesh
//! CA as SDS secrets. No I/O, no clock.
//!
//! Two stages: the base builders ([`listeners`], [`clusters`], [`endpoints`], [`secrets`]) make
//! the typed Envoy resources ([`Resources`]), then the policy configurers
//! ([`crate::policy::configure`]) edit them, and only then are they packed into `Any`.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use meshzone_model::specs::{DataplaneSpec, MeshSpec, PROTOCOL_TAG, Tags};

use crate::names::{self, TypeUrl};
use crate::policy::{self, ProxyPolicies};

pub(crate) mod clusters;
pub(crate) mod common;
pub(crate) mod endpoints;
pub(crate) mod listeners;
mod secrets;

pub use common::sni;
pub(crate) use common::{sanitize_stat, spiffe, tag_uri};

/// One instance of a service that a proxy may connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    pub address: String,
    pub port: u32,
    pub weight: u32,
    pub zone: Option<String>,
    /// 0 is tried first; higher priorities only take traffic when no lower one has a healthy
    /// endpoint (locality-aware load balancing puts remote zones at 1).
    pub priority: u32,
    /// The tags of the instances behind the endpoint (a local inbound's tags; for a remote
    /// ingress, one `availableServices` tag set, `weight` counting its instances). Subset
    /// clusters take the endpoints whose tags include the subset's.
    pub tags: Tags,
    /// This zone's egress, carrying a remote zone's share: marked in the load assignment
    /// ([`ZONE_EGRESS_METADATA`]) so that kuma-dp leaves failures past it to the egress.
    pub via_egress: bool,
}

/// Certificates of a proxy when its mesh has mTLS on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    pub identity_cert_pem: String,
    pub identity_key_pem: String,
    pub ca_cert_pem: String,
}

/// Everything the configuration of one proxy depends on.
#[derive(Debug, Clone)]
pub struct ProxyInput<'a> {
    pub mesh: &'a str,
    pub mesh_spec: &'a MeshSpec,
    pub dataplane: &'a DataplaneSpec,
    /// Reachable instances of each service in the mesh.
    pub endpoints: &'a BTreeMap<String, Vec<EndpointInfo>>,
    pub tls: Option<&'a TlsMaterial>,
    /// `kuma.io/protocol` of each service (absent: tcp).
    pub protocols: &'a BTreeMap<String, String>,
    /// A proxyless gRPC client (gRPC's own xDS support): it gets an API listener per outbound
    /// service, named after the service (`xds:///<service>`), routing to that service's cluster.
    pub proxyless: bool,
    /// Set when the Dataplane has `transparentProxying`: outbound traffic arrives redirected by
    /// iptables and is routed by its original destination.
    pub transparent: Option<Transparent<'a>>,
    /// What the policies selecting this proxy configure.
    pub policies: &'a ProxyPolicies,
    /// The mesh's ExternalServices this proxy reaches directly, by `kuma.io/service`.
    pub external_services: &'a BTreeMap<String, ExternalUpstream>,
}

/// An ExternalService as a sidecar reaches it directly: its cluster (named after the service,
/// its endpoint in [`ProxyInput::endpoints`]) originates TLS or plain TCP to the external
/// address instead of the mesh's mTLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExternalUpstream {
    /// The port of `networking.address` (transparent proxies also listen on `VIP:<port>`).
    pub port: u32,
    /// TLS to originate, when the ExternalService has `tls.enabled`.
    pub tls: Option<OriginatedTls>,
    /// The host of the address when it has a VIP of its own (`disableHostDNSEntry` unset).
    pub host_entry: Option<HostEntry>,
    /// Mesh `routing.zoneEgress`: the endpoints are the zone's egresses, reached with the
    /// mesh's mTLS and the service's SNI (the egress originates `tls`).
    pub through_egress: bool,
}

/// TLS a proxy originates towards an external server, with the user's certificates inline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginatedTls {
    pub sni: Option<String>,
    /// Trusted CA; without one the server's certificate is not verified (as Envoy does).
    pub ca_pem: Option<String>,
    pub client_cert_pem: Option<String>,
    pub client_key_pem: Option<String>,
    /// The DNS name the server's certificate must carry (`None`: skipHostnameVerification).
    pub verify_name: Option<String>,
    pub allow_renegotiation: bool,
}

/// A hostname with its VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    pub hostname: String,
    pub vip: String,
}

/// Transparent proxying: one listener on the redirect port that dispatches each connection by
/// its original destination to a `VIP:80` listener (not bound to a socket), or passes it through
/// to where it was going. With inbound redirection too, inbound listeners are not bound either
/// (the application listens on its port) and a second redirect listener dispatches to them.
#[derive(Debug, Clone)]
pub struct Transparent<'a> {
    pub redirect_port_outbound: u32,
    pub redirect_port_inbound: Option<u32>,
    /// Service → its virtual IP (from the zone's DNS).
    pub vips: &'a BTreeMap<String, String>,
    /// The `hostname:port`s the mesh's VirtualOutbounds give, each with its own VIP.
    pub virtual_outbounds: &'a [VirtualListener],
}

/// A VirtualOutbound's `hostname:port` on a transparent proxy: a `vip:port` listener (not
/// bound, like `VIP:80`) towards the instances carrying `tags`. The listener's metadata names
/// the hostname ([`DNS_METADATA`]), so kuma-dp's resolver answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualListener {
    pub hostname: String,
    pub vip: String,
    pub port: u32,
    /// `kuma.io/service` and the other tags of the virtual outbound's parameters.
    pub tags: Tags,
}

/// Listener `metadata.filter_metadata` key of the DNS names a listener's address answers
/// (`{"hostnames": [..]}`), read by kuma-dp's resolver; Envoy ignores it.
pub const DNS_METADATA: &str = "io.meshzone.dns";

/// `LbEndpoint.metadata.filter_metadata` key marking an endpoint that is the zone's egress
/// (an empty struct); kuma-dp reads it, Envoy ignores it.
pub const ZONE_EGRESS_METADATA: &str = "io.meshzone.zone_egress";

/// Port of the `VIP:port` listeners, the seed's convention (`<service>.mesh:80`).
pub const VIP_PORT: u32 = 80;

/// Listeners on the redirect ports, and the cluster that passes unknown destinations through.
pub const REDIRECT_LISTENER: &str = "outbound:redirect";
pub const INBOUND_REDIRECT_LISTENER: &str = "inbound:redirect";
pub const PASSTHROUGH_CLUSTER: &str = "outbound:passthrough";

/// A named, packed resource.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedResource {
    pub name: String,
    pub resource: Any,
}

/// The complete configuration of a proxy, by type, each type with a content version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub types: BTreeMap<TypeUrl, TypeSnapshot>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TypeSnapshot {
    /// FNV-1a of every resource's name and bytes: equal content, equal version.
    pub version: String,
    pub resources: Vec<NamedResource>,
}

impl Snapshot {
    pub fn get(&self, type_url: TypeUrl) -> Option<&TypeSnapshot> {
        self.types.get(&type_url)
    }

    /// Same content, judged by the per-type content hashes (what proxies are sent by).
    pub fn same_versions(&self, other: &Snapshot) -> bool {
        self.types.len() == other.types.len()
            && self
                .types
                .iter()
                .all(|(t, ts)| other.get(*t).is_some_and(|o| o.version == ts.version))
    }
}

fn fnv1a(state: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(state, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn type_snapshot(mut resources: Vec<NamedResource>) -> TypeSnapshot {
    resources.sort_by(|a, b| a.name.cmp(&b.name));
    let mut h = 0xcbf2_9ce4_8422_2325;
    for r in &resources {
        h = fnv1a(h, r.name.as_bytes());
        h = fnv1a(h, &r.resource.value);
    }
    TypeSnapshot {
        version: format!("{h:016x}"),
        resources,
    }
}

/// What a listener was built for, so that policy configurers find the listeners they edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerOrigin {
    /// `networking.inbound[index]` of the Dataplane.
    Inbound { index: usize },
    /// An outbound towards `service` (explicit, or a transparent proxy's `VIP:80`).
    Outbound { service: String },
    /// A proxyless gRPC client's API listener for `service`.
    Api { service: String },
    /// A VirtualOutbound listener towards a tag subset of `service` (one whose tags are only
    /// the service is an `Outbound`, so every policy of the service applies to it).
    VirtualOutbound { service: String, tags: Tags },
    /// A transparent proxy's redirect listener.
    Redirect,
    /// A zone proxy's SNI router.
    SniRouter,
    /// A MeshMetric Prometheus backend's scrape endpoint.
    Metrics { client_id: String },
}

/// A listener with what it was built for.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedListener {
    pub origin: ListenerOrigin,
    pub listener: Listener,
}

/// The typed Envoy resources of one proxy, before packing: what the base builders make and the
/// policy configurers edit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub listeners: Vec<GeneratedListener>,
    pub clusters: Vec<Cluster>,
    pub assignments: Vec<ClusterLoadAssignment>,
    pub secrets: Vec<Secret>,
}

impl Resources {
    /// Packs every resource under its own name, one content-versioned snapshot per type.
    pub fn into_snapshot(self) -> Snapshot {
        fn named<T: prost::Name>(name: String, resource: T) -> NamedResource {
            NamedResource {
                name,
                resource: pack_any(resource),
            }
        }
        let listeners = self
            .listeners
            .into_iter()
            .map(|l| named(l.listener.name.clone(), l.listener))
            .collect();
        let clusters = self
            .clusters
            .into_iter()
            .map(|c| named(c.name.clone(), c))
            .collect();
        let assignments = self
            .assignments
            .into_iter()
            .map(|a| named(a.cluster_name.clone(), a))
            .collect();
        let secrets = self
            .secrets
            .into_iter()
            .map(|s| named(s.name.clone(), s))
            .collect();
        let mut snapshot = Snapshot::default();
        for (url, resources) in [
            (TypeUrl::Listener, listeners),
            (TypeUrl::Cluster, clusters),
            (TypeUrl::ClusterLoadAssignment, assignments),
            (TypeUrl::Secret, secrets),
        ] {
            snapshot.types.insert(url, type_snapshot(resources));
        }
        snapshot
    }
}

/// Whether the proxy's inbounds and outbounds use the mesh's mTLS, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MtlsMode {
    /// `mode: permissive` (any case): inbound also accepts plaintext, e.g. while migrating to
    /// mTLS.
    pub permissive: bool,
}

impl ProxyInput<'_> {
    /// `Some` when the mesh has an enabled mTLS backend and the proxy has its certificates.
    pub fn mtls(&self) -> Option<MtlsMode> {
        let backend = self.mesh_spec.enabled_mtls_backend()?;
        self.tls?;
        Some(MtlsMode {
            permissive: backend
                .mode
                .as_deref()
                .is_some_and(|m| m.eq_ignore_ascii_case("permissive")),
        })
    }
}

/// A static cluster of one endpoint (what an inbound's application cluster is), speaking
/// HTTP/2 when `http2`.
pub fn static_cluster(name: &str, address: &str, port: u32, http2: bool) -> Cluster {
    let protocol = if http2 {
        common::Protocol::Http2
    } else {
        common::Protocol::Tcp
    };
    clusters::app_cluster(name, address, port, protocol)
}

/// Generates the whole configuration of one proxy: base resources, then the policies.
pub fn generate(input: &ProxyInput<'_>) -> Snapshot {
    let mut resources = base_resources(input);
    policy::configure(input, &mut resources);
    resources.into_snapshot()
}

/// The resources of a proxy before any policy: what the Dataplane and mesh alone give.
pub fn base_resources(input: &ProxyInput<'_>) -> Resources {
    let mesh = input.mesh;
    let net = &input.dataplane.networking;
    let mtls = input.mtls();
    let mut out = Resources::default();

    let inbound_redirect = input
        .transparent
        .as_ref()
        .and_then(|t| t.redirect_port_inbound);
    for (index, inbound) in net.inbound.iter().enumerate() {
        let address = inbound.address.as_deref().unwrap_or(&net.address);
        let name = names::inbound_listener(address, inbound.port);
        let service_port = inbound.service_port.unwrap_or(inbound.port);
        let service_address = inbound.service_address.as_deref().unwrap_or(address);
        let app_cluster = names::app_cluster(service_port);
        let inbound_protocol = common::protocol(inbound.tags.get(PROTOCOL_TAG).map(String::as_str));
        let tls = mtls.map(|m| listeners::InboundTls {
            mesh,
            permissive: m.permissive,
        });
        out.listeners.push(GeneratedListener {
            origin: ListenerOrigin::Inbound { index },
            listener: listeners::inbound_listener(
                &name,
                address,
                inbound.port,
                &app_cluster,
                inbound_protocol,
                tls,
                inbound_redirect.is_none(),
            ),
        });
        out.clusters.push(clusters::app_cluster(
            &app_cluster,
            service_address,
            service_port,
            inbound_protocol,
        ));
    }

    // Explicit outbounds are bound; a transparent proxy's `VIP:80` listeners are not (the
    // redirect listener hands them connections by original destination).
    let mut outbounds: Vec<(String, u32, &str, bool)> = net
        .outbound
        .iter()
        .filter_map(|o| Some((o.address().to_string(), o.port, o.service()?, true)))
        .collect();
    if let Some(t) = &input.transparent {
        for (service, vip) in t.vips {
            if input.endpoints.contains_key(service) {
                outbounds.push((vip.clone(), VIP_PORT, service.as_str(), false));
            }
        }
        let redirects = std::iter::once((REDIRECT_LISTENER, t.redirect_port_outbound)).chain(
            t.redirect_port_inbound
                .map(|port| (INBOUND_REDIRECT_LISTENER, port)),
        );
        for (name, port) in redirects {
            out.listeners.push(GeneratedListener {
                origin: ListenerOrigin::Redirect,
                listener: listeners::redirect_listener(name, port),
            });
        }
        out.clusters.push(clusters::passthrough_cluster());
    }
    let mut seen_services = std::collections::BTreeSet::new();
    for (address, port, service, bind) in outbounds {
        if input.proxyless && !seen_services.contains(service) {
            out.listeners.push(GeneratedListener {
                origin: ListenerOrigin::Api {
                    service: service.to_string(),
                },
                listener: listeners::api_listener(service),
            });
        }
        let name = names::outbound_listener(&address, port);
        let outbound_protocol = common::protocol(input.protocols.get(service).map(String::as_str));
        out.listeners.push(GeneratedListener {
            origin: ListenerOrigin::Outbound {
                service: service.to_string(),
            },
            listener: listeners::outbound_listener(
                &name,
                &address,
                port,
                service,
                outbound_protocol,
                bind,
            ),
        });
        if !seen_services.insert(service.to_string()) {
            continue;
        }
        out.clusters
            .push(match input.external_services.get(service) {
                Some(external) if !external.through_egress => {
                    clusters::external_cluster(service, outbound_protocol, external.tls.as_ref())
                }
                _ => clusters::outbound_cluster(service, mesh, outbound_protocol, mtls.is_some()),
            });
        let endpoints = input
            .endpoints
            .get(service)
            .map(Vec::as_slice)
            .unwrap_or_default();
        out.assignments
            .push(endpoints::load_assignment(service, endpoints));
    }

    if let Some(t) = &input.transparent {
        for v in t.virtual_outbounds {
            virtual_listener(input, &mut out, v);
        }
        for (service, external) in input.external_services {
            external_listeners(input, &mut out, t, service, external);
        }
    }

    if let (Some(_), Some(tls)) = (mtls, input.tls) {
        out.secrets = secrets::secrets(mesh, tls);
    }
    out
}

/// The listener (and, for a subset, the cluster) of one VirtualOutbound `hostname:port`.
fn virtual_listener(input: &ProxyInput<'_>, out: &mut Resources, v: &VirtualListener) {
    let Some(service) = v.tags.get(meshzone_model::specs::SERVICE_TAG) else {
        return;
    };
    if !input.endpoints.contains_key(service) {
        return;
    }
    let backend = policy::backend_refs::BackendRef {
        service: service.clone(),
        tags: v.tags.clone(),
        weight: 1,
    };
    let cluster = policy::backend_refs::ensure_cluster(input, out, &backend);
    let origin = if cluster == *service {
        ListenerOrigin::Outbound {
            service: service.clone(),
        }
    } else {
        ListenerOrigin::VirtualOutbound {
            service: service.clone(),
            tags: v.tags.clone(),
        }
    };
    let name = names::outbound_listener(&v.vip, v.port);
    let protocol = common::protocol(input.protocols.get(service).map(String::as_str));
    let mut listener =
        listeners::outbound_listener(&name, &v.vip, v.port, &cluster, protocol, false);
    listener.metadata = Some(listeners::dns_metadata(std::slice::from_ref(&v.hostname)));
    out.listeners.push(GeneratedListener { origin, listener });
}

/// A transparent proxy's further listeners of an ExternalService (its `VIP:80` is an ordinary
/// service listener): `VIP:<port>` of the service, and the host's own VIP on 80 and `<port>`,
/// each naming its hostname for kuma-dp's resolver. All go to the service's cluster, so the
/// service's policies apply to each.
fn external_listeners(
    input: &ProxyInput<'_>,
    out: &mut Resources,
    t: &Transparent<'_>,
    service: &str,
    external: &ExternalUpstream,
) {
    if !out.clusters.iter().any(|c| c.name == service) {
        return;
    }
    let mut wanted: Vec<(String, &str, u32)> = Vec::new();
    let service_name = format!("{service}.mesh").to_ascii_lowercase();
    if let Some(vip) = t.vips.get(service)
        && external.port != VIP_PORT
    {
        wanted.push((service_name, vip, external.port));
    }
    if let Some(h) = &external.host_entry {
        wanted.push((h.hostname.clone(), &h.vip, VIP_PORT));
        if external.port != VIP_PORT {
            wanted.push((h.hostname.clone(), &h.vip, external.port));
        }
    }
    let protocol = common::protocol(input.protocols.get(service).map(String::as_str));
    for (hostname, vip, port) in wanted {
        let name = names::outbound_listener(vip, port);
        if out.listeners.iter().any(|l| l.listener.name == name) {
            continue;
        }
        let mut listener = listeners::outbound_listener(&name, vip, port, service, protocol, false);
        listener.metadata = Some(listeners::dns_metadata(std::slice::from_ref(&hostname)));
        out.listeners.push(GeneratedListener {
            origin: ListenerOrigin::Outbound {
                service: service.to_string(),
            },
            listener,
        });
    }
}

/// A zone proxy (ingress or egress): one listener that routes each TLS connection by its SNI to
/// the endpoints of that SNI, passing the TLS through untouched (an egress's ExternalServices
/// excepted, see [`EgressExternal`]). Connections whose SNI is not listed, or that are not TLS,
/// match no filter chain and are closed.
#[derive(Debug, Clone)]
pub struct SniRouterInput<'a> {
    pub listener_name: &'a str,
    pub address: &'a str,
    pub port: u32,
    /// SNI → where connections carrying it go.
    pub routes: &'a BTreeMap<String, Vec<EndpointInfo>>,
    /// A zone egress's ExternalServices: chains that terminate the mesh's mTLS.
    pub external: &'a [EgressExternal],
    /// The egress's certificates in each mesh of `external`.
    pub tls: &'a BTreeMap<String, TlsMaterial>,
    /// A zone egress's policies per SNI of `routes` (none on an ingress), see
    /// [`crate::policy::zone_egress`].
    pub route_rules: &'a BTreeMap<String, crate::policy::zone_egress::EgressRouteRules>,
}

/// An ExternalService served by a zone egress: a filter chain matched by the SNI sidecars
/// send for it, terminating the mesh's mTLS (a client certificate of the mesh required; the
/// egress presents `spiffe://<mesh>/<service>`), judged by the MeshTrafficPermission rules of
/// the service, then a TCP proxy to the external address (TLS originated or plain).
#[derive(Debug, Clone, PartialEq)]
pub struct EgressExternal {
    pub mesh: String,
    pub service: String,
    pub endpoint: EndpointInfo,
    pub tls: Option<OriginatedTls>,
    /// MeshTrafficPermission `from` rules of the service (none: every client is denied).
    pub permission: Vec<meshzone_model::policy::Rule>,
}

impl EgressExternal {
    /// The SNI sidecars send for it (that of the service in its mesh).
    pub fn sni(&self) -> String {
        sni(&self.service, &self.mesh)
    }

    /// The egress's cluster towards the external address.
    pub fn cluster(&self) -> String {
        names::external_cluster(&self.mesh, &self.service)
    }
}

/// Generates the whole configuration of a zone ingress or egress: the passthrough chains of
/// `routes`, then an egress's terminating chains of `external` with their clusters and the
/// egress's certificates. Without either there is no listener (Envoy refuses a listener
/// without filter chains), so connections are refused.
pub fn generate_sni_router(input: &SniRouterInput<'_>) -> Snapshot {
    let mut out = Resources::default();
    for (sni, endpoints) in input.routes {
        let mut cluster = clusters::zone_proxy_cluster(sni);
        if let Some(rules) = input.route_rules.get(sni) {
            crate::policy::zone_egress::configure_route_cluster(rules, &mut cluster);
        }
        out.clusters.push(cluster);
        out.assignments
            .push(endpoints::load_assignment(sni, endpoints));
    }
    let mut chains = Vec::new();
    for e in input.external {
        // Without the egress's certificate there is nothing to terminate with; an SNI another
        // zone already offers stays a passthrough route (two chains cannot match one name).
        if !input.tls.contains_key(&e.mesh) || input.routes.contains_key(&e.sni()) {
            continue;
        }
        let cluster = e.cluster();
        out.clusters.push(clusters::external_cluster(
            &cluster,
            common::Protocol::Tcp,
            e.tls.as_ref(),
        ));
        out.assignments.push(endpoints::load_assignment(
            &cluster,
            std::slice::from_ref(&e.endpoint),
        ));
        let mut chain = listeners::terminating_sni_chain(&e.sni(), &e.mesh, &cluster);
        crate::policy::mesh_traffic_permission::protect_external_chain(
            &mut chain,
            &e.mesh,
            &e.permission,
            &format!("{}.", sanitize_stat(&e.sni())),
        );
        chains.push(chain);
    }
    if !input.routes.is_empty() || !chains.is_empty() {
        let mut listener = listeners::sni_router_listener(
            input.listener_name,
            input.address,
            input.port,
            input.routes.keys(),
        );
        listener.filter_chains.extend(chains);
        out.listeners.push(GeneratedListener {
            origin: ListenerOrigin::SniRouter,
            listener,
        });
    }
    for (mesh, tls) in input.tls {
        if input.external.iter().any(|e| &e.mesh == mesh) {
            out.secrets.extend(secrets::secrets(mesh, tls));
        }
    }
    out.into_snapshot()
}
