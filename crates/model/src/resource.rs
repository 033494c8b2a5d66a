//! A resource: meta (type, name, mesh, labels, version, times) plus a typed spec, and its
//! Universal YAML/JSON form (spec fields inline beside the meta fields).

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::descriptor::ResourceType;
use crate::external_service::ExternalServiceSpec;
use crate::policies::PolicyConf;
use crate::specs::*;
use crate::validate::{Violation, Violations};
use crate::virtual_outbound::VirtualOutboundSpec;

/// Identifies one stored resource. `mesh` is empty for global-scoped types.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    pub resource_type: ResourceType,
    pub mesh: String,
    pub name: String,
}

impl ResourceKey {
    pub fn new(resource_type: ResourceType, mesh: &str, name: &str) -> Self {
        let mesh = if resource_type.is_mesh_scoped() {
            mesh.to_string()
        } else {
            String::new()
        };
        ResourceKey {
            resource_type,
            mesh,
            name: name.to_string(),
        }
    }

    pub fn global(resource_type: ResourceType, name: &str) -> Self {
        Self::new(resource_type, "", name)
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mesh.is_empty() {
            write!(f, "{} {:?}", self.resource_type, self.name)
        } else {
            write!(
                f,
                "{} {:?} in mesh {:?}",
                self.resource_type, self.name, self.mesh
            )
        }
    }
}

/// Bookkeeping that the store owns; the user never writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    pub name: String,
    /// Empty for global-scoped types.
    pub mesh: String,
    pub labels: BTreeMap<String, String>,
    /// Optimistic-concurrency version; 0 for a resource not stored yet.
    pub version: u64,
    pub creation_time: Option<DateTime<Utc>>,
    pub modification_time: Option<DateTime<Utc>>,
    /// Deleting the owner deletes this resource too. Not part of the YAML form.
    pub owner: Option<ResourceKey>,
}

impl Meta {
    pub fn named(name: &str, mesh: &str) -> Self {
        Meta {
            name: name.to_string(),
            mesh: mesh.to_string(),
            labels: BTreeMap::new(),
            version: 0,
            creation_time: None,
            modification_time: None,
            owner: None,
        }
    }
}

/// The typed spec of every resource type.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    Mesh(MeshSpec),
    Dataplane(DataplaneSpec),
    DataplaneInsight(DataplaneInsightSpec),
    ZoneIngress(ZoneIngressSpec),
    ZoneIngressInsight(ZoneProxyInsightSpec),
    ZoneEgress(ZoneEgressSpec),
    ZoneEgressInsight(ZoneProxyInsightSpec),
    Zone(ZoneSpec),
    ZoneInsight(ZoneInsightSpec),
    Secret(SecretSpec),
    GlobalSecret(SecretSpec),
    ServiceInsight(ServiceInsightSpec),
    Config(ConfigSpec),
    VirtualOutbound(VirtualOutboundSpec),
    ExternalService(ExternalServiceSpec),
    /// Every policy type (its resource type is the conf's).
    Policy(PolicyConf),
}

/// The types that record a proxy's ADS subscriptions (its status): those whose spec has them
/// ([`Spec::proxy_subscriptions`]), so no list is kept by hand.
pub fn proxy_insight_types() -> &'static [ResourceType] {
    static TYPES: std::sync::LazyLock<Vec<ResourceType>> = std::sync::LazyLock::new(|| {
        ResourceType::all()
            .filter(|t| Spec::default_for(*t).proxy_subscriptions().is_some())
            .collect()
    });
    &TYPES
}

impl Spec {
    /// The ADS subscriptions of a proxy insight (`None` for other types).
    pub fn proxy_subscriptions(&self) -> Option<&Vec<DiscoverySubscription>> {
        match self {
            Spec::DataplaneInsight(s) => Some(&s.subscriptions),
            Spec::ZoneIngressInsight(s) | Spec::ZoneEgressInsight(s) => Some(&s.subscriptions),
            _ => None,
        }
    }

    pub fn proxy_subscriptions_mut(&mut self) -> Option<&mut Vec<DiscoverySubscription>> {
        match self {
            Spec::DataplaneInsight(s) => Some(&mut s.subscriptions),
            Spec::ZoneIngressInsight(s) | Spec::ZoneEgressInsight(s) => Some(&mut s.subscriptions),
            _ => None,
        }
    }

    /// Ends every still-open subscription of a proxy insight at `now`; returns how many.
    pub fn close_open_subscriptions(&mut self, now: DateTime<Utc>) -> usize {
        self.close_open_subscriptions_of(now, |_| true)
    }

    /// Ends at `now` the still-open subscriptions of a proxy insight held by a control-plane
    /// instance that `dead` names (by its id); returns how many.
    pub fn close_open_subscriptions_of(
        &mut self,
        now: DateTime<Utc>,
        dead: impl Fn(&str) -> bool,
    ) -> usize {
        let Some(subscriptions) = self.proxy_subscriptions_mut() else {
            return 0;
        };
        let mut closed = 0;
        for sub in subscriptions
            .iter_mut()
            .filter(|s| s.disconnect_time.is_none() && dead(&s.control_plane_instance_id))
        {
            sub.disconnect_time = Some(now);
            closed += 1;
        }
        closed
    }

    /// When a proxy insight's proxy went away for good: the latest end of its subscriptions
    /// when every one has ended. `None` while any is open, when it never connected, and for
    /// other types.
    pub fn offline_since(&self) -> Option<DateTime<Utc>> {
        let subscriptions = self.proxy_subscriptions()?;
        subscriptions
            .iter()
            .map(|s| s.disconnect_time)
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .max()
    }

    pub fn resource_type(&self) -> ResourceType {
        match self {
            Spec::Mesh(_) => ResourceType::Mesh,
            Spec::Dataplane(_) => ResourceType::Dataplane,
            Spec::DataplaneInsight(_) => ResourceType::DataplaneInsight,
            Spec::ZoneIngress(_) => ResourceType::ZoneIngress,
            Spec::ZoneEgress(_) => ResourceType::ZoneEgress,
            Spec::ZoneIngressInsight(_) => ResourceType::ZoneIngressInsight,
            Spec::ZoneEgressInsight(_) => ResourceType::ZoneEgressInsight,
            Spec::Zone(_) => ResourceType::Zone,
            Spec::ZoneInsight(_) => ResourceType::ZoneInsight,
            Spec::Secret(_) => ResourceType::Secret,
            Spec::GlobalSecret(_) => ResourceType::GlobalSecret,
            Spec::ServiceInsight(_) => ResourceType::ServiceInsight,
            Spec::Config(_) => ResourceType::Config,
            Spec::VirtualOutbound(_) => ResourceType::VirtualOutbound,
            Spec::ExternalService(_) => ResourceType::ExternalService,
            Spec::Policy(p) => p.resource_type(),
        }
    }

    /// A spec of `resource_type` with every field at its default (for tests that need one
    /// resource of every type; not necessarily valid).
    pub fn default_for(resource_type: ResourceType) -> Spec {
        match resource_type {
            ResourceType::Mesh => Spec::Mesh(Default::default()),
            ResourceType::Dataplane => Spec::Dataplane(Default::default()),
            ResourceType::DataplaneInsight => Spec::DataplaneInsight(Default::default()),
            ResourceType::ZoneIngress => Spec::ZoneIngress(Default::default()),
            ResourceType::ZoneEgress => Spec::ZoneEgress(Default::default()),
            ResourceType::ZoneIngressInsight => Spec::ZoneIngressInsight(Default::default()),
            ResourceType::ZoneEgressInsight => Spec::ZoneEgressInsight(Default::default()),
            ResourceType::Zone => Spec::Zone(Default::default()),
            ResourceType::ZoneInsight => Spec::ZoneInsight(Default::default()),
            ResourceType::Secret => Spec::Secret(Default::default()),
            ResourceType::GlobalSecret => Spec::GlobalSecret(Default::default()),
            ResourceType::ServiceInsight => Spec::ServiceInsight(Default::default()),
            ResourceType::Config => Spec::Config(Default::default()),
            ResourceType::VirtualOutbound => Spec::VirtualOutbound(Default::default()),
            ResourceType::ExternalService => Spec::ExternalService(Default::default()),
            policy => match PolicyConf::default_for(policy) {
                Some(conf) => Spec::Policy(conf),
                None => Spec::Config(Default::default()),
            },
        }
    }

    /// Parses the spec fields of a type. Errors carry the field path.
    pub fn from_fields(resource_type: ResourceType, fields: Value) -> Result<Spec, Violation> {
        Ok(match resource_type {
            ResourceType::Mesh => Spec::Mesh(typed(fields)?),
            ResourceType::Dataplane => Spec::Dataplane(typed(fields)?),
            ResourceType::DataplaneInsight => Spec::DataplaneInsight(typed(fields)?),
            ResourceType::ZoneIngress => Spec::ZoneIngress(typed(fields)?),
            ResourceType::ZoneEgress => Spec::ZoneEgress(typed(fields)?),
            ResourceType::ZoneIngressInsight => Spec::ZoneIngressInsight(typed(fields)?),
            ResourceType::ZoneEgressInsight => Spec::ZoneEgressInsight(typed(fields)?),
            ResourceType::Zone => Spec::Zone(typed(fields)?),
            ResourceType::ZoneInsight => Spec::ZoneInsight(typed(fields)?),
            ResourceType::Secret => Spec::Secret(typed(fields)?),
            ResourceType::GlobalSecret => Spec::GlobalSecret(typed(fields)?),
            ResourceType::ServiceInsight => Spec::ServiceInsight(typed(fields)?),
            ResourceType::Config => Spec::Config(typed(fields)?),
            ResourceType::VirtualOutbound => Spec::VirtualOutbound(typed(fields)?),
            ResourceType::ExternalService => Spec::ExternalService(typed(fields)?),
            policy => Spec::Policy(PolicyConf::from_fields(policy, fields)?),
        })
    }

    /// Parses spec fields from JSON text (as [`Resource::spec_json`] writes them), without an
    /// intermediate JSON tree.
    pub fn from_json(resource_type: ResourceType, text: &str) -> Result<Spec, Violation> {
        Ok(match resource_type {
            ResourceType::Mesh => Spec::Mesh(typed_str(text)?),
            ResourceType::Dataplane => Spec::Dataplane(typed_str(text)?),
            ResourceType::DataplaneInsight => Spec::DataplaneInsight(typed_str(text)?),
            ResourceType::ZoneIngress => Spec::ZoneIngress(typed_str(text)?),
            ResourceType::ZoneEgress => Spec::ZoneEgress(typed_str(text)?),
            ResourceType::ZoneIngressInsight => Spec::ZoneIngressInsight(typed_str(text)?),
            ResourceType::ZoneEgressInsight => Spec::ZoneEgressInsight(typed_str(text)?),
            ResourceType::Zone => Spec::Zone(typed_str(text)?),
            ResourceType::ZoneInsight => Spec::ZoneInsight(typed_str(text)?),
            ResourceType::Secret => Spec::Secret(typed_str(text)?),
            ResourceType::GlobalSecret => Spec::GlobalSecret(typed_str(text)?),
            ResourceType::ServiceInsight => Spec::ServiceInsight(typed_str(text)?),
            ResourceType::Config => Spec::Config(typed_str(text)?),
            ResourceType::VirtualOutbound => Spec::VirtualOutbound(typed_str(text)?),
            ResourceType::ExternalService => Spec::ExternalService(typed_str(text)?),
            policy => Spec::Policy(PolicyConf::from_json(policy, text)?),
        })
    }
}

pub(crate) fn typed_str<T: DeserializeOwned>(text: &str) -> Result<T, Violation> {
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        Violation::new(field, strip_serde_position(&e.into_inner().to_string()))
    })
}

pub(crate) fn typed<T: DeserializeOwned>(fields: Value) -> Result<T, Violation> {
    serde_path_to_error::deserialize(fields).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        Violation::new(field, strip_serde_position(&e.into_inner().to_string()))
    })
}

fn strip_serde_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// Serializes the spec fields of whichever type it is.
impl Serialize for Spec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Spec::Mesh(x) => x.serialize(s),
            Spec::Dataplane(x) => x.serialize(s),
            Spec::DataplaneInsight(x) => x.serialize(s),
            Spec::ZoneIngress(x) => x.serialize(s),
            Spec::ZoneEgress(x) => x.serialize(s),
            Spec::ZoneIngressInsight(x) | Spec::ZoneEgressInsight(x) => x.serialize(s),
            Spec::Zone(x) => x.serialize(s),
            Spec::ZoneInsight(x) => x.serialize(s),
            Spec::Secret(x) | Spec::GlobalSecret(x) => x.serialize(s),
            Spec::ServiceInsight(x) => x.serialize(s),
            Spec::Config(x) => x.serialize(s),
            Spec::VirtualOutbound(x) => x.serialize(s),
            Spec::ExternalService(x) => x.serialize(s),
            // `{"spec": {...}}`: a policy's output keeps Kuma's `spec:` level.
            Spec::Policy(x) => x.serialize(s),
        }
    }
}

/// The wire shape of a resource: meta fields first, then the spec fields inline.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a> {
    #[serde(rename = "type")]
    resource_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    mesh: Option<&'a str>,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    creation_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    modification_time: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: &'a BTreeMap<String, String>,
    #[serde(flatten)]
    spec: &'a Spec,
}

impl Serialize for Resource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let rt = self.resource_type();
        Wire {
            resource_type: rt.name(),
            mesh: rt.is_mesh_scoped().then_some(self.meta.mesh.as_str()),
            name: &self.meta.name,
            creation_time: self.meta.creation_time.map(format_time),
            modification_time: self.meta.modification_time.map(format_time),
            labels: &self.meta.labels,
            spec: &self.spec,
        }
        .serialize(s)
    }
}

/// A resource: meta plus typed spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub meta: Meta,
    pub spec: Spec,
}

impl Resource {
    pub fn new(meta: Meta, spec: Spec) -> Self {
        Resource { meta, spec }
    }

    pub fn resource_type(&self) -> ResourceType {
        self.spec.resource_type()
    }

    pub fn key(&self) -> ResourceKey {
        ResourceKey::new(self.resource_type(), &self.meta.mesh, &self.meta.name)
    }

    /// The Universal JSON form: `type`, `mesh` (mesh-scoped only), `name`, times, `labels`, then
    /// the spec fields inline. Same as serializing the resource.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// The spec fields alone, as JSON text (what the store persists).
    pub fn spec_json(&self) -> String {
        serde_json::to_string(&self.spec).unwrap_or_else(|_| "{}".into())
    }

    pub fn to_yaml(&self) -> String {
        to_yaml_string(&self.to_value())
    }

    /// Parses the Universal form. Spec fields may be inline (Kuma's Universal form) or nested
    /// under `spec:` (as the seed's `Zone` example writes them). Only structure is checked here;
    /// call [`crate::validate`] for the rules.
    pub fn from_value(value: Value) -> Result<Resource, Violations> {
        let Value::Object(mut map) = value else {
            return Err(Violations::one("", "a resource must be a map of fields"));
        };
        let mut violations = Violations::default();
        let type_name = match map.remove("type") {
            Some(Value::String(s)) => s,
            Some(_) => return Err(Violations::one("type", "must be a string")),
            None => return Err(Violations::one("type", "field is required")),
        };
        let resource_type: ResourceType = type_name
            .parse()
            .map_err(|e: crate::descriptor::UnknownType| Violations::one("type", e.to_string()))?;
        let name = take_string(&mut map, "name", &mut violations);
        let mesh = take_string(&mut map, "mesh", &mut violations);
        let labels = match map.remove("labels") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(v) => match serde_json::from_value::<BTreeMap<String, String>>(v) {
                Ok(l) => l,
                Err(_) => {
                    violations.push("labels", "must be a map of strings to strings");
                    BTreeMap::new()
                }
            },
        };
        let creation_time = take_time(&mut map, "creationTime", &mut violations);
        let modification_time = take_time(&mut map, "modificationTime", &mut violations);
        if resource_type.descriptor().policy {
            // A policy keeps its `spec:` level (Kuma's form); fields given inline go under it.
            if !map.contains_key("spec") && !map.is_empty() {
                map = Map::from_iter([("spec".to_string(), Value::Object(map))]);
            }
        } else if let Some(Value::Object(nested)) = map.remove("spec") {
            for (k, v) in nested {
                if map.contains_key(&k) {
                    violations.push(
                        format!("spec.{k}"),
                        "field is given both inline and under spec",
                    );
                }
                map.insert(k, v);
            }
        }
        let spec = match Spec::from_fields(resource_type, Value::Object(map)) {
            Ok(spec) => Some(spec),
            Err(v) => {
                violations.violations.push(v);
                None
            }
        };
        violations.into_result()?;
        let mesh = mesh.unwrap_or_default();
        let spec = spec.ok_or_else(|| Violations::one("", "spec could not be parsed"))?;
        Ok(Resource {
            meta: Meta {
                name: name.unwrap_or_default(),
                mesh,
                labels,
                version: 0,
                creation_time,
                modification_time,
                owner: None,
            },
            spec,
        })
    }
}

fn take_string(map: &mut Map<String, Value>, key: &str, v: &mut Violations) -> Option<String> {
    match map.remove(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            v.push(key, "must be a string");
            None
        }
    }
}

fn take_time(map: &mut Map<String, Value>, key: &str, v: &mut Violations) -> Option<DateTime<Utc>> {
    match map.remove(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match DateTime::parse_from_rfc3339(&s) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => {
                v.push(key, "must be an RFC 3339 time");
                None
            }
        },
        Some(_) => {
            v.push(key, "must be an RFC 3339 time");
            None
        }
    }
}

pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Renders any serializable value as YAML.
pub fn to_yaml_string<T: Serialize>(value: &T) -> String {
    serde_norway::to_string(value).unwrap_or_default()
}

/// Why a document could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("document {index}: not valid YAML: {message}")]
    Syntax { index: usize, message: String },
    #[error("document {index}: {violations}")]
    Invalid {
        index: usize,
        violations: Violations,
    },
}

/// Splits a YAML (or JSON) text into its documents, as JSON values. Empty documents are skipped.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, DocumentError> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|e| DocumentError::Syntax {
            index: i + 1,
            message: e.to_string(),
        })?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_specs_have_their_type_and_proxy_insights_are_found() {
        for t in ResourceType::all() {
            assert_eq!(Spec::default_for(t).resource_type(), t);
        }
        assert_eq!(
            proxy_insight_types(),
            [
                ResourceType::DataplaneInsight,
                ResourceType::ZoneIngressInsight,
                ResourceType::ZoneEgressInsight,
            ]
        );
    }

    #[test]
    fn a_proxy_is_offline_since_its_last_subscription_ended() {
        use crate::specs::{DataplaneInsightSpec, DiscoverySubscription};
        let at = |s: i64| DateTime::from_timestamp(1_800_000_000 + s, 0);
        let sub = |ended: Option<i64>| DiscoverySubscription {
            id: "s".into(),
            connect_time: at(0),
            disconnect_time: ended.and_then(at),
            ..Default::default()
        };
        // When each subscription ended (None: still open).
        type Ends = &'static [Option<i64>];
        // (case, its subscriptions' ends, offline since)
        let cases: [(&str, Ends, Option<i64>); 5] = [
            ("never connected", &[], None),
            ("connected", &[None], None),
            ("gone", &[Some(10)], Some(10)),
            ("gone twice: the later end", &[Some(30), Some(10)], Some(30)),
            ("one stream still open", &[Some(10), None], None),
        ];
        for (case, ends, want) in cases {
            let spec = Spec::DataplaneInsight(DataplaneInsightSpec {
                subscriptions: ends.iter().map(|end| sub(*end)).collect(),
                ..Default::default()
            });
            assert_eq!(spec.offline_since(), want.and_then(at), "{case}");
        }
        assert_eq!(Spec::default_for(ResourceType::Mesh).offline_since(), None);
    }

    #[test]
    fn spec_fields_under_spec_are_hoisted() {
        let v: Value =
            serde_norway::from_str("type: Zone\nname: zone-1\nspec:\n  enabled: false\n")
                .expect("yaml");
        let r = Resource::from_value(v).expect("valid");
        assert_eq!(
            r.spec,
            Spec::Zone(ZoneSpec {
                enabled: Some(false)
            })
        );
        assert_eq!(r.meta.name, "zone-1");
    }

    #[test]
    fn unknown_field_names_its_path() {
        let v: Value = serde_norway::from_str(
            "type: Dataplane\nmesh: default\nname: a\nnetworking:\n  address: 1.1.1.1\n  bogus: 1\n",
        )
        .expect("yaml");
        let err = Resource::from_value(v).unwrap_err();
        let first = &err.violations[0];
        assert_eq!(first.field, "networking.bogus");
        assert!(first.message.contains("unknown field"), "{}", first.message);
    }

    #[test]
    fn multi_document_text() {
        let docs =
            parse_documents("type: Mesh\nname: a\n---\n---\ntype: Mesh\nname: b\n").expect("ok");
        assert_eq!(docs.len(), 2);
        assert!(matches!(
            parse_documents("type: [").unwrap_err(),
            DocumentError::Syntax { index: 1, .. }
        ));
    }
}
