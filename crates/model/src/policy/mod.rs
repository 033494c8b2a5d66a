//! The shared targetRef policy engine: which policies select a proxy, in which order they
//! apply, and what their confs merge into, following Kuma 2.x (reference
//! `kuma-policies.md` §1). Every policy type (MeshTrafficPermission, MeshTimeout,
//! MeshHTTPRoute, …) will convert its spec to [`PolicySpec`] and call this engine; a policy's
//! conf is an opaque `serde_json::Value` here.
//!
//! Pipeline: [`validate_policy`] → [`matching::select`] (mesh, zone and namespace scope,
//! top-level targetRef) → [`matching::sort_matched`] (one total order) →
//! [`merge::build_rules`] (flatten `to`/`from`/`rules`, merge with JSON Merge Patch and its
//! exceptions) → [`PolicyRules`], shaped like one entry of Kuma's `_rules` inspection.
//! [`compute_policy_role`] gives the `kuma.io/policy-role` a control plane stamps on a policy.
//!
//! This module holds no policy resource types and knows nothing of REST, KDS or xDS. It does no
//! I/O and never reads the clock: every function is pure.

pub mod matching;
pub mod merge;
pub mod target_ref;

#[cfg(test)]
mod tests;

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::specs::Tags;
use crate::validate::Violations;

pub use matching::{
    GatewayDescription, InboundDescription, MatchedPolicy, ProxyDescription, Selected,
    compare_policies, select, sort_matched,
};
pub use merge::{
    FromRules, InboundRule, InboundRules, PolicyRules, ProxyRule, ResourceMeta, Rule, RuleOrigin,
    TagMatcher, ToRouteRule, build_rules, merge_confs, merge_patch, rules_for_proxy,
};
pub use target_ref::{ProxyType, Section, TargetRef, TargetRefKind, validate_target_ref};

/// Label naming where a policy was created (`global` or `zone`).
pub const ORIGIN_LABEL: &str = "kuma.io/origin";
/// Label naming the zone a zone-originated policy (or a proxy) belongs to.
pub const ZONE_LABEL: &str = "kuma.io/zone";
/// Label holding a policy's original name; the last tie-break of the order.
pub const DISPLAY_NAME_LABEL: &str = "kuma.io/display-name";
/// Label holding the role the control plane computed for a policy (§1.6).
pub const POLICY_ROLE_LABEL: &str = "kuma.io/policy-role";
/// Label holding the Kubernetes namespace of a locally originated resource.
pub const NAMESPACE_LABEL: &str = "k8s.kuma.io/namespace";

/// Where a policy was created, ordered as Kuma's `originOrder`: global < unknown < zone, so a
/// zone's policy wins over a global one with an equal targetRef.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Origin {
    Global,
    Unknown,
    Zone,
}

impl Origin {
    pub fn from_labels(labels: &Tags) -> Origin {
        match labels.get(ORIGIN_LABEL).map(String::as_str) {
            Some("global") => Origin::Global,
            Some("zone") => Origin::Zone,
            _ => Origin::Unknown,
        }
    }
}

/// `kuma.io/policy-role`, ordered as Kuma's `roleOrder`: system < producer < consumer <
/// workload-owner. A policy without the label counts as `system` (Universal, or global).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PolicyRole {
    System,
    Producer,
    Consumer,
    WorkloadOwner,
}

impl PolicyRole {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyRole::System => "system",
            PolicyRole::Producer => "producer",
            PolicyRole::Consumer => "consumer",
            PolicyRole::WorkloadOwner => "workload-owner",
        }
    }

    pub fn from_labels(labels: &Tags) -> PolicyRole {
        match labels.get(POLICY_ROLE_LABEL).map(String::as_str) {
            Some("producer") => PolicyRole::Producer,
            Some("consumer") => PolicyRole::Consumer,
            Some("workload-owner") => PolicyRole::WorkloadOwner,
            _ => PolicyRole::System,
        }
    }
}

/// A `to[]` item: the destinations in `targetRef` and their conf. Route policies
/// (MeshHTTPRoute, MeshTCPRoute) carry `rules` instead of `default`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToItem {
    pub target_ref: TargetRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<RouteRule>>,
}

/// A `from[]` item: the clients in `targetRef` and their conf.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FromItem {
    pub target_ref: TargetRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
}

/// A `to[].rules[]` entry of a route policy; rules with equal `matches` merge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<Value>,
    #[serde(default)]
    pub default: Value,
}

/// A `spec.rules[]` entry (2.10+): inbound conf with no client selector, optionally narrowed
/// by `matches` (`spiffeID` or `sni`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpecRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
}

/// The sections of a targetRef policy's spec (§1.3), each conf kept as JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    /// A missing top-level targetRef means `{kind: Mesh}` (2.9+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<ToItem>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<FromItem>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<SpecRule>,
    /// Proxy-wide conf (MeshTrace, MeshMetric, MeshProxyPatch, MeshPassthrough).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
}

/// One policy as the engine sees it: identity, labels (origin, zone, role, display name) and
/// its sections.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: String,
    pub mesh: String,
    pub labels: Tags,
    pub spec: PolicySpec,
}

impl Policy {
    pub fn new(name: &str, mesh: &str, spec: PolicySpec) -> Self {
        Policy {
            name: name.to_string(),
            mesh: mesh.to_string(),
            labels: Tags::new(),
            spec,
        }
    }

    pub fn with_label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    pub fn origin(&self) -> Origin {
        Origin::from_labels(&self.labels)
    }

    pub fn role(&self) -> PolicyRole {
        PolicyRole::from_labels(&self.labels)
    }

    /// `kuma.io/display-name` when set, else the name.
    pub fn display_name(&self) -> &str {
        self.labels
            .get(DISPLAY_NAME_LABEL)
            .map(String::as_str)
            .unwrap_or(&self.name)
    }

    /// The top-level targetRef, `{kind: Mesh}` when absent.
    pub fn target_ref(&self) -> TargetRef {
        self.spec.target_ref.clone().unwrap_or_else(TargetRef::mesh)
    }
}

/// Why the engine could not compute rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The targetRefs of one section span too many tag combinations to enumerate the subsets
    /// with negations (`section` is `to` or `from of inbound <port>`).
    #[error(
        "the {section} targetRefs of the policies selecting this proxy make {combinations} tag combinations, more than the limit of {limit}"
    )]
    TooManyCombinations {
        section: String,
        combinations: usize,
        limit: usize,
    },
    /// A namespaced policy with both `to` and `from` (§1.6).
    #[error("it's not allowed to mix 'to' and 'from' arrays in the same policy")]
    MixedToAndFrom,
    /// A namespaced policy whose `to` items are partly producer, partly consumer items (§1.6).
    #[error("it's not allowed to mix producer and consumer items in the same policy")]
    MixedProducerAndConsumer,
}

/// The `kuma.io/policy-role` a control plane stamps on a policy (`ComputePolicyRole`, §1.6).
/// `namespace` is the policy's Kubernetes namespace; `None` stands for a policy on global, in
/// the system namespace or on Universal, which is always `system`. A producer item is a `to`
/// item of kind MeshService or MeshHTTPRoute with a name (this engine has no `to[].namespace`,
/// so it is always the policy's own).
pub fn compute_policy_role(
    spec: &PolicySpec,
    namespace: Option<&str>,
) -> Result<PolicyRole, PolicyError> {
    if namespace.is_none_or(str::is_empty) {
        return Ok(PolicyRole::System);
    }
    let (has_to, has_from) = (!spec.to.is_empty(), !spec.from.is_empty());
    if has_to && has_from {
        return Err(PolicyError::MixedToAndFrom);
    }
    if has_from || !spec.rules.is_empty() || !has_to {
        return Ok(PolicyRole::WorkloadOwner);
    }
    let is_producer = |item: &&ToItem| {
        matches!(
            item.target_ref.kind,
            TargetRefKind::MeshService | TargetRefKind::MeshHTTPRoute
        ) && !item.target_ref.name_str().is_empty()
    };
    let producers = spec.to.iter().filter(is_producer).count();
    match (producers, spec.to.len() - producers) {
        (0, _) => Ok(PolicyRole::Consumer),
        (_, 0) => Ok(PolicyRole::Producer),
        _ => Err(PolicyError::MixedProducerAndConsumer),
    }
}

/// Checks the sections of a policy spec: every targetRef for its section, a conf on every
/// item, `rules` not mixed with `from`, and at least one section. Paths start with `spec.`.
pub fn validate_policy(spec: &PolicySpec) -> Result<(), Violations> {
    let mut v = Violations::default();
    if let Some(tr) = &spec.target_ref {
        validate_target_ref(tr, Section::TopLevel, "spec.targetRef", &mut v);
    }
    for (i, item) in spec.to.iter().enumerate() {
        let path = format!("spec.to[{i}]");
        validate_target_ref(
            &item.target_ref,
            Section::To,
            &format!("{path}.targetRef"),
            &mut v,
        );
        match (&item.default, &item.rules) {
            (None, None) => v.push(format!("{path}.default"), "must be set"),
            (Some(_), Some(_)) => v.push(path, "must set either default or rules, not both"),
            _ => {}
        }
    }
    for (i, item) in spec.from.iter().enumerate() {
        let path = format!("spec.from[{i}]");
        validate_target_ref(
            &item.target_ref,
            Section::From,
            &format!("{path}.targetRef"),
            &mut v,
        );
        if item.default.is_none() {
            v.push(format!("{path}.default"), "must be set");
        }
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        if rule.default.is_none() {
            v.push(format!("spec.rules[{i}].default"), "must be set");
        }
    }
    if !spec.rules.is_empty() && !spec.from.is_empty() {
        v.push("spec.from", "must be empty when rules are set");
    }
    if spec.to.is_empty() && spec.from.is_empty() && spec.rules.is_empty() && spec.default.is_none()
    {
        v.push(
            "spec",
            "must set at least one of to, from, rules or default",
        );
    }
    v.into_result()
}

/// Compares two display names the Kuma 2.6+ way: inverted, so `"aaa"` sorts after (wins over)
/// `"bbb"`.
pub(crate) fn compare_names(a: &str, b: &str) -> Ordering {
    b.cmp(a)
}
