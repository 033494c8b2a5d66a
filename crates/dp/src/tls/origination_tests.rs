//! TLS origination towards an external server, against a real rustls server on loopback with
//! certificates made by the openssl CLI.

use std::sync::Arc;

use meshzone_tls_client::fixtures::{KeyKind, ca_and_leaf};
use meshzone_xds::decode::OriginationPlan;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// A loopback TLS server presenting `cert`/`key` that answers one byte per connection.
async fn server(cert_pem: &str, key_pem: &str) -> std::net::SocketAddr {
    let id = identity("server", cert_pem, key_pem).expect("server identity");
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(id.chain, id.key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        // Bounded: the test makes a handful of connections.
        for _ in 0..16 {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut s) = acceptor.accept(tcp).await {
                    let _ = s.write_all(b"!").await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    addr
}

async fn connect(plan: &OriginationPlan, addr: std::net::SocketAddr) -> Result<u8, String> {
    let config = origination_config("api", plan).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = plan
        .sni
        .clone()
        .and_then(|s| ServerName::try_from(s).ok())
        .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
    let mut s = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    s.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
    Ok(byte[0])
}

#[tokio::test]
async fn the_users_ca_and_server_name_decide_and_no_ca_trusts_anyone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, leaf) =
        ca_and_leaf(dir.path(), "api", KeyKind::EcdsaP256, "DNS:api.example").expect("openssl");
    let (other_ca, _) =
        ca_and_leaf(dir.path(), "other", KeyKind::EcdsaP256, "DNS:other.example").expect("openssl");
    let key = std::fs::read_to_string(&leaf.key).expect("key");
    let addr = server(&leaf.cert_pem(), &key).await;
    let plan = |ca_pem: Option<String>, names: &[&str]| OriginationPlan {
        sni: Some("api.example".into()),
        trusted_ca_pem: ca_pem,
        dns_sans: names.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    };
    assert_eq!(
        connect(&plan(Some(ca.cert_pem()), &["api.example"]), addr).await,
        Ok(b'!')
    );
    let wrong_name = connect(&plan(Some(ca.cert_pem()), &["db.example"]), addr).await;
    assert!(wrong_name.is_err(), "{wrong_name:?}");
    let wrong_ca = connect(&plan(Some(other_ca.cert_pem()), &["api.example"]), addr).await;
    assert!(wrong_ca.is_err(), "{wrong_ca:?}");
    // skipHostnameVerification: the chain is still checked, the name is not.
    assert_eq!(
        connect(&plan(Some(ca.cert_pem()), &[]), addr).await,
        Ok(b'!')
    );
    assert!(
        connect(&plan(Some(other_ca.cert_pem()), &[]), addr)
            .await
            .is_err()
    );
    // No CA: nothing is verified (Envoy without a validation context does the same).
    assert_eq!(connect(&plan(None, &[]), addr).await, Ok(b'!'));
}
