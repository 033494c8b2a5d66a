//! The mesh's ExternalServices as its sidecars reach them: an endpoint at the external address
//! (its host resolved by the caller), the service's protocol, and the TLS to originate with
//! the certificates read from the mesh's Secrets. Pure: the caller lists the store and
//! resolves hostnames.
//!
//! With Mesh `routing.zoneEgress` (mTLS required) sidecars reach them through this zone's
//! egresses ([`external_services`]), which terminate the mesh's mTLS and originate the TLS
//! ([`served_by_egress`]). One tagged with another zone (`kuma.io/zone: X`) is reached as X's
//! services are: X's ingresses offer it ([`offered_by_zone`]) and route it to X's egresses
//! ([`ingress_external_routes`]), so traffic goes egress → X's ingress → X's egress → host.

use std::collections::BTreeMap;

use meshzone_model::external_service::{DataSource, DataSourceError, ExternalServiceSpec};

use crate::endpoints::LocalEgress;
use meshzone_model::specs::{AvailableService, MeshSpec};
use meshzone_model::{Resource, Spec};
use meshzone_xds::generate::{EndpointInfo, ExternalUpstream, HostEntry, OriginatedTls, sni};

/// One stored ExternalService with what the caller looked up for it.
#[derive(Debug, Clone)]
pub struct ExternalInput<'a> {
    pub name: &'a str,
    pub spec: &'a ExternalServiceSpec,
    /// The address's host as an IP (itself when it is one); `None` when it did not resolve.
    pub resolved: Option<String>,
    /// The VIP of the host's own DNS entry, when it has one.
    pub host_vip: Option<String>,
}

/// Why an ExternalService gets no outbound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "ExternalService {0:?}: the mesh has routing.zoneEgress but no mTLS; the zone egress is reached with the mesh's mTLS only"
    )]
    EgressWithoutMtls(String),
    #[error(
        "ExternalService {name:?}: kuma.io/zone {zone:?} is another zone, and no ingress of that zone offers it (yet): it needs an egress there and routing.zoneEgress"
    )]
    OtherZone { name: String, zone: String },
    #[error("ExternalService {name:?}: networking.tls.{field}: {error}")]
    Certificate {
        name: String,
        field: &'static str,
        error: DataSourceError,
    },
    #[error("ExternalService {0:?}: the host of networking.address does not resolve")]
    Unresolved(String),
    #[error(
        "ExternalService {name:?}: kuma.io/service {service:?} is also a service of the mesh's Dataplanes; the mesh's service wins"
    )]
    Shadowed { name: String, service: String },
    #[error("ExternalService {name:?}: another ExternalService already serves {service:?}")]
    Duplicate { name: String, service: String },
}

/// What the proxies of a mesh get for its ExternalServices.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExternalServices {
    pub upstreams: BTreeMap<String, ExternalUpstream>,
    pub endpoints: BTreeMap<String, Vec<EndpointInfo>>,
    pub protocols: BTreeMap<String, String>,
    pub refused: Vec<Refusal>,
    /// What this zone's egresses serve of them ([`served_by_egress`]).
    pub egress: Vec<EgressServed>,
}

/// Where the zone is, for ExternalServices: its name and its egresses.
#[derive(Debug, Clone, Copy)]
pub struct ZoneSide<'a> {
    pub zone: Option<&'a str>,
    pub egresses: &'a [LocalEgress],
}

/// The sidecar view of the mesh's ExternalServices. `internal` is the services the mesh's own
/// Dataplanes (and other zones) offer; `secrets` the base64 `data` of the mesh's Secrets.
/// ExternalServices are taken by name order; the first for a service wins. With
/// `routing.zoneEgress` their endpoints are the zone's egresses (none: traffic fails, as in
/// Kuma), reached with the mesh's mTLS; the egress originates the TLS.
pub fn external_services(
    mesh: &MeshSpec,
    stored: &[ExternalInput<'_>],
    internal: &BTreeMap<String, Vec<EndpointInfo>>,
    secrets: &BTreeMap<String, String>,
    side: ZoneSide<'_>,
) -> ExternalServices {
    let mut out = ExternalServices::default();
    let through_egress = mesh.routing.as_ref().is_some_and(|r| r.zone_egress);
    for es in by_name(stored) {
        let taken = if through_egress {
            via_egress(es, mesh, side)
        } else {
            direct(es, secrets)
        };
        // Another zone's: reached like that zone's services, through its ingress, once it
        // offers it (then it is among `internal`).
        if let Err(Refusal::OtherZone { .. }) = &taken
            && es.spec.service().is_some_and(|s| internal.contains_key(s))
        {
            continue;
        }
        match taken {
            Err(r) => out.refused.push(r),
            Ok((service, upstream, endpoints)) => {
                if internal.contains_key(&service) {
                    out.refused.push(Refusal::Shadowed {
                        name: es.name.to_string(),
                        service,
                    });
                    continue;
                }
                if out.upstreams.contains_key(&service) {
                    out.refused.push(Refusal::Duplicate {
                        name: es.name.to_string(),
                        service,
                    });
                    continue;
                }
                out.protocols
                    .insert(service.clone(), es.spec.protocol().to_string());
                out.endpoints.insert(service.clone(), endpoints);
                out.upstreams.insert(service, upstream);
            }
        }
    }
    out
}

/// An ExternalService a zone egress serves: the mesh's, in a mesh with `routing.zoneEgress`
/// and mTLS, tagged with no zone or this one.
#[derive(Debug, Clone, PartialEq)]
pub struct EgressServed {
    pub service: String,
    pub tags: meshzone_model::specs::Tags,
    pub endpoint: EndpointInfo,
    pub tls: Option<OriginatedTls>,
}

/// What this zone's egress serves of a mesh's ExternalServices (first by name per service),
/// with the refusals. `internal` as for [`external_services`].
pub fn served_by_egress(
    mesh: &MeshSpec,
    stored: &[ExternalInput<'_>],
    internal: &BTreeMap<String, Vec<EndpointInfo>>,
    secrets: &BTreeMap<String, String>,
    zone: Option<&str>,
) -> (Vec<EgressServed>, Vec<Refusal>) {
    let mut served: Vec<EgressServed> = Vec::new();
    let mut refused = Vec::new();
    if !mesh.routing.as_ref().is_some_and(|r| r.zone_egress)
        || mesh.enabled_mtls_backend().is_none()
    {
        return (served, refused);
    }
    for es in by_name(stored) {
        if let Some(z) = es.spec.zone()
            && Some(z) != zone
        {
            continue;
        }
        match direct(es, secrets) {
            Err(r) => refused.push(r),
            Ok((service, _, _)) if internal.contains_key(&service) => {}
            Ok((service, _, _)) if served.iter().any(|s| s.service == service) => {}
            Ok((service, upstream, mut endpoints)) => served.push(EgressServed {
                service,
                tags: es.spec.tags.clone(),
                endpoint: endpoints.remove(0),
                tls: upstream.tls,
            }),
        }
    }
    (served, refused)
}

/// The meshes with `routing.zoneEgress` and mTLS: only there do ExternalServices leave
/// through egresses.
fn egress_meshes(meshes: &[Resource]) -> impl Iterator<Item = &str> {
    meshes.iter().filter_map(|m| match &m.spec {
        Spec::Mesh(spec)
            if spec.routing.as_ref().is_some_and(|r| r.zone_egress)
                && spec.enabled_mtls_backend().is_some() =>
        {
            Some(m.meta.name.as_str())
        }
        _ => None,
    })
}

/// The ExternalServices tagged `kuma.io/zone: <zone>` in meshes with `routing.zoneEgress`,
/// as this zone's ingresses offer them (`externalService: true`, one instance: the egress).
pub fn offered_by_zone(
    meshes: &[Resource],
    external: &[Resource],
    zone: &str,
) -> Vec<AvailableService> {
    let meshes: Vec<&str> = egress_meshes(meshes).collect();
    let mut out: Vec<AvailableService> = external
        .iter()
        .filter(|r| meshes.contains(&r.meta.mesh.as_str()))
        .filter_map(|r| match &r.spec {
            Spec::ExternalService(es) if es.zone() == Some(zone) && es.service().is_some() => {
                Some(AvailableService {
                    tags: es.tags.clone(),
                    instances: 1,
                    mesh: r.meta.mesh.clone(),
                    external_service: true,
                })
            }
            _ => None,
        })
        .collect();
    out.sort_by(|a, b| (&a.mesh, &a.tags).cmp(&(&b.mesh, &b.tags)));
    out.dedup();
    out
}

/// What a zone ingress routes to this zone's egresses: the SNI of every ExternalService it
/// offers ([`offered_by_zone`]), TLS passed through to the egress that terminates it.
pub fn ingress_external_routes(
    meshes: &[Resource],
    external: &[Resource],
    egresses: &[LocalEgress],
    zone: &str,
) -> BTreeMap<String, Vec<EndpointInfo>> {
    if egresses.is_empty() {
        return BTreeMap::new();
    }
    offered_by_zone(meshes, external, zone)
        .into_iter()
        .filter_map(|a| {
            let service = a.tags.get(meshzone_model::specs::SERVICE_TAG)?.clone();
            let endpoints = egresses
                .iter()
                .map(|e| EndpointInfo {
                    address: e.address.clone(),
                    port: e.port,
                    weight: 1,
                    zone: Some(zone.to_string()),
                    priority: 0,
                    tags: a.tags.clone(),
                    via_egress: false,
                })
                .collect();
            Some((sni(&service, &a.mesh), endpoints))
        })
        .collect()
}

fn by_name<'a, 'b>(stored: &'a [ExternalInput<'b>]) -> Vec<&'a ExternalInput<'b>> {
    let mut sorted: Vec<&ExternalInput> = stored.iter().collect();
    sorted.sort_by_key(|e| e.name);
    sorted
}

type Taken = (String, ExternalUpstream, Vec<EndpointInfo>);

fn service_and_port(es: &ExternalInput<'_>) -> Result<(String, u16), Refusal> {
    match (es.spec.service(), es.spec.host_port()) {
        (Some(service), Some((_, port))) => Ok((service.to_string(), port)),
        // Validation guarantees both; a stored resource without them is skipped.
        _ => Err(Refusal::Unresolved(es.name.to_string())),
    }
}

fn host_entry(es: &ExternalInput<'_>) -> Option<HostEntry> {
    match (es.spec.host_dns_entry(), &es.host_vip) {
        (Some(host), Some(vip)) => Some(HostEntry {
            hostname: host.to_ascii_lowercase(),
            vip: vip.clone(),
        }),
        _ => None,
    }
}

/// Through the zone's egresses: one endpoint each, the mesh's mTLS to them.
fn via_egress(
    es: &ExternalInput<'_>,
    mesh: &MeshSpec,
    side: ZoneSide<'_>,
) -> Result<Taken, Refusal> {
    let name = es.name.to_string();
    if mesh.enabled_mtls_backend().is_none() {
        return Err(Refusal::EgressWithoutMtls(name));
    }
    if let Some(z) = es.spec.zone()
        && Some(z) != side.zone
    {
        return Err(Refusal::OtherZone {
            name,
            zone: z.to_string(),
        });
    }
    let (service, port) = service_and_port(es)?;
    let endpoints = side
        .egresses
        .iter()
        .map(|e| EndpointInfo {
            address: e.address.clone(),
            port: e.port,
            weight: 1,
            zone: side.zone.map(str::to_string),
            priority: 0,
            tags: es.spec.tags.clone(),
            via_egress: false,
        })
        .collect();
    Ok((
        service,
        ExternalUpstream {
            port: u32::from(port),
            tls: None,
            host_entry: host_entry(es),
            through_egress: true,
        },
        endpoints,
    ))
}

/// Straight to the external address, originating its TLS.
fn direct(es: &ExternalInput<'_>, secrets: &BTreeMap<String, String>) -> Result<Taken, Refusal> {
    let name = es.name.to_string();
    let (service, port) = service_and_port(es)?;
    let address = es
        .resolved
        .clone()
        .ok_or(Refusal::Unresolved(name.clone()))?;
    let tls = match es.spec.tls() {
        None => None,
        Some(t) => {
            let read =
                |field: &'static str, ds: &Option<DataSource>| -> Result<Option<String>, Refusal> {
                    match ds {
                        None => Ok(None),
                        Some(ds) => {
                            ds.resolve(secrets)
                                .map(Some)
                                .map_err(|error| Refusal::Certificate {
                                    name: name.clone(),
                                    field,
                                    error,
                                })
                        }
                    }
                };
            let server_name = es.spec.server_name();
            Some(OriginatedTls {
                sni: server_name.clone(),
                ca_pem: read("caCert", &t.ca_cert)?,
                client_cert_pem: read("clientCert", &t.client_cert)?,
                client_key_pem: read("clientKey", &t.client_key)?,
                verify_name: server_name.filter(|_| !t.skip_hostname_verification),
                allow_renegotiation: t.allow_renegotiation,
            })
        }
    };
    let endpoint = EndpointInfo {
        address,
        port: u32::from(port),
        weight: 1,
        zone: None,
        priority: 0,
        tags: es.spec.tags.clone(),
        via_egress: false,
    };
    Ok((
        service,
        ExternalUpstream {
            port: u32::from(port),
            tls,
            host_entry: host_entry(es),
            through_egress: false,
        },
        vec![endpoint],
    ))
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::*;

    fn spec(value: serde_json::Value) -> ExternalServiceSpec {
        serde_json::from_value(value).expect("spec")
    }

    fn input<'a>(name: &'a str, spec: &'a ExternalServiceSpec) -> ExternalInput<'a> {
        ExternalInput {
            name,
            spec,
            resolved: Some("198.18.9.2".into()),
            host_vip: Some("240.0.0.9".into()),
        }
    }

    const NO_ZONE: ZoneSide<'static> = ZoneSide {
        zone: None,
        egresses: &[],
    };

    fn egress_mesh() -> MeshSpec {
        serde_json::from_value(serde_json::json!({
            "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]},
            "routing": {"zoneEgress": true}
        }))
        .expect("mesh")
    }

    #[test]
    fn through_the_egress_sidecars_dial_the_egresses_and_the_egress_serves_its_zone() {
        let here = spec(
            serde_json::json!({"networking": {"address": "a.example:443",
            "tls": {"enabled": true, "caCert": {"inlineString": "CA"}}},
            "tags": {"kuma.io/service": "a", "kuma.io/zone": "zone-1"}}),
        );
        let anywhere = spec(serde_json::json!({"networking": {"address": "10.0.0.2:80"},
            "tags": {"kuma.io/service": "b"}}));
        let elsewhere = spec(serde_json::json!({"networking": {"address": "10.0.0.3:80"},
            "tags": {"kuma.io/service": "c", "kuma.io/zone": "zone-2"}}));
        let stored = [
            input("a", &here),
            input("b", &anywhere),
            input("c", &elsewhere),
        ];
        let egresses = [LocalEgress {
            address: "198.18.1.3".into(),
            port: 10002,
        }];
        let side = ZoneSide {
            zone: Some("zone-1"),
            egresses: &egresses,
        };
        let got = external_services(
            &egress_mesh(),
            &stored,
            &BTreeMap::new(),
            &BTreeMap::new(),
            side,
        );
        assert_eq!(got.upstreams.keys().collect::<Vec<_>>(), ["a", "b"]);
        let a = &got.upstreams["a"];
        assert!(a.through_egress && a.tls.is_none(), "{a:?}");
        assert_eq!(
            got.endpoints["a"]
                .iter()
                .map(|e| (e.address.as_str(), e.port))
                .collect::<Vec<_>>(),
            [("198.18.1.3", 10002)]
        );
        assert_eq!(
            got.refused,
            [Refusal::OtherZone {
                name: "c".into(),
                zone: "zone-2".into()
            }]
        );

        let (served, refused) = served_by_egress(
            &egress_mesh(),
            &stored,
            &BTreeMap::new(),
            &BTreeMap::new(),
            Some("zone-1"),
        );
        assert_eq!(refused, []);
        assert_eq!(
            served
                .iter()
                .map(|s| s.service.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(served[0].endpoint.address, "198.18.9.2");
        assert_eq!(
            served[0].tls.as_ref().and_then(|t| t.ca_pem.as_deref()),
            Some("CA")
        );
        // No zoneEgress (or no mTLS): the egress serves nothing.
        let (none, _) = served_by_egress(
            &MeshSpec::default(),
            &stored,
            &BTreeMap::new(),
            &BTreeMap::new(),
            Some("zone-1"),
        );
        assert!(none.is_empty());
    }

    #[test]
    fn a_zones_ingress_offers_its_external_services_and_routes_them_to_its_egresses() {
        let resource = |v: serde_json::Value| Resource::from_value(v).expect("resource");
        let meshes = [
            resource(serde_json::json!({"type": "Mesh", "name": "default",
                "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]},
                "routing": {"zoneEgress": true}})),
            resource(serde_json::json!({"type": "Mesh", "name": "plain"})),
        ];
        let es = |mesh: &str, name: &str, zone: Option<&str>| {
            let mut tags = serde_json::json!({"kuma.io/service": name});
            if let Some(z) = zone {
                tags["kuma.io/zone"] = serde_json::json!(z);
            }
            resource(
                serde_json::json!({"type": "ExternalService", "mesh": mesh, "name": name,
                "networking": {"address": "10.0.0.9:443"}, "tags": tags}),
            )
        };
        let external = [
            es("default", "here", Some("zone-2")),
            es("default", "there", Some("zone-1")),
            es("default", "anywhere", None),
            es("plain", "no-egress", Some("zone-2")),
        ];
        let offered = offered_by_zone(&meshes, &external, "zone-2");
        assert_eq!(
            offered
                .iter()
                .map(|a| (
                    a.mesh.as_str(),
                    a.tags["kuma.io/service"].as_str(),
                    a.instances,
                    a.external_service
                ))
                .collect::<Vec<_>>(),
            [("default", "here", 1, true)]
        );
        let egresses = [LocalEgress {
            address: "198.18.2.3".into(),
            port: 10002,
        }];
        let routes = ingress_external_routes(&meshes, &external, &egresses, "zone-2");
        assert_eq!(routes.keys().collect::<Vec<_>>(), ["here.default.mesh"]);
        assert_eq!(routes["here.default.mesh"][0].address, "198.18.2.3");
        assert!(ingress_external_routes(&meshes, &external, &[], "zone-2").is_empty());
    }

    #[test]
    fn another_zones_external_service_is_reached_as_its_services_once_offered() {
        let elsewhere = spec(serde_json::json!({"networking": {"address": "10.0.0.3:80"},
            "tags": {"kuma.io/service": "c", "kuma.io/zone": "zone-2"}}));
        let side = ZoneSide {
            zone: Some("zone-1"),
            egresses: &[],
        };
        // Offered by zone-2's ingress: an ordinary (remote) service, nothing refused.
        let offered = BTreeMap::from([("c".to_string(), Vec::new())]);
        let got = external_services(
            &egress_mesh(),
            &[input("c", &elsewhere)],
            &offered,
            &BTreeMap::new(),
            side,
        );
        assert!(
            got.upstreams.is_empty() && got.refused.is_empty(),
            "{got:?}"
        );
        // Not offered yet: refused with the reason.
        let got = external_services(
            &egress_mesh(),
            &[input("c", &elsewhere)],
            &BTreeMap::new(),
            &BTreeMap::new(),
            side,
        );
        assert!(
            matches!(got.refused.as_slice(), [Refusal::OtherZone { .. }]),
            "{got:?}"
        );
    }

    #[test]
    fn a_tls_service_gets_its_endpoint_protocol_and_certificates_from_secrets() {
        let es = spec(serde_json::json!({
            "networking": {"address": "api.example:8443", "tls": {"enabled": true,
                "caCert": {"secret": "api-ca"}, "clientCert": {"inlineString": "CERT"},
                "clientKey": {"secret": "api-key"}}},
            "tags": {"kuma.io/service": "api", "kuma.io/protocol": "http"}
        }));
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let secrets = BTreeMap::from([
            ("api-ca".to_string(), b64("CA")),
            ("api-key".to_string(), b64("KEY")),
        ]);
        let got = external_services(
            &MeshSpec::default(),
            &[input("api", &es)],
            &BTreeMap::new(),
            &secrets,
            NO_ZONE,
        );
        assert_eq!(got.refused, []);
        assert_eq!(got.protocols["api"], "http");
        assert_eq!(got.endpoints["api"][0].address, "198.18.9.2");
        assert_eq!(got.endpoints["api"][0].port, 8443);
        let up = &got.upstreams["api"];
        assert_eq!(up.port, 8443);
        assert_eq!(
            up.tls,
            Some(OriginatedTls {
                sni: Some("api.example".into()),
                ca_pem: Some("CA".into()),
                client_cert_pem: Some("CERT".into()),
                client_key_pem: Some("KEY".into()),
                verify_name: Some("api.example".into()),
                allow_renegotiation: false,
            })
        );
        assert_eq!(
            up.host_entry,
            Some(HostEntry {
                hostname: "api.example".into(),
                vip: "240.0.0.9".into()
            })
        );
    }

    #[test]
    fn what_cannot_be_served_is_refused_with_the_reason() {
        let plain = spec(serde_json::json!({"networking": {"address": "10.0.0.1:80"},
            "tags": {"kuma.io/service": "web"}}));
        let missing_ca = spec(
            serde_json::json!({"networking": {"address": "a.example:443",
            "tls": {"enabled": true, "caCert": {"secret": "nope"}}},
            "tags": {"kuma.io/service": "a"}}),
        );
        let twin = spec(serde_json::json!({"networking": {"address": "10.0.0.2:80"},
            "tags": {"kuma.io/service": "b"}}));
        let internal = BTreeMap::from([("web".to_string(), Vec::new())]);
        let got = external_services(
            &MeshSpec::default(),
            &[
                input("web-es", &plain),
                input("a-es", &missing_ca),
                input("b-1", &twin),
                input("b-2", &twin),
            ],
            &internal,
            &BTreeMap::new(),
            NO_ZONE,
        );
        assert_eq!(got.upstreams.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(
            got.refused
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            [
                "ExternalService \"a-es\": networking.tls.caCert: secret \"nope\" does not exist in the mesh",
                "ExternalService \"b-2\": another ExternalService already serves \"b\"",
                "ExternalService \"web-es\": kuma.io/service \"web\" is also a service of the mesh's Dataplanes; the mesh's service wins",
            ]
        );
        let plain_mesh: MeshSpec =
            serde_json::from_value(serde_json::json!({"routing": {"zoneEgress": true}}))
                .expect("mesh");
        let got = external_services(
            &plain_mesh,
            &[input("b-1", &twin)],
            &BTreeMap::new(),
            &BTreeMap::new(),
            NO_ZONE,
        );
        assert!(got.upstreams.is_empty() && got.endpoints.is_empty());
        assert_eq!(got.refused, [Refusal::EgressWithoutMtls("b-1".into())]);
    }
}
