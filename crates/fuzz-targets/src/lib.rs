//! The fuzz targets: each takes arbitrary bytes and runs them through one parser the way the
//! running code does, and must never panic, hang or exhaust memory. `fuzz/` (cargo-fuzz, on the
//! nightly toolchain) drives them with libFuzzer; the test below replays every committed input of
//! `fuzz/corpus/<target>/` (the seeds, and every input a fuzzer found) on the stable toolchain, so
//! CI keeps each finding fixed.
//!
//! | target | what it parses |
//! |---|---|
//! | `resource_document` | Universal YAML/JSON documents, then each resource and its validation (kumactl, the REST API) |
//! | `kds_from_zone` | a KDS `Changes` message as global receives it from a zone |
//! | `kds_from_global` | a KDS `Changes` message as a zone receives it from global |
//! | `xds_response` | an xDS `DiscoveryResponse` as kuma-dp decodes it, every resource as every type |
//! | `client_hello` | the first bytes of a zone ingress/egress connection, in two pieces, for the SNI |
//! | `dns_query` | a DNS query to the CP's `.mesh` server, and the answer's encoding |
//! | `jwt` | a user/data-plane/zone token, verified with a known key |

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::OnceLock;
use std::time::SystemTime;

use meshzone_kds::proto::Changes;
use meshzone_kds::{sync, wire};
use meshzone_model::{Resource, ResourceType};
use prost::Message;

/// A target: bytes in, no panic out.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus directory and cargo-fuzz binary.
pub const TARGETS: &[(&str, Target)] = &[
    ("resource_document", resource_document),
    ("kds_from_zone", kds_from_zone),
    ("kds_from_global", kds_from_global),
    ("xds_response", xds_response),
    ("client_hello", client_hello),
    ("dns_query", dns_query),
    ("jwt", jwt),
];

pub fn resource_document(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(docs) = meshzone_model::parse_documents(text) else {
        return;
    };
    for doc in docs {
        if let Ok(r) = Resource::from_value(doc) {
            let _ = meshzone_model::validate(&r);
            let _ = r.spec_json();
        }
    }
}

pub fn kds_from_zone(data: &[u8]) {
    let Ok(changes) = Changes::decode(data) else {
        return;
    };
    let _ = wire::compatible(&changes.protocol_version);
    let zone = "zone-1";
    let (got, _) = wire::received_from_zone(zone, &changes);
    let _ = sync::reconcile(&[], &got, |r| sync::from_zone(zone, r), |_| false);
}

pub fn kds_from_global(data: &[u8]) {
    let Ok(changes) = Changes::decode(data) else {
        return;
    };
    let (got, _) = wire::received_from_global(&changes);
    let _ = sync::reconcile(&[], &got, sync::managed_by_global_sync, |r| {
        r.resource_type() == ResourceType::Mesh
    });
}

pub fn xds_response(data: &[u8]) {
    use meshzone_xds::discovery::DiscoveryResponse;
    use meshzone_xds::names::TypeUrl;
    let Ok(response) = DiscoveryResponse::decode(data) else {
        return;
    };
    let mut config = meshzone_xds::decode::ProxyConfig::default();
    let _ = TypeUrl::parse(&response.type_url);
    for t in TypeUrl::ALL {
        let _ = config.apply(t, &response.resources);
    }
}

pub fn client_hello(data: &[u8]) {
    use meshzone_tls_client::client_hello::{ClientHelloReader, Hello};
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (a, b) = data.split_at(split);
    let mut reader = ClientHelloReader::default();
    for piece in [a, b] {
        match reader.push(piece) {
            Ok(Hello::NeedMore) => {}
            Ok(Hello::Complete(_)) | Err(_) => return,
        }
    }
}

fn vip_table() -> &'static BTreeMap<String, Ipv4Addr> {
    static TABLE: OnceLock<BTreeMap<String, Ipv4Addr>> = OnceLock::new();
    TABLE.get_or_init(|| {
        BTreeMap::from([
            ("echo.mesh".to_string(), Ipv4Addr::new(240, 0, 0, 1)),
            ("backend.mesh".to_string(), Ipv4Addr::new(240, 0, 0, 2)),
        ])
    })
}

pub fn dns_query(data: &[u8]) {
    let Ok(query) = hickory_proto::op::Message::from_vec(data) else {
        return;
    };
    let response = meshzone_dns::answer::answer(&query, vip_table(), "mesh");
    let _ = response.to_vec();
}

/// One signing key for the process, and its public half.
fn key() -> &'static (meshzone_pki::SigningKey, Vec<meshzone_pki::VerifyingKey>) {
    static KEY: OnceLock<(meshzone_pki::SigningKey, Vec<meshzone_pki::VerifyingKey>)> =
        OnceLock::new();
    KEY.get_or_init(|| {
        let key = meshzone_pki::SigningKey::generate("1").expect("a signing key");
        let public = meshzone_pki::VerifyingKey {
            key_id: "1".into(),
            public_pem: key.public_pem().expect("its public half"),
        };
        (key, vec![public])
    })
}

pub fn jwt(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let keys = &key().1;
    let now = SystemTime::now();
    let _ = meshzone_pki::verify_token::<meshzone_identity::UserClaims>(token, keys, now);
    let _ = meshzone_pki::verify_token::<meshzone_identity::DataplaneClaims>(token, keys, now);
    let _ = meshzone_pki::verify_token::<meshzone_identity::ZoneClaims>(token, keys, now);
}

/// A signed token for the `jwt` seeds.
pub fn seed_token() -> String {
    let claims = meshzone_identity::UserClaims {
        jti: "seed".into(),
        name: "jane".into(),
        groups: vec!["team-a".into()],
        iat: 0,
        exp: u64::MAX / 2,
    };
    meshzone_pki::sign_token(&claims, &key().0).expect("signs")
}

#[cfg(test)]
mod tests;
