//! User tokens for the REST API, on Kuma's model: a JWT naming a user and its groups, signed
//! with a GlobalSecret key of the control plane that issued it (`user-token-signing-key-<n>`,
//! never sent to zones), revocable by listing its id in the GlobalSecret
//! `user-token-revocations`. Each control plane keeps its own keys; the first start also stores
//! an admin token in the GlobalSecret `admin-user-token`, which an admin on the CP's host reads
//! with `kumactl get global-secret admin-user-token`.

use std::time::SystemTime;

use meshzone_model::{Meta, Resource, ResourceKey, ResourceType, Spec};
use meshzone_pki::TokenError;
use meshzone_store::{Backend, Store, StoreError};
use serde::{Deserialize, Serialize};

use super::{B64, KeyRing, current_signing_key, not_revoked, valid_for, verifying_keys};
use base64::Engine;

/// Prefix of the user token signing keys (GlobalSecrets, on every CP, never synced).
pub const USER_SIGNING_KEY_PREFIX: &str = "user-token-signing-key-";
/// GlobalSecret listing revoked user token ids.
pub const USER_REVOCATIONS: &str = "user-token-revocations";
/// GlobalSecret holding the admin token made at the first start.
pub const ADMIN_USER_TOKEN: &str = "admin-user-token";
/// The admin user and group, as Kuma names them.
pub const ADMIN_USER: &str = "mesh-system:admin";
pub const ADMIN_GROUP: &str = "mesh-system:admin";
/// Who a request without a token is.
pub const ANONYMOUS_USER: &str = "mesh-system:anonymous";
pub const UNAUTHENTICATED_GROUP: &str = "mesh-system:unauthenticated";
/// Every authenticated user is also in this group.
pub const AUTHENTICATED_GROUP: &str = "mesh-system:authenticated";

impl KeyRing<'static> {
    pub fn user() -> KeyRing<'static> {
        KeyRing {
            resource_type: ResourceType::GlobalSecret,
            mesh: "",
            prefix: USER_SIGNING_KEY_PREFIX,
        }
    }
}

/// What a user token asserts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserClaims {
    pub jti: String,
    pub name: String,
    #[serde(default)]
    pub groups: Vec<String>,
    pub iat: u64,
    pub exp: u64,
}

impl meshzone_pki::Expiring for UserClaims {
    fn exp(&self) -> u64 {
        self.exp
    }
}

/// A request for a user token (`POST /tokens/user`, `kumactl generate user-token`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserTokenRequest {
    pub name: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Duration such as `24h`; required, as Kuma's `--valid-for`.
    #[serde(default)]
    pub valid_for: String,
}

/// Issues a user token, creating the first user signing key if there is none.
pub async fn issue_user_token<B: Backend>(
    store: &Store<B>,
    req: &UserTokenRequest,
    now: SystemTime,
) -> Result<String, String> {
    if req.name.trim().is_empty() {
        return Err("name: cannot be empty".into());
    }
    if req.valid_for.is_empty() {
        return Err("validFor: required, a duration such as 24h".into());
    }
    if let Some(bad) = req.groups.iter().find(|g| g.trim().is_empty()) {
        return Err(format!("groups: {bad:?} is not a group name"));
    }
    let valid_for = valid_for(&req.valid_for)?;
    let key = current_signing_key(store, KeyRing::user()).await?;
    let iat = meshzone_pki::unix(now);
    let claims = UserClaims {
        jti: uuid::Uuid::new_v4().to_string(),
        name: req.name.clone(),
        groups: req.groups.clone(),
        iat,
        exp: iat + valid_for.as_secs(),
    };
    meshzone_pki::sign_token(&claims, &key).map_err(|e| e.to_string())
}

/// Checks a user token: signature (one of this CP's user keys), expiry, revocation.
pub async fn verify_user_token<B: Backend>(
    store: &Store<B>,
    token: &str,
    now: SystemTime,
) -> Result<UserClaims, TokenError> {
    let keys = verifying_keys(store, KeyRing::user()).await?;
    let claims: UserClaims = meshzone_pki::verify_token(token, &keys, now)?;
    not_revoked(
        store,
        &ResourceKey::global(ResourceType::GlobalSecret, USER_REVOCATIONS),
        &claims.jti,
    )
    .await?;
    Ok(claims)
}

/// Stores an admin token (user and group `mesh-system:admin`, valid 10 years) in the
/// GlobalSecret `admin-user-token` unless it is there already. Returns whether one was made.
pub async fn ensure_admin_token<B: Backend>(
    store: &Store<B>,
    now: SystemTime,
) -> Result<bool, String> {
    let key = ResourceKey::global(ResourceType::GlobalSecret, ADMIN_USER_TOKEN);
    if store.find(&key).await.map_err(|e| e.to_string())?.is_some() {
        return Ok(false);
    }
    let token = issue_user_token(
        store,
        &UserTokenRequest {
            name: ADMIN_USER.into(),
            groups: vec![ADMIN_GROUP.into()],
            valid_for: "87600h".into(),
        },
        now,
    )
    .await?;
    let secret = Resource::new(
        Meta::named(ADMIN_USER_TOKEN, ""),
        Spec::GlobalSecret(meshzone_model::specs::SecretSpec {
            data: B64.encode(token.as_bytes()),
        }),
    );
    match store.create(secret).await {
        Ok(_) => Ok(true),
        // Another instance made it at the same moment.
        Err(StoreError::AlreadyExists(_)) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use meshzone_store::{AnyBackend, MemoryBackend};

    use super::*;

    fn store() -> Store {
        Store::new(AnyBackend::Memory(MemoryBackend::new()))
    }

    fn request(name: &str, valid_for: &str) -> UserTokenRequest {
        UserTokenRequest {
            name: name.into(),
            groups: vec!["team-a".into()],
            valid_for: valid_for.into(),
        }
    }

    #[tokio::test]
    async fn an_issued_token_verifies_until_it_expires_or_is_revoked() {
        let store = store();
        let now = SystemTime::now();
        let token = issue_user_token(&store, &request("jane", "1h"), now)
            .await
            .expect("issued");
        let claims = verify_user_token(&store, &token, now).await.expect("valid");
        assert_eq!(
            (claims.name.as_str(), claims.groups.as_slice()),
            ("jane", &["team-a".to_string()][..])
        );
        let later = now + Duration::from_secs(7200);
        assert!(matches!(
            verify_user_token(&store, &token, later).await,
            Err(TokenError::Expired(_))
        ));
        store
            .create(Resource::new(
                Meta::named(USER_REVOCATIONS, ""),
                Spec::GlobalSecret(meshzone_model::specs::SecretSpec {
                    data: B64.encode(claims.jti.as_bytes()),
                }),
            ))
            .await
            .expect("revocations");
        assert!(matches!(
            verify_user_token(&store, &token, now).await,
            Err(TokenError::Revoked)
        ));
    }

    #[tokio::test]
    async fn tokens_of_another_cp_or_forged_ones_are_refused() {
        let (ours, theirs) = (store(), store());
        let now = SystemTime::now();
        issue_user_token(&ours, &request("jane", "1h"), now)
            .await
            .expect("our key");
        let foreign = issue_user_token(&theirs, &request("mallory", "1h"), now)
            .await
            .expect("their token");
        let err = verify_user_token(&ours, &foreign, now)
            .await
            .expect_err("another CP's key");
        assert!(
            matches!(err, TokenError::BadSignature | TokenError::UnknownKey(_)),
            "{err}"
        );
        // alg none: a header and claims with no signature.
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let none = format!(
            "{}.{}.",
            b64(serde_json::json!({"alg": "none", "typ": "JWT", "kid": "1"})),
            b64(
                serde_json::json!({"jti": "x", "name": ADMIN_USER, "groups": [ADMIN_GROUP], "iat": 0, "exp": u64::MAX})
            )
        );
        assert!(verify_user_token(&ours, &none, now).await.is_err());
        assert!(verify_user_token(&ours, "not a token", now).await.is_err());
    }

    #[tokio::test]
    async fn requests_are_checked_and_the_admin_token_is_made_once() {
        let store = store();
        let now = SystemTime::now();
        for (req, field) in [
            (request("", "1h"), "name"),
            (request("jane", ""), "validFor"),
            (request("jane", "soon"), "validFor"),
        ] {
            let err = issue_user_token(&store, &req, now).await.expect_err("bad");
            assert!(err.starts_with(&format!("{field}: ")), "{err}");
        }
        assert_eq!(ensure_admin_token(&store, now).await, Ok(true));
        assert_eq!(ensure_admin_token(&store, now).await, Ok(false));
        let stored = store
            .find(&ResourceKey::global(
                ResourceType::GlobalSecret,
                ADMIN_USER_TOKEN,
            ))
            .await
            .expect("find")
            .expect("stored");
        let Spec::GlobalSecret(s) = &stored.spec else {
            panic!("not a GlobalSecret")
        };
        let token = String::from_utf8(B64.decode(&s.data).expect("b64")).expect("utf8");
        let claims = verify_user_token(&store, &token, now).await.expect("valid");
        assert_eq!(claims.groups, vec![ADMIN_GROUP.to_string()]);
    }
}
