//! Who may do what on the REST API, on Kuma's model (`KUMA_API_SERVER_AUTHN_TYPE=tokens`): a
//! request names its user with a user token (`Authorization: Bearer <token>`); without one it is
//! `mesh-system:anonymous`, unless it comes from the CP's own host and
//! `KUMA_API_SERVER_AUTHN_LOCALHOST_IS_ADMIN` is on (Kuma's default), when it is the admin.
//!
//! What each may do ([`decide`], pure): admins (group `mesh-system:admin`) everything; other
//! users read everything but secrets; anonymous requests read the same when
//! `KUMA_API_SERVER_AUTHN_UNAUTHENTICATED_READ` is on (the default), nothing otherwise. Every
//! write (a resource, a token) needs an admin. A refusal is a 401 (no or a bad token) or a 403
//! (a known user without the right) with a JSON body saying what to do; nothing is read or
//! changed.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use meshzone_identity::{ADMIN_GROUP, ADMIN_USER, UserClaims};

use crate::{ApiContext, ApiError};

/// The API's authentication settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthSettings {
    /// Requests from the CP's host (a loopback peer) without a token are the admin.
    pub localhost_is_admin: bool,
    /// Requests without a token may read (everything but secrets).
    pub unauthenticated_read: bool,
}

impl Default for AuthSettings {
    /// Kuma's defaults.
    fn default() -> Self {
        AuthSettings {
            localhost_is_admin: true,
            unauthenticated_read: true,
        }
    }
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    /// From the CP's host, without a token.
    LocalAdmin,
    User {
        name: String,
        groups: Vec<String>,
    },
    Anonymous,
}

impl Principal {
    fn of(claims: UserClaims) -> Self {
        Principal::User {
            name: claims.name,
            groups: claims.groups,
        }
    }

    fn is_admin(&self) -> bool {
        match self {
            Principal::LocalAdmin => true,
            Principal::User { name, groups } => {
                name == ADMIN_USER || groups.iter().any(|g| g == ADMIN_GROUP)
            }
            Principal::Anonymous => false,
        }
    }
}

/// Secrets are for admins only, to read as well.
fn is_secret_path(path: &str) -> bool {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    matches!(
        parts.as_slice(),
        ["global-secrets", ..] | ["meshes", _, "secrets", ..]
    )
}

/// Whether `who` may make this request; the refusal otherwise.
pub fn decide(
    method: &Method,
    path: &str,
    who: &Principal,
    settings: &AuthSettings,
) -> Result<(), ApiError> {
    if who.is_admin() {
        return Ok(());
    }
    let read = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    let needs_admin = !read || is_secret_path(path);
    match who {
        Principal::Anonymous if needs_admin || !settings.unauthenticated_read => {
            let what = if needs_admin {
                "this needs an admin"
            } else {
                "reading needs a user (unauthenticated reads are off)"
            };
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Unauthenticated",
                format!(
                    "{method} {path}: {what}. Send a user token (kumactl config control-planes add --auth-type=tokens --auth-conf token=<token>; an admin token is in the GlobalSecret admin-user-token on the CP's host), or call from the CP's own host"
                ),
            ))
        }
        Principal::User { name, groups } if needs_admin => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Access Denied",
            format!(
                "{method} {path}: user {name:?} (groups {groups:?}) is not an admin; only the group {ADMIN_GROUP} may change resources, issue tokens or read secrets"
            ),
        )),
        _ => Ok(()),
    }
}

/// The middleware: finds who made the request and lets it through or refuses it.
pub(crate) async fn authorize(State(ctx): State<ApiContext>, req: Request, next: Next) -> Response {
    let settings = &ctx.0.settings.auth;
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| meshzone_identity::bearer_token(Some(v)))
        .filter(|t| !t.is_empty());
    let who = match token {
        Some(token) => {
            match meshzone_identity::verify_user_token(
                &ctx.0.store,
                &token,
                std::time::SystemTime::now(),
            )
            .await
            {
                Ok(claims) => Principal::of(claims),
                Err(e) => {
                    return ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "Unauthenticated",
                        format!("the user token is not valid: {e}"),
                    )
                    .into_response();
                }
            }
        }
        None => {
            let local = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .is_some_and(|ConnectInfo(peer)| peer.ip().is_loopback());
            if local && settings.localhost_is_admin {
                Principal::LocalAdmin
            } else {
                Principal::Anonymous
            }
        }
    };
    match decide(req.method(), req.uri().path(), &who, settings) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(groups: &[&str]) -> Principal {
        Principal::User {
            name: "jane".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn the_matrix() {
        let open = AuthSettings::default();
        let closed = AuthSettings {
            unauthenticated_read: false,
            ..AuthSettings::default()
        };
        let admin = user(&[ADMIN_GROUP]);
        let (get, put, post, delete) = (Method::GET, Method::PUT, Method::POST, Method::DELETE);
        // (method, path, who, settings, expected status; None = allowed)
        let cases: Vec<(&Method, &str, Principal, &AuthSettings, Option<u16>)> = vec![
            (&get, "/meshes", Principal::Anonymous, &open, None),
            (&get, "/meshes", Principal::Anonymous, &closed, Some(401)),
            (&get, "/meshes", user(&[]), &closed, None),
            (
                &put,
                "/meshes/default",
                Principal::Anonymous,
                &open,
                Some(401),
            ),
            (&put, "/meshes/default", user(&["team-a"]), &open, Some(403)),
            (
                &delete,
                "/zones/zone-1",
                user(&["team-a"]),
                &open,
                Some(403),
            ),
            (&post, "/tokens/user", user(&["team-a"]), &open, Some(403)),
            (
                &post,
                "/tokens/dataplane",
                Principal::Anonymous,
                &open,
                Some(401),
            ),
            (
                &get,
                "/global-secrets/admin-user-token",
                user(&[]),
                &open,
                Some(403),
            ),
            (
                &get,
                "/meshes/default/secrets",
                Principal::Anonymous,
                &open,
                Some(401),
            ),
            (
                &get,
                "/meshes/default/secrets/x",
                admin.clone(),
                &closed,
                None,
            ),
            (&put, "/meshes/default", admin.clone(), &closed, None),
            (&post, "/tokens/zone", Principal::LocalAdmin, &closed, None),
            (
                &put,
                "/meshes/default",
                Principal::User {
                    name: ADMIN_USER.into(),
                    groups: vec![],
                },
                &open,
                None,
            ),
            (
                &get,
                "/meshes/default/dataplanes/dp-1/xds",
                user(&[]),
                &open,
                None,
            ),
        ];
        for (method, path, who, settings, want) in cases {
            let got = decide(method, path, &who, settings)
                .err()
                .map(|e| e.status.as_u16());
            assert_eq!(got, want, "{method} {path} as {who:?} ({settings:?})");
        }
    }

    #[test]
    fn refusals_say_what_to_do() {
        let e = decide(
            &Method::PUT,
            "/meshes/default",
            &Principal::Anonymous,
            &AuthSettings::default(),
        )
        .expect_err("refused");
        assert!(e.details.contains("--auth-type=tokens"), "{}", e.details);
        let e = decide(
            &Method::PUT,
            "/meshes/default",
            &user(&["team-a"]),
            &AuthSettings::default(),
        )
        .expect_err("refused");
        assert!(
            e.details.contains("\"jane\"") && e.details.contains(ADMIN_GROUP),
            "{}",
            e.details
        );
    }
}
