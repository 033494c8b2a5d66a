//! What the inbound policies with a `from` section share (MeshFaultInjection, MeshRateLimit):
//! client kinds, the section's checks and its engine form, and the value types of their confs
//! (Kuma's int-or-string percentages).

use serde::Serialize;

use super::{check_target_ref, from_items};
use crate::descriptor::ResourceType;
use crate::policy::{PolicySpec, Section, TargetRef, TargetRefKind};
use crate::validate::Violations;

/// The `from[].targetRef` kinds: which clients an inbound conf applies to.
pub(crate) const FROM_KINDS: [TargetRefKind; 4] = [
    TargetRefKind::Mesh,
    TargetRefKind::MeshSubset,
    TargetRefKind::MeshService,
    TargetRefKind::MeshServiceSubset,
];

/// Checks `spec.from`: at least one item, each a client targetRef; `conf` checks each
/// `default` at its path (`spec.from[i].default`).
pub(crate) fn check_from<C>(
    from: &[(&TargetRef, &C)],
    policy: ResourceType,
    v: &mut Violations,
    conf: impl Fn(&C, &str, &mut Violations),
) {
    if from.is_empty() {
        v.push("spec.from", "must have at least one item");
    }
    for (i, (tr, c)) in from.iter().enumerate() {
        let path = format!("spec.from[{i}]");
        check_target_ref(
            tr,
            Section::From,
            &FROM_KINDS,
            policy,
            &format!("{path}.targetRef"),
            v,
        );
        conf(c, &format!("{path}.default"), v);
    }
}

/// The engine form of a `from`-only policy.
pub(crate) fn from_to_engine<'a, C: Serialize + 'a>(
    top: Option<&TargetRef>,
    from: impl Iterator<Item = (&'a TargetRef, &'a C)>,
) -> PolicySpec {
    PolicySpec {
        target_ref: top.cloned(),
        from: from_items(from),
        ..PolicySpec::default()
    }
}

pub use super::Percentage;

impl Percentage {
    /// Pushes a violation at `path` unless the value is a number in [0, 100].
    pub fn check(&self, path: &str, v: &mut Violations) {
        if self.per_million().is_none() {
            v.push(path, "has to be in [0.0 - 100.0] range");
        }
    }
}

/// A required field: pushes `must be defined` at `path` when absent.
pub(crate) fn required<'a, T>(
    value: &'a Option<T>,
    path: &str,
    v: &mut Violations,
) -> Option<&'a T> {
    if value.is_none() {
        v.push(path, "must be defined");
    }
    value.as_ref()
}
