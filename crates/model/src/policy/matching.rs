//! Selection (reference §1.4) and ordering (§1.5 step A): which policies select a proxy and
//! in which order they apply, lowest priority first. Pure functions of plain inputs.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::specs::{DataplaneSpec, SERVICE_TAG, Tags};

use super::target_ref::{ProxyType, TargetRef, TargetRefKind};
use super::{NAMESPACE_LABEL, ORIGIN_LABEL, Policy, PolicyRole, ZONE_LABEL, compare_names};

/// One inbound of a proxy: its port and its tags (`kuma.io/service`, `kuma.io/zone`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundDescription {
    pub port: u32,
    pub tags: Tags,
}

/// A builtin gateway proxy: the MeshGateway it serves and the tags of each listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayDescription {
    pub name: String,
    pub listeners: Vec<Tags>,
}

/// What the engine needs to know about a proxy: its mesh, labels (`kuma.io/origin`,
/// `kuma.io/zone`, `k8s.kuma.io/namespace`), type, inbounds and, for a builtin gateway, its
/// listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyDescription {
    pub mesh: String,
    pub labels: Tags,
    pub proxy_type: ProxyType,
    pub inbounds: Vec<InboundDescription>,
    pub gateway: Option<GatewayDescription>,
}

impl ProxyDescription {
    /// A sidecar with these inbounds (port, tags).
    pub fn sidecar(mesh: &str, inbounds: Vec<InboundDescription>) -> Self {
        ProxyDescription {
            mesh: mesh.to_string(),
            labels: Tags::new(),
            proxy_type: ProxyType::Sidecar,
            inbounds,
            gateway: None,
        }
    }

    /// A sidecar described by its Dataplane: one inbound per `networking.inbound`, with the
    /// port and tags as they are (the zone CP stamps `kuma.io/zone` on registration).
    pub fn of_dataplane(mesh: &str, dataplane: &DataplaneSpec) -> Self {
        Self::sidecar(
            mesh,
            dataplane
                .networking
                .inbound
                .iter()
                .map(|i| InboundDescription {
                    port: i.port,
                    tags: i.tags.clone(),
                })
                .collect(),
        )
    }

    /// The tag sets a kind other than MeshGateway is matched against: the inbounds of a
    /// sidecar, the listeners of a builtin gateway.
    fn tag_sets(&self) -> Vec<&Tags> {
        match (&self.proxy_type, &self.gateway) {
            (ProxyType::Gateway, Some(g)) => g.listeners.iter().collect(),
            _ => self.inbounds.iter().map(|i| &i.tags).collect(),
        }
    }
}

/// What a top-level targetRef picked on a proxy: indices of inbounds (sidecar) or of gateway
/// listeners (builtin gateway).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selected {
    pub inbounds: Vec<usize>,
    pub listeners: Vec<usize>,
}

/// A policy that selects the proxy, with what it selected.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchedPolicy<'a> {
    pub policy: &'a Policy,
    pub selected: Selected,
}

/// True when `tags` carries every pair of `want`.
pub(crate) fn includes(tags: &Tags, want: &Tags) -> bool {
    want.iter().all(|(k, v)| tags.get(k) == Some(v))
}

/// The policies that select `proxy`, in the given order (sort them with [`sort_matched`]).
/// `http_routes` maps MeshHTTPRoute names to their top-level targetRef, for policies that
/// target a route.
pub fn select<'a>(
    proxy: &ProxyDescription,
    policies: &'a [Policy],
    http_routes: &BTreeMap<String, TargetRef>,
) -> Vec<MatchedPolicy<'a>> {
    policies
        .iter()
        .filter(|p| p.mesh == proxy.mesh)
        .filter(|p| selected_by_zone(p, proxy) && selected_by_namespace(p, proxy))
        .filter_map(|p| {
            select_by_target_ref(&p.target_ref(), proxy, http_routes, 0).map(|selected| {
                MatchedPolicy {
                    policy: p,
                    selected,
                }
            })
        })
        .collect()
}

/// A zone-originated policy selects only proxies of its zone, unless it is a producer policy;
/// proxies with no origin label always pass (`dppSelectedByZone`).
fn selected_by_zone(policy: &Policy, proxy: &ProxyDescription) -> bool {
    if policy.origin() != super::Origin::Zone || policy.role() == PolicyRole::Producer {
        return true;
    }
    if !proxy.labels.contains_key(ORIGIN_LABEL) {
        return true;
    }
    proxy.labels.get(ZONE_LABEL) == policy.labels.get(ZONE_LABEL)
}

/// Consumer and workload-owner policies select only proxies of their own namespace
/// (`dppSelectedByNamespace`).
fn selected_by_namespace(policy: &Policy, proxy: &ProxyDescription) -> bool {
    match policy.role() {
        PolicyRole::Consumer | PolicyRole::WorkloadOwner => {
            proxy.labels.get(NAMESPACE_LABEL) == policy.labels.get(NAMESPACE_LABEL)
        }
        PolicyRole::System | PolicyRole::Producer => true,
    }
}

/// What `tr` selects on `proxy`; `None` when it selects nothing (`DppSelectedByPolicy`).
fn select_by_target_ref(
    tr: &TargetRef,
    proxy: &ProxyDescription,
    http_routes: &BTreeMap<String, TargetRef>,
    depth: usize,
) -> Option<Selected> {
    let is_gateway = proxy.proxy_type == ProxyType::Gateway && proxy.gateway.is_some();
    let type_ok = tr
        .proxy_types
        .as_ref()
        .is_none_or(|types| types.is_empty() || types.contains(&proxy.proxy_type));
    let matching = |want: &Tags| -> Option<Selected> {
        let hits: Vec<usize> = proxy
            .tag_sets()
            .into_iter()
            .enumerate()
            .filter(|(_, tags)| includes(tags, want))
            .map(|(i, _)| i)
            .collect();
        if hits.is_empty() {
            None
        } else if is_gateway {
            Some(Selected {
                inbounds: vec![],
                listeners: hits,
            })
        } else {
            Some(Selected {
                inbounds: hits,
                listeners: vec![],
            })
        }
    };
    let service_tags = |extra: Tags| -> Tags {
        let mut tags = extra;
        tags.insert(SERVICE_TAG.to_string(), tr.name_str().to_string());
        tags
    };
    match &tr.kind {
        TargetRefKind::Mesh => {
            if !type_ok {
                return None;
            }
            let all = proxy.tag_sets().len();
            Some(if is_gateway {
                Selected {
                    inbounds: vec![],
                    listeners: (0..all).collect(),
                }
            } else {
                Selected {
                    inbounds: (0..all).collect(),
                    listeners: vec![],
                }
            })
        }
        TargetRefKind::MeshSubset if type_ok => matching(&tr.tags_or_empty()),
        TargetRefKind::MeshService => matching(&service_tags(Tags::new())),
        TargetRefKind::MeshServiceSubset => matching(&service_tags(tr.tags_or_empty())),
        TargetRefKind::MeshGateway => {
            let gateway = proxy.gateway.as_ref().filter(|_| is_gateway)?;
            if gateway.name != tr.name_str() {
                return None;
            }
            matching(&tr.tags_or_empty())
        }
        TargetRefKind::MeshHTTPRoute if depth == 0 => {
            let route_target = http_routes.get(tr.name_str())?;
            select_by_target_ref(route_target, proxy, http_routes, depth + 1)
        }
        _ => None,
    }
}

/// Kuma's priority order without the name: top-level kind rank, origin, the number of tags
/// between two MeshGateway refs, role.
pub(crate) fn compare_attributes(a: &Policy, b: &Policy) -> Ordering {
    let (ta, tb) = (a.target_ref(), b.target_ref());
    ta.kind
        .rank()
        .cmp(&tb.kind.rank())
        .then_with(|| a.origin().cmp(&b.origin()))
        .then_with(|| {
            if ta.kind == TargetRefKind::MeshGateway && tb.kind == TargetRefKind::MeshGateway {
                let count = |t: &TargetRef| t.tags.as_ref().map_or(0, |m| m.len());
                count(&ta).cmp(&count(&tb))
            } else {
                Ordering::Equal
            }
        })
        .then_with(|| a.role().cmp(&b.role()))
}

/// The one total order of policies, lowest priority first (`SortByTargetRef`): kind rank, then
/// origin (global < unknown < zone), then MeshGateway tag count, then role, then the display
/// name inverted (`"aaa"` sorts last, so it wins over `"bbb"`).
pub fn compare_policies(a: &Policy, b: &Policy) -> Ordering {
    compare_attributes(a, b).then_with(|| compare_names(a.display_name(), b.display_name()))
}

/// Sorts matched policies lowest priority first, with [`compare_policies`].
pub fn sort_matched(matched: &mut [MatchedPolicy<'_>]) {
    matched.sort_by(|a, b| compare_policies(a.policy, b.policy));
}
