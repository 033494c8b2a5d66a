//! MeshTCPRoute (reference §2.8): weighted backends for the selected proxies' TCP outbounds.
//! Each `to[]` item names a destination service and holds one rule (no matches in TCP) whose
//! `default.backendRefs` must not be empty.

use serde::{Deserialize, Serialize};

use super::mesh_http_route::{BackendRef, check_backend_ref};
use super::{PolicyKind, check_route_targets, json, route_to_engine};
use crate::descriptor::ResourceType;
use crate::policy::{PolicySpec, RouteRule, TargetRef};
use crate::validate::Violations;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshTCPRoute {
    /// The client proxies whose outbounds get the route; `{kind: Mesh}` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<TcpRouteTo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpRouteTo {
    pub target_ref: TargetRef,
    #[serde(default)]
    pub rules: Vec<TcpRouteRule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpRouteRule {
    pub default: TcpRouteConf,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpRouteConf {
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
}

impl PolicyKind for MeshTCPRoute {
    const TYPE: ResourceType = ResourceType::MeshTCPRoute;

    fn validate(&self, v: &mut Violations) {
        let targets = self.to.iter().map(|to| &to.target_ref);
        check_route_targets(self.target_ref.as_ref(), targets, Self::TYPE, v);
        for (i, to) in self.to.iter().enumerate() {
            let path = format!("spec.to[{i}]");
            match to.rules.len() {
                0 => v.push(format!("{path}.rules"), "must have exactly one item"),
                1 => {}
                n => v.push(
                    format!("{path}.rules"),
                    format!("must have at most 1 item, has {n}"),
                ),
            }
            for (j, rule) in to.rules.iter().enumerate() {
                let path = format!("{path}.rules[{j}].default.backendRefs");
                if rule.default.backend_refs.is_empty() {
                    v.push(path.clone(), "must have at least one item");
                }
                for (k, b) in rule.default.backend_refs.iter().enumerate() {
                    check_backend_ref(b, &format!("{path}[{k}]"), v);
                }
            }
        }
    }

    fn to_engine(&self) -> PolicySpec {
        let to = self.to.iter().map(|to| {
            let rules = to.rules.iter().map(|r| RouteRule {
                matches: None,
                default: json(&r.default),
            });
            (&to.target_ref, rules.collect())
        });
        route_to_engine(self.target_ref.as_ref(), to)
    }
}
