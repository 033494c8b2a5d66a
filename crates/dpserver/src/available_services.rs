//! Keeps the `availableServices` of the zone's own ZoneIngresses equal to what the zone's
//! healthy inbounds offer, on every change (no polling), plus the ExternalServices tagged with
//! this zone in meshes with `routing.zoneEgress` (`externalService: true`: other zones reach
//! them through this zone's ingress and egress). KDS carries them to global and on to the
//! other zones, which turn them into endpoints.

use meshzone_model::insights::available_services;
use meshzone_model::{ResourceType, Spec};
use meshzone_store::{Store, StoreError};
use tracing::warn;

async fn refresh(store: &Store, zone: Option<&str>) -> Result<(), StoreError> {
    let dataplanes = store.list_all(ResourceType::Dataplane).await?;
    let mut offered = available_services(dataplanes.iter().filter_map(|r| match &r.spec {
        Spec::Dataplane(d) => Some((r.meta.mesh.as_str(), d)),
        _ => None,
    }));
    if let Some(zone) = zone {
        let meshes = store.list(ResourceType::Mesh, None).await?;
        let external = store.list(ResourceType::ExternalService, None).await?;
        offered.extend(crate::external_services::offered_by_zone(
            &meshes, &external, zone,
        ));
    }
    for mut ingress in store.list(ResourceType::ZoneIngress, None).await? {
        // Copies of other zones' ingresses (synced from global) are not ours to change.
        if ingress
            .meta
            .labels
            .get("kuma.io/origin")
            .map(String::as_str)
            == Some("global")
        {
            continue;
        }
        let Spec::ZoneIngress(spec) = &mut ingress.spec else {
            continue;
        };
        if spec.available_services == offered {
            continue;
        }
        spec.available_services = offered.clone();
        match store.update(ingress).await {
            Ok(_) | Err(StoreError::NotFound(_)) => {}
            // Someone changed it meanwhile; the resulting event brings us back here.
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Runs until the store closes. `zone`: this zone's name (its ExternalServices are offered).
pub async fn maintain(store: Store, zone: Option<String>) {
    let mut events = store.subscribe();
    loop {
        let started = std::time::Instant::now();
        if let Err(e) = refresh(&store, zone.as_deref()).await {
            warn!(error = %e, "cannot update the zone ingresses' available services");
        }
        if !meshzone_store::changed_paced(
            &mut events,
            &[
                ResourceType::Dataplane,
                ResourceType::ZoneIngress,
                ResourceType::Mesh,
                ResourceType::ExternalService,
            ],
            started.elapsed(),
        )
        .await
        {
            return;
        }
    }
}
