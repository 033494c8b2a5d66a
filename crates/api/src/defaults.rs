//! What a control plane creates with a new Mesh: its initial policies
//! (`meshzone_model::policies::initial_policies`), on global and on a standalone zone only (a
//! federated zone receives global's). Called once, when the Mesh is created, so a user who
//! deletes one keeps it deleted.

use meshzone_model::{CpRole, Resource, ResourceKey, Spec};
use meshzone_store::{Store, StoreError};

/// Creates the initial policies of the newly created `mesh`; returns the keys it created. One
/// that already exists is left as it is.
pub async fn create_initial_policies(
    store: &Store,
    role: CpRole,
    mesh: &Resource,
) -> Result<Vec<ResourceKey>, StoreError> {
    let Spec::Mesh(spec) = &mesh.spec else {
        return Ok(Vec::new());
    };
    if role == CpRole::FederatedZone {
        return Ok(Vec::new());
    }
    let mut created = Vec::new();
    for policy in meshzone_model::policies::initial_policies(&mesh.meta.name, spec) {
        match store.create(policy).await {
            Ok(r) => created.push(r.key()),
            Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(created)
}
