//! The start of a proxy's ADS stream: which proxy it is (sidecar or zone proxy), whether its
//! token lets it in, and registering (later deregistering) the resource it sent.

use std::sync::Arc;
use std::time::SystemTime;

use meshzone_identity::{verify_dataplane_token, verify_zone_token};
use meshzone_model::specs::ZONE_TAG;
use meshzone_model::{Resource, ResourceKey, ResourceType, Spec, parse_documents};
use meshzone_store::StoreError;
use meshzone_xds::envoy_types::pb::envoy::config::core::v3::Node;
use meshzone_xds::envoy_types::pb::google::protobuf::value::Kind;
use meshzone_xds::names::parse_node_id;
use tonic::Status;
use tracing::{info, warn};

use crate::Shared;

/// A refused token is final (`UNAUTHENTICATED`: the proxy stops), except one signed with a key
/// this zone does not know yet: a key created on global moments ago may still be on its way down
/// over KDS, so the proxy is told to retry (`UNAVAILABLE`).
fn token_refusal(e: &meshzone_pki::TokenError, message: String) -> Status {
    match e {
        meshzone_pki::TokenError::UnknownKey(_) => Status::unavailable(format!(
            "{message}; a key just created on global may not have reached this zone yet: retry"
        )),
        _ => Status::unauthenticated(message),
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// Node metadata key carrying the proxy's Dataplane (JSON or YAML) when it registers itself.
pub const DATAPLANE_METADATA_KEY: &str = "dataplane.resource";

/// Node metadata key saying which kind of proxy connects: `dataplane` (default), `ingress` or
/// `egress`. Zone proxies use their resource name as node id (they belong to no mesh).
pub const PROXY_TYPE_METADATA_KEY: &str = "dataplane.proxyType";

/// What kind of proxy a stream serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyKind {
    Dataplane,
    Ingress,
    Egress,
}

impl ProxyKind {
    pub(crate) fn resource_type(self) -> ResourceType {
        match self {
            ProxyKind::Dataplane => ResourceType::Dataplane,
            ProxyKind::Ingress => ResourceType::ZoneIngress,
            ProxyKind::Egress => ResourceType::ZoneEgress,
        }
    }

    /// Where the proxy's subscriptions are recorded.
    pub(crate) fn insight_type(self) -> ResourceType {
        match self {
            ProxyKind::Dataplane => ResourceType::DataplaneInsight,
            ProxyKind::Ingress => ResourceType::ZoneIngressInsight,
            ProxyKind::Egress => ResourceType::ZoneEgressInsight,
        }
    }

    /// Zone-token scope a zone proxy must hold.
    pub(crate) fn scope(self) -> &'static str {
        match self {
            ProxyKind::Dataplane => "dataplane",
            ProxyKind::Ingress => "ingress",
            ProxyKind::Egress => "egress",
        }
    }
}

pub(crate) fn metadata_string(node: &Node, key: &str) -> Option<String> {
    node.metadata.as_ref().and_then(|m| {
        m.fields.get(key).and_then(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
    })
}

/// The bearer token of a proxy's new stream (ADS or admin) and the stream itself; refused with
/// `UNAVAILABLE` once this control plane is stopping.
pub(crate) fn admit<T>(shared: &Shared, request: tonic::Request<T>) -> Result<(String, T), Status> {
    let token = meshzone_identity::bearer_token(meshzone_tls_client::bearer::authorization(
        request.metadata(),
    ));
    if shared.shutdown.has_begun() {
        return Err(crate::stream::shutting_down());
    }
    Ok((token, request.into_inner()))
}

/// Which proxy connects, checked against its credentials.
pub(crate) async fn identify(
    shared: &Shared,
    token: &str,
    node: &Node,
) -> Result<(ProxyKind, ResourceKey), Status> {
    let kind = match metadata_string(node, PROXY_TYPE_METADATA_KEY).as_deref() {
        None | Some("dataplane") => ProxyKind::Dataplane,
        Some("ingress") => ProxyKind::Ingress,
        Some("egress") => ProxyKind::Egress,
        Some(other) => {
            return Err(Status::invalid_argument(format!(
                "node metadata {PROXY_TYPE_METADATA_KEY} is {other:?}; expected dataplane, ingress or egress"
            )));
        }
    };
    let store = &shared.store;
    if kind != ProxyKind::Dataplane {
        let name = node.id.clone();
        if name.is_empty() {
            return Err(Status::invalid_argument(
                "a zone proxy needs a node id (its name)",
            ));
        }
        let Some(zone) = &shared.settings.zone else {
            return Err(Status::failed_precondition(format!(
                "zone {} {name:?} refused: zone proxies need a zone control plane (set KUMA_MULTIZONE_ZONE_NAME)",
                kind.scope()
            )));
        };
        if shared.settings.require_token {
            verify_zone_token(store, token, zone, kind.scope(), SystemTime::now())
                .await
                .map_err(|e| {
                    warn!(name, kind = kind.scope(), reason = %e, "refused a zone proxy");
                    token_refusal(&e, format!("zone {} {name} refused: {e}", kind.scope()))
                })?;
        }
        return Ok((kind, ResourceKey::global(kind.resource_type(), &name)));
    }
    let (mesh, name) = parse_node_id(&node.id).ok_or_else(|| {
        Status::invalid_argument(format!(
            "node id {:?} must be <mesh>.<dataplane name>",
            node.id
        ))
    })?;
    let mesh_key = ResourceKey::global(ResourceType::Mesh, mesh);
    if store.find(&mesh_key).await.map_err(internal)?.is_none() {
        return Err(Status::not_found(format!("mesh {mesh:?} does not exist")));
    }
    if shared.settings.require_token {
        verify_dataplane_token(store, token, mesh, name, SystemTime::now())
            .await
            .map_err(|e| {
                warn!(mesh, name, reason = %e, "refused a data plane proxy");
                token_refusal(&e, format!("data plane {mesh}.{name} refused: {e}"))
            })?;
    }
    Ok((kind, ResourceKey::new(ResourceType::Dataplane, mesh, name)))
}

/// Creates or updates the resource a proxy sent (Dataplane, ZoneIngress or ZoneEgress), after
/// checking it names the same proxy. A ZoneIngress keeps the available services the CP computed.
pub(crate) async fn register(shared: &Shared, key: &ResourceKey, text: &str) -> Result<(), Status> {
    let bad = |m: String| Status::invalid_argument(format!("{} resource: {m}", key.resource_type));
    let mut value = parse_documents(text)
        .map_err(|e| bad(e.to_string()))?
        .into_iter()
        .next()
        .ok_or_else(|| bad("empty".into()))?;
    if let Some(o) = value.as_object_mut() {
        o.entry("type")
            .or_insert_with(|| key.resource_type.to_string().into());
        if key.resource_type.is_mesh_scoped() {
            o.entry("mesh").or_insert_with(|| key.mesh.clone().into());
        }
        o.entry("name").or_insert_with(|| key.name.clone().into());
    }
    let mut resource = Resource::from_value(value).map_err(|v| bad(v.to_string()))?;
    if resource.key() != *key {
        return Err(bad(format!(
            "it describes {}, but the proxy connected as {key}",
            resource.key()
        )));
    }
    if let (Some(zone), Spec::Dataplane(dp)) = (&shared.settings.zone, &mut resource.spec) {
        for inbound in &mut dp.networking.inbound {
            inbound.tags.insert(ZONE_TAG.into(), zone.clone());
        }
    }
    meshzone_model::validate(&resource).map_err(|v| bad(v.to_string()))?;
    let store = &shared.store;
    loop {
        let stored = store.find(key).await.map_err(internal)?;
        if let (
            Some(Resource {
                spec: Spec::ZoneIngress(old),
                ..
            }),
            Spec::ZoneIngress(new),
        ) = (&stored, &mut resource.spec)
        {
            new.available_services = old.available_services.clone();
        }
        let result = match stored {
            None => store.create(resource.clone()).await.map(|_| ()),
            Some(stored)
                if stored.spec == resource.spec && stored.meta.labels == resource.meta.labels =>
            {
                return Ok(());
            }
            Some(stored) => {
                let mut next = resource.clone();
                next.meta.version = stored.meta.version;
                store.update(next).await.map(|_| ())
            }
        };
        match result {
            Ok(()) => return Ok(()),
            Err(StoreError::AlreadyExists(_) | StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(internal(e)),
        }
    }
}

pub(crate) fn deregister_later(shared: Arc<Shared>, key: ResourceKey, generation: u64) {
    tokio::spawn(async move {
        tokio::time::sleep(shared.settings.deregistration_delay).await;
        if !shared.still_owner(&key, generation) {
            return;
        }
        match shared.store.delete(&key, None).await {
            Ok(_) => info!(%key, "deregistered a data plane proxy that went away"),
            Err(StoreError::NotFound(_)) => {}
            Err(e) => warn!(%key, error = %e, "could not deregister"),
        }
    });
}
