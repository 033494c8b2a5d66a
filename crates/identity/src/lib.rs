//! Identity material kept in the store: the builtin CA of each mesh (created once, never
//! regenerated while it exists), workload certificates issued from it, and data-plane tokens
//! (signing keys per mesh, issuance, verification with reasons, revocation).
//!
//! Secrets live as mesh-scoped `Secret` resources, so they are durable and (later) synced from
//! global to zones. Nothing here logs key material.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use base64::Engine;
use meshzone_model::specs::{DataplaneSpec, MeshSpec, SecretSpec, ZONE_TAG};
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
    #[error("the CA of mesh {0:?} has not arrived from the global control plane yet")]
    CaNotSynced(String),
}

mod user_token;
pub use user_token::*;

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

fn stored_secret(ring: KeyRing<'_>, name: &str, data: &[u8]) -> Resource {
    let spec = SecretSpec {
        data: B64.encode(data),
    };
    match ring.resource_type {
        ResourceType::GlobalSecret => {
            Resource::new(Meta::named(name, ""), Spec::GlobalSecret(spec))
        }
        _ => Resource::new(Meta::named(name, ring.mesh), Spec::Secret(spec)),
    }
}

/// Where a family of token signing keys lives: mesh Secrets for data-plane tokens, GlobalSecrets
/// for zone tokens. Keys are named `<prefix><serial>`; the highest serial signs, all verify.
#[derive(Debug, Clone, Copy)]
pub struct KeyRing<'a> {
    resource_type: ResourceType,
    mesh: &'a str,
    prefix: &'static str,
}

impl<'a> KeyRing<'a> {
    pub fn dataplane(mesh: &'a str) -> Self {
        KeyRing {
            resource_type: ResourceType::Secret,
            mesh,
            prefix: SIGNING_KEY_PREFIX,
        }
    }

    pub fn zone() -> KeyRing<'static> {
        KeyRing {
            resource_type: ResourceType::GlobalSecret,
            mesh: "",
            prefix: ZONE_SIGNING_KEY_PREFIX,
        }
    }
}

fn secret_bytes(r: &Resource) -> Result<Vec<u8>> {
    match &r.spec {
        Spec::Secret(s) | Spec::GlobalSecret(s) => B64
            .decode(s.data.as_bytes())
            .map_err(|e| IdentityError::Damaged(r.key().to_string(), e.to_string())),
        _ => Err(IdentityError::Damaged(
            r.key().to_string(),
            "not a Secret".into(),
        )),
    }
}

/// Fails with `Revoked` when `jti` is listed (comma- or line-separated) in the given secret.
async fn not_revoked<B: Backend>(
    store: &Store<B>,
    list: &ResourceKey,
    jti: &str,
) -> Result<(), TokenError> {
    let malformed = |e: IdentityError| TokenError::Malformed(e.to_string());
    let Some(r) = store.find(list).await.map_err(|e| malformed(e.into()))? else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(&secret_bytes(&r).map_err(malformed)?).into_owned();
    if text.split([',', '\n']).any(|id| id.trim() == jti) {
        return Err(TokenError::Revoked);
    }
    Ok(())
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

/// The URI SANs of a data plane's workload certificate, sorted and without repeats: one
/// `spiffe://<mesh>/<service>` per service of its inbounds, then one `kuma://<tag>/<value>` per
/// tag of every inbound. `zone` (the issuing zone CP's) is added as `kuma.io/zone` to inbounds
/// that do not carry it already (registration stamps it, a Dataplane applied through the API
/// may not have it).
pub fn workload_uris(mesh: &str, dp: &DataplaneSpec, zone: Option<&str>) -> Vec<String> {
    let mut spiffe = std::collections::BTreeSet::new();
    let mut tags = std::collections::BTreeSet::new();
    for inbound in &dp.networking.inbound {
        if let Some(service) = inbound.service() {
            spiffe.insert(meshzone_pki::spiffe_id(mesh, service));
        }
        for (k, v) in &inbound.tags {
            tags.insert(meshzone_pki::tag_uri(k, v));
        }
        if let (Some(zone), false) = (zone, inbound.tags.contains_key(ZONE_TAG)) {
            tags.insert(meshzone_pki::tag_uri(ZONE_TAG, zone));
        }
    }
    spiffe.into_iter().chain(tags).collect()
}

/// Returns the mesh's CA if it exists (a zone connected to global waits for global's).
pub async fn find_mesh_ca<B: Backend>(
    store: &Store<B>,
    mesh: &str,
    spec: &MeshSpec,
) -> Result<CertifiedKey> {
    let backend = builtin_backend(spec).ok_or_else(|| IdentityError::NoBuiltinCa(mesh.into()))?;
    let name = ca_secret_name(mesh, backend);
    match read_secret(store, mesh, &name).await? {
        Some(bytes) => decode_ca(&name, &bytes),
        None => Err(IdentityError::CaNotSynced(mesh.into())),
    }
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
/// Prefix of the zone token signing keys (GlobalSecrets on global).
pub const ZONE_SIGNING_KEY_PREFIX: &str = "zone-token-signing-key-";
/// Public halves of the zone signing keys, as global syncs them to zones.
pub const ZONE_PUBLIC_KEY_PREFIX: &str = "zone-token-signing-public-key-";
/// GlobalSecret listing revoked zone token ids.
pub const ZONE_REVOCATIONS: &str = "zone-token-revocations";

/// What a zone token asserts: which zone, and which zone proxies it may run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZoneClaims {
    pub jti: String,
    pub zone: String,
    /// Subset of `ingress`, `egress`, `cp`.
    pub scope: Vec<String>,
    pub iat: u64,
    pub exp: u64,
}

impl meshzone_pki::Expiring for ZoneClaims {
    fn exp(&self) -> u64 {
        self.exp
    }
}

/// A request for a zone token (`POST /tokens/zone`, `kumactl generate zone-token`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneTokenRequest {
    pub zone: String,
    #[serde(default)]
    pub scope: Vec<String>,
    #[serde(default)]
    pub valid_for: String,
}

pub const ZONE_SCOPES: [&str; 3] = ["ingress", "egress", "cp"];

/// Issues a zone token, creating the first zone signing key if there is none. Without a scope
/// the token covers ingress and egress, as Kuma's.
pub async fn issue_zone_token<B: Backend>(
    store: &Store<B>,
    req: &ZoneTokenRequest,
    now: SystemTime,
) -> Result<String, String> {
    if !meshzone_model::validate::is_dns_label(&req.zone) {
        return Err(format!(
            "zone: {:?} is not a zone name (a DNS label)",
            req.zone
        ));
    }
    if let Some(bad) = req
        .scope
        .iter()
        .find(|s| !ZONE_SCOPES.contains(&s.as_str()))
    {
        return Err(format!(
            "scope: unknown scope {bad:?}; expected ingress, egress or cp"
        ));
    }
    let valid_for = valid_for(&req.valid_for)?;
    let key = current_signing_key(store, KeyRing::zone()).await?;
    let iat = meshzone_pki::unix(now);
    let scope = if req.scope.is_empty() {
        vec!["ingress".to_string(), "egress".to_string()]
    } else {
        req.scope.clone()
    };
    let claims = ZoneClaims {
        jti: uuid::Uuid::new_v4().to_string(),
        zone: req.zone.clone(),
        scope,
        iat,
        exp: iat + valid_for.as_secs(),
    };
    meshzone_pki::sign_token(&claims, &key).map_err(|e| e.to_string())
}

/// Whether two secrets are equal, compared in time that depends on their length only.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The token of an `authorization` header value (`Bearer <token>`, or the bare token); empty
/// when there is none.
pub fn bearer_token(header: Option<&str>) -> String {
    header
        .map(|v| v.trim_start_matches("Bearer ").trim().to_string())
        .unwrap_or_default()
}

/// Checks a zone token for a zone proxy of `zone` that needs `scope`.
pub async fn verify_zone_token<B: Backend>(
    store: &Store<B>,
    token: &str,
    zone: &str,
    scope: &str,
    now: SystemTime,
) -> Result<ZoneClaims, TokenError> {
    let mut keys = verifying_keys(store, KeyRing::zone()).await?;
    // A zone connected to global holds only the public halves global synced down.
    for r in store
        .list(ResourceType::GlobalSecret, None)
        .await
        .map_err(|e| TokenError::Malformed(e.to_string()))?
    {
        let Some(serial) = r.meta.name.strip_prefix(ZONE_PUBLIC_KEY_PREFIX) else {
            continue;
        };
        if keys.iter().any(|k| k.key_id == serial) {
            continue;
        }
        let pem = secret_bytes(&r).map_err(|e| TokenError::Malformed(e.to_string()))?;
        keys.push(VerifyingKey {
            key_id: serial.to_string(),
            public_pem: String::from_utf8_lossy(&pem).into_owned(),
        });
    }
    let claims: ZoneClaims = meshzone_pki::verify_token(token, &keys, now)?;
    if claims.zone != zone {
        return Err(TokenError::Mismatch(format!(
            "token is for zone {:?}, but this is zone {zone:?}",
            claims.zone
        )));
    }
    if !claims.scope.iter().any(|s| s == scope) {
        return Err(TokenError::Mismatch(format!(
            "token scope {:?} does not include {scope:?}",
            claims.scope
        )));
    }
    not_revoked(
        store,
        &ResourceKey::global(ResourceType::GlobalSecret, ZONE_REVOCATIONS),
        &claims.jti,
    )
    .await?;
    Ok(claims)
}

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

async fn signing_keys<B: Backend>(
    store: &Store<B>,
    ring: KeyRing<'_>,
) -> Result<Vec<(u64, SigningKey)>> {
    let mesh = ring.resource_type.is_mesh_scoped().then_some(ring.mesh);
    let mut keys = Vec::new();
    for r in store.list(ring.resource_type, mesh).await? {
        let Some(serial) = r
            .meta
            .name
            .strip_prefix(ring.prefix)
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
pub async fn rotate_signing_key<B: Backend>(
    store: &Store<B>,
    ring: KeyRing<'_>,
) -> Result<SigningKey> {
    let next = signing_keys(store, ring)
        .await?
        .last()
        .map_or(1, |(s, _)| s + 1);
    let key = SigningKey::generate(&next.to_string())?;
    let name = format!("{}{next}", ring.prefix);
    store
        .create(stored_secret(ring, &name, key.private_pem.as_bytes()))
        .await?;
    Ok(key)
}

/// The newest signing key of a ring, creating the first one when there is none.
async fn current_signing_key<B: Backend>(
    store: &Store<B>,
    ring: KeyRing<'_>,
) -> Result<SigningKey, String> {
    if let Some((_, k)) = signing_keys(store, ring)
        .await
        .map_err(|e| e.to_string())?
        .pop()
    {
        return Ok(k);
    }
    match rotate_signing_key(store, ring).await {
        Ok(k) => Ok(k),
        // Another request created the first key at the same moment: use it.
        Err(IdentityError::Store(StoreError::AlreadyExists(_))) => signing_keys(store, ring)
            .await
            .map_err(|e| e.to_string())?
            .pop()
            .map(|(_, k)| k)
            .ok_or_else(|| "signing key vanished".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

async fn verifying_keys<B: Backend>(
    store: &Store<B>,
    ring: KeyRing<'_>,
) -> Result<Vec<VerifyingKey>, TokenError> {
    Ok(signing_keys(store, ring)
        .await
        .map_err(|e| TokenError::Malformed(e.to_string()))?
        .into_iter()
        .filter_map(|(_, k)| {
            k.public_pem().ok().map(|public_pem| VerifyingKey {
                key_id: k.key_id.clone(),
                public_pem,
            })
        })
        .collect())
}

fn valid_for(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Ok(Duration::from_secs(10 * 365 * 24 * 3600));
    }
    parse_duration(text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("validFor: {text:?} is not a duration such as 24h"))
}

/// Issues a data-plane token, creating the mesh's first signing key if there is none.
pub async fn issue_dataplane_token<B: Backend>(
    store: &Store<B>,
    req: &DataplaneTokenRequest,
    now: SystemTime,
) -> Result<String, String> {
    let valid_for = valid_for(&req.valid_for)?;
    let mesh_key = ResourceKey::global(ResourceType::Mesh, &req.mesh);
    if store
        .find(&mesh_key)
        .await
        .map_err(|e| e.to_string())?
        .is_none()
    {
        return Err(format!("mesh: mesh {:?} does not exist", req.mesh));
    }
    let key = current_signing_key(store, KeyRing::dataplane(&req.mesh)).await?;
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

/// The `mesh` claim of a data-plane token, read without checking its signature: only to say
/// why a token was refused (a token of another mesh fails the signature check of this one).
fn claimed_mesh(token: &str) -> Option<String> {
    let payload = token.trim().split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("mesh")?.as_str().map(str::to_string)
}

/// A refusal of a token that says "for another mesh" when the token claims another mesh.
fn for_another_mesh(token: &str, mesh: &str) -> Option<TokenError> {
    let claimed = claimed_mesh(token).filter(|m| m != mesh)?;
    Some(TokenError::Mismatch(format!(
        "token is for mesh {claimed:?}, but the proxy is in mesh {mesh:?}: generate a token for it with `kumactl generate dataplane-token --mesh {mesh} --name <proxy>`"
    )))
}

/// Checks a data-plane token presented for the proxy `name` in `mesh`.
pub async fn verify_dataplane_token<B: Backend>(
    store: &Store<B>,
    token: &str,
    mesh: &str,
    name: &str,
    now: SystemTime,
) -> Result<DataplaneClaims, TokenError> {
    let keys = verifying_keys(store, KeyRing::dataplane(mesh)).await?;
    if keys.is_empty() && !token.trim().is_empty() {
        return Err(for_another_mesh(token, mesh).unwrap_or_else(|| {
            TokenError::Mismatch(format!(
                "mesh {mesh:?} has no token signing key: this token was not issued for this mesh"
            ))
        }));
    }
    // Every mesh signs with keys of its own, so another mesh's token fails the signature
    // check: say so.
    let claims: DataplaneClaims =
        meshzone_pki::verify_token(token, &keys, now).map_err(|e| match e {
            TokenError::BadSignature | TokenError::UnknownKey(_) => {
                for_another_mesh(token, mesh).unwrap_or(e)
            }
            e => e,
        })?;
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
    not_revoked(
        store,
        &ResourceKey::new(ResourceType::Secret, mesh, REVOCATIONS),
        &claims.jti,
    )
    .await?;
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshzone_model::specs::{CertificateAuthorityBackend, MeshMtls};
    use meshzone_store::MemoryBackend;

    #[test]
    fn secrets_are_equal_only_when_every_byte_is() {
        for (a, b, same) in [
            ("s3cret", "s3cret", true),
            ("s3cret", "s3creT", false),
            ("s3cret", "s3cre", false),
            ("", "", true),
            ("", "x", false),
        ] {
            assert_eq!(same_secret(a, b), same, "{a:?} vs {b:?}");
        }
    }

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

    #[test]
    fn workload_uris_name_services_and_every_inbound_tag() {
        use meshzone_model::specs::{DataplaneNetworking, Inbound};
        let inbound = |tags: &[(&str, &str)]| Inbound {
            port: 1,
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let dp = DataplaneSpec {
            networking: DataplaneNetworking {
                inbound: vec![
                    inbound(&[("kuma.io/service", "web"), ("version", "v2")]),
                    inbound(&[
                        ("kuma.io/service", "admin"),
                        ("kuma.io/zone", "west"),
                        ("version", "v2"),
                    ]),
                ],
                ..Default::default()
            },
            ..Default::default()
        };
        let cases: [(Option<&str>, &[&str]); 2] = [
            (
                Some("east"),
                &[
                    "spiffe://default/admin",
                    "spiffe://default/web",
                    "kuma://kuma.io/service/admin",
                    "kuma://kuma.io/service/web",
                    // The inbound without a zone gets the issuing zone's; the other keeps its own.
                    "kuma://kuma.io/zone/east",
                    "kuma://kuma.io/zone/west",
                    "kuma://version/v2",
                ],
            ),
            (
                None,
                &[
                    "spiffe://default/admin",
                    "spiffe://default/web",
                    "kuma://kuma.io/service/admin",
                    "kuma://kuma.io/service/web",
                    "kuma://kuma.io/zone/west",
                    "kuma://version/v2",
                ],
            ),
        ];
        for (zone, want) in cases {
            assert_eq!(workload_uris("default", &dp, zone), want, "zone {zone:?}");
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
    async fn zone_tokens_carry_zone_and_scope() {
        let store = store_with_mesh().await;
        let now = SystemTime::now();
        let req = ZoneTokenRequest {
            zone: "zone-1".into(),
            scope: vec!["ingress".into()],
            valid_for: "24h".into(),
        };
        let token = issue_zone_token(&store, &req, now).await.unwrap();
        let claims = verify_zone_token(&store, &token, "zone-1", "ingress", now)
            .await
            .unwrap();
        assert_eq!(claims.scope, vec!["ingress".to_string()]);
        let e = verify_zone_token(&store, &token, "zone-2", "ingress", now)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("zone \"zone-1\""), "{e}");
        let e = verify_zone_token(&store, &token, "zone-1", "egress", now)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("does not include \"egress\""), "{e}");
        let both = issue_zone_token(
            &store,
            &ZoneTokenRequest {
                zone: "zone-1".into(),
                ..Default::default()
            },
            now,
        )
        .await
        .unwrap();
        verify_zone_token(&store, &both, "zone-1", "egress", now)
            .await
            .unwrap();
        let bad = issue_zone_token(
            &store,
            &ZoneTokenRequest {
                zone: "zone-1".into(),
                scope: vec!["admin".into()],
                ..Default::default()
            },
            now,
        )
        .await;
        assert!(bad.unwrap_err().starts_with("scope:"));
        // The zone keys are GlobalSecrets, apart from the data-plane keys.
        assert_eq!(
            store
                .list(ResourceType::GlobalSecret, None)
                .await
                .unwrap()
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn a_zone_verifies_zone_tokens_with_the_synced_public_key() {
        let global = store_with_mesh().await;
        let now = SystemTime::now();
        let req = ZoneTokenRequest {
            zone: "zone-1".into(),
            ..Default::default()
        };
        let token = issue_zone_token(&global, &req, now).await.unwrap();
        let private = signing_keys(&global, KeyRing::zone())
            .await
            .unwrap()
            .pop()
            .unwrap()
            .1;
        // The zone's store: only the public half, named as KDS sends it.
        let zone = Store::new(MemoryBackend::new());
        zone.create(Resource::new(
            Meta::named(&format!("{ZONE_PUBLIC_KEY_PREFIX}{}", private.key_id), ""),
            Spec::GlobalSecret(SecretSpec {
                data: B64.encode(private.public_pem().unwrap()),
            }),
        ))
        .await
        .unwrap();
        verify_zone_token(&zone, &token, "zone-1", "ingress", now)
            .await
            .unwrap();
        assert!(
            verify_zone_token(&zone, &token, "zone-2", "ingress", now)
                .await
                .is_err()
        );
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
        rotate_signing_key(&store, KeyRing::dataplane("default"))
            .await
            .unwrap();
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

    #[tokio::test]
    async fn a_token_of_another_mesh_is_refused_as_such() {
        let store = store_with_mesh().await;
        store
            .create(Resource::new(
                Meta::named("other", ""),
                Spec::Mesh(mtls_mesh()),
            ))
            .await
            .unwrap();
        let now = SystemTime::now();
        let for_mesh = |mesh: &str| DataplaneTokenRequest {
            mesh: mesh.into(),
            name: "dp-1".into(),
            valid_for: "1h".into(),
            ..Default::default()
        };
        // Mesh default has no signing key yet: the token of mesh other is named as such.
        let other = issue_dataplane_token(&store, &for_mesh("other"), now)
            .await
            .unwrap();
        let expected = "token is for mesh \"other\", but the proxy is in mesh \"default\"";
        let e = verify_dataplane_token(&store, &other, "default", "dp-1", now)
            .await
            .unwrap_err();
        assert!(e.to_string().contains(expected), "{e}");
        // Both meshes have keys with the same id: the signature check fails, and says why.
        issue_dataplane_token(&store, &for_mesh("default"), now)
            .await
            .unwrap();
        let e = verify_dataplane_token(&store, &other, "default", "dp-1", now)
            .await
            .unwrap_err();
        assert!(e.to_string().contains(expected), "{e}");
        assert!(e.to_string().contains("--mesh default"), "{e}");
        // A forged token of this mesh is still a bad signature.
        let own = issue_dataplane_token(&store, &for_mesh("default"), now)
            .await
            .unwrap();
        let mut forged: Vec<&str> = own.split('.').collect();
        let other_sig = other.split('.').nth(2).unwrap().to_string();
        forged[2] = &other_sig;
        assert_eq!(
            verify_dataplane_token(&store, &forged.join("."), "default", "dp-1", now)
                .await
                .unwrap_err(),
            TokenError::BadSignature
        );
    }
}
