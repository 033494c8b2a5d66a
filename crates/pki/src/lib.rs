//! Public-key infrastructure of the mesh: the per-mesh certificate authority, workload
//! certificates carrying SPIFFE IDs (`spiffe://<mesh>/<service>`), self-signed server
//! certificates for the control plane's own listeners, and signed tokens (JWT, ES256) for data
//! plane proxies and zones.
//!
//! Functions take the current time as an argument; nothing here reads the clock, the disk or the
//! network. Private keys never appear in errors or `Debug` output.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Generate(String),
    #[error("not a valid PEM certificate: {0}")]
    BadCertificate(String),
    #[error("not a valid PEM private key")]
    BadKey,
    #[error("{0:?} is not a valid SPIFFE ID")]
    BadSpiffeId(String),
    #[error("{0:?} is not a valid workload URI SAN (spiffe://… or kuma://…, ASCII)")]
    BadWorkloadUri(String),
}

/// A certificate and its private key, both PEM. `Debug` hides the key.
#[derive(Clone, PartialEq, Eq)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

fn gen_err(e: rcgen::Error) -> PkiError {
    PkiError::Generate(e.to_string())
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Certificates are valid from a minute before `now`, to tolerate small clock skew.
const BACKDATE: Duration = Duration::from_secs(60);

fn validity(params: &mut CertificateParams, now: SystemTime, lifetime: Duration) {
    params.not_before = offset(now.checked_sub(BACKDATE).unwrap_or(now));
    params.not_after = offset(now + lifetime);
}

/// The SPIFFE ID of a service in a mesh.
pub fn spiffe_id(mesh: &str, service: &str) -> String {
    format!("spiffe://{mesh}/{service}")
}

/// Creates a self-signed CA for a mesh.
pub fn generate_ca(
    mesh: &str,
    lifetime: Duration,
    now: SystemTime,
) -> Result<CertifiedKey, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "meshzone");
    dn.push(DnType::CommonName, format!("mesh {mesh} CA"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // The CA may only sign identities of its own mesh.
    params.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{mesh}")
            .try_into()
            .map_err(|_| PkiError::BadSpiffeId(mesh.to_string()))?,
    )];
    validity(&mut params, now, lifetime);
    let key = KeyPair::generate().map_err(gen_err)?;
    let cert = params.self_signed(&key).map_err(gen_err)?;
    Ok(CertifiedKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The URI SAN naming one tag of a workload's inbound: `kuma://<tag>/<value>` (Kuma's form;
/// MeshTrafficPermission matches clients by it).
pub fn tag_uri(tag: &str, value: &str) -> String {
    format!("kuma://{tag}/{value}")
}

/// Issues a workload certificate, signed by `ca`, carrying each URI as a URI SAN: the SPIFFE
/// IDs of its services (`spiffe://…`, what peers verify) and its tags (`kuma://…`, what
/// traffic permissions match). Usable as both TLS client and server certificate (mesh traffic
/// is mutual).
pub fn issue_workload_cert(
    ca: &CertifiedKey,
    uris: &[String],
    lifetime: Duration,
    now: SystemTime,
) -> Result<CertifiedKey, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    let mut sans = Vec::new();
    for uri in uris {
        if !uri.starts_with("spiffe://") && !uri.starts_with("kuma://") {
            return Err(PkiError::BadWorkloadUri(uri.clone()));
        }
        sans.push(SanType::URI(
            uri.as_str()
                .try_into()
                .map_err(|_| PkiError::BadWorkloadUri(uri.clone()))?,
        ));
    }
    params.subject_alt_names = sans;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "meshzone");
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params, now, lifetime);
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|_| PkiError::BadKey)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    let key = KeyPair::generate().map_err(gen_err)?;
    let cert = params.signed_by(&key, &issuer).map_err(gen_err)?;
    Ok(CertifiedKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A self-signed server certificate for the given DNS names and IP addresses.
pub fn self_signed_server_cert(
    names: &[String],
    lifetime: Duration,
    now: SystemTime,
) -> Result<CertifiedKey, PkiError> {
    let mut params = CertificateParams::new(names.to_vec()).map_err(gen_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "kuma-cp");
    params.distinguished_name = dn;
    // A self-signed leaf: clients trust it by adding it as their root (`--ca-cert-file`).
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut params, now, lifetime);
    let key = KeyPair::generate().map_err(gen_err)?;
    let cert = params.self_signed(&key).map_err(gen_err)?;
    Ok(CertifiedKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub uri_sans: Vec<String>,
    pub not_after: SystemTime,
}

/// Reads the URI SANs and expiry of a DER certificate.
pub fn cert_info_der(der: &[u8]) -> Result<CertInfo, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    let mut uri_sans = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(u) = name {
                uri_sans.push(u.to_string());
            }
        }
    }
    let secs = cert.validity().not_after.timestamp().max(0) as u64;
    Ok(CertInfo {
        uri_sans,
        not_after: UNIX_EPOCH + Duration::from_secs(secs),
    })
}

/// Reads the first certificate of a PEM text.
pub fn cert_info_pem(pem: &str) -> Result<CertInfo, PkiError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    cert_info_der(&pem.contents)
}

// ---------------------------------------------------------------------------------------------
// Tokens

/// A token signing key (ECDSA P-256). `Debug` hides the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey {
    pub key_id: String,
    pub private_pem: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id)
            .field("private_pem", &"<redacted>")
            .finish()
    }
}

impl SigningKey {
    pub fn generate(key_id: &str) -> Result<SigningKey, PkiError> {
        let key = KeyPair::generate().map_err(gen_err)?;
        Ok(SigningKey {
            key_id: key_id.to_string(),
            private_pem: key.serialize_pem(),
        })
    }

    /// The public half, PEM (SubjectPublicKeyInfo), safe to share.
    pub fn public_pem(&self) -> Result<String, PkiError> {
        Ok(KeyPair::from_pem(&self.private_pem)
            .map_err(|_| PkiError::BadKey)?
            .public_key_pem())
    }
}

/// A public key that verifies tokens with the matching key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    pub key_id: String,
    pub public_pem: String,
}

/// Why a token was refused. Each message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token was provided")]
    Missing,
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error(
        "token was signed with key {0:?}, which this control plane does not know (was the signing key rotated?)"
    )]
    UnknownKey(String),
    #[error("token signature is not valid")]
    BadSignature,
    #[error("token expired at {0} (unix seconds); generate a new one")]
    Expired(u64),
    #[error("token has been revoked")]
    Revoked,
    #[error("{0}")]
    Mismatch(String),
}

/// Claims every token carries besides its own.
pub trait Expiring {
    fn exp(&self) -> u64;
}

pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn sign_token<C: Serialize>(claims: &C, key: &SigningKey) -> Result<String, PkiError> {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(key.key_id.clone());
    let enc = jsonwebtoken::EncodingKey::from_ec_pem(key.private_pem.as_bytes())
        .map_err(|_| PkiError::BadKey)?;
    jsonwebtoken::encode(&header, claims, &enc).map_err(|e| PkiError::Generate(e.to_string()))
}

/// Verifies signature (with the key named by the token's `kid`) and expiry against `now`.
pub fn verify_token<C: DeserializeOwned + Expiring>(
    token: &str,
    keys: &[VerifyingKey],
    now: SystemTime,
) -> Result<C, TokenError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
    let kid = header.kid.unwrap_or_default();
    let key = keys
        .iter()
        .find(|k| k.key_id == kid)
        .ok_or_else(|| TokenError::UnknownKey(kid.clone()))?;
    let dec = jsonwebtoken::DecodingKey::from_ec_pem(key.public_pem.as_bytes())
        .map_err(|e| TokenError::Malformed(format!("verifying key {kid:?}: {e}")))?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<C>(token, &dec, &validation).map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::BadSignature,
        _ => TokenError::Malformed(e.to_string()),
    })?;
    if data.claims.exp() <= unix(now) {
        return Err(TokenError::Expired(data.claims.exp()));
    }
    Ok(data.claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Claims {
        name: String,
        exp: u64,
    }
    impl Expiring for Claims {
        fn exp(&self) -> u64 {
            self.exp
        }
    }

    #[test]
    fn workload_cert_carries_spiffe_ids_and_expiry() {
        let now = SystemTime::now();
        let ca = generate_ca("default", Duration::from_secs(86_400 * 365), now).unwrap();
        let id = spiffe_id("default", "backend");
        let cert = issue_workload_cert(
            &ca,
            std::slice::from_ref(&id),
            Duration::from_secs(3600),
            now,
        )
        .unwrap();
        let info = cert_info_pem(&cert.cert_pem).unwrap();
        assert_eq!(info.uri_sans, vec![id]);
        let left = info.not_after.duration_since(now).unwrap();
        assert!(left <= Duration::from_secs(3600) && left > Duration::from_secs(3500));
        assert!(!format!("{cert:?}").contains("PRIVATE"));
        assert!(
            issue_workload_cert(&ca, &["backend".into()], Duration::from_secs(1), now).is_err()
        );
    }

    #[test]
    fn workload_cert_carries_tag_uris_beside_spiffe_ids() {
        let now = SystemTime::now();
        let ca = generate_ca("default", Duration::from_secs(86_400 * 365), now).unwrap();
        let uris = vec![
            spiffe_id("default", "backend"),
            tag_uri("kuma.io/service", "backend"),
            tag_uri("kuma.io/zone", "east"),
            tag_uri("version", "v2"),
        ];
        assert_eq!(uris[2], "kuma://kuma.io/zone/east");
        let cert = issue_workload_cert(&ca, &uris, Duration::from_secs(3600), now).unwrap();
        assert_eq!(cert_info_pem(&cert.cert_pem).unwrap().uri_sans, uris);
        for bad in ["https://x/y", "kuma://zone/\u{e9}t\u{e9}"] {
            let err = issue_workload_cert(&ca, &[bad.into()], Duration::from_secs(1), now)
                .expect_err(bad);
            assert!(
                matches!(&err, PkiError::BadWorkloadUri(u) if u == bad),
                "{err}"
            );
        }
    }

    #[test]
    fn tokens_verify_and_fail_with_reasons() {
        let now = SystemTime::now();
        let key = SigningKey::generate("1").unwrap();
        let keys = vec![VerifyingKey {
            key_id: "1".into(),
            public_pem: key.public_pem().unwrap(),
        }];
        let claims = Claims {
            name: "dp-1".into(),
            exp: unix(now) + 60,
        };
        let token = sign_token(&claims, &key).unwrap();
        assert_eq!(verify_token::<Claims>(&token, &keys, now).unwrap(), claims);
        assert_eq!(
            verify_token::<Claims>(&token, &keys, now + Duration::from_secs(61)).unwrap_err(),
            TokenError::Expired(claims.exp)
        );
        assert_eq!(
            verify_token::<Claims>("", &keys, now).unwrap_err(),
            TokenError::Missing
        );
        let other = SigningKey::generate("1").unwrap();
        let forged = sign_token(&claims, &other).unwrap();
        assert_eq!(
            verify_token::<Claims>(&forged, &keys, now).unwrap_err(),
            TokenError::BadSignature
        );
        let unknown = sign_token(&claims, &SigningKey::generate("9").unwrap()).unwrap();
        assert!(
            matches!(verify_token::<Claims>(&unknown, &keys, now), Err(TokenError::UnknownKey(k)) if k == "9")
        );
        assert!(matches!(
            verify_token::<Claims>("abc", &keys, now),
            Err(TokenError::Malformed(_))
        ));
        assert!(!format!("{key:?}").contains("PRIVATE"));
    }
}
