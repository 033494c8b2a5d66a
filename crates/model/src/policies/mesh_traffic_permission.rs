//! MeshTrafficPermission (reference §2.1): which clients may call the selected proxies'
//! inbounds. `from[].targetRef` picks clients by Mesh, MeshSubset (tags, `kuma.io/zone`
//! included), MeshService or MeshServiceSubset; `default.action` is Allow, Deny or
//! AllowWithShadowDeny. It has no `to`.

use serde::{Deserialize, Serialize};

use super::{PolicyKind, check_target_ref, check_top_level, json};
use crate::descriptor::ResourceType;
use crate::policy::{FromItem, PolicySpec, Section, TargetRef, TargetRefKind};
use crate::validate::Violations;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshTrafficPermission {
    /// The proxies that enforce the permission; `{kind: Mesh}` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<MtpFrom>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MtpFrom {
    pub target_ref: TargetRef,
    pub default: MtpConf,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MtpConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    Allow,
    Deny,
    AllowWithShadowDeny,
}

const FROM_KINDS: [TargetRefKind; 4] = [
    TargetRefKind::Mesh,
    TargetRefKind::MeshSubset,
    TargetRefKind::MeshService,
    TargetRefKind::MeshServiceSubset,
];

impl MeshTrafficPermission {
    /// `targetRef {kind: Mesh}`, `from: [{targetRef: {kind: Mesh}, default: {action}}]`.
    pub fn everyone(action: Action) -> Self {
        MeshTrafficPermission {
            target_ref: Some(TargetRef::mesh()),
            from: vec![MtpFrom {
                target_ref: TargetRef::mesh(),
                default: MtpConf {
                    action: Some(action),
                },
            }],
        }
    }
}

impl PolicyKind for MeshTrafficPermission {
    const TYPE: ResourceType = ResourceType::MeshTrafficPermission;

    fn validate(&self, v: &mut Violations) {
        check_top_level(self.target_ref.as_ref(), Self::TYPE, v);
        if self.from.is_empty() {
            v.push("spec.from", "must have at least one item");
        }
        for (i, item) in self.from.iter().enumerate() {
            let path = format!("spec.from[{i}]");
            check_target_ref(
                &item.target_ref,
                Section::From,
                &FROM_KINDS,
                Self::TYPE,
                &format!("{path}.targetRef"),
                v,
            );
            if item.default.action.is_none() {
                v.push(
                    format!("{path}.default.action"),
                    "must be set: Allow, Deny or AllowWithShadowDeny",
                );
            }
        }
    }

    fn to_engine(&self) -> PolicySpec {
        PolicySpec {
            target_ref: self.target_ref.clone(),
            from: self
                .from
                .iter()
                .map(|f| FromItem {
                    target_ref: f.target_ref.clone(),
                    default: Some(json(&f.default)),
                })
                .collect(),
            ..PolicySpec::default()
        }
    }
}
