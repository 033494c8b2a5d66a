//! Starts the DP server (ADS over gRPC/TLS) of a zone control plane.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};
use meshzone_dp_server::AdsService;
use meshzone_store::Store;
use tokio::net::TcpListener;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tracing::info;

use crate::config::Config;

/// Lifetime of a generated DP server certificate.
const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A server certificate and its key (PEM), with the files they were read from.
pub struct ServerCertificate {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// Reads the configured certificate, or the one generated earlier into the work dir, or
/// generates it there (the seed's `~/.kuma/kuma-cp.crt`, which kuma-dp uses by default).
pub fn certificate(
    config: &Config,
    work_dir: &Path,
    hostname: &str,
) -> anyhow::Result<ServerCertificate> {
    certificate_from(
        &config.dp_server.tls_cert_file,
        &config.dp_server.tls_key_file,
        work_dir,
        hostname,
    )
}

/// The given certificate files, or else the work dir's generated certificate.
pub fn certificate_from(
    cert_file: &str,
    key_file: &str,
    work_dir: &Path,
    hostname: &str,
) -> anyhow::Result<ServerCertificate> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let read_both = |cert_path: PathBuf, key_path: PathBuf| {
        Ok(ServerCertificate {
            cert_pem: read(&cert_path)?,
            key_pem: read(&key_path)?,
            cert_path,
            key_path,
        })
    };
    if !cert_file.is_empty() {
        return read_both(PathBuf::from(cert_file), PathBuf::from(key_file));
    }
    let cert_path = work_dir.join("kuma-cp.crt");
    let key_path = work_dir.join("kuma-cp.key");
    if cert_path.exists() && key_path.exists() {
        return read_both(cert_path, key_path);
    }
    // Every address of this machine, so proxies and zones on other hosts can verify it too.
    let mut names = vec![
        "localhost".to_string(),
        hostname.to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    for interface in if_addrs::get_if_addrs().unwrap_or_default() {
        let ip = interface.ip().to_string();
        if !names.contains(&ip) {
            names.push(ip);
        }
    }
    let generated =
        meshzone_pki::self_signed_server_cert(&names, SERVER_CERT_LIFETIME, SystemTime::now())
            .context("cannot generate the control plane's server certificate")?;
    std::fs::create_dir_all(work_dir)
        .with_context(|| format!("cannot create {}", work_dir.display()))?;
    write_private(&key_path, &generated.key_pem)?;
    std::fs::write(&cert_path, &generated.cert_pem)
        .with_context(|| format!("cannot write {}", cert_path.display()))?;
    info!(path = %cert_path.display(), "generated the control plane's server certificate");
    Ok(ServerCertificate {
        cert_pem: generated.cert_pem,
        key_pem: generated.key_pem,
        cert_path,
        key_path,
    })
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A gRPC server with TLS and HTTP/2 keepalive (the DP server's and KDS's), checked before
/// anything is served so that a bad certificate stops the start with `what` named.
pub fn tls_server(
    cert_pem: String,
    key_pem: String,
    keepalive: (Duration, Duration),
    what: &str,
) -> anyhow::Result<Server> {
    Ok(Server::builder()
        .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem)))
        .with_context(|| format!("invalid {what} TLS configuration"))?
        .http2_keepalive_interval(Some(keepalive.0))
        .http2_keepalive_timeout(Some(keepalive.1)))
}

/// Serves ADS on `listener` with `server` until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    mut server: Server,
    store: Store,
    ads: AdsService,
    dead_instances: impl Fn(&str) -> bool + Send,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // A CP that serves proxies owns their insights (global holds zones' copies and serves
    // none: `serve_refusal`); those of live instances sharing the store stay theirs.
    match meshzone_dp_server::close_stale_subscriptions(&store, dead_instances).await {
        Ok(0) => {}
        Ok(n) => info!(closed = n, "marked proxies of the previous run offline"),
        Err(e) => return Err(anyhow!("cannot read insights: {e}")),
    }
    let admin = ads.proxy_admin_service();
    server
        .add_service(ads.into_server())
        .add_service(admin.into_server())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop,
        )
        .await
        .context("DP server")
}

/// Serves on `listener` an ADS that turns every proxy away with `reason` (global's DP port).
pub async fn serve_refusal(
    listener: TcpListener,
    mut server: Server,
    reason: &'static str,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    server
        .add_service(meshzone_dp_server::AdsRefuser::new(reason).into_server())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop,
        )
        .await
        .context("DP server")
}
