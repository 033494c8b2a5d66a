use std::collections::BTreeMap;

use meshzone_model::specs::{
    AvailableService, DataplaneSpec, Inbound, MeshSpec, SecretSpec, ZoneIngressNetworking,
    ZoneIngressSpec,
};

use super::*;

fn mesh(name: &str) -> Resource {
    Resource::new(Meta::named(name, ""), Spec::Mesh(MeshSpec::default()))
}

fn ingress(name: &str, zone: Option<&str>) -> Resource {
    let mut r = Resource::new(
        Meta::named(name, ""),
        Spec::ZoneIngress(ZoneIngressSpec {
            zone: String::new(),
            networking: ZoneIngressNetworking {
                address: "127.0.0.1".into(),
                port: 10000,
                ..Default::default()
            },
            available_services: vec![AvailableService {
                tags: BTreeMap::from([("kuma.io/service".to_string(), "web".to_string())]),
                instances: 1,
                mesh: "default".into(),
                external_service: false,
            }],
        }),
    );
    if let Some(z) = zone {
        r.meta.labels.insert(ZONE_LABEL.into(), z.into());
        r.meta.labels.insert(ORIGIN_LABEL.into(), "zone".into());
    }
    r
}

fn dataplane(name: &str) -> Resource {
    let mut d = DataplaneSpec::default();
    d.networking.address = "10.0.0.1".into();
    d.networking.inbound.push(Inbound {
        port: 1,
        tags: BTreeMap::from([("kuma.io/service".to_string(), "web".to_string())]),
        ..Default::default()
    });
    Resource::new(Meta::named(name, "default"), Spec::Dataplane(d))
}

#[test]
fn global_offers_zones_meshes_public_keys_and_other_enabled_zones_ingresses() {
    let private = Resource::new(
        Meta::named("zone-token-signing-key-1", ""),
        Spec::GlobalSecret(SecretSpec {
            data: encode_b64(b"PRIVATE"),
        }),
    );
    let other_secret = Resource::new(
        Meta::named("admin-token", ""),
        Spec::GlobalSecret(SecretSpec {
            data: encode_b64(b"x"),
        }),
    );
    let all = vec![
        mesh("default"),
        private,
        other_secret,
        ingress("zone-a.ingress", Some("zone-a")),
        ingress("zone-b.ingress", Some("zone-b")),
        ingress("zone-c.ingress", Some("zone-c")),
        dataplane("zone-b.dp"),
    ];
    let offered = offer_to_zone("zone-a", &all, &["zone-c".to_string()], |pem| {
        (pem == b"PRIVATE").then(|| b"PUBLIC".to_vec())
    });
    let names: Vec<&str> = offered.keys().map(|k| k.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "default",
            "zone-b.ingress",
            "zone-token-signing-public-key-1"
        ]
    );
    let public = &offered[&ResourceKey::global(
        ResourceType::GlobalSecret,
        "zone-token-signing-public-key-1",
    )];
    assert_eq!(
        public.spec,
        Spec::GlobalSecret(SecretSpec {
            data: encode_b64(b"PUBLIC")
        })
    );
    assert_eq!(
        origin(&offered[&ResourceKey::global(ResourceType::Mesh, "default")]),
        Some("global")
    );
}

#[test]
fn zones_offer_only_their_own_resources() {
    let mut copy = ingress("zone-b.ingress", Some("zone-b"));
    copy.meta
        .labels
        .insert(ORIGIN_LABEL.into(), "global".into());
    let offered = offer_to_global(&[
        dataplane("dp"),
        ingress("local", None),
        copy,
        mesh("default"),
    ]);
    let names: Vec<&str> = offered.keys().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["dp", "local"]);
}

#[test]
fn delta_lists_changes_and_removals() {
    let a = keyed([mesh("a"), mesh("b")]);
    let mut changed = mesh("b");
    changed.meta.labels.insert("x".into(), "y".into());
    let b = keyed([changed.clone(), mesh("c")]);
    let d = delta(&a, &b);
    assert_eq!(
        d.upserted
            .iter()
            .map(|r| r.meta.name.as_str())
            .collect::<Vec<_>>(),
        ["b", "c"]
    );
    assert_eq!(
        d.removed,
        vec![ResourceKey::global(ResourceType::Mesh, "a")]
    );
    assert!(delta(&b, &b).is_empty());
}

#[test]
fn delta_of_a_burst_looks_at_its_keys_only() {
    let mut sent = keyed([mesh("a"), mesh("b"), mesh("c")]);
    let mut changed = mesh("b");
    changed.meta.labels.insert("x".into(), "y".into());
    let key = |n: &str| ResourceKey::global(ResourceType::Mesh, n);
    // b changed, a is gone, d is new, c is untouched (and not looked at).
    let keys = [key("a"), key("b"), key("d")].into_iter().collect();
    let d = delta_of(&mut sent, &keys, keyed([changed.clone(), mesh("d")]));
    let upserted: Vec<&str> = d.upserted.iter().map(|r| r.meta.name.as_str()).collect();
    assert_eq!(upserted, ["b", "d"]);
    assert_eq!(d.removed, vec![key("a")]);
    assert_eq!(sent, keyed([changed.clone(), mesh("c"), mesh("d")]));
    // The same burst again changes nothing, and matches a full diff.
    let before = sent.clone();
    let again = delta_of(&mut sent, &keys, keyed([changed, mesh("d")]));
    assert!(again.is_empty());
    assert!(delta(&before, &sent).is_empty());
}

#[test]
fn initial_sync_deletes_stale_managed_copies_only() {
    let mut stale = mesh("stale");
    stale
        .meta
        .labels
        .insert(ORIGIN_LABEL.into(), "global".into());
    let local_only = mesh("mine");
    let mut kept = mesh("kept");
    kept.meta
        .labels
        .insert(ORIGIN_LABEL.into(), "global".into());
    kept.meta.version = 4;
    let mut incoming_kept = kept.clone();
    incoming_kept
        .meta
        .labels
        .insert("new".into(), "label".into());
    let received = Received {
        initial: true,
        types: vec![ResourceType::Mesh],
        upserted: vec![incoming_kept.clone(), mesh("fresh")],
        removed: vec![],
    };
    let managed = |r: &Resource| origin(r) == Some("global");
    let (ops, refusals) = reconcile(
        &[stale.clone(), local_only, kept],
        &received,
        managed,
        |_| false,
    );
    assert!(refusals.is_empty());
    assert!(ops.contains(&Op::Delete(stale.key())));
    assert!(
        ops.iter()
            .any(|o| matches!(o, Op::Update(r) if r.meta.name == "kept" && r.meta.version == 4))
    );
    assert!(
        ops.iter()
            .any(|o| matches!(o, Op::Create(r) if r.meta.name == "fresh"))
    );
    assert!(
        !ops.iter()
            .any(|o| matches!(o, Op::Delete(k) if k.name == "mine")),
        "{ops:?}"
    );
}

#[test]
fn locally_created_resources_are_not_overwritten_unless_allowed() {
    let local = mesh("default");
    let mut incoming = mesh("default");
    incoming
        .meta
        .labels
        .insert(ORIGIN_LABEL.into(), "global".into());
    let received = Received {
        initial: false,
        types: vec![ResourceType::Mesh],
        upserted: vec![incoming],
        removed: vec![],
    };
    let managed = |r: &Resource| origin(r) == Some("global");
    let (ops, refusals) = reconcile(std::slice::from_ref(&local), &received, managed, |_| false);
    assert!(ops.is_empty());
    assert_eq!(refusals.len(), 1);
    // A standalone zone joining a global: global's Mesh wins.
    let (ops, refusals) = reconcile(&[local], &received, managed, |r| {
        r.resource_type() == ResourceType::Mesh
    });
    assert!(refusals.is_empty());
    assert!(matches!(&ops[..], [Op::Update(_)]));
}

#[test]
fn resources_from_zones_are_renamed_labelled_pinned_and_owned() {
    let mut dp = dataplane("dp-1");
    if let Spec::Dataplane(d) = &mut dp.spec {
        d.networking.inbound[0]
            .tags
            .insert(ZONE_TAG.into(), "forged".into());
    }
    let mapped = map_from_zone("zone-a", dp);
    assert_eq!(mapped.meta.name, "zone-a.dp-1");
    assert!(from_zone("zone-a", &mapped));
    assert!(!from_zone("zone-b", &mapped));
    assert_eq!(
        mapped.meta.owner,
        Some(ResourceKey::global(ResourceType::Zone, "zone-a"))
    );
    let Spec::Dataplane(d) = &mapped.spec else {
        panic!()
    };
    assert_eq!(d.networking.inbound[0].tags[ZONE_TAG], "zone-a");
    let ing = map_from_zone("zone-a", ingress("ingress-01", None));
    let Spec::ZoneIngress(z) = &ing.spec else {
        panic!()
    };
    assert_eq!(z.zone, "zone-a");
    assert_eq!(z.available_services[0].tags[ZONE_TAG], "zone-a");
}

#[test]
fn global_names_stay_unique_and_bounded() {
    assert_eq!(global_name("zone-a", "dp-1"), "zone-a.dp-1");
    let long_a = "a".repeat(250) + "x";
    let long_b = "a".repeat(250) + "y";
    let (na, nb) = (
        global_name("zone-a", &long_a),
        global_name("zone-a", &long_b),
    );
    assert!(na.len() <= MAX_NAME && nb.len() <= MAX_NAME);
    assert_ne!(na, nb);
    assert_ne!(
        global_name("zone-a", &long_a),
        global_name("zone-b", &long_a)
    );
    let r = Resource::new(Meta::named(&na, "default"), dataplane("x").spec);
    meshzone_model::validate(&r).expect("a bounded name is a valid name");
}

/// One resource of `rt`, with default spec fields. A GlobalSecret is a zone-token signing key,
/// the one kind of GlobalSecret that is sent down.
fn one_of(rt: ResourceType, name: &str) -> Resource {
    let mut r = Resource::new(Meta::named(name, "default"), Spec::default_for(rt));
    if !rt.is_mesh_scoped() {
        r.meta.mesh.clear();
    }
    if let Spec::GlobalSecret(s) = &mut r.spec {
        r.meta.name = format!("{ZONE_SIGNING_KEY_PREFIX}1");
        s.data = encode_b64(b"PRIVATE");
    }
    r
}

fn types_of(set: &Set) -> std::collections::BTreeSet<ResourceType> {
    set.keys().map(|k| k.resource_type).collect()
}

/// Global holds one resource of every type created on global and one that came up from
/// another zone: it offers a zone exactly the types the descriptors send down (global's own
/// for `Down`, the other zone's for `UpThenAcross`).
#[test]
fn global_offers_every_type_the_table_sends_down_and_no_other() {
    let all: Vec<Resource> = ResourceType::all()
        .flat_map(|rt| {
            let created = one_of(rt, "on-global");
            let came_up = map_from_zone("zone-b", one_of(rt, "in-zone-b"));
            [created, came_up]
        })
        .collect();
    let offered = offer_to_zone("zone-a", &all, &[], |pem| Some(pem.to_vec()));
    let expected: std::collections::BTreeSet<ResourceType> =
        ResourceType::sent_to_zones().iter().copied().collect();
    assert_eq!(types_of(&offered), expected);
    for (k, r) in &offered {
        let want = match k.resource_type.descriptor().sync {
            meshzone_model::Direction::Down => "global",
            meshzone_model::Direction::UpThenAcross => "zone",
            other => panic!("{k} offered although it syncs {other:?}"),
        };
        assert_eq!(origin(r), Some(want), "{k}");
    }
    // Nothing goes back to the zone it came from.
    let back = offer_to_zone("zone-b", &all, &[], |pem| Some(pem.to_vec()));
    assert!(back.values().all(|r| !from_zone("zone-b", r)));
}

/// A zone holds one resource of every type created locally and one received from global: it
/// offers global exactly the types the descriptors send up, and only its own.
#[test]
fn zones_offer_every_type_the_table_sends_up_and_no_other() {
    let all: Vec<Resource> = ResourceType::all()
        .flat_map(|rt| {
            let local = one_of(rt, "local");
            let mut copy = one_of(rt, "from-global");
            copy.meta
                .labels
                .insert(ORIGIN_LABEL.into(), "global".into());
            [local, copy]
        })
        .collect();
    let offered = offer_to_global(&all);
    let expected: std::collections::BTreeSet<ResourceType> =
        ResourceType::sent_to_global().iter().copied().collect();
    assert_eq!(types_of(&offered), expected);
    assert!(offered.keys().all(|k| k.name == "local"));
}

/// Policies go down under Kuma's hashed names (MADR-029) with the original name in
/// `kuma.io/display-name`; Meshes and Secrets keep their names. A deleted policy is removed
/// under its hashed name.
#[test]
fn policies_go_down_with_hashed_names_and_their_display_name() {
    let policy = one_of(ResourceType::MeshTrafficPermission, "allow-all-default");
    let all = vec![
        mesh("default"),
        one_of(ResourceType::Secret, "ca"),
        policy.clone(),
    ];
    let offered = offer_to_zone("zone-a", &all, &[], |pem| Some(pem.to_vec()));
    let names: Vec<(ResourceType, &str)> = offered
        .keys()
        .map(|k| (k.resource_type, k.name.as_str()))
        .collect();
    let hashed = hashed_name("default", "allow-all-default", &[]);
    assert_eq!(
        names,
        [
            (ResourceType::Mesh, "default"),
            (ResourceType::Secret, "ca"),
            (ResourceType::MeshTrafficPermission, hashed.as_str()),
        ]
    );
    let copy = &offered[&ResourceKey::new(ResourceType::MeshTrafficPermission, "default", &hashed)];
    assert_eq!(
        copy.meta.labels.get(DISPLAY_NAME_LABEL).map(String::as_str),
        Some("allow-all-default")
    );
    assert_eq!(origin(copy), Some("global"));
    // The same policy gets the same name for every zone and every send.
    let again = offer_to_zone("zone-b", &all, &[], |pem| Some(pem.to_vec()));
    assert!(again.contains_key(&copy.key()));
    // Deleting it on global removes the hashed copy.
    let d = delta(
        &offered,
        &offer_to_zone("zone-a", &all[..2], &[], |pem| Some(pem.to_vec())),
    );
    assert_eq!(d.removed, [copy.key()]);
    // The engine orders it by its display name.
    let engine = meshzone_model::policies::to_engine_policy(copy).expect("a policy");
    assert_eq!(engine.display_name(), "allow-all-default");
}

#[test]
fn hashed_names_follow_kuma_and_stay_bounded() {
    let h = hashed_name("default", "backend-canary", &[]);
    let (head, suffix) = h.rsplit_once('-').expect("suffix");
    assert_eq!(head, "backend-canary");
    assert_eq!(suffix.len(), 16);
    assert!(
        suffix
            .bytes()
            .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)),
        "{suffix}"
    );
    // Mesh, name and extra values all feed the hash.
    assert_ne!(h, hashed_name("other", "backend-canary", &[]));
    assert_ne!(h, hashed_name("default", "backend-canary", &["zone-1"]));
    let long = "a".repeat(300);
    let hl = hashed_name("default", &long, &[]);
    assert_eq!(hl.len(), MAX_NAME);
    let r = Resource::new(
        Meta::named(&hl, "default"),
        Spec::default_for(ResourceType::MeshTCPRoute),
    );
    assert!(
        meshzone_model::validate(&r).is_err_and(|v| v.violations.iter().all(|x| x.field != "name"))
    );
}
