//! Who may do what on the REST API, on Kuma's model (`KUMA_API_SERVER_AUTHN_TYPE=tokens`): a
//! request names its user with a user token (`Authorization: Bearer <token>`); without one it is
//! `mesh-system:anonymous`, unless it comes from the CP's own host and
//! `KUMA_API_SERVER_AUTHN_LOCALHOST_IS_ADMIN` is on (Kuma's default), when it is the admin.
//! A client that presented over HTTPS one of the admin client certificates
//! (`KUMA_API_SERVER_AUTH_CLIENT_CERTS_DIR`) is the admin whatever token it sends: the server's
//! TLS accept loop, which compared the certificate, marks its requests with [`AdminClientCert`].
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

/// A request extension set by the HTTPS server on the requests of a connection whose client
/// presented one of the admin client certificates. Nothing else sets it: a client cannot send
/// it, and a connection with an unknown certificate has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminClientCert;

/// Who made a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    /// From the CP's host, without a token.
    LocalAdmin,
    /// Presented an admin client certificate over HTTPS.
    AdminClientCert,
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
            Principal::LocalAdmin | Principal::AdminClientCert => true,
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
    // The GUI's files hold no data (its pages read the API, which these rules guard), and a
    // browser cannot send a token for them.
    if read && (path == crate::gui::BASE_PATH || path.starts_with("/gui/")) {
        return Ok(());
    }
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

/// What the connection and the headers say about the caller, before a token is checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Caller {
    /// The connection presented an admin client certificate ([`AdminClientCert`]).
    pub admin_client_cert: bool,
    /// The peer is on the CP's own host.
    pub loopback: bool,
    /// The bearer token sent, if any.
    pub token: Option<String>,
}

/// Who the caller is, or the token that says it.
#[derive(Debug, Clone, PartialEq)]
pub enum Identity {
    Known(Principal),
    /// The user token to verify.
    Token(String),
}

/// Who `caller` is (pure): an admin client certificate wins over any token; a token names its
/// user; without one, the CP's host is the admin when `localhost_is_admin`, else anonymous.
pub fn identify(caller: &Caller, settings: &AuthSettings) -> Identity {
    if caller.admin_client_cert {
        return Identity::Known(Principal::AdminClientCert);
    }
    match &caller.token {
        Some(token) => Identity::Token(token.clone()),
        None if caller.loopback && settings.localhost_is_admin => {
            Identity::Known(Principal::LocalAdmin)
        }
        None => Identity::Known(Principal::Anonymous),
    }
}

/// The middleware: finds who made the request and lets it through or refuses it.
pub(crate) async fn authorize(State(ctx): State<ApiContext>, req: Request, next: Next) -> Response {
    let settings = &ctx.0.settings.auth;
    let caller = Caller {
        admin_client_cert: req.extensions().get::<AdminClientCert>().is_some(),
        loopback: req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .is_some_and(|ConnectInfo(peer)| peer.ip().is_loopback()),
        token: req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(|v| meshzone_identity::bearer_token(Some(v)))
            .filter(|t| !t.is_empty()),
    };
    let who = match identify(&caller, settings) {
        Identity::Known(who) => who,
        Identity::Token(token) => {
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
            (&get, "/gui/zones", Principal::Anonymous, &closed, None),
            (&get, "/gui", Principal::Anonymous, &closed, None),
            (&put, "/gui/zones", Principal::Anonymous, &open, Some(401)),
            (&get, "/guide", Principal::Anonymous, &closed, Some(401)),
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
                Principal::AdminClientCert,
                &closed,
                None,
            ),
            (
                &get,
                "/global-secrets/admin-user-token",
                Principal::AdminClientCert,
                &closed,
                None,
            ),
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
    fn who_is_the_caller() {
        let open = AuthSettings::default();
        let no_localhost = AuthSettings {
            localhost_is_admin: false,
            ..AuthSettings::default()
        };
        let caller = |admin_client_cert: bool, loopback: bool, token: Option<&str>| Caller {
            admin_client_cert,
            loopback,
            token: token.map(str::to_string),
        };
        let known = Identity::Known;
        // (caller, settings, expected identity)
        let cases = vec![
            // An admin client certificate is the admin, whatever token comes with it.
            (
                caller(true, false, None),
                &no_localhost,
                known(Principal::AdminClientCert),
            ),
            (
                caller(true, false, Some("forged")),
                &no_localhost,
                known(Principal::AdminClientCert),
            ),
            (
                caller(true, true, None),
                &open,
                known(Principal::AdminClientCert),
            ),
            // Without one (no certificate, or an unknown one): the token decides...
            (
                caller(false, false, Some("t")),
                &open,
                Identity::Token("t".into()),
            ),
            (
                caller(false, true, Some("t")),
                &open,
                Identity::Token("t".into()),
            ),
            // ...or, without a token, the peer's host.
            (
                caller(false, false, None),
                &open,
                known(Principal::Anonymous),
            ),
            (
                caller(false, true, None),
                &open,
                known(Principal::LocalAdmin),
            ),
            (
                caller(false, true, None),
                &no_localhost,
                known(Principal::Anonymous),
            ),
        ];
        for (who, settings, want) in cases {
            assert_eq!(identify(&who, settings), want, "{who:?} ({settings:?})");
        }
        // An unknown certificate without a token may not write.
        let Identity::Known(anonymous) = identify(&caller(false, false, None), &no_localhost)
        else {
            panic!("no token: known")
        };
        assert!(decide(&Method::PUT, "/meshes/m", &anonymous, &no_localhost).is_err());
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
