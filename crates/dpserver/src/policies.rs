//! A proxy's policy rules: its description (mesh, labels, inbounds with `kuma.io/zone`) run
//! through the shared engine for every policy type the generator takes. Pure; the mesh's
//! policies come from the shared view (read once per change).

use meshzone_model::policies::{DataplaneRulesError, MeshPolicies};
use meshzone_model::policy::{PolicyError, PolicyRules, ProxyDescription, ProxyType};
use meshzone_model::{Resource, ResourceType};
use meshzone_xds::policy::ProxyPolicies;
use meshzone_xds::policy::zone_egress::EgressRouteRules;

/// The rules of every policy type the generator knows, for the Dataplane `own` in `zone`.
pub(crate) fn proxy_policies(
    policies: &MeshPolicies,
    own: &Resource,
    zone: Option<&str>,
) -> Result<ProxyPolicies, DataplaneRulesError> {
    let mut rules = policies.dataplane_rules(own, zone)?;
    let mut take = |rt: ResourceType| rules.remove(&rt).unwrap_or_default();
    Ok(ProxyPolicies {
        traffic_permission: take(ResourceType::MeshTrafficPermission),
        http_route: take(ResourceType::MeshHTTPRoute),
        tcp_route: take(ResourceType::MeshTCPRoute),
        load_balancing: take(ResourceType::MeshLoadBalancingStrategy),
        fault_injection: take(ResourceType::MeshFaultInjection),
        rate_limit: take(ResourceType::MeshRateLimit),
        health_check: take(ResourceType::MeshHealthCheck),
        circuit_breaker: take(ResourceType::MeshCircuitBreaker),
        timeout: take(ResourceType::MeshTimeout),
        retry: take(ResourceType::MeshRetry),
        trace: take(ResourceType::MeshTrace),
        access_log: take(ResourceType::MeshAccessLog),
        access_log_socket: meshzone_xds::policy::mesh_access_log::socket_path(
            &own.meta.name,
            &own.meta.mesh,
        ),
        metric: take(ResourceType::MeshMetric),
    })
}

/// A zone egress as the engine sees it in `mesh`: no inbounds and no labels, so only top-level
/// `targetRef: Mesh` policies select it (what Kuma supports on a zone egress).
fn zone_egress(mesh: &str) -> ProxyDescription {
    ProxyDescription {
        proxy_type: ProxyType::Other("ZoneEgress".into()),
        ..ProxyDescription::sidecar(mesh, Vec::new())
    }
}

/// MeshHealthCheck and MeshTimeout rules of a zone egress in `mesh`
/// (`meshzone_xds::policy::zone_egress`).
pub(crate) struct EgressRules {
    health_check: PolicyRules,
    timeout: PolicyRules,
}

impl EgressRules {
    pub(crate) fn of(policies: &MeshPolicies, mesh: &str) -> Result<Self, PolicyError> {
        let egress = zone_egress(mesh);
        Ok(EgressRules {
            health_check: policies.rules(ResourceType::MeshHealthCheck, &egress)?,
            timeout: policies.rules(ResourceType::MeshTimeout, &egress)?,
        })
    }

    /// The confs for a route to `service`; `None` when no policy gives one.
    pub(crate) fn for_service(&self, service: &str) -> Option<EgressRouteRules> {
        let conf = |r: &PolicyRules| r.to_rule(service).map(|r| r.conf.clone());
        let rules = EgressRouteRules {
            health_check: conf(&self.health_check),
            timeout: conf(&self.timeout),
        };
        (rules != EgressRouteRules::default()).then_some(rules)
    }
}

#[cfg(test)]
mod tests {
    use meshzone_model::specs::tags;
    use serde_json::json;

    use super::*;

    fn resource(value: serde_json::Value) -> Resource {
        let r = Resource::from_value(value).expect("parses");
        meshzone_model::validate(&r).expect("valid");
        r
    }

    fn dataplane(service: &str) -> Resource {
        resource(
            json!({"type": "Dataplane", "mesh": "default", "name": format!("{service}-1"),
            "networking": {"address": "10.0.0.1", "inbound": [{"port": 8080, "tags": {"kuma.io/service": service}}]}}),
        )
    }

    #[test]
    fn each_type_is_computed_for_the_proxy_with_its_zone() {
        let policies = MeshPolicies::from_resources(&[
            resource(
                json!({"type": "MeshTrafficPermission", "mesh": "default", "name": "deny-zone-2",
                "spec": {"targetRef": {"kind": "MeshService", "name": "backend"}, "from": [
                    {"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}},
                    {"targetRef": {"kind": "MeshSubset", "tags": {"kuma.io/zone": "zone-2"}}, "default": {"action": "Deny"}}]}}),
            ),
            resource(
                json!({"type": "MeshHTTPRoute", "mesh": "default", "name": "split",
                "spec": {"targetRef": {"kind": "MeshService", "name": "frontend"}, "to": [
                    {"targetRef": {"kind": "MeshService", "name": "backend"}, "rules": [
                        {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                         "default": {"backendRefs": [{"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v1"}, "weight": 90}]}}]}]}}),
            ),
            resource(
                json!({"type": "MeshTCPRoute", "mesh": "default", "name": "tcp",
                "spec": {"to": [{"targetRef": {"kind": "MeshService", "name": "db"},
                    "rules": [{"default": {"backendRefs": [{"kind": "MeshService", "name": "db-replica"}]}}]}]}}),
            ),
        ]);

        let backend =
            proxy_policies(&policies, &dataplane("backend"), Some("zone-1")).expect("rules");
        let from = |zone: &str| {
            backend
                .traffic_permission
                .from_rule(
                    8080,
                    &tags(&[("kuma.io/service", "frontend"), ("kuma.io/zone", zone)]),
                )
                .map(|r| r.conf.clone())
        };
        assert_eq!(from("zone-1"), Some(json!({"action": "Allow"})));
        assert_eq!(from("zone-2"), Some(json!({"action": "Deny"})));
        assert_eq!(
            backend.traffic_permission.from_rules[0]
                .inbound
                .tags
                .get("kuma.io/zone")
                .map(String::as_str),
            Some("zone-1")
        );
        assert!(
            backend.http_route.to_rules.is_empty(),
            "the route selects frontends only"
        );
        assert!(backend.tcp_route.to_rule("db").is_some());

        let frontend = proxy_policies(&policies, &dataplane("frontend"), None).expect("rules");
        assert!(frontend.traffic_permission.from_rules.is_empty());
        let route = frontend
            .http_route
            .to_rule("backend")
            .expect("backend route");
        assert_eq!(
            route.conf.pointer("/rules/0/default/backendRefs/0/weight"),
            Some(&json!(90))
        );
    }

    #[test]
    fn an_engine_error_names_the_type() {
        // 4 keys of 8 values each: 9⁴ = 6561 tag combinations, more than the engine enumerates.
        let mut from = Vec::new();
        for k in 0..4 {
            for v in 0..8 {
                from.push(json!({"targetRef": {"kind": "MeshSubset", "tags": {format!("k{k}"): format!("v{v}")}}, "default": {"action": "Allow"}}));
            }
        }
        let policies = MeshPolicies::from_resources(&[resource(json!({
            "type": "MeshTrafficPermission", "mesh": "default", "name": "wide", "spec": {"from": from}}))]);
        let err = proxy_policies(&policies, &dataplane("backend"), None).expect_err("too many");
        assert!(
            matches!(
                err,
                DataplaneRulesError::Engine {
                    policy_type: ResourceType::MeshTrafficPermission,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().starts_with("MeshTrafficPermission rules: "),
            "{err}"
        );
        let not_dp = Resource::new(
            meshzone_model::Meta::named("m", ""),
            meshzone_model::Spec::Mesh(Default::default()),
        );
        assert!(matches!(
            proxy_policies(&policies, &not_dp, None),
            Err(DataplaneRulesError::NotADataplane(_))
        ));
    }

    #[test]
    fn a_zone_egress_takes_only_top_level_mesh_policies() {
        let check = |name: &str, target: serde_json::Value, interval: &str| {
            resource(
                json!({"type": "MeshHealthCheck", "mesh": "default", "name": name,
                "spec": {"targetRef": target, "to": [{"targetRef": {"kind": "MeshService", "name": "echo"},
                    "default": {"interval": interval, "tcp": {}}}]}}),
            )
        };
        let policies = MeshPolicies::from_resources(&[
            check("mesh", json!({"kind": "Mesh"}), "1s"),
            // Neither selects an egress: a service's own proxies, and sidecars only.
            check(
                "of-web",
                json!({"kind": "MeshService", "name": "web"}),
                "7s",
            ),
            check(
                "sidecars",
                json!({"kind": "Mesh", "proxyTypes": ["Sidecar"]}),
                "9s",
            ),
            resource(
                json!({"type": "MeshTimeout", "mesh": "default", "name": "connect",
                "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"},
                    "default": {"connectionTimeout": "250ms"}}]}}),
            ),
        ]);
        let rules = EgressRules::of(&policies, "default").expect("rules");
        let echo = rules.for_service("echo").expect("echo has rules");
        assert_eq!(
            echo.health_check
                .as_ref()
                .and_then(|c| c.get("interval").cloned()),
            Some(json!("1s"))
        );
        assert_eq!(
            echo.timeout
                .as_ref()
                .and_then(|c| c.get("connectionTimeout").cloned()),
            Some(json!("250ms"))
        );
        let other = rules
            .for_service("other")
            .expect("the timeout is for every service");
        assert_eq!(other.health_check, None);
        assert!(
            EgressRules::of(&policies, "other-mesh")
                .expect("rules")
                .for_service("echo")
                .is_none(),
            "another mesh's policies"
        );
    }
}
