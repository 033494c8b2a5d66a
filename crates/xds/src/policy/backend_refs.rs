//! Route destinations: a MeshHTTPRoute/MeshTCPRoute `backendRef` names a service, or a tag subset
//! of one (`{kind: MeshServiceSubset, name: backend, tags: {version: v2}}`, or
//! `tags: {kuma.io/zone: zone-2}`). A subset gets a cluster of its own:
//!
//! - cluster and EDS name `<service>_<h>`,
//! - mTLS SNI `<service>.<h>.<mesh>.mesh` (ADR 0004 point 3), so that a zone ingress (or egress)
//!   routes the connection to the matching instances only,
//! - peer check unchanged: `spiffe://<mesh>/<service>`,
//!
//! where `h` is [`tags_hash`] of the subset's tags without `kuma.io/service`: 8 lowercase hex
//! digits of FNV-1a (64 bit) over the sorted `key=value` lines, DNS-safe.
//!
//! Pure functions, shared by the sidecar configurers and the zone CP's ingress/egress routes.

use std::collections::BTreeSet;

use meshzone_model::policy::Policy;
use meshzone_model::specs::{SERVICE_TAG, Tags};
use serde_json::Value;

use crate::generate::common::protocol;
use crate::generate::{EndpointInfo, ProxyInput, Resources, clusters, endpoints};

/// A destination of a route rule (or of a mirror).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendRef {
    pub service: String,
    /// Subset tags beyond `kuma.io/service` (empty: the whole service).
    pub tags: Tags,
    /// Relative weight (default 1).
    pub weight: u32,
}

/// A tag subset of a service that some route sends to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Subset {
    pub service: String,
    pub tags: Tags,
}

impl Subset {
    pub fn cluster(&self) -> String {
        subset_cluster(&self.service, &self.tags)
    }

    pub fn sni(&self, mesh: &str) -> String {
        subset_sni(&self.service, &self.tags, mesh)
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// 8 lowercase hex digits of a text's FNV-1a (64 bit, top half).
pub(crate) fn short_hash(text: &str) -> String {
    format!("{:08x}", fnv1a(text.as_bytes()) >> 32)
}

/// The DNS-safe label naming a tag set (`kuma.io/service` left out).
pub fn tags_hash(tags: &Tags) -> String {
    let text: String = tags
        .iter()
        .filter(|(k, _)| k.as_str() != SERVICE_TAG)
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect();
    short_hash(&text)
}

/// The cluster of a destination: the service's own, or `<service>_<h>` for a subset.
pub fn subset_cluster(service: &str, tags: &Tags) -> String {
    if tags.keys().all(|k| k == SERVICE_TAG) {
        return service.to_string();
    }
    format!("{service}_{}", tags_hash(tags))
}

/// The SNI of a destination: `<service>.<mesh>.mesh`, or `<service>.<h>.<mesh>.mesh`.
pub fn subset_sni(service: &str, tags: &Tags, mesh: &str) -> String {
    if tags.keys().all(|k| k == SERVICE_TAG) {
        return crate::generate::sni(service, mesh);
    }
    format!("{service}.{}.{mesh}.mesh", tags_hash(tags))
}

impl BackendRef {
    /// A `backendRef` object; None for kinds kuma-dp cannot route to yet (MeshExternalService,
    /// MeshMultiZoneService) or a malformed one.
    pub fn parse(v: &Value) -> Option<BackendRef> {
        let kind = v.get("kind")?.as_str()?;
        let service = v.get("name")?.as_str()?.to_string();
        let tags: Tags = match kind {
            "MeshService" => Tags::new(),
            "MeshServiceSubset" => v
                .get("tags")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter(|(k, _)| k.as_str() != SERVICE_TAG)
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default(),
            _ => return None,
        };
        let weight = match v.get("weight") {
            None => 1,
            Some(w) => u32::try_from(w.as_u64()?).ok()?,
        };
        Some(BackendRef {
            service,
            tags,
            weight,
        })
    }

    pub fn cluster(&self) -> String {
        subset_cluster(&self.service, &self.tags)
    }

    pub fn subset(&self) -> Subset {
        Subset {
            service: self.service.clone(),
            tags: self.tags.clone(),
        }
    }
}

/// The `backendRefs` of a rule's `default` (the route's destinations).
pub fn rule_backends(default: &Value) -> Vec<BackendRef> {
    default
        .get("backendRefs")
        .and_then(Value::as_array)
        .map(|refs| refs.iter().filter_map(BackendRef::parse).collect())
        .unwrap_or_default()
}

/// The mirror destinations among a rule's `default.filters`.
pub fn rule_mirrors(default: &Value) -> Vec<BackendRef> {
    default
        .get("filters")
        .and_then(Value::as_array)
        .map(|filters| {
            filters
                .iter()
                .filter_map(|f| f.get("requestMirror")?.get("backendRef"))
                .filter_map(BackendRef::parse)
                .collect()
        })
        .unwrap_or_default()
}

/// Every subset (tags beyond the service) that the route policies of `mesh` send to, from
/// `to[].rules[].default` backendRefs and mirrors. Zone ingresses get a filter chain for each,
/// zone egresses a route.
pub fn requested_subsets(policies: &[Policy], mesh: &str) -> BTreeSet<Subset> {
    policies
        .iter()
        .filter(|p| p.mesh == mesh)
        .flat_map(|p| p.spec.to.iter())
        .flat_map(|to| to.rules.iter().flatten())
        .flat_map(|rule| {
            let mut refs = rule_backends(&rule.default);
            refs.extend(rule_mirrors(&rule.default));
            refs
        })
        .filter(|r| !r.tags.is_empty())
        .map(|r| r.subset())
        .collect()
}

/// Whether an endpoint's instances carry every tag of the subset.
pub fn carries(endpoint_tags: &Tags, subset: &Tags) -> bool {
    subset
        .iter()
        .all(|(k, v)| k == SERVICE_TAG || endpoint_tags.get(k) == Some(v))
}

/// The endpoints of a subset cluster: those whose tags include the subset's.
pub fn subset_endpoints(endpoints: &[EndpointInfo], subset: &Tags) -> Vec<EndpointInfo> {
    endpoints
        .iter()
        .filter(|e| carries(&e.tags, subset))
        .cloned()
        .collect()
}

/// The cluster of a backend, created (with its load assignment) when the proxy has none yet:
/// a subset's cluster takes the endpoints carrying its tags and sends the subset's SNI.
pub(crate) fn ensure_cluster(
    input: &ProxyInput<'_>,
    resources: &mut Resources,
    backend: &BackendRef,
) -> String {
    let name = backend.cluster();
    if resources.clusters.iter().any(|c| c.name == name) {
        return name;
    }
    let service = backend.service.as_str();
    let proto = protocol(input.protocols.get(service).map(String::as_str));
    resources.clusters.push(clusters::destination_cluster(
        &name,
        service,
        &subset_sni(service, &backend.tags, input.mesh),
        input.mesh,
        proto,
        input.mtls().is_some(),
    ));
    let all = input
        .endpoints
        .get(service)
        .map(Vec::as_slice)
        .unwrap_or_default();
    resources.assignments.push(endpoints::load_assignment(
        &name,
        &subset_endpoints(all, &backend.tags),
    ));
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshzone_model::specs::tags;
    use serde_json::json;

    #[test]
    fn subset_names_are_stable_dns_safe_and_ignore_the_service_tag() {
        let v2 = tags(&[("version", "v2")]);
        let h = tags_hash(&v2);
        assert_eq!(h.len(), 8);
        assert!(
            h.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(
            tags_hash(&tags(&[("version", "v2"), (SERVICE_TAG, "backend")])),
            h
        );
        assert_ne!(tags_hash(&tags(&[("version", "v1")])), h);
        assert_ne!(tags_hash(&tags(&[("kuma.io/zone", "zone-2")])), h);
        assert_eq!(subset_cluster("backend", &v2), format!("backend_{h}"));
        assert_eq!(
            subset_sni("backend", &v2, "default"),
            format!("backend.{h}.default.mesh")
        );
        assert_eq!(subset_cluster("backend", &Tags::new()), "backend");
        assert_eq!(
            subset_sni("backend", &Tags::new(), "default"),
            "backend.default.mesh"
        );
        // Pinned: the SNI is a wire format between zones (and versions) of the mesh.
        assert_eq!(h, "3231efae");
    }

    #[test]
    fn backend_refs_parse_by_kind() {
        let rows = [
            (
                json!({"kind": "MeshService", "name": "backend"}),
                Some(("backend", tags(&[]), 1)),
            ),
            (
                json!({"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2", "kuma.io/service": "backend"}, "weight": 10}),
                Some(("backend", tags(&[("version", "v2")]), 10)),
            ),
            (
                json!({"kind": "MeshServiceSubset", "name": "backend", "tags": {"kuma.io/zone": "zone-2"}, "weight": 0}),
                Some(("backend", tags(&[("kuma.io/zone", "zone-2")]), 0)),
            ),
            (
                json!({"kind": "MeshExternalService", "name": "httpbin"}),
                None,
            ),
            (json!({"kind": "MeshService"}), None),
            (
                json!({"kind": "MeshService", "name": "b", "weight": -1}),
                None,
            ),
        ];
        for (v, want) in rows {
            let got = BackendRef::parse(&v).map(|b| (b.service.clone(), b.tags.clone(), b.weight));
            assert_eq!(got, want.map(|(s, t, w)| (s.to_string(), t, w)), "{v}");
        }
    }

    #[test]
    fn requested_subsets_come_from_backend_refs_and_mirrors_of_the_mesh() {
        use meshzone_model::policy::{PolicySpec, RouteRule, TargetRef, ToItem};
        let to = |default: Value| ToItem {
            target_ref: serde_json::from_value::<TargetRef>(
                json!({"kind": "MeshService", "name": "backend"}),
            )
            .expect("targetRef"),
            default: None,
            rules: Some(vec![RouteRule {
                matches: None,
                default,
            }]),
        };
        let route = |mesh: &str, default: Value| {
            Policy::new(
                "r",
                mesh,
                PolicySpec {
                    to: vec![to(default)],
                    ..Default::default()
                },
            )
        };
        let policies = [
            route(
                "default",
                json!({"backendRefs": [
                    {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v1"}, "weight": 90},
                    {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2"}, "weight": 10},
                    {"kind": "MeshService", "name": "other"}
                ]}),
            ),
            route(
                "default",
                json!({"filters": [{"type": "RequestMirror", "requestMirror": {"percentage": 5, "backendRef": {"kind": "MeshServiceSubset", "name": "shadow", "tags": {"kuma.io/zone": "zone-2"}}}}],
                       "backendRefs": [{"kind": "MeshService", "name": "backend"}]}),
            ),
            route(
                "other-mesh",
                json!({"backendRefs": [{"kind": "MeshServiceSubset", "name": "x", "tags": {"a": "b"}}]}),
            ),
        ];
        let got: Vec<(String, Tags)> = requested_subsets(&policies, "default")
            .into_iter()
            .map(|s| (s.service, s.tags))
            .collect();
        assert_eq!(
            got,
            vec![
                ("backend".to_string(), tags(&[("version", "v1")])),
                ("backend".to_string(), tags(&[("version", "v2")])),
                ("shadow".to_string(), tags(&[("kuma.io/zone", "zone-2")])),
            ]
        );
    }

    #[test]
    fn subset_endpoints_are_those_carrying_every_subset_tag() {
        let endpoint = |address: &str, t: Tags| EndpointInfo {
            address: address.into(),
            port: 1,
            weight: 1,
            zone: None,
            priority: 0,
            tags: t,
            via_egress: false,
        };
        let all = [
            endpoint("a", tags(&[("version", "v1"), ("kuma.io/zone", "zone-1")])),
            endpoint("b", tags(&[("version", "v2"), ("kuma.io/zone", "zone-1")])),
            endpoint("c", tags(&[("version", "v2"), ("kuma.io/zone", "zone-2")])),
        ];
        let addresses = |subset: Tags| -> Vec<String> {
            subset_endpoints(&all, &subset)
                .into_iter()
                .map(|e| e.address)
                .collect()
        };
        assert_eq!(addresses(tags(&[("version", "v2")])), ["b", "c"]);
        assert_eq!(addresses(tags(&[("kuma.io/zone", "zone-1")])), ["a", "b"]);
        assert_eq!(
            addresses(tags(&[("version", "v2"), ("kuma.io/zone", "zone-2")])),
            ["c"]
        );
        assert_eq!(addresses(tags(&[("version", "v3")])), Vec::<String>::new());
        assert_eq!(addresses(Tags::new()).len(), 3);
    }
}
