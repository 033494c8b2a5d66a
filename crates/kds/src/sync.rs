//! The pure half of KDS: which resources each side offers the other, how they are renamed and
//! labelled on the way, what changed since the last send, and how a receiver reconciles its
//! store with what it received. No I/O; table-tested.

use std::collections::{BTreeMap, BTreeSet};

use meshzone_model::specs::ZONE_TAG;
use meshzone_model::{Direction, Meta, Resource, ResourceKey, ResourceType, Spec};

/// Label set on every synced resource: where it was created (`global` or `zone`).
pub const ORIGIN_LABEL: &str = "kuma.io/origin";
/// Label set by global on resources that came from a zone: which zone.
pub const ZONE_LABEL: &str = "kuma.io/zone";

/// Zone-token signing keys are sent to zones as their public halves only.
pub use meshzone_identity::{ZONE_PUBLIC_KEY_PREFIX, ZONE_SIGNING_KEY_PREFIX};

pub fn origin(r: &Resource) -> Option<&str> {
    r.meta.labels.get(ORIGIN_LABEL).map(String::as_str)
}

/// Longest resource name the store accepts.
pub const MAX_NAME: usize = 253;

/// The name global gives a resource from `zone`: `<zone>.<name>`. Zone names are DNS labels
/// (no dots), so two zones can never collide. A result longer than [`MAX_NAME`] keeps its start
/// and ends with `-` and 16 hex digits of a hash of the full name, so it stays unique and fits.
pub fn global_name(zone: &str, name: &str) -> String {
    let full = format!("{zone}.{name}");
    if full.len() <= MAX_NAME {
        return full;
    }
    let hash = full.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut keep = MAX_NAME - 17;
    while !full.is_char_boundary(keep) {
        keep -= 1;
    }
    let head = full[..keep].trim_end_matches(['.', '-', '_']);
    format!("{head}-{hash:016x}")
}

/// Label holding the name a resource had where it was created (the copy's name is hashed).
pub use meshzone_model::policy::DISPLAY_NAME_LABEL;

/// Kuma's name for a synced copy (MADR-029, `pkg/kds/hash`): the original name, shortened to
/// fit, then `-` and 16 characters of the FNV-64a hash of the mesh, the name and the extra
/// values, hex-encoded and mapped onto k8s' consonants-and-digits alphabet
/// (`rand.SafeEncodeString`), so the copy never collides with a resource the receiver created
/// itself.
pub fn hashed_name(mesh: &str, name: &str, extra: &[&str]) -> String {
    const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let hash = [mesh, name]
        .iter()
        .chain(extra)
        .flat_map(|s| s.bytes())
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    let suffix: String = format!("{hash:016x}")
        .bytes()
        .map(|b| char::from(SAFE[usize::from(b) % SAFE.len()]))
        .collect();
    let mut keep = name.len().min(MAX_NAME - 17);
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}-{suffix}", &name[..keep])
}

/// A keyed set of resources of some types.
pub type Set = BTreeMap<ResourceKey, Resource>;

pub fn keyed(resources: impl IntoIterator<Item = Resource>) -> Set {
    resources.into_iter().map(|r| (r.key(), r)).collect()
}

/// What global offers `zone`: every resource of a type sent down (labelled `kuma.io/origin:
/// global`; GlobalSecrets only as public zone-token keys), and of a type sent up then across the
/// resources that came from the other enabled zones. `public_key` turns a private signing key
/// (PEM) into its public half; a key it cannot convert is not sent at all.
pub fn offer_to_zone(
    zone: &str,
    all: &[Resource],
    disabled_zones: &[String],
    public_key: impl Fn(&[u8]) -> Option<Vec<u8>>,
) -> Set {
    let mut out = Set::new();
    for r in all {
        let mut copy = match r.resource_type().descriptor().sync {
            Direction::Down => {
                let Some(mut copy) = prepare_for_zones(r, &public_key) else {
                    continue;
                };
                copy.meta
                    .labels
                    .insert(ORIGIN_LABEL.into(), "global".into());
                if copy.resource_type().descriptor().policy {
                    // Policies get Kuma's hashed names; Meshes and Secrets keep theirs (other
                    // resources refer to them by name: a Dataplane's mesh, a CA's secret).
                    let display = copy.meta.name.clone();
                    copy.meta.name = hashed_name(&copy.meta.mesh, &display, &[]);
                    copy.meta
                        .labels
                        .entry(DISPLAY_NAME_LABEL.into())
                        .or_insert(display);
                }
                copy
            }
            Direction::UpThenAcross => {
                let from = r.meta.labels.get(ZONE_LABEL).map(String::as_str);
                match from {
                    Some(z) if z != zone && !disabled_zones.iter().any(|d| d == z) => r.clone(),
                    _ => continue,
                }
            }
            Direction::Up | Direction::NotSynced => continue,
        };
        copy.meta.owner = None;
        out.insert(copy.key(), copy);
    }
    out
}

/// Per-type changes to what global sends down: of the GlobalSecrets only the zone-token signing
/// keys go, as their public halves.
fn prepare_for_zones(
    r: &Resource,
    public_key: impl Fn(&[u8]) -> Option<Vec<u8>>,
) -> Option<Resource> {
    match &r.spec {
        Spec::GlobalSecret(s) => {
            let serial = r.meta.name.strip_prefix(ZONE_SIGNING_KEY_PREFIX)?;
            let public = decode_b64(&s.data).and_then(|pem| public_key(&pem))?;
            let mut copy = r.clone();
            copy.meta.name = format!("{ZONE_PUBLIC_KEY_PREFIX}{serial}");
            copy.spec = Spec::GlobalSecret(meshzone_model::specs::SecretSpec {
                data: encode_b64(&public),
            });
            Some(copy)
        }
        _ => Some(r.clone()),
    }
}

/// On a zone, what global's sync owns: global's copies, and policies without an origin label —
/// left from the zone's standalone days (its `allow-all-<mesh>`), since a zone connected to a
/// global can write no policy itself (Kuma's zone sync likewise replaces every policy not
/// labelled `kuma.io/origin: zone`). Other types a zone made itself stay.
pub fn managed_by_global_sync(r: &Resource) -> bool {
    match origin(r) {
        Some("global") => true,
        None => r.resource_type().descriptor().policy,
        Some(_) => false,
    }
}

/// What a zone offers global: its own resources of every type sent up (not the copies it
/// received from global).
pub fn offer_to_global(all: &[Resource]) -> Set {
    keyed(
        all.iter()
            .filter(|r| r.resource_type().descriptor().sync.sent_to_global())
            .filter(|r| origin(r) != Some("global"))
            .map(|r| {
                let mut c = r.clone();
                c.meta.owner = None;
                c
            }),
    )
}

/// Changes between what was last sent and what is offered now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    pub upserted: Vec<Resource>,
    pub removed: Vec<ResourceKey>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.upserted.is_empty() && self.removed.is_empty()
    }
}

/// Resources equal for sync purposes: same spec and labels (versions and times differ per side).
pub fn same(a: &Resource, b: &Resource) -> bool {
    a.spec == b.spec && a.meta.labels == b.meta.labels
}

pub fn delta(previous: &Set, current: &Set) -> Delta {
    Delta {
        upserted: current
            .iter()
            .filter(|(k, r)| previous.get(k).is_none_or(|p| !same(p, r)))
            .map(|(_, r)| r.clone())
            .collect(),
        removed: previous
            .keys()
            .filter(|k| !current.contains_key(k))
            .cloned()
            .collect(),
    }
}

/// The delta of a burst of changes to `keys` only, whose current offered resources are
/// `current` (a key absent from it is no longer offered); `sent` becomes what is offered now.
/// Work is proportional to the burst, not to everything offered (a zone's insight writes come
/// one proxy at a time).
pub fn delta_of(sent: &mut Set, keys: &BTreeSet<ResourceKey>, mut current: Set) -> Delta {
    let mut d = Delta::default();
    for k in keys {
        match (sent.get(k), current.remove(k)) {
            (Some(old), Some(new)) if same(old, &new) => {}
            (_, Some(new)) => {
                d.upserted.push(new.clone());
                sent.insert(k.clone(), new);
            }
            (Some(_), None) => {
                sent.remove(k);
                d.removed.push(k.clone());
            }
            (None, None) => {}
        }
    }
    d
}

/// A store operation a receiver performs.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Create(Resource),
    /// Replace the stored resource (its version is in `meta.version`).
    Update(Resource),
    Delete(ResourceKey),
}

/// A resource the receiver refused, with the reason (sent back in the ACK).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub key: ResourceKey,
    pub reason: String,
}

/// Received changes, already mapped to the receiver's names.
#[derive(Debug, Clone, Default)]
pub struct Received {
    pub initial: bool,
    pub types: Vec<ResourceType>,
    pub upserted: Vec<Resource>,
    pub removed: Vec<ResourceKey>,
}

/// Plans the store operations for received changes. `local` holds the receiver's resources of
/// the received types; `managed` says which of them this sync may touch (the peer's copies).
/// On an initial batch every managed resource the peer no longer has is deleted.
pub fn reconcile(
    local: &[Resource],
    received: &Received,
    managed: impl Fn(&Resource) -> bool,
    may_overwrite_unmanaged: impl Fn(&Resource) -> bool,
) -> (Vec<Op>, Vec<Refusal>) {
    let local: Set = keyed(local.iter().cloned());
    let mut ops = Vec::new();
    let mut refusals = Vec::new();
    for r in &received.upserted {
        match local.get(&r.key()) {
            None => ops.push(Op::Create(r.clone())),
            Some(stored) if !managed(stored) && !may_overwrite_unmanaged(stored) => {
                refusals.push(Refusal {
                    key: r.key(),
                    reason: "a resource with this name was created locally; it is kept".into(),
                });
            }
            Some(stored) if same(stored, r) => {}
            Some(stored) => {
                let mut next = r.clone();
                next.meta.version = stored.meta.version;
                next.meta.owner = r.meta.owner.clone().or(stored.meta.owner.clone());
                ops.push(Op::Update(next));
            }
        }
    }
    let upserted: std::collections::BTreeSet<ResourceKey> =
        received.upserted.iter().map(Resource::key).collect();
    for k in &received.removed {
        if local.get(k).is_some_and(&managed) && !upserted.contains(k) {
            ops.push(Op::Delete(k.clone()));
        }
    }
    if received.initial {
        for (k, stored) in &local {
            if received.types.contains(&k.resource_type)
                && managed(stored)
                && !upserted.contains(k)
                && !received.removed.contains(k)
            {
                ops.push(Op::Delete(k.clone()));
            }
        }
    }
    (ops, refusals)
}

/// How global stores a resource received from `zone`: renamed `<zone>.<name>`, labelled with
/// its zone and origin, its zone attribution pinned inside the spec, owned by the Zone (or, for
/// an insight, by its Dataplane, ZoneIngress or ZoneEgress) so deleting the Zone removes it.
pub fn map_from_zone(zone: &str, mut r: Resource) -> Resource {
    let rt = r.resource_type();
    r.meta.name = global_name(zone, &r.meta.name);
    r.meta.labels.insert(ZONE_LABEL.into(), zone.into());
    r.meta.labels.insert(ORIGIN_LABEL.into(), "zone".into());
    r.meta.owner = Some(match rt.descriptor().insight_of {
        Some(of) => ResourceKey::new(of, &r.meta.mesh, &r.meta.name),
        None => ResourceKey::global(ResourceType::Zone, zone),
    });
    match &mut r.spec {
        Spec::ZoneIngress(z) => {
            z.zone = zone.into();
            for s in &mut z.available_services {
                s.tags.insert(ZONE_TAG.into(), zone.into());
            }
        }
        Spec::ZoneEgress(z) => z.zone = zone.into(),
        Spec::Dataplane(d) => {
            for i in &mut d.networking.inbound {
                i.tags.insert(ZONE_TAG.into(), zone.into());
            }
        }
        _ => {}
    }
    r
}

/// A resource key as global names it.
pub fn key_from_zone(zone: &str, k: &ResourceKey) -> ResourceKey {
    ResourceKey {
        resource_type: k.resource_type,
        mesh: k.mesh.clone(),
        name: global_name(zone, &k.name),
    }
}

/// Whether a global resource came from `zone` (only those may be touched by its sync).
pub fn from_zone(zone: &str, r: &Resource) -> bool {
    r.meta.labels.get(ZONE_LABEL).map(String::as_str) == Some(zone) && origin(r) == Some("zone")
}

pub fn zone_resource(name: &str) -> Resource {
    Resource::new(
        Meta::named(name, ""),
        Spec::Zone(meshzone_model::specs::ZoneSpec {
            enabled: Some(true),
        }),
    )
}

fn decode_b64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

fn encode_b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[cfg(test)]
mod tests;
