//! The client side of TLS to a server whose certificate a *user* supplied: global's KDS server
//! (verified by zones with `KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE`) and the zone CP's DP server
//! (verified by kuma-dp with `--ca-cert-file`).
//!
//! - [`Roots`]: the PEM roots a user configured, parsed once, with errors naming the setting
//!   and the file.
//! - [`Verifier`] for [`Trust::Roots`]: normal webpki verification against those roots, plus,
//!   as Go's verifier does, a presented certificate that is itself one of the roots (byte-equal
//!   DER) is trusted as pinned even when it says CA:TRUE (OpenSSL 3's `req -x509` default). The
//!   server name, the validity dates and the handshake signature are still checked. For
//!   [`Trust::SkipVerify`] (explicit trial settings), the handshake signature only.
//! - [`Connector`]: the tonic connector (TCP + TLS with ALPN h2) using it.
//! - [`bearer`]: the bearer token on the gRPC calls made over it, and read by their servers.
//!
//! It must not: read the clock (rustls hands the verifier `now`), touch private keys, log,
//! or serve TLS (servers keep tonic's `ServerTlsConfig`). The only file it reads is the roots
//! file it is named.

pub mod bearer;
pub mod client_hello;
mod connector;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod verifier;

use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

pub use connector::Connector;
pub use verifier::{Trust, Verifier};

/// Why a set of roots cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error("not PEM: {0}")]
    Pem(String),
    #[error("no certificate in it (expected a -----BEGIN CERTIFICATE----- block)")]
    Empty,
    #[error("certificate {index} is not usable as a root: {reason}")]
    Unusable { index: usize, reason: String },
    #[error("the system has no root certificates")]
    NoNativeRoots,
}

/// Errors naming the setting and the file they come from.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {setting} {path}: {source}")]
    Read {
        setting: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{setting} {path}: {source}")]
    Roots {
        setting: &'static str,
        path: String,
        source: RootsError,
    },
    #[error("TLS client setup: {0}")]
    Setup(String),
}

/// Trust roots configured by a user (or the system's), checked to be usable as webpki anchors.
#[derive(Clone, Debug)]
pub struct Roots {
    certs: Vec<CertificateDer<'static>>,
}

impl Roots {
    /// Every `CERTIFICATE` block of `pem` (other blocks, e.g. a key, are ignored).
    pub fn from_pem(pem: &str) -> Result<Roots, RootsError> {
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| RootsError::Pem(e.to_string()))?;
        if certs.is_empty() {
            return Err(RootsError::Empty);
        }
        for (i, cert) in certs.iter().enumerate() {
            webpki::anchor_from_trusted_cert(cert).map_err(|e| RootsError::Unusable {
                index: i + 1,
                reason: format!("{e:?}"),
            })?;
        }
        Ok(Roots { certs })
    }

    /// The roots in the file `path`, given by the user as `setting` (named in every error).
    pub fn read(setting: &'static str, path: &Path) -> Result<Roots, Error> {
        Self::from_pem(&read_pem(setting, path)?).map_err(|source| Error::Roots {
            setting,
            path: path.display().to_string(),
            source,
        })
    }

    /// The operating system's roots (a server with a publicly trusted certificate).
    pub fn native() -> Result<Roots, RootsError> {
        let loaded = rustls_native_certs::load_native_certs();
        let certs: Vec<_> = loaded
            .certs
            .into_iter()
            .filter(|c| webpki::anchor_from_trusted_cert(c).is_ok())
            .collect();
        if certs.is_empty() {
            return Err(RootsError::NoNativeRoots);
        }
        Ok(Roots { certs })
    }

    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }
}

/// Reads the roots file `path` (the user's `setting`) and checks it holds usable roots; returns
/// its text, for settings that carry the PEM on.
pub fn read_pem_roots(setting: &'static str, path: &Path) -> Result<String, Error> {
    let pem = read_pem(setting, path)?;
    Roots::from_pem(&pem).map_err(|source| Error::Roots {
        setting,
        path: path.display().to_string(),
        source,
    })?;
    Ok(pem)
}

fn read_pem(setting: &'static str, path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        setting,
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_errors_name_the_setting_and_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.crt");
        let e = read_pem_roots("KUMA_X_FILE", &missing).expect_err("missing");
        assert!(
            e.to_string()
                .starts_with(&format!("cannot read KUMA_X_FILE {}", missing.display())),
            "{e}"
        );
        let no_cert = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let bad_pem = "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
        for (file, text, reason) in [
            (
                "kds.key",
                no_cert,
                "no certificate in it (expected a -----BEGIN CERTIFICATE----- block)",
            ),
            ("bad.crt", bad_pem, "not PEM: "),
        ] {
            let path = dir.path().join(file);
            std::fs::write(&path, text).expect("write");
            let e = read_pem_roots("KUMA_X_FILE", &path).expect_err(file);
            let want = format!("KUMA_X_FILE {}: {reason}", path.display());
            assert!(e.to_string().starts_with(&want), "{e}");
            // A key's bytes never appear in the message.
            assert!(!e.to_string().contains("AAAA"), "{e}");
        }
    }
}
