//! What the targetRef policies configure on one proxy, handed to the generator. The zone CP
//! computes each policy type's rules for the proxy with the shared engine
//! (`meshzone_model::policy::rules_for_proxy`); here they are plain input. Each policy type
//! has its own configurer module that edits the Envoy resources the base builders made, and
//! the configurers run in one fixed order (Kuma's plugin order: routes first, traffic
//! permissions later).
//!
//! An empty [`PolicyRules`] means no policy of that type selects the proxy.

use meshzone_model::policy::PolicyRules;

/// The rules of every policy type the generator knows, for one proxy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyPolicies {
    /// MeshTrafficPermission: `from_rules` per inbound; each rule's conf is
    /// `{"action": "Allow" | "Deny" | "AllowWithShadowDeny"}`. Enforced only when the mesh
    /// has mTLS (the client identity comes from its certificate). With mTLS, an inbound with no
    /// allowing rule denies every client, as Kuma does.
    pub traffic_permission: PolicyRules,
    /// MeshHTTPRoute: `to_rules` per outbound service; each conf holds the merged `rules`
    /// (`[{matches, default: {filters, backendRefs}}]`).
    pub http_route: PolicyRules,
    /// MeshTCPRoute: `to_rules` per outbound service; each conf holds `rules`
    /// (`[{default: {backendRefs}}]`).
    pub tcp_route: PolicyRules,
}
