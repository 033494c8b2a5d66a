//! The policy resource types: one module per policy holds its typed conf (Kuma's field names,
//! unknown fields rejected), its validation with field paths and its conversion to the
//! engine's [`Policy`](crate::policy::Policy). [`PolicyConf`] is the one `Spec` variant every
//! policy shares; adding a policy is a module implementing [`PolicyKind`], one line in the
//! [`policies!`] list below, a `ResourceType` variant and its descriptor row.
//!
//! A policy's resource form is Kuma's Universal one: `type`, `name`, `mesh`, `labels`, then
//! `spec: {targetRef, to|from}`; its output keeps the `spec:` level (other types are inline).

pub mod duration;
pub mod inbound_from;
pub mod mesh_access_log;
pub mod mesh_circuit_breaker;
pub mod mesh_fault_injection;
pub mod mesh_health_check;
pub mod mesh_http_route;
pub mod mesh_load_balancing_strategy;
pub mod mesh_metric;
pub mod mesh_rate_limit;
pub mod mesh_retry;
pub mod mesh_tcp_route;
pub mod mesh_timeout;
pub mod mesh_trace;
pub mod mesh_traffic_permission;
pub mod proxy;
pub(crate) mod resilience;

pub use proxy::{DataplaneRulesError, MeshPolicies, describe_dataplane};

#[cfg(test)]
mod access_log_tests;
#[cfg(test)]
mod inbound_tests;
#[cfg(test)]
mod resilience_tests;
#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod timeout_retry_tests;

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::descriptor::ResourceType;
use crate::policy::{
    Policy, PolicySpec, RouteRule, Section, TargetRef, TargetRefKind, ToItem, validate_target_ref,
};
use crate::resource::Resource;
use crate::validate::{Violation, Violations};

/// What one policy type provides.
pub trait PolicyKind:
    Debug + Clone + PartialEq + Default + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The resource type of this policy.
    const TYPE: ResourceType;

    /// Pushes every rule violation; paths start with `spec.`.
    fn validate(&self, v: &mut Violations);

    /// The sections as the engine takes them (confs as JSON).
    fn to_engine(&self) -> PolicySpec;
}

/// Declares the policy types: the [`PolicyConf`] enum and its dispatch, from one list.
macro_rules! policies {
    ($($variant:ident => $ty:ty),* $(,)?) => {
        /// The typed spec of one policy resource, whichever type it is.
        #[derive(Debug, Clone, PartialEq)]
        pub enum PolicyConf {
            $($variant($ty),)*
        }

        impl PolicyConf {
            pub fn resource_type(&self) -> ResourceType {
                match self {
                    $(PolicyConf::$variant(_) => <$ty as PolicyKind>::TYPE,)*
                }
            }

            /// The empty conf of a policy type; `None` for a type that is not a policy.
            pub fn default_for(rt: ResourceType) -> Option<PolicyConf> {
                $(if rt == <$ty as PolicyKind>::TYPE {
                    return Some(PolicyConf::$variant(<$ty>::default()));
                })*
                None
            }

            /// Parses a policy's spec fields, `{"spec": {...}}` (as the `Serialize` impl writes
            /// them); paths start with `spec.`.
            pub fn from_fields(rt: ResourceType, fields: Value) -> Result<PolicyConf, Violation> {
                $(if rt == <$ty as PolicyKind>::TYPE {
                    return typed::<$ty>(fields).map(PolicyConf::$variant);
                })*
                Err(not_a_policy(rt))
            }

            /// Parses the same from JSON text.
            pub fn from_json(rt: ResourceType, text: &str) -> Result<PolicyConf, Violation> {
                $(if rt == <$ty as PolicyKind>::TYPE {
                    return typed_str::<$ty>(text).map(PolicyConf::$variant);
                })*
                Err(not_a_policy(rt))
            }

            /// Pushes every rule violation of the conf.
            pub fn validate(&self, v: &mut Violations) {
                match self {
                    $(PolicyConf::$variant(c) => c.validate(v),)*
                }
            }

            /// The sections as the engine takes them.
            pub fn to_engine(&self) -> PolicySpec {
                match self {
                    $(PolicyConf::$variant(c) => c.to_engine(),)*
                }
            }
        }

        impl Serialize for PolicyConf {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self {
                    $(PolicyConf::$variant(c) => Wrapped { spec: c }.serialize(s),)*
                }
            }
        }
    };
}

policies! {
    MeshTrafficPermission => mesh_traffic_permission::MeshTrafficPermission,
    MeshHTTPRoute => mesh_http_route::MeshHTTPRoute,
    MeshTCPRoute => mesh_tcp_route::MeshTCPRoute,
    MeshLoadBalancingStrategy => mesh_load_balancing_strategy::MeshLoadBalancingStrategy,
    MeshFaultInjection => mesh_fault_injection::MeshFaultInjection,
    MeshRateLimit => mesh_rate_limit::MeshRateLimit,
    MeshHealthCheck => mesh_health_check::MeshHealthCheck,
    MeshCircuitBreaker => mesh_circuit_breaker::MeshCircuitBreaker,
    MeshTimeout => mesh_timeout::MeshTimeout,
    MeshRetry => mesh_retry::MeshRetry,
    MeshTrace => mesh_trace::MeshTrace,
    MeshAccessLog => mesh_access_log::MeshAccessLog,
    MeshMetric => mesh_metric::MeshMetric,
}

/// The stored and wire form of a policy: its conf under `spec`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wrapped<T> {
    spec: T,
}

fn not_a_policy(rt: ResourceType) -> Violation {
    Violation::new("type", format!("{rt} is not a policy type"))
}

fn typed<T: DeserializeOwned>(fields: Value) -> Result<T, Violation> {
    crate::resource::typed::<Wrapped<T>>(fields).map(|w| w.spec)
}

fn typed_str<T: DeserializeOwned>(text: &str) -> Result<T, Violation> {
    crate::resource::typed_str::<Wrapped<T>>(text).map(|w| w.spec)
}

/// The engine's view of a stored policy resource: name, mesh, labels and sections. `None` for
/// a resource that is not a policy.
pub fn to_engine_policy(r: &Resource) -> Option<Policy> {
    let crate::resource::Spec::Policy(conf) = &r.spec else {
        return None;
    };
    Some(Policy {
        name: r.meta.name.clone(),
        mesh: r.meta.mesh.clone(),
        labels: r.meta.labels.clone(),
        spec: conf.to_engine(),
    })
}

/// The name of the `allow-all` MeshTrafficPermission created with a mesh.
pub fn allow_all_name(mesh: &str) -> String {
    format!("allow-all-{mesh}")
}

/// The name of the MeshCircuitBreaker created with a mesh (Kuma's name).
pub fn circuit_breaker_all_name(mesh: &str) -> String {
    format!("mesh-circuit-breaker-all-{mesh}")
}

/// The policies created with a new Mesh on global or a standalone zone: `allow-all-<mesh>`
/// (a MeshTrafficPermission allowing every client, which Kuma created up to 2.5; without it
/// mTLS denies everything) and `mesh-circuit-breaker-all-<mesh>` (Kuma 2.6's default limits,
/// plus the passive ejection on connection failures this mesh's failover relies on; see
/// `MeshCircuitBreaker::default_for_mesh`). and Kuma 2.6+'s `mesh-timeout-all-<mesh>` and
/// `mesh-retry-all-<mesh>` (reference §2.2, §2.3). The Mesh's `skipCreatingInitialPolicies` skips a type by name, or
/// every type with `"*"`.
pub fn initial_policies(mesh: &str, spec: &crate::specs::MeshSpec) -> Vec<Resource> {
    use mesh_traffic_permission::{Action, MeshTrafficPermission};
    let skipped = |rt: ResourceType| {
        spec.skip_creating_initial_policies
            .iter()
            .any(|s| s == "*" || s == rt.name())
    };
    let mut out = Vec::new();
    if !skipped(ResourceType::MeshTrafficPermission) {
        out.push(Resource::new(
            crate::resource::Meta::named(&allow_all_name(mesh), mesh),
            crate::resource::Spec::Policy(PolicyConf::MeshTrafficPermission(
                MeshTrafficPermission::everyone(Action::Allow),
            )),
        ));
    }
    if !skipped(ResourceType::MeshCircuitBreaker) {
        out.push(Resource::new(
            crate::resource::Meta::named(&circuit_breaker_all_name(mesh), mesh),
            crate::resource::Spec::Policy(PolicyConf::MeshCircuitBreaker(
                mesh_circuit_breaker::MeshCircuitBreaker::default_for_mesh(),
            )),
        ));
    }
    if !skipped(ResourceType::MeshTimeout) {
        out.push(Resource::new(
            crate::resource::Meta::named(&mesh_timeout::default_name(mesh), mesh),
            crate::resource::Spec::Policy(PolicyConf::MeshTimeout(
                mesh_timeout::MeshTimeout::mesh_default(),
            )),
        ));
    }
    if !skipped(ResourceType::MeshRetry) {
        out.push(Resource::new(
            crate::resource::Meta::named(&mesh_retry::default_name(mesh), mesh),
            crate::resource::Spec::Policy(PolicyConf::MeshRetry(
                mesh_retry::MeshRetry::mesh_default(),
            )),
        ));
    }
    out
}

/// Checks a targetRef at `path` in `section`, narrowed to the kinds `allowed` for `policy`:
/// a known kind outside `allowed` is named with the allowed ones; otherwise the engine's
/// checks (name, tags, unknown kinds and fields) apply.
pub(crate) fn check_target_ref(
    tr: &TargetRef,
    section: Section,
    allowed: &[TargetRefKind],
    policy: ResourceType,
    path: &str,
    v: &mut Violations,
) {
    if !matches!(tr.kind, TargetRefKind::Other(_)) && !allowed.contains(&tr.kind) {
        let list = allowed
            .iter()
            .map(TargetRefKind::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        let where_ = match section {
            Section::TopLevel => "the top-level targetRef",
            Section::To => "to[].targetRef",
            Section::From => "from[].targetRef",
        };
        v.push(
            format!("{path}.kind"),
            format!(
                "{} is not allowed in {where_} of a {policy}; allowed: {list}",
                tr.kind
            ),
        );
        return;
    }
    validate_target_ref(tr, section, path, v);
}

/// The top-level kinds every policy here accepts (no gateways exist in this mesh).
pub(crate) const TOP_LEVEL_KINDS: [TargetRefKind; 4] = [
    TargetRefKind::Mesh,
    TargetRefKind::MeshSubset,
    TargetRefKind::MeshService,
    TargetRefKind::MeshServiceSubset,
];

/// Checks the optional top-level targetRef.
pub(crate) fn check_top_level(tr: Option<&TargetRef>, policy: ResourceType, v: &mut Violations) {
    if let Some(tr) = tr {
        check_target_ref(
            tr,
            Section::TopLevel,
            &TOP_LEVEL_KINDS,
            policy,
            "spec.targetRef",
            v,
        );
    }
}

/// Checks the items of section `name` (`to` or `from`): each targetRef against `kinds`, each
/// `default` with `conf` at `spec.<name>[i].default`.
pub(crate) fn check_items<'a, C: 'a>(
    items: impl IntoIterator<Item = (&'a TargetRef, &'a C)>,
    section: Section,
    kinds: &[TargetRefKind],
    policy: ResourceType,
    v: &mut Violations,
    conf: impl Fn(&C, &str, &mut Violations),
) {
    let name = match section {
        Section::From => "from",
        _ => "to",
    };
    for (i, (tr, c)) in items.into_iter().enumerate() {
        let path = format!("spec.{name}[{i}]");
        check_target_ref(tr, section, kinds, policy, &format!("{path}.targetRef"), v);
        conf(c, &format!("{path}.default"), v);
    }
}

/// Checks what both route policies share: the top-level targetRef, at least one `to` item, and
/// each `to[i].targetRef` a destination service.
pub(crate) fn check_route_targets<'a>(
    top: Option<&TargetRef>,
    to: impl ExactSizeIterator<Item = &'a TargetRef>,
    policy: ResourceType,
    v: &mut Violations,
) {
    check_top_level(top, policy, v);
    if to.len() == 0 {
        v.push("spec.to", "must have at least one item");
    }
    for (i, tr) in to.enumerate() {
        let path = format!("spec.to[{i}].targetRef");
        check_target_ref(tr, Section::To, &ROUTE_TO_KINDS, policy, &path, v);
    }
}

/// The `to[].targetRef` kinds of route policies: a destination service.
pub(crate) const ROUTE_TO_KINDS: [TargetRefKind; 1] = [TargetRefKind::MeshService];

/// The engine form of a route policy: each `to` item with its rules (`matches` JSON, conf).
pub(crate) fn route_to_engine<'a>(
    top: Option<&TargetRef>,
    to: impl Iterator<Item = (&'a TargetRef, Vec<RouteRule>)>,
) -> PolicySpec {
    PolicySpec {
        target_ref: top.cloned(),
        to: to
            .map(|(target_ref, rules)| ToItem {
                target_ref: target_ref.clone(),
                default: None,
                rules: Some(rules),
            })
            .collect(),
        ..PolicySpec::default()
    }
}

/// JSON of a typed value (serializing these plain structs cannot fail).
pub(crate) fn json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// `to[]` items as the engine takes them: each destination with its `default` conf as JSON.
pub(crate) fn to_items<'a, C: Serialize + 'a>(
    items: impl IntoIterator<Item = (&'a TargetRef, &'a C)>,
) -> Vec<ToItem> {
    items
        .into_iter()
        .map(|(target_ref, default)| ToItem {
            target_ref: target_ref.clone(),
            default: Some(json(default)),
            rules: None,
        })
        .collect()
}

/// `from[]` items as the engine takes them: each client set with its `default` conf as JSON.
pub(crate) fn from_items<'a, C: Serialize + 'a>(
    items: impl IntoIterator<Item = (&'a TargetRef, &'a C)>,
) -> Vec<crate::policy::FromItem> {
    items
        .into_iter()
        .map(|(target_ref, default)| crate::policy::FromItem {
            target_ref: target_ref.clone(),
            default: Some(json(default)),
        })
        .collect()
}

/// Kuma's `intstr` number: a whole number or a decimal string (`5`, `"12.5"`, `"1.9"`), used
/// for percentages and factors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Percentage {
    Int(i64),
    Decimal(String),
}

impl Percentage {
    /// The value, if it is a finite number.
    pub fn value(&self) -> Option<f64> {
        match self {
            Percentage::Int(i) => Some(*i as f64),
            Percentage::Decimal(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        }
    }

    /// The share in parts per million, for a percentage in [0, 100] (at most 4 decimals count).
    pub fn per_million(&self) -> Option<u32> {
        let p = self.value()?;
        (0.0..=100.0)
            .contains(&p)
            .then(|| (p * 10_000.0).round() as u32)
    }
}
