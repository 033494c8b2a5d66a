//! Test fixtures made by the `openssl` CLI, as users make them (feature `fixtures`; this
//! crate's own tests use it too). Nothing here runs in a shipped binary.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The key type of a generated certificate.
#[derive(Clone, Copy, Debug)]
pub enum KeyKind {
    Rsa2048,
    EcdsaP256,
}

impl KeyKind {
    fn newkey_args(self) -> &'static [&'static str] {
        match self {
            KeyKind::Rsa2048 => &["-newkey", "rsa:2048"],
            KeyKind::EcdsaP256 => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        }
    }
}

/// A certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    pub fn cert_pem(&self) -> String {
        std::fs::read_to_string(&self.cert).unwrap_or_default()
    }
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run openssl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `openssl req -x509 … -subj /CN=<name> -addext subjectAltName=<san>` in `dir`: the command
/// of the bug report. OpenSSL 3 marks the result CA:TRUE.
pub fn self_signed(dir: &Path, name: &str, key: KeyKind, san: &str) -> Result<CertFiles, String> {
    let files = files(dir, name);
    let mut args = vec!["req", "-x509"];
    args.extend_from_slice(key.newkey_args());
    let subj = format!("/CN={name}");
    let san = format!("subjectAltName={san}");
    let (key_path, cert_path) = (
        files.key.display().to_string(),
        files.cert.display().to_string(),
    );
    args.extend_from_slice(&[
        "-nodes", "-days", "30", "-subj", &subj, "-addext", &san, "-keyout", &key_path, "-out",
        &cert_path,
    ]);
    openssl(dir, &args)?;
    Ok(files)
}

/// A CA (`<name>-ca`, self-signed, CA:TRUE) and a leaf signed by it (CA:FALSE, serverAuth,
/// `subjectAltName=<san>`), both by the openssl CLI.
pub fn ca_and_leaf(
    dir: &Path,
    name: &str,
    key: KeyKind,
    san: &str,
) -> Result<(CertFiles, CertFiles), String> {
    let ca = self_signed(dir, &format!("{name}-ca"), key, "DNS:ca.invalid")?;
    let leaf = leaf(dir, name, &ca, key, "serverAuth", san)?;
    Ok((ca, leaf))
}

/// A leaf `<name>` signed by `ca` with the openssl CLI (CA:FALSE, `extendedKeyUsage=<usage>`,
/// e.g. serverAuth or clientAuth, `subjectAltName=<san>`).
pub fn leaf(
    dir: &Path,
    name: &str,
    ca: &CertFiles,
    key: KeyKind,
    usage: &str,
    san: &str,
) -> Result<CertFiles, String> {
    let leaf = files(dir, name);
    let csr = dir.join(format!("{name}.csr"));
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(
        &ext,
        format!("basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\nsubjectAltName={san}\n"),
    )
    .map_err(|e| format!("cannot write {}: {e}", ext.display()))?;
    let d = |p: &Path| p.display().to_string();
    let subj = format!("/CN={name}");
    let mut args = vec!["req"];
    args.extend_from_slice(key.newkey_args());
    let (leaf_key, csr_path) = (d(&leaf.key), d(&csr));
    args.extend_from_slice(&[
        "-nodes", "-subj", &subj, "-keyout", &leaf_key, "-out", &csr_path,
    ]);
    openssl(dir, &args)?;
    let (ca_cert, ca_key, ext_path, leaf_cert) = (d(&ca.cert), d(&ca.key), d(&ext), d(&leaf.cert));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr_path,
            "-CA",
            &ca_cert,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            &ext_path,
            "-out",
            &leaf_cert,
        ],
    )?;
    Ok(leaf)
}

fn files(dir: &Path, name: &str) -> CertFiles {
    CertFiles {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    }
}

/// A real TLS ClientHello with `sni`, as rustls's client sends it first.
pub fn client_hello(sni: &str) -> Vec<u8> {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(sni.to_string()).expect("a name");
    let mut conn =
        rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("a client");
    let mut out = Vec::new();
    conn.write_tls(&mut out).expect("a ClientHello");
    out
}
