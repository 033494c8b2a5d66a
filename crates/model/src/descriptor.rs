//! One table, [`DESCRIPTORS`], declares every resource type: its name, REST path, kumactl names,
//! scope, owner, KDS direction and whether it is a policy. Everything that treats types
//! generically (API routes and write authority, kumactl, the KDS type lists and their apply
//! order) derives from it; adding a type is one row here plus its spec.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

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
    VirtualOutbound,
    ExternalService,
    MeshTrafficPermission,
    MeshHTTPRoute,
    MeshTCPRoute,
    MeshLoadBalancingStrategy,
    MeshFaultInjection,
    MeshRateLimit,
    MeshHealthCheck,
    MeshCircuitBreaker,
    MeshTimeout,
    MeshRetry,
    MeshTrace,
    MeshAccessLog,
    MeshMetric,
}

/// Whether a resource lives inside a mesh or beside the meshes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Global,
    Mesh,
}

/// Who writes a type in a multi-zone deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Users write it on global (or on a standalone zone); a zone connected to a global refuses
    /// writes and receives global's copies.
    Global,
    /// Users write it on zone control planes; global refuses writes and holds the zones' copies.
    Zone,
    /// Users write it on any control plane. Global's copies go down if the direction says so;
    /// a zone's own stay in that zone and are never overwritten by global (Kuma's
    /// `ProvidedByGlobal | ProvidedByZone`: Secret, Zone).
    Anywhere,
    /// The control plane computes it itself (insights, its own configs); the API never accepts
    /// a write. A zone's computed resources may still go up (a proxy's insight).
    ControlPlane,
}

/// Where KDS carries a type. One value, so that contradictory combinations cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Never synced: each control plane keeps its own.
    NotSynced,
    /// Global → every zone.
    Down,
    /// Zone → global (renamed `<zone>.<name>` there).
    Up,
    /// Zone → global, then global → every other (enabled) zone.
    UpThenAcross,
}

impl Direction {
    /// Global sends resources of this type to zones.
    pub fn sent_to_zones(self) -> bool {
        matches!(self, Direction::Down | Direction::UpThenAcross)
    }

    /// Zones send resources of this type to global.
    pub fn sent_to_global(self) -> bool {
        matches!(self, Direction::Up | Direction::UpThenAcross)
    }
}

/// The control plane a write arrives at, as far as write authority is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpRole {
    Global,
    /// A zone that runs alone: it may write everything a user may write.
    StandaloneZone,
    /// A zone connected to a global control plane.
    FederatedZone,
}

/// Why a control plane refuses a write of some type (the API answers 405).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteRefusal {
    /// The type is computed by the control plane.
    Computed,
    /// A global-owned type on a zone connected to a global.
    OwnedByGlobal,
    /// A zone-owned type on global.
    OwnedByZones,
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
    /// Other words kumactl accepts for the type.
    pub cli_aliases: &'static [&'static str],
    pub scope: Scope,
    pub owner: Owner,
    pub sync: Direction,
    /// The status of the same-named resource of this type, owned by it (deleted with it, and
    /// applied after it when synced).
    pub insight_of: Option<ResourceType>,
    /// A traffic policy (matched to proxies and merged); its spec is a
    /// [`PolicyConf`](crate::policies::PolicyConf).
    pub policy: bool,
}

impl Descriptor {
    /// The row of a targetRef policy type: mesh-scoped, written on global and sent down, its
    /// REST path also its kumactl plural.
    const fn policy(
        resource_type: ResourceType,
        name: &'static str,
        ws_path: &'static str,
        cli_singular: &'static str,
    ) -> Descriptor {
        Descriptor {
            resource_type,
            name,
            ws_path,
            ws_aliases: &[],
            cli_plural: ws_path,
            cli_singular,
            cli_aliases: &[],
            scope: Scope::Mesh,
            owner: Owner::Global,
            sync: Direction::Down,
            insight_of: None,
            policy: true,
        }
    }

    /// Written only by the control plane itself; the API refuses writes.
    pub fn read_only(&self) -> bool {
        self.owner == Owner::ControlPlane
    }

    /// Whether a control plane in `role` refuses a write of this type through its API, and why.
    pub fn write_refusal(&self, role: CpRole) -> Option<WriteRefusal> {
        match (self.owner, role) {
            (Owner::ControlPlane, _) => Some(WriteRefusal::Computed),
            (Owner::Global, CpRole::FederatedZone) => Some(WriteRefusal::OwnedByGlobal),
            (Owner::Zone, CpRole::Global) => Some(WriteRefusal::OwnedByZones),
            _ => None,
        }
    }
}

/// Every type, one row each. The order is the stable order of [`ResourceType::all`]; KDS
/// applies types owners first (see [`ResourceType::apply_rank`]), whatever the order here.
pub const DESCRIPTORS: &[Descriptor] = &[
    Descriptor {
        resource_type: ResourceType::Mesh,
        name: "Mesh",
        ws_path: "meshes",
        ws_aliases: &[],
        cli_plural: "meshes",
        cli_singular: "mesh",
        cli_aliases: &[],
        scope: Scope::Global,
        owner: Owner::Global,
        sync: Direction::Down,
        insight_of: None,
        policy: false,
    },
    Descriptor {
        resource_type: ResourceType::Dataplane,
        name: "Dataplane",
        ws_path: "dataplanes",
        ws_aliases: &[],
        cli_plural: "dataplanes",
        cli_singular: "dataplane",
        cli_aliases: &[],
        scope: Scope::Mesh,
        owner: Owner::Zone,
        sync: Direction::Up,
        insight_of: None,
        policy: false,
    },
    Descriptor {
        resource_type: ResourceType::DataplaneInsight,
        name: "DataplaneInsight",
        ws_path: "dataplane-insights",
        ws_aliases: &[],
        cli_plural: "dataplane-insights",
        cli_singular: "dataplane-insight",
        cli_aliases: &[],
        scope: Scope::Mesh,
        owner: Owner::ControlPlane,
        sync: Direction::Up,
        insight_of: Some(ResourceType::Dataplane),
        policy: false,
    },
    Descriptor {
        resource_type: ResourceType::ZoneIngress,
        name: "ZoneIngress",
        ws_path: "zoneingresses",
        ws_aliases: &["zone-ingresses"],
        cli_plural: "zone-ingresses",
        cli_singular: "zone-ingress",
        cli_aliases: &["zoneingress"],
        scope: Scope::Global,
        owner: Owner::Zone,
        sync: Direction::UpThenAcross,
        insight_of: None,
        policy: false,
    },
    Descriptor {
        resource_type: ResourceType::ZoneIngressInsight,
        name: "ZoneIngressInsight",
        ws_path: "zone-ingress-insights",
        ws_aliases: &["zoneingressinsights"],
        cli_plural: "zone-ingress-insights",
        cli_singular: "zone-ingress-insight",
        cli_aliases: &[],
        scope: Scope::Global,
        owner: Owner::ControlPlane,
        sync: Direction::Up,
        insight_of: Some(ResourceType::ZoneIngress),
        policy: false,
    },
    Descriptor {
        resource_type: ResourceType::ZoneEgress,
        name: "ZoneEgress",
        ws_path: "zoneegresses",
        ws_aliases: &["zone-egresses"],
        cli_plural: "zoneegresses",
        cli_singular: "zoneegress",
        cli_aliases: &["zone-egress"],
        scope: Scope::Global,
        owner: Owner::Zone,
        sync: Direction::Up,
        insight_of: None,
        policy: false,
    },
    Descriptor {
        resource_type: ResourceType::ZoneEgressInsight,
        name: "ZoneEgressInsight",
        ws_path: "zone-egress-insights",
        ws_aliases: &["zoneegressinsights"],
        cli_plural: "zone-egress-insights",
        cli_singular: "zone-egress-insight",
        cli_aliases: &[],
        scope: Scope::Global,
        owner: Owner::ControlPlane,
        sync: Direction::Up,
        insight_of: Some(ResourceType::ZoneEgress),
        policy: false,
    },
    Descriptor {
        resource_type: ResourceType::Zone,
        name: "Zone",
        ws_path: "zones",
        ws_aliases: &[],
        cli_plural: "zones",
        cli_singular: "zone",
        cli_aliases: &[],
        scope: Scope::Global,
        owner: Owner::Anywhere,
        sync: Direction::NotSynced,
        insight_of: None,
        policy: false,
    },
    Descriptor {
        resource_type: ResourceType::ZoneInsight,
        name: "ZoneInsight",
        ws_path: "zone-insights",
        ws_aliases: &[],
        cli_plural: "zone-insights",
        cli_singular: "zone-insight",
        cli_aliases: &[],
        scope: Scope::Global,
        owner: Owner::ControlPlane,
        sync: Direction::NotSynced,
        insight_of: Some(ResourceType::Zone),
        policy: false,
    },
    Descriptor {
        resource_type: ResourceType::Secret,
        name: "Secret",
        ws_path: "secrets",
        ws_aliases: &[],
        cli_plural: "secrets",
        cli_singular: "secret",
        cli_aliases: &[],
        scope: Scope::Mesh,
        // Global's go down; a zone may keep secrets of its own (Kuma: G→Z + ProvidedByZone).
        owner: Owner::Anywhere,
        sync: Direction::Down,
        insight_of: None,
        policy: false,
    },
    Descriptor {
        resource_type: ResourceType::GlobalSecret,
        name: "GlobalSecret",
        ws_path: "global-secrets",
        ws_aliases: &[],
        cli_plural: "global-secrets",
        cli_singular: "global-secret",
        cli_aliases: &[],
        scope: Scope::Global,
        owner: Owner::Global,
        sync: Direction::Down,
        insight_of: None,
        policy: false,
    },
    Descriptor {
        resource_type: ResourceType::ServiceInsight,
        name: "ServiceInsight",
        ws_path: "service-insights",
        ws_aliases: &[],
        cli_plural: "service-insights",
        cli_singular: "service-insight",
        cli_aliases: &[],
        scope: Scope::Mesh,
        // Computed on read by every control plane from its own store (`meshzone_api::views`):
        // global's view covers every zone's Dataplanes, as Kuma's global computes it. Kuma
        // also stores it and sends it down (G→Z); here nothing is stored, so nothing is sent.
        owner: Owner::ControlPlane,
        sync: Direction::NotSynced,
        insight_of: None,
        policy: false,
    },
    Descriptor {
        resource_type: ResourceType::Config,
        name: "Config",
        ws_path: "configs",
        ws_aliases: &[],
        cli_plural: "configs",
        cli_singular: "config",
        cli_aliases: &[],
        scope: Scope::Global,
        owner: Owner::ControlPlane,
        sync: Direction::NotSynced,
        insight_of: None,
        policy: false,
    },
    // Kuma's source/destination-era type: written on global, sent down (not a targetRef policy).
    Descriptor {
        resource_type: ResourceType::VirtualOutbound,
        name: "VirtualOutbound",
        ws_path: "virtual-outbounds",
        ws_aliases: &[],
        cli_plural: "virtual-outbounds",
        cli_singular: "virtual-outbound",
        cli_aliases: &["virtualoutbounds", "virtualoutbound"],
        scope: Scope::Mesh,
        owner: Owner::Global,
        sync: Direction::Down,
        insight_of: None,
        policy: false,
    },
    // Kuma's ExternalService: written on global, sent down, read-only on federated zones.
    Descriptor {
        resource_type: ResourceType::ExternalService,
        name: "ExternalService",
        ws_path: "external-services",
        ws_aliases: &[],
        cli_plural: "external-services",
        cli_singular: "external-service",
        cli_aliases: &["externalservices", "externalservice"],
        scope: Scope::Mesh,
        owner: Owner::Global,
        sync: Direction::Down,
        insight_of: None,
        policy: false,
    },
    Descriptor::policy(
        ResourceType::MeshTrafficPermission,
        "MeshTrafficPermission",
        "meshtrafficpermissions",
        "meshtrafficpermission",
    ),
    Descriptor::policy(
        ResourceType::MeshHTTPRoute,
        "MeshHTTPRoute",
        "meshhttproutes",
        "meshhttproute",
    ),
    Descriptor::policy(
        ResourceType::MeshTCPRoute,
        "MeshTCPRoute",
        "meshtcproutes",
        "meshtcproute",
    ),
    Descriptor::policy(
        ResourceType::MeshLoadBalancingStrategy,
        "MeshLoadBalancingStrategy",
        "meshloadbalancingstrategies",
        "meshloadbalancingstrategy",
    ),
    Descriptor::policy(
        ResourceType::MeshFaultInjection,
        "MeshFaultInjection",
        "meshfaultinjections",
        "meshfaultinjection",
    ),
    Descriptor::policy(
        ResourceType::MeshRateLimit,
        "MeshRateLimit",
        "meshratelimits",
        "meshratelimit",
    ),
    Descriptor::policy(
        ResourceType::MeshHealthCheck,
        "MeshHealthCheck",
        "meshhealthchecks",
        "meshhealthcheck",
    ),
    Descriptor::policy(
        ResourceType::MeshCircuitBreaker,
        "MeshCircuitBreaker",
        "meshcircuitbreakers",
        "meshcircuitbreaker",
    ),
    Descriptor::policy(
        ResourceType::MeshTimeout,
        "MeshTimeout",
        "meshtimeouts",
        "meshtimeout",
    ),
    Descriptor::policy(
        ResourceType::MeshRetry,
        "MeshRetry",
        "meshretries",
        "meshretry",
    ),
    Descriptor::policy(
        ResourceType::MeshTrace,
        "MeshTrace",
        "meshtraces",
        "meshtrace",
    ),
    Descriptor::policy(
        ResourceType::MeshAccessLog,
        "MeshAccessLog",
        "meshaccesslogs",
        "meshaccesslog",
    ),
    Descriptor::policy(
        ResourceType::MeshMetric,
        "MeshMetric",
        "meshmetrics",
        "meshmetric",
    ),
];

/// Types global sends to zones, in apply order.
static SENT_TO_ZONES: LazyLock<Vec<ResourceType>> =
    LazyLock::new(|| in_apply_order(|d| d.sync.sent_to_zones()));

/// Types zones send to global, in apply order.
static SENT_TO_GLOBAL: LazyLock<Vec<ResourceType>> =
    LazyLock::new(|| in_apply_order(|d| d.sync.sent_to_global()));

fn in_apply_order(keep: impl Fn(&Descriptor) -> bool) -> Vec<ResourceType> {
    let mut types: Vec<ResourceType> = DESCRIPTORS
        .iter()
        .filter(|d| keep(d))
        .map(|d| d.resource_type)
        .collect();
    types.sort_by_key(|t| t.apply_rank());
    types
}

impl ResourceType {
    /// All types, in a stable order.
    pub fn all() -> impl Iterator<Item = ResourceType> {
        DESCRIPTORS.iter().map(|d| d.resource_type)
    }

    /// The policy types.
    pub fn policies() -> impl Iterator<Item = ResourceType> {
        DESCRIPTORS
            .iter()
            .filter(|d| d.policy)
            .map(|d| d.resource_type)
    }

    /// The type that holds the status of this type's resources (`Dataplane` →
    /// `DataplaneInsight`).
    pub fn insight(self) -> Option<ResourceType> {
        DESCRIPTORS
            .iter()
            .find(|d| d.insight_of == Some(self))
            .map(|d| d.resource_type)
    }

    /// The types global sends to zones, owners first (the order to apply them in).
    pub fn sent_to_zones() -> &'static [ResourceType] {
        &SENT_TO_ZONES
    }

    /// The types zones send to global, owners first (the order to apply them in).
    pub fn sent_to_global() -> &'static [ResourceType] {
        &SENT_TO_GLOBAL
    }

    /// Creating a resource needs these first: a mesh-scoped type its Mesh, an insight the
    /// resource it describes. Types of lower rank are applied first, deleted last.
    pub fn apply_rank(self) -> usize {
        match (self.descriptor().insight_of, self.scope()) {
            (Some(of), _) => of.apply_rank() + 1,
            (None, Scope::Mesh) => ResourceType::Mesh.apply_rank() + 1,
            (None, Scope::Global) => 0,
        }
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
                    || d.cli_aliases.contains(&word)
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
mod tests;
