use std::collections::BTreeSet;

use super::*;

#[test]
fn every_type_has_exactly_one_descriptor_and_unique_paths_and_words() {
    let mut paths = BTreeSet::new();
    let mut words = BTreeSet::new();
    for d in DESCRIPTORS {
        assert_eq!(d.resource_type.descriptor().name, d.name);
        assert_eq!(d.name.parse::<ResourceType>(), Ok(d.resource_type));
        assert!(paths.insert(d.ws_path), "duplicate path {}", d.ws_path);
        for a in d.ws_aliases {
            assert!(paths.insert(a), "duplicate alias {a}");
        }
        // A kumactl word names one type only (a type may reuse its own path as a word).
        let own: BTreeSet<&str> = [d.cli_plural, d.cli_singular, d.ws_path]
            .into_iter()
            .chain(d.ws_aliases.iter().copied())
            .chain(d.cli_aliases.iter().copied())
            .collect();
        for w in own {
            assert!(words.insert(w), "{w:?} names two types");
            assert_eq!(ResourceType::from_cli_name(w), Some(d.resource_type));
        }
    }
    assert_eq!(ResourceType::all().count(), DESCRIPTORS.len());
}

/// The rows cannot contradict themselves: what a type's owner writes is what KDS carries.
#[test]
fn owner_and_direction_agree() {
    for d in DESCRIPTORS {
        let t = d.name;
        match d.sync {
            // Global's copies go down; nothing computed is sent down (every control plane
            // computes its own views, so a copy from global would compete with the zone's).
            Direction::Down => assert!(
                matches!(d.owner, Owner::Global | Owner::Anywhere),
                "{t} is sent down, so global must write it: {:?}",
                d.owner
            ),
            // What goes up is written in zones: by users, or by the zone CP (insights).
            Direction::Up => assert!(
                matches!(d.owner, Owner::Zone | Owner::ControlPlane),
                "{t} is sent up, so zones must write it: {:?}",
                d.owner
            ),
            Direction::UpThenAcross => assert_eq!(d.owner, Owner::Zone, "{t}"),
            Direction::NotSynced => {}
        }
        if d.owner == Owner::Zone {
            assert!(
                d.sync.sent_to_global(),
                "{t} is written only in zones, so global needs it sent up"
            );
        }
        if d.owner == Owner::Global {
            assert!(
                d.sync.sent_to_zones(),
                "{t} is written only on global, so zones need it sent down"
            );
        }
        // Computed ⇔ read-only, for every control plane.
        assert_eq!(d.read_only(), d.owner == Owner::ControlPlane, "{t}");
        for role in [
            CpRole::Global,
            CpRole::StandaloneZone,
            CpRole::FederatedZone,
        ] {
            if d.read_only() {
                assert_eq!(d.write_refusal(role), Some(WriteRefusal::Computed), "{t}");
            }
        }
        // A standalone zone writes everything a user may write.
        assert_eq!(
            d.write_refusal(CpRole::StandaloneZone).is_some(),
            d.read_only(),
            "{t}"
        );
    }
}

#[test]
fn insights_are_computed_and_travel_with_what_they_describe() {
    for d in DESCRIPTORS {
        let Some(of) = d.insight_of else { continue };
        let t = d.name;
        assert_eq!(d.owner, Owner::ControlPlane, "{t} is an insight");
        assert_eq!(d.scope, of.scope(), "{t} shares its owner's scope");
        assert_eq!(
            of.insight(),
            Some(d.resource_type),
            "{of} has one insight type"
        );
        if d.sync.sent_to_global() {
            assert!(
                of.descriptor().sync.sent_to_global(),
                "{t} needs {of} on global"
            );
        }
        if d.sync.sent_to_zones() {
            assert!(
                of.descriptor().sync.sent_to_zones(),
                "{t} needs {of} in zones"
            );
        }
    }
}

#[test]
fn policies_are_user_written_mesh_types_with_a_policy_conf() {
    for d in DESCRIPTORS.iter().filter(|d| d.policy) {
        assert_eq!(d.scope, Scope::Mesh, "{}", d.name);
        assert!(!d.read_only(), "{}", d.name);
    }
    // A row is a policy exactly when the policy list declares a conf for it.
    for d in DESCRIPTORS {
        assert_eq!(
            crate::policies::PolicyConf::default_for(d.resource_type).is_some(),
            d.policy,
            "{}",
            d.name
        );
    }
    assert_eq!(
        ResourceType::policies().collect::<Vec<_>>(),
        [
            ResourceType::MeshTrafficPermission,
            ResourceType::MeshHTTPRoute,
            ResourceType::MeshTCPRoute,
            ResourceType::MeshLoadBalancingStrategy,
            ResourceType::MeshFaultInjection,
            ResourceType::MeshRateLimit,
            ResourceType::MeshHealthCheck,
            ResourceType::MeshCircuitBreaker,
            ResourceType::MeshTimeout,
            ResourceType::MeshRetry,
            ResourceType::MeshTrace,
            ResourceType::MeshAccessLog,
            ResourceType::MeshMetric,
        ]
    );
}

#[test]
fn synced_types_come_in_apply_order_owners_first() {
    for list in [
        ResourceType::sent_to_zones(),
        ResourceType::sent_to_global(),
    ] {
        for (i, t) in list.iter().enumerate() {
            let mut needs = Vec::new();
            if t.is_mesh_scoped() {
                needs.push(ResourceType::Mesh);
            }
            needs.extend(t.descriptor().insight_of);
            for n in needs {
                if let Some(j) = list.iter().position(|x| *x == n) {
                    assert!(j < i, "{n} must come before {t} in {list:?}");
                }
            }
        }
    }
    assert_eq!(
        ResourceType::sent_to_zones(),
        [
            ResourceType::Mesh,
            ResourceType::ZoneIngress,
            ResourceType::GlobalSecret,
            ResourceType::Secret,
            ResourceType::VirtualOutbound,
            ResourceType::ExternalService,
            ResourceType::MeshTrafficPermission,
            ResourceType::MeshHTTPRoute,
            ResourceType::MeshTCPRoute,
            ResourceType::MeshLoadBalancingStrategy,
            ResourceType::MeshFaultInjection,
            ResourceType::MeshRateLimit,
            ResourceType::MeshHealthCheck,
            ResourceType::MeshCircuitBreaker,
            ResourceType::MeshTimeout,
            ResourceType::MeshRetry,
            ResourceType::MeshTrace,
            ResourceType::MeshAccessLog,
            ResourceType::MeshMetric,
        ]
    );
    assert_eq!(
        ResourceType::sent_to_global(),
        [
            ResourceType::ZoneIngress,
            ResourceType::ZoneEgress,
            ResourceType::Dataplane,
            ResourceType::ZoneIngressInsight,
            ResourceType::ZoneEgressInsight,
            ResourceType::DataplaneInsight,
        ]
    );
}

#[test]
fn write_authority_follows_owner_and_role() {
    use CpRole::*;
    let refused = |t: ResourceType, r| t.descriptor().write_refusal(r);
    assert_eq!(
        refused(ResourceType::Mesh, FederatedZone),
        Some(WriteRefusal::OwnedByGlobal)
    );
    assert_eq!(refused(ResourceType::Mesh, Global), None);
    assert_eq!(refused(ResourceType::Secret, FederatedZone), None);
    assert_eq!(
        refused(ResourceType::Dataplane, Global),
        Some(WriteRefusal::OwnedByZones)
    );
    assert_eq!(refused(ResourceType::Dataplane, FederatedZone), None);
    assert_eq!(refused(ResourceType::Zone, Global), None);
    assert_eq!(
        refused(ResourceType::ServiceInsight, StandaloneZone),
        Some(WriteRefusal::Computed)
    );
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

#[test]
fn external_services_are_written_on_global_and_read_only_on_federated_zones() {
    let d = ResourceType::ExternalService.descriptor();
    assert_eq!(d.scope, Scope::Mesh);
    assert!(d.sync.sent_to_zones() && !d.sync.sent_to_global());
    assert_eq!(d.write_refusal(CpRole::Global), None);
    assert_eq!(d.write_refusal(CpRole::StandaloneZone), None);
    assert_eq!(
        d.write_refusal(CpRole::FederatedZone),
        Some(WriteRefusal::OwnedByGlobal)
    );
    assert_eq!(
        ResourceType::from_cli_name("external-services"),
        Some(ResourceType::ExternalService)
    );
    assert_eq!(
        ResourceType::from_ws_path("external-services"),
        Some(ResourceType::ExternalService)
    );
}
