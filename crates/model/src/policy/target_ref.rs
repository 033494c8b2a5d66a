//! `targetRef`: Kuma's reference to what a policy applies to, and its validation per section
//! (top-level `spec.targetRef`, `spec.to[]`, `spec.from[]`), every mistake with its field path.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::specs::Tags;
use crate::validate::Violations;

/// `targetRef.kind`. Kinds this engine does not know (for example the 2.9+ `Dataplane` or
/// `MeshExternalService`) are kept as `Other` so that validation can name them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum TargetRefKind {
    Mesh,
    MeshSubset,
    MeshService,
    MeshServiceSubset,
    MeshGateway,
    MeshHTTPRoute,
    Other(String),
}

impl TargetRefKind {
    /// Every kind this engine selects and merges, in rank order.
    pub const KNOWN: [TargetRefKind; 6] = [
        TargetRefKind::Mesh,
        TargetRefKind::MeshSubset,
        TargetRefKind::MeshGateway,
        TargetRefKind::MeshService,
        TargetRefKind::MeshServiceSubset,
        TargetRefKind::MeshHTTPRoute,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            TargetRefKind::Mesh => "Mesh",
            TargetRefKind::MeshSubset => "MeshSubset",
            TargetRefKind::MeshService => "MeshService",
            TargetRefKind::MeshServiceSubset => "MeshServiceSubset",
            TargetRefKind::MeshGateway => "MeshGateway",
            TargetRefKind::MeshHTTPRoute => "MeshHTTPRoute",
            TargetRefKind::Other(s) => s,
        }
    }

    /// The top-level rank of Kuma's `targetref.go` `order` (Mesh 1 … MeshHTTPRoute 9); the
    /// numbers of kinds this engine leaves out (Dataplane 2, MeshExternalService 6,
    /// MeshMultiZoneService 7) are kept free. Unknown kinds rank 0 (they never pass validation).
    pub fn rank(&self) -> u8 {
        match self {
            TargetRefKind::Mesh => 1,
            TargetRefKind::MeshSubset => 3,
            TargetRefKind::MeshGateway => 4,
            TargetRefKind::MeshService => 5,
            TargetRefKind::MeshServiceSubset => 8,
            TargetRefKind::MeshHTTPRoute => 9,
            TargetRefKind::Other(_) => 0,
        }
    }

    /// The rank of a `to[].targetRef` kind for the stable re-sort of flattened `to` items
    /// (`outbound/sort.go`): Mesh < MeshService < MeshHTTPRoute.
    pub fn to_rank(&self) -> u8 {
        match self {
            TargetRefKind::Mesh => 1,
            TargetRefKind::MeshService => 2,
            TargetRefKind::MeshHTTPRoute => 6,
            _ => 0,
        }
    }
}

impl From<String> for TargetRefKind {
    fn from(s: String) -> Self {
        Self::KNOWN
            .into_iter()
            .find(|k| k.as_str() == s)
            .unwrap_or(TargetRefKind::Other(s))
    }
}

impl From<TargetRefKind> for String {
    fn from(k: TargetRefKind) -> Self {
        k.as_str().to_string()
    }
}

impl fmt::Display for TargetRefKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `targetRef.proxyTypes[]`: a builtin gateway is `Gateway`, every other proxy (delegated
/// gateways included) is `Sidecar`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum ProxyType {
    Sidecar,
    Gateway,
    Other(String),
}

impl ProxyType {
    pub fn as_str(&self) -> &str {
        match self {
            ProxyType::Sidecar => "Sidecar",
            ProxyType::Gateway => "Gateway",
            ProxyType::Other(s) => s,
        }
    }
}

impl From<String> for ProxyType {
    fn from(s: String) -> Self {
        match s.as_str() {
            "Sidecar" => ProxyType::Sidecar,
            "Gateway" => ProxyType::Gateway,
            _ => ProxyType::Other(s),
        }
    }
}

impl From<ProxyType> for String {
    fn from(p: ProxyType) -> Self {
        p.as_str().to_string()
    }
}

/// A `targetRef` with Kuma's field names. Fields this engine does not implement (2.9+
/// `namespace`, `labels`, `sectionName`) land in `unsupported` and are reported by validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    pub kind: TargetRefKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
    /// Reserved by Kuma for cross-mesh use; never allowed here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_types: Option<Vec<ProxyType>>,
    #[serde(flatten)]
    pub unsupported: BTreeMap<String, Value>,
}

impl TargetRef {
    pub fn new(kind: TargetRefKind) -> Self {
        TargetRef {
            kind,
            name: None,
            tags: None,
            mesh: None,
            proxy_types: None,
            unsupported: BTreeMap::new(),
        }
    }

    /// `{kind: Mesh}`, which a missing top-level targetRef stands for.
    pub fn mesh() -> Self {
        Self::new(TargetRefKind::Mesh)
    }

    pub fn with_name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    pub fn with_tags(mut self, tags: &[(&str, &str)]) -> Self {
        self.tags = Some(
            tags.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        self
    }

    pub fn name_str(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    /// The tags as a map; empty when absent.
    pub fn tags_or_empty(&self) -> Tags {
        self.tags.clone().unwrap_or_default()
    }
}

/// Where a targetRef sits; each section allows other kinds (reference §1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// `spec.targetRef`: which proxies the policy configures.
    TopLevel,
    /// `spec.to[].targetRef`: the destinations of the selected proxies' outbound traffic.
    To,
    /// `spec.from[].targetRef`: the clients of the selected proxies' inbound traffic.
    From,
}

impl Section {
    /// The kinds allowed in this section. `to` allows `MeshHTTPRoute` because some policies
    /// (MeshTimeout, MeshRetry, …) take it; a policy module narrows this further.
    pub fn allowed_kinds(self) -> &'static [TargetRefKind] {
        use TargetRefKind::*;
        match self {
            Section::TopLevel => &TargetRefKind::KNOWN,
            Section::To => &[Mesh, MeshService, MeshHTTPRoute],
            Section::From => &[Mesh, MeshSubset, MeshService, MeshServiceSubset],
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Section::TopLevel => "a top-level targetRef",
            Section::To => "to[].targetRef",
            Section::From => "from[].targetRef",
        }
    }
}

fn kind_list(kinds: &[TargetRefKind]) -> String {
    kinds
        .iter()
        .map(TargetRefKind::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks one targetRef found at `path` (for example `spec.to[0].targetRef`) in `section`,
/// pushing every mistake.
pub fn validate_target_ref(tr: &TargetRef, section: Section, path: &str, v: &mut Violations) {
    use TargetRefKind::*;
    let kind = &tr.kind;
    if let Other(name) = kind {
        v.push(
            format!("{path}.kind"),
            format!(
                "unknown kind {name:?}; must be one of {}",
                kind_list(&TargetRefKind::KNOWN)
            ),
        );
    } else if !section.allowed_kinds().contains(kind) {
        v.push(
            format!("{path}.kind"),
            format!(
                "{kind} is not allowed in {}; allowed: {}",
                section.describe(),
                kind_list(section.allowed_kinds())
            ),
        );
    }
    for key in tr.unsupported.keys() {
        v.push(format!("{path}.{key}"), "field is not supported");
    }
    if matches!(kind, Other(_)) {
        return;
    }

    let needs_name = matches!(
        kind,
        MeshService | MeshServiceSubset | MeshGateway | MeshHTTPRoute
    );
    match (&tr.name, needs_name) {
        (None, true) => v.push(
            format!("{path}.name"),
            format!("must be set with kind {kind}"),
        ),
        (Some(n), true) if n.is_empty() => v.push(format!("{path}.name"), "cannot be empty"),
        (Some(_), false) => v.push(
            format!("{path}.name"),
            format!("must not be set with kind {kind}"),
        ),
        _ => {}
    }

    let tags_allowed = match kind {
        MeshSubset | MeshServiceSubset => true,
        MeshGateway => section == Section::TopLevel,
        _ => false,
    };
    if let Some(tags) = &tr.tags {
        if !tags_allowed {
            v.push(
                format!("{path}.tags"),
                format!("must not be set with kind {kind} in {}", section.describe()),
            );
        }
        for (key, value) in tags {
            if key.is_empty() {
                v.push(format!("{path}.tags"), "tag key cannot be empty");
            } else if value.is_empty() {
                v.push(format!("{path}.tags[{key:?}]"), "tag value cannot be empty");
            }
        }
    }

    if tr.mesh.is_some() {
        v.push(
            format!("{path}.mesh"),
            "must not be set (reserved for cross-mesh use)",
        );
    }

    if let Some(types) = &tr.proxy_types {
        if section != Section::TopLevel || !matches!(kind, Mesh | MeshSubset) {
            v.push(
                format!("{path}.proxyTypes"),
                "only allowed in a top-level targetRef of kind Mesh or MeshSubset",
            );
        }
        for (i, t) in types.iter().enumerate() {
            if let ProxyType::Other(name) = t {
                v.push(
                    format!("{path}.proxyTypes[{i}]"),
                    format!("unknown proxy type {name:?}; must be Sidecar or Gateway"),
                );
            }
        }
    }
}
