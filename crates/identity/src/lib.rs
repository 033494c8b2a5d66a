//! Identity material kept in the store: the builtin CA of each mesh (created once, never
//! regenerated while it exists), workload certificates issued from it, and data-plane tokens
//! (signing keys per mesh, issuance, verification with reasons, revocation).
//!
//! Secrets live as mesh-scoped `Secret` resources, so they are durable and (later) synced from
//! global to zones. Nothing here logs key material.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use base64::Engine;
use meshzone_model::specs::{MeshSpec, SecretSpec};
use meshzone_model::validate::parse_duration;
use meshzone_model::{Meta, Resource, ResourceKey, ResourceType, Spec};
use meshzone_pki::{CertifiedKey, SigningKey, TokenError, VerifyingKey};
use meshzone_store::{Backend, Store, StoreError};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pki(#[from] meshzone_pki::PkiError),
    #[error("secret {0} is damaged: {1}")]
    Damaged(String, String),
    #[error("mesh {0:?} has no builtin mTLS backend enabled")]
    NoBuiltinCa(String),
}

type Result<T, E = IdentityError> = std::result::Result<T, E>;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Default lifetime of workload certificates.
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

fn secret(mesh: &str, name: &str, data: &[u8]) -> Resource {
    Resource::new(
        Meta::named(name, mesh),
        Spec::Secret(SecretSpec {
            data: B64.encode(data),
        }),
    )
}

fn secret_bytes(r: &Resource) -> Result<Vec<u8>> {
    match &r.spec {
        Spec::Secret(s) => B64
            .decode(s.data.as_bytes())
            .map_err(|e| IdentityError::Damaged(r.key().to_string(), e.to_string())),
        _ => Err(IdentityError::Damaged(
            r.key().to_string(),
            "not a Secret".into(),
        )),
    }
}

async fn read_secret<B: Backend>(
    store: &Store<B>,
    mesh: &str,
    name: &str,
) -> Result<Option<Vec<u8>>> {
    match store
        .find(&ResourceKey::new(ResourceType::Secret, mesh, name))
        .await?
    {
        Some(r) => Ok(Some(secret_bytes(&r)?)),
        None => Ok(None),
    }
}

/// Secret name of a mesh's builtin CA (certificate and key, PEM, in one secret).
pub fn ca_secret_name(mesh: &str, backend: &str) -> String {
    format!("{mesh}.ca-builtin-{backend}")
}

#[derive(Serialize, Deserialize)]
struct StoredCa {
    cert: String,
    key: String,
}

/// The enabled builtin backend of a mesh, if mTLS is on with one.
pub fn builtin_backend(mesh: &MeshSpec) -> Option<&str> {
    mesh.enabled_mtls_backend()
        .filter(|b| b.backend_type == "builtin")
        .map(|b| b.name.as_str())
}

/// Workload certificate lifetime from `dpCert.rotation.expiration` of the enabled backend.
pub fn cert_lifetime(mesh: &MeshSpec) -> Duration {
    mesh.enabled_mtls_backend()
        .and_then(|b| b.dp_cert.as_ref())
        .and_then(|d| d.rotation.as_ref())
        .and_then(|r| parse_duration(&r.expiration))
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_CERT_LIFETIME)
}

/// Returns the mesh's CA, creating it the first time. Concurrent callers end with the same CA:
/// the first create wins and the others read it.
pub async fn ensure_mesh_ca<B: Backend>(
    store: &Store<B>,
    mesh: &str,
    spec: &MeshSpec,
    now: SystemTime,
) -> Result<CertifiedKey> {
    let backend = builtin_backend(spec).ok_or_else(|| IdentityError::NoBuiltinCa(mesh.into()))?;
    let name = ca_secret_name(mesh, backend);
    if let Some(bytes) = read_secret(store, mesh, &name).await? {
        return decode_ca(&name, &bytes);
    }
    let ca = meshzone_pki::generate_ca(mesh, CA_LIFETIME, now)?;
    let stored = serde_json::to_vec(&StoredCa {
        cert: ca.cert_pem.clone(),
        key: ca.key_pem.clone(),
    })
    .map_err(|e| IdentityError::Damaged(name.clone(), e.to_string()))?;
    match store.create(secret(mesh, &name, &stored)).await {
        Ok(_) => {
            tracing::info!(mesh, backend, "created the mesh CA");
            Ok(ca)
        }
        Err(StoreError::AlreadyExists(_)) => {
            let bytes = read_secret(store, mesh, &name)
                .await?
                .ok_or_else(|| IdentityError::Damaged(name.clone(), "vanished".into()))?;
            decode_ca(&name, &bytes)
        }
        Err(e) => Err(e.into()),
    }
}

fn decode_ca(name: &str, bytes: &[u8]) -> Result<CertifiedKey> {
    let ca: StoredCa = serde_json::from_slice(bytes)
        .map_err(|e| IdentityError::Damaged(name.into(), e.to_string()))?;
    Ok(CertifiedKey {
        cert_pem: ca.cert,
        key_pem: ca.key,
    })
}

// ---------------------------------------------------------------------------------------------
// Data-plane tokens

/// Prefix of the per-mesh token signing keys; the suffix is a serial (rotation adds a higher one).
pub const SIGNING_KEY_PREFIX: &str = "dataplane-token-signing-key-";
/// Per-mesh list of revoked token ids (comma-separated).
pub const REVOCATIONS: &str = "dataplane-token-revocations";

/// What a data-plane token asserts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataplaneClaims {
    /// Token id, for revocation.
    pub jti: String,
    pub mesh: String,
    /// Empty: any name in the mesh.
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub proxy_type: String,
    #[serde(default)]
    pub tags: BTreeMap<String, Vec<String>>,
    pub iat: u64,
    pub exp: u64,
}

impl meshzone_pki::Expiring for DataplaneClaims {
    fn exp(&self) -> u64 {
        self.exp
    }
}

/// A request for a token (`POST /tokens/dataplane`, `kumactl generate dataplane-token`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataplaneTokenRequest {
    pub mesh: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub proxy_type: String,
    #[serde(default)]
    pub tags: BTreeMap<String, Vec<String>>,
    /// Duration such as `24h`; default 10 years, as Kuma's.
    #[serde(default)]
    pub valid_for: String,
}

async fn signing_keys<B: Backend>(store: &Store<B>, mesh: &str) -> Result<Vec<(u64, SigningKey)>> {
    let mut keys = Vec::new();
    for r in store.list(ResourceType::Secret, Some(mesh)).await? {
        let Some(serial) = r
            .meta
            .name
            .strip_prefix(SIGNING_KEY_PREFIX)
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        let pem = String::from_utf8(secret_bytes(&r)?)
            .map_err(|e| IdentityError::Damaged(r.key().to_string(), e.to_string()))?;
        keys.push((
            serial,
            SigningKey {
                key_id: serial.to_string(),
                private_pem: pem,
            },
        ));
    }
    keys.sort_by_key(|(s, _)| *s);
    Ok(keys)
}

/// Adds a new signing key with the next serial; new tokens are signed with it, old tokens stay
/// valid until their key is deleted.
pub async fn rotate_signing_key<B: Backend>(store: &Store<B>, mesh: &str) -> Result<SigningKey> {
    let next = signing_keys(store, mesh)
        .await?
        .last()
        .map_or(1, |(s, _)| s + 1);
    let key = SigningKey::generate(&next.to_string())?;
    let name = format!("{SIGNING_KEY_PREFIX}{next}");
    store
        .create(secret(mesh, &name, key.private_pem.as_bytes()))
        .await?;
    Ok(key)
}

/// Issues a data-plane token, creating the mesh's first signing key if there is none.
pub async fn issue_dataplane_token<B: Backend>(
    store: &Store<B>,
    req: &DataplaneTokenRequest,
    now: SystemTime,
) -> Result<String, String> {
    let valid_for = if req.valid_for.is_empty() {
        Duration::from_secs(10 * 365 * 24 * 3600)
    } else {
        parse_duration(&req.valid_for)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                format!(
                    "validFor: {:?} is not a duration such as 24h",
                    req.valid_for
                )
            })?
    };
    let mesh_key = ResourceKey::global(ResourceType::Mesh, &req.mesh);
    if store
        .find(&mesh_key)
        .await
        .map_err(|e| e.to_string())?
        .is_none()
    {
        return Err(format!("mesh: mesh {:?} does not exist", req.mesh));
    }
    let key = match signing_keys(store, &req.mesh)
        .await
        .map_err(|e| e.to_string())?
        .pop()
    {
        Some((_, k)) => k,
        None => match rotate_signing_key(store, &req.mesh).await {
            Ok(k) => k,
            // Another request created the first key at the same moment: use it.
            Err(IdentityError::Store(StoreError::AlreadyExists(_))) => {
                signing_keys(store, &req.mesh)
                    .await
                    .map_err(|e| e.to_string())?
                    .pop()
                    .map(|(_, k)| k)
                    .ok_or("signing key vanished")?
            }
            Err(e) => return Err(e.to_string()),
        },
    };
    let iat = meshzone_pki::unix(now);
    let claims = DataplaneClaims {
        jti: uuid::Uuid::new_v4().to_string(),
        mesh: req.mesh.clone(),
        name: req.name.clone(),
        proxy_type: req.proxy_type.clone(),
        tags: req.tags.clone(),
        iat,
        exp: iat + valid_for.as_secs(),
    };
    meshzone_pki::sign_token(&claims, &key).map_err(|e| e.to_string())
}

/// Checks a data-plane token presented for the proxy `name` in `mesh`.
pub async fn verify_dataplane_token<B: Backend>(
    store: &Store<B>,
    token: &str,
    mesh: &str,
    name: &str,
    now: SystemTime,
) -> Result<DataplaneClaims, TokenError> {
    let keys: Vec<VerifyingKey> = signing_keys(store, mesh)
        .await
        .map_err(|e| TokenError::Malformed(e.to_string()))?
        .into_iter()
        .filter_map(|(_, k)| {
            k.public_pem().ok().map(|public_pem| VerifyingKey {
                key_id: k.key_id.clone(),
                public_pem,
            })
        })
        .collect();
    if keys.is_empty() && !token.trim().is_empty() {
        return Err(TokenError::Mismatch(format!(
            "mesh {mesh:?} has no token signing key: this token was not issued for this mesh"
        )));
    }
    let claims: DataplaneClaims = meshzone_pki::verify_token(token, &keys, now)?;
    if claims.mesh != mesh {
        return Err(TokenError::Mismatch(format!(
            "token is for mesh {:?}, but the proxy is in mesh {mesh:?}",
            claims.mesh
        )));
    }
    if !claims.name.is_empty() && claims.name != name {
        return Err(TokenError::Mismatch(format!(
            "token is for data plane {:?}, but the proxy is {name:?}",
            claims.name
        )));
    }
    let revoked = read_secret(store, mesh, REVOCATIONS)
        .await
        .map_err(|e| TokenError::Malformed(e.to_string()))?
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    if revoked.split([',', '\n']).any(|id| id.trim() == claims.jti) {
        return Err(TokenError::Revoked);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshzone_model::specs::{CertificateAuthorityBackend, MeshMtls};
    use meshzone_store::MemoryBackend;

    fn mtls_mesh() -> MeshSpec {
        MeshSpec {
            mtls: Some(MeshMtls {
                enabled_backend: "ca-1".into(),
                backends: vec![CertificateAuthorityBackend {
                    name: "ca-1".into(),
                    backend_type: "builtin".into(),
                    ..Default::default()
                }],
                skip_validation: false,
            }),
            ..Default::default()
        }
    }

    async fn store_with_mesh() -> Store<MemoryBackend> {
        let store = Store::new(MemoryBackend::new());
        store
            .create(Resource::new(
                Meta::named("default", ""),
                Spec::Mesh(mtls_mesh()),
            ))
            .await
            .unwrap();
        store
    }

    #[tokio::test]
    async fn mesh_ca_is_created_once() {
        let store = store_with_mesh().await;
        let now = SystemTime::now();
        let a = ensure_mesh_ca(&store, "default", &mtls_mesh(), now)
            .await
            .unwrap();
        let b = ensure_mesh_ca(&store, "default", &mtls_mesh(), now)
            .await
            .unwrap();
        assert_eq!(a, b);
        assert!(
            ensure_mesh_ca(&store, "default", &MeshSpec::default(), now)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn tokens_issue_verify_and_refuse() {
        let store = store_with_mesh().await;
        let now = SystemTime::now();
        let req = DataplaneTokenRequest {
            mesh: "default".into(),
            name: "dp-1".into(),
            valid_for: "1h".into(),
            ..Default::default()
        };
        let token = issue_dataplane_token(&store, &req, now).await.unwrap();
        let claims = verify_dataplane_token(&store, &token, "default", "dp-1", now)
            .await
            .unwrap();
        assert_eq!(claims.name, "dp-1");
        let wrong_name = verify_dataplane_token(&store, &token, "default", "dp-2", now)
            .await
            .unwrap_err();
        assert!(wrong_name.to_string().contains("\"dp-1\""), "{wrong_name}");
        let later = now + Duration::from_secs(7200);
        assert!(matches!(
            verify_dataplane_token(&store, &token, "default", "dp-1", later).await,
            Err(TokenError::Expired(_))
        ));
        assert_eq!(
            verify_dataplane_token(&store, "", "default", "dp-1", now)
                .await
                .unwrap_err(),
            TokenError::Missing
        );
        store
            .create(secret("default", REVOCATIONS, claims.jti.as_bytes()))
            .await
            .unwrap();
        assert_eq!(
            verify_dataplane_token(&store, &token, "default", "dp-1", now)
                .await
                .unwrap_err(),
            TokenError::Revoked
        );
        // A rotated key signs new tokens; tokens of the old key stay valid.
        rotate_signing_key(&store, "default").await.unwrap();
        let req2 = DataplaneTokenRequest {
            name: "dp-2".into(),
            ..req
        };
        let t2 = issue_dataplane_token(&store, &req2, now).await.unwrap();
        verify_dataplane_token(&store, &t2, "default", "dp-2", now)
            .await
            .unwrap();
        let bad = issue_dataplane_token(
            &store,
            &DataplaneTokenRequest {
                mesh: "nope".into(),
                ..Default::default()
            },
            now,
        )
        .await;
        assert!(bad.unwrap_err().contains("does not exist"));
    }
}
