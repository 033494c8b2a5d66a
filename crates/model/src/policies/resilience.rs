//! What the resilience policies (MeshCircuitBreaker, MeshHealthCheck) share: their `to`-only
//! shape (a top-level targetRef, `to[]` items naming a destination with a `default` conf) and
//! the checks of Kuma's durations and percentages, with `spec.`-rooted paths.

use serde::{Deserialize, Serialize};

pub use super::Percentage;
use super::duration::parse_non_negative as parse_duration;
use super::{check_target_ref, check_top_level, to_items};
use crate::descriptor::ResourceType;
use crate::policy::{PolicySpec, Section, TargetRef, TargetRefKind};
use crate::validate::Violations;

/// The `to[].targetRef` kinds of the resilience policies here: every outbound, or one service.
pub(crate) const TO_KINDS: [TargetRefKind; 2] = [TargetRefKind::Mesh, TargetRefKind::MeshService];

/// Checks an optional duration: a non-negative Go duration, as Kuma's (`10s`, `1m30s`,
/// `500ms`, `1.5h`; no days), and, when `positive`, more than zero.
pub(crate) fn check_duration(d: Option<&String>, positive: bool, path: &str, v: &mut Violations) {
    let Some(d) = d else { return };
    match parse_duration(d) {
        None => v.push(
            path,
            format!("{d:?} is not a non-negative duration (e.g. 10s, 1m30s, 500ms)"),
        ),
        Some(t) if positive && t.is_zero() => v.push(path, "must be greater than 0"),
        Some(_) => {}
    }
}

/// Checks an optional percentage in `[0, 100]`.
pub(crate) fn check_percentage(p: Option<&Percentage>, path: &str, v: &mut Violations) {
    let Some(p) = p else { return };
    match p.value() {
        None => v.push(path, "must be a number or a decimal string"),
        Some(f) if !(0.0..=100.0).contains(&f) => {
            v.push(path, "must be in inclusive range [0, 100]")
        }
        Some(_) => {}
    }
}

/// Checks an optional count that must be more than zero.
pub(crate) fn check_positive(n: Option<i64>, path: &str, v: &mut Violations) {
    if n.is_some_and(|n| n <= 0) {
        v.push(path, "must be greater than 0");
    }
}

/// Checks an optional integer percentage in `[0, 100]`.
pub(crate) fn check_int_percent(n: Option<i64>, path: &str, v: &mut Violations) {
    if n.is_some_and(|n| !(0..=100).contains(&n)) {
        v.push(path, "must be in inclusive range [0, 100]");
    }
}

/// One `to[]` item of a resilience policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct To<C> {
    pub target_ref: TargetRef,
    pub default: C,
}

/// Checks the top-level targetRef, that `to` has items, each `to[i].targetRef`, and each conf
/// with `check(conf, "spec.to[i].default", v)`.
pub(crate) fn check_to<C>(
    top: Option<&TargetRef>,
    to: &[To<C>],
    policy: ResourceType,
    v: &mut Violations,
    check: impl Fn(&C, &str, &mut Violations),
) {
    check_top_level(top, policy, v);
    if to.is_empty() {
        v.push("spec.to", "must have at least one item");
    }
    for (i, item) in to.iter().enumerate() {
        let path = format!("spec.to[{i}]");
        check_target_ref(
            &item.target_ref,
            Section::To,
            &TO_KINDS,
            policy,
            &format!("{path}.targetRef"),
            v,
        );
        check(&item.default, &format!("{path}.default"), v);
    }
}

/// The engine form: the `to` items with their confs as JSON.
pub(crate) fn to_engine<C: Serialize>(top: Option<&TargetRef>, to: &[To<C>]) -> PolicySpec {
    PolicySpec {
        target_ref: top.cloned(),
        to: to_items(to.iter().map(|t| (&t.target_ref, &t.default))),
        ..PolicySpec::default()
    }
}
