//! The policies of one mesh as the engine takes them, and one proxy as the engine sees it: what
//! the DP server computes a proxy's rules from, and what the `_rules` inspection shows. Pure.

use std::collections::BTreeMap;

use crate::descriptor::ResourceType;
use crate::policy::{
    DISPLAY_NAME_LABEL, InboundDescription, Policy, PolicyError, PolicyRules, ProxyDescription,
    TargetRef, rules_for_proxy,
};
use crate::resource::{Resource, Spec};
use crate::specs::ZONE_TAG;

use super::to_engine_policy;

/// Every policy of a mesh converted to the engine's form, per type, and the MeshHTTPRoutes'
/// top-level targetRefs by name (for policies that target a route), read once per change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeshPolicies {
    by_type: BTreeMap<ResourceType, Vec<Policy>>,
    /// MeshHTTPRoute name (and display name, for global's hashed copies) → its targetRef.
    pub http_routes: BTreeMap<String, TargetRef>,
}

impl MeshPolicies {
    /// From the stored resources of the policy types (other resources are ignored).
    pub fn from_resources<'a>(resources: impl IntoIterator<Item = &'a Resource>) -> Self {
        let mut out = MeshPolicies::default();
        for r in resources {
            let Some(policy) = to_engine_policy(r) else {
                continue;
            };
            if r.resource_type() == ResourceType::MeshHTTPRoute {
                let target = policy.target_ref();
                if let Some(display) = r.meta.labels.get(DISPLAY_NAME_LABEL) {
                    out.http_routes.insert(display.clone(), target.clone());
                }
                out.http_routes.insert(r.meta.name.clone(), target);
            }
            out.by_type
                .entry(r.resource_type())
                .or_default()
                .push(policy);
        }
        out
    }

    /// The policies of one type (empty when there are none).
    pub fn of(&self, rt: ResourceType) -> &[Policy] {
        self.by_type.get(&rt).map(Vec::as_slice).unwrap_or_default()
    }

    /// The rules of policy type `rt` for `proxy`.
    pub fn rules(
        &self,
        rt: ResourceType,
        proxy: &ProxyDescription,
    ) -> Result<PolicyRules, PolicyError> {
        rules_for_proxy(proxy, self.of(rt), &self.http_routes)
    }

    /// The rules of every policy type for the Dataplane `dp` in `zone` (see
    /// [`describe_dataplane`]): what the DP server configures and what `_rules` shows.
    pub fn dataplane_rules(
        &self,
        dp: &Resource,
        zone: Option<&str>,
    ) -> Result<BTreeMap<ResourceType, PolicyRules>, DataplaneRulesError> {
        let proxy = describe_dataplane(dp, zone)
            .ok_or_else(|| DataplaneRulesError::NotADataplane(dp.key().to_string()))?;
        ResourceType::policies()
            .map(|rt| {
                self.rules(rt, &proxy)
                    .map(|rules| (rt, rules))
                    .map_err(|source| DataplaneRulesError::Engine {
                        policy_type: rt,
                        source,
                    })
            })
            .collect()
    }
}

/// Why a Dataplane's policy rules could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneRulesError {
    #[error("{0} is not a Dataplane")]
    NotADataplane(String),
    #[error("{policy_type} rules: {source}")]
    Engine {
        policy_type: ResourceType,
        source: PolicyError,
    },
}

/// A Dataplane as the engine sees it: its mesh, labels, and inbounds with their tags; the
/// inbounds carry `kuma.io/zone` (`zone`, when the proxy's zone has a name and the tag is
/// not there yet). `None` for a resource that is not a Dataplane.
pub fn describe_dataplane(r: &Resource, zone: Option<&str>) -> Option<ProxyDescription> {
    let Spec::Dataplane(dp) = &r.spec else {
        return None;
    };
    let inbounds = dp
        .networking
        .inbound
        .iter()
        .map(|i| {
            let mut tags = i.tags.clone();
            if let Some(z) = zone.filter(|z| !z.is_empty()) {
                tags.entry(ZONE_TAG.to_string())
                    .or_insert_with(|| z.to_string());
            }
            InboundDescription { port: i.port, tags }
        })
        .collect();
    let mut proxy = ProxyDescription::sidecar(&r.meta.mesh, inbounds);
    proxy.labels = r.meta.labels.clone();
    Some(proxy)
}
