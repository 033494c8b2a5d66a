//! Test support for the generator's Envoy output: Envoy's JSON form of a resource (for golden
//! files), and `envoy --mode validate` on a bootstrap holding generated listeners and clusters.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use meshzone_xds::envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use meshzone_xds::envoy_types::pb::envoy::config::bootstrap::v3::bootstrap::{
    DynamicResources, StaticResources,
};
use meshzone_xds::envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType;
use meshzone_xds::envoy_types::pb::envoy::config::core::v3::grpc_service::{
    EnvoyGrpc, TargetSpecifier,
};
use meshzone_xds::envoy_types::pb::envoy::config::core::v3::{
    ApiConfigSource, ApiVersion, GrpcService, Node,
};
use meshzone_xds::envoy_types::pb::envoy::config::listener::v3::Listener;
use meshzone_xds::envoy_types::pb::google::protobuf::Any;
use meshzone_xds::generate::{Resources, Snapshot};
use meshzone_xds::names::TypeUrl;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

/// The .proto files whose messages the generator emits (top-level and inside `Any`).
const PROTOS: &[&str] = &[
    "envoy/config/listener/v3/listener.proto",
    "envoy/config/cluster/v3/cluster.proto",
    "envoy/config/endpoint/v3/endpoint.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/transport_sockets/tls/v3/secret.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
    "envoy/extensions/filters/network/rbac/v3/rbac.proto",
    "envoy/extensions/filters/http/rbac/v3/rbac.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
    // Before fault.proto: it declares `envoy.extensions.filters.common`, which would capture
    // the local rate limits' relative `common.ratelimit.v3` names in protox.
    "envoy/extensions/filters/http/local_ratelimit/v3/local_rate_limit.proto",
    "envoy/extensions/filters/network/local_ratelimit/v3/local_rate_limit.proto",
    "envoy/extensions/filters/http/fault/v3/fault.proto",
    "envoy/extensions/filters/http/header_mutation/v3/header_mutation.proto",
    "envoy/extensions/retry/host/previous_hosts/v3/previous_hosts.proto",
    "envoy/config/trace/v3/zipkin.proto",
    "envoy/config/trace/v3/opentelemetry.proto",
    "envoy/config/trace/v3/datadog.proto",
    "envoy/extensions/access_loggers/file/v3/file.proto",
];

/// The `proto/` folder of the envoy-types crate this build uses (it ships Envoy's protos).
fn envoy_protos() -> PathBuf {
    // Only this (Linux) host's dependencies: the others are not downloaded.
    let host = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
        ])
        .arg(host)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata json");
    let manifest = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == "envoy-types")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("envoy-types in cargo metadata");
    Path::new(manifest)
        .parent()
        .expect("crate dir")
        .join("proto")
}

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let root = envoy_protos();
        let includes = [
            "data-plane-api",
            "xds",
            "protoc-gen-validate",
            "googleapis",
            "cel-spec/proto",
            "opentelemetry-proto",
            "client_model",
        ]
        .map(|d| root.join(d));
        let mut compiler = protox::Compiler::new(includes).expect("protox includes");
        compiler.include_imports(true);
        compiler.open_files(PROTOS).expect("compile Envoy protos");
        compiler.descriptor_pool()
    })
}

/// Envoy's JSON form of a packed resource (`Any` contents resolved, defaults left out).
pub fn json_of(any: &Any) -> serde_json::Value {
    let name = any
        .type_url
        .strip_prefix("type.googleapis.com/")
        .expect("type URL");
    let descriptor = pool()
        .get_message_by_name(name)
        .unwrap_or_else(|| panic!("{name} is not in the compiled protos; add its file to PROTOS"));
    let message = DynamicMessage::decode(descriptor, any.value.as_slice()).expect("decode");
    message
        .serialize_with_options(
            serde_json::value::Serializer,
            &SerializeOptions::new().stringify_64_bit_integers(false),
        )
        .expect("to json")
}

/// Every resource of one type of a snapshot, by name, in Envoy's JSON form.
pub fn json_by_name(snapshot: &Snapshot, type_url: TypeUrl) -> serde_json::Value {
    let resources = snapshot
        .get(type_url)
        .map(|t| t.resources.as_slice())
        .unwrap_or_default();
    serde_json::Value::Object(
        resources
            .iter()
            .map(|r| (r.name.clone(), json_of(&r.resource)))
            .collect(),
    )
}

/// Compares `json` with the golden file `testdata/xds/<name>`, rewriting it under
/// `UPDATE_GOLDEN=1`.
pub fn assert_golden(name: &str, json: &serde_json::Value) {
    let text = serde_json::to_string_pretty(json).expect("json") + "\n";
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/xds")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).expect("write golden");
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{}: missing; run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(
        text,
        want,
        "{} differs; run with UPDATE_GOLDEN=1 to accept",
        path.display()
    );
}

#[path = "../../../integration-tests/src/envoy_binary.rs"]
mod envoy_binary;
use envoy_binary::envoy_binary;

/// `envoy --mode validate` on a bootstrap whose static resources are the generated listeners
/// and clusters (EDS and SDS over an ADS cluster that validation never dials). Panics with
/// Envoy's message when Envoy rejects it.
pub fn assert_envoy_accepts(name: &str, resources: &Resources) {
    // A static HTTP/2 cluster on 127.0.0.1:1 (validation never dials it).
    let ads = meshzone_xds::generate::static_cluster("ads_cluster", "127.0.0.1", 1, true);
    let bootstrap = Bootstrap {
        node: Some(Node {
            id: format!("default.{name}"),
            cluster: name.into(),
            ..Default::default()
        }),
        static_resources: Some(StaticResources {
            listeners: resources
                .listeners
                .iter()
                .map(|l| l.listener.clone())
                .collect::<Vec<Listener>>(),
            clusters: resources
                .clusters
                .iter()
                .cloned()
                .chain(std::iter::once(ads))
                .collect(),
            ..Default::default()
        }),
        dynamic_resources: Some(DynamicResources {
            ads_config: Some(ApiConfigSource {
                api_type: ApiType::Grpc as i32,
                transport_api_version: ApiVersion::V3 as i32,
                grpc_services: vec![GrpcService {
                    target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                        cluster_name: "ads_cluster".into(),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    // One folder per call: tests of one binary run in parallel and each removes its own.
    let dir =
        std::env::temp_dir().join(format!("meshzone-xds-envoy-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join(format!("{name}.pb"));
    std::fs::write(&file, bootstrap.encode_to_vec()).expect("write bootstrap");
    let out = Command::new(envoy_binary())
        .args([
            "--mode",
            "validate",
            "--use-dynamic-base-id",
            "-l",
            "warn",
            "-c",
        ])
        .arg(&file)
        .output()
        .expect("run envoy");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "Envoy rejects {name}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
