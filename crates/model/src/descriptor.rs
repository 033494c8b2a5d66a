//! One descriptor per resource type: its name, REST path, kumactl names, scope and KDS direction.
//! Everything that treats types generically (API routes, CLI, store, sync) reads it from here.

use std::fmt;
use std::str::FromStr;

/// Every resource type the control plane knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    Mesh,
    Dataplane,
    DataplaneInsight,
    ZoneIngress,
    ZoneIngressInsight,
    ZoneEgress,
    ZoneEgressInsight,
    Zone,
    ZoneInsight,
    Secret,
    GlobalSecret,
    ServiceInsight,
    Config,
}

/// Whether a resource lives inside a mesh or beside the meshes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Global,
    Mesh,
}

/// Which control plane owns (may write) a type in a multi-zone deployment, and where KDS carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdsFlags {
    /// Created on global and sent down to every zone.
    pub global_to_zone: bool,
    /// Created in a zone and sent up to global.
    pub zone_to_global: bool,
    /// Sent on from global to the other zones after it came up from one zone.
    pub across_zones: bool,
}

impl KdsFlags {
    const NONE: KdsFlags = KdsFlags {
        global_to_zone: false,
        zone_to_global: false,
        across_zones: false,
    };
    const DOWN: KdsFlags = KdsFlags {
        global_to_zone: true,
        ..KdsFlags::NONE
    };
    const UP: KdsFlags = KdsFlags {
        zone_to_global: true,
        ..KdsFlags::NONE
    };
}

/// Static facts about one resource type.
#[derive(Debug, Clone, Copy)]
pub struct Descriptor {
    pub resource_type: ResourceType,
    /// The `type:` value in YAML/JSON, e.g. `Dataplane`.
    pub name: &'static str,
    /// Path segment of the REST API, e.g. `dataplanes` (`/meshes/{mesh}/dataplanes`).
    pub ws_path: &'static str,
    /// Other accepted REST path segments.
    pub ws_aliases: &'static [&'static str],
    /// `kumactl get <plural>`.
    pub cli_plural: &'static str,
    /// `kumactl get <singular> NAME`, `kumactl delete <singular> NAME`.
    pub cli_singular: &'static str,
    pub scope: Scope,
    pub kds: KdsFlags,
    /// Written only by the control plane itself (insights); the API refuses writes.
    pub read_only: bool,
}

const DESCRIPTORS: &[Descriptor] = &[
    Descriptor {
        resource_type: ResourceType::Mesh,
        name: "Mesh",
        ws_path: "meshes",
        ws_aliases: &[],
        cli_plural: "meshes",
        cli_singular: "mesh",
        scope: Scope::Global,
        kds: KdsFlags::DOWN,
        read_only: false,
    },
    Descriptor {
        resource_type: ResourceType::Dataplane,
        name: "Dataplane",
        ws_path: "dataplanes",
        ws_aliases: &[],
        cli_plural: "dataplanes",
        cli_singular: "dataplane",
        scope: Scope::Mesh,
        kds: KdsFlags::UP,
        read_only: false,
    },
    Descriptor {
        resource_type: ResourceType::DataplaneInsight,
        name: "DataplaneInsight",
        ws_path: "dataplane-insights",
        ws_aliases: &[],
        cli_plural: "dataplane-insights",
        cli_singular: "dataplane-insight",
        scope: Scope::Mesh,
        kds: KdsFlags::UP,
        read_only: true,
    },
    Descriptor {
        resource_type: ResourceType::ZoneIngress,
        name: "ZoneIngress",
        ws_path: "zoneingresses",
        ws_aliases: &["zone-ingresses"],
        cli_plural: "zone-ingresses",
        cli_singular: "zone-ingress",
        scope: Scope::Global,
        kds: KdsFlags {
            zone_to_global: true,
            across_zones: true,
            global_to_zone: false,
        },
        read_only: false,
    },
    Descriptor {
        resource_type: ResourceType::ZoneIngressInsight,
        name: "ZoneIngressInsight",
        ws_path: "zone-ingress-insights",
        ws_aliases: &["zoneingressinsights"],
        cli_plural: "zone-ingress-insights",
        cli_singular: "zone-ingress-insight",
        scope: Scope::Global,
        kds: KdsFlags::UP,
        read_only: true,
    },
    Descriptor {
        resource_type: ResourceType::ZoneEgressInsight,
        name: "ZoneEgressInsight",
        ws_path: "zone-egress-insights",
        ws_aliases: &["zoneegressinsights"],
        cli_plural: "zone-egress-insights",
        cli_singular: "zone-egress-insight",
        scope: Scope::Global,
        kds: KdsFlags::UP,
        read_only: true,
    },
    Descriptor {
        resource_type: ResourceType::ZoneEgress,
        name: "ZoneEgress",
        ws_path: "zoneegresses",
        ws_aliases: &["zone-egresses"],
        cli_plural: "zoneegresses",
        cli_singular: "zoneegress",
        scope: Scope::Global,
        kds: KdsFlags::UP,
        read_only: false,
    },
    Descriptor {
        resource_type: ResourceType::Zone,
        name: "Zone",
        ws_path: "zones",
        ws_aliases: &[],
        cli_plural: "zones",
        cli_singular: "zone",
        scope: Scope::Global,
        kds: KdsFlags::NONE,
        read_only: false,
    },
    Descriptor {
        resource_type: ResourceType::ZoneInsight,
        name: "ZoneInsight",
        ws_path: "zone-insights",
        ws_aliases: &[],
        cli_plural: "zone-insights",
        cli_singular: "zone-insight",
        scope: Scope::Global,
        kds: KdsFlags::NONE,
        read_only: true,
    },
    Descriptor {
        resource_type: ResourceType::Secret,
        name: "Secret",
        ws_path: "secrets",
        ws_aliases: &[],
        cli_plural: "secrets",
        cli_singular: "secret",
        scope: Scope::Mesh,
        kds: KdsFlags::DOWN,
        read_only: false,
    },
    Descriptor {
        resource_type: ResourceType::GlobalSecret,
        name: "GlobalSecret",
        ws_path: "global-secrets",
        ws_aliases: &[],
        cli_plural: "global-secrets",
        cli_singular: "global-secret",
        scope: Scope::Global,
        kds: KdsFlags::DOWN,
        read_only: false,
    },
    Descriptor {
        resource_type: ResourceType::ServiceInsight,
        name: "ServiceInsight",
        ws_path: "service-insights",
        ws_aliases: &[],
        cli_plural: "service-insights",
        cli_singular: "service-insight",
        scope: Scope::Mesh,
        kds: KdsFlags::DOWN,
        read_only: true,
    },
    Descriptor {
        resource_type: ResourceType::Config,
        name: "Config",
        ws_path: "configs",
        ws_aliases: &[],
        cli_plural: "configs",
        cli_singular: "config",
        scope: Scope::Global,
        kds: KdsFlags::NONE,
        read_only: true,
    },
];

impl ResourceType {
    /// All types, in a stable order.
    pub fn all() -> impl Iterator<Item = ResourceType> {
        DESCRIPTORS.iter().map(|d| d.resource_type)
    }

    pub fn descriptor(self) -> &'static Descriptor {
        // DESCRIPTORS lists every variant exactly once (checked by a unit test).
        DESCRIPTORS
            .iter()
            .find(|d| d.resource_type == self)
            .unwrap_or(&DESCRIPTORS[0])
    }

    pub fn name(self) -> &'static str {
        self.descriptor().name
    }

    pub fn scope(self) -> Scope {
        self.descriptor().scope
    }

    pub fn is_mesh_scoped(self) -> bool {
        self.scope() == Scope::Mesh
    }

    /// Looks a type up by its REST path segment (or an alias).
    pub fn from_ws_path(segment: &str) -> Option<ResourceType> {
        DESCRIPTORS
            .iter()
            .find(|d| d.ws_path == segment || d.ws_aliases.contains(&segment))
            .map(|d| d.resource_type)
    }

    /// Looks a type up by a kumactl word: plural, singular, or the REST path.
    pub fn from_cli_name(word: &str) -> Option<ResourceType> {
        DESCRIPTORS
            .iter()
            .find(|d| {
                d.cli_plural == word
                    || d.cli_singular == word
                    || d.ws_path == word
                    || d.ws_aliases.contains(&word)
            })
            .map(|d| d.resource_type)
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The `type:` value was not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown type {0:?}; known types: {known}", known = known_type_names())]
pub struct UnknownType(pub String);

fn known_type_names() -> String {
    DESCRIPTORS
        .iter()
        .map(|d| d.name)
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for ResourceType {
    type Err = UnknownType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DESCRIPTORS
            .iter()
            .find(|d| d.name == s)
            .map(|d| d.resource_type)
            .ok_or_else(|| UnknownType(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_exactly_one_descriptor_and_unique_paths() {
        let mut paths = std::collections::BTreeSet::new();
        for d in DESCRIPTORS {
            assert_eq!(d.resource_type.descriptor().name, d.name);
            assert_eq!(d.name.parse::<ResourceType>(), Ok(d.resource_type));
            assert!(paths.insert(d.ws_path), "duplicate path {}", d.ws_path);
            for a in d.ws_aliases {
                assert!(paths.insert(a), "duplicate alias {a}");
            }
        }
        assert_eq!(ResourceType::all().count(), DESCRIPTORS.len());
    }

    #[test]
    fn lookups_by_path_and_cli_word() {
        assert_eq!(
            ResourceType::from_ws_path("zone-ingresses"),
            Some(ResourceType::ZoneIngress)
        );
        assert_eq!(
            ResourceType::from_cli_name("zone-ingress"),
            Some(ResourceType::ZoneIngress)
        );
        assert_eq!(
            ResourceType::from_cli_name("dataplanes"),
            Some(ResourceType::Dataplane)
        );
        assert_eq!(ResourceType::from_ws_path("nope"), None);
        let err = "Nope".parse::<ResourceType>().unwrap_err();
        assert!(err.to_string().contains("Dataplane"));
    }
}
