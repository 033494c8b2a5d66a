//! Test support: generated Envoy resources as Envoy's own JSON (for golden files), and
//! `envoy --mode validate` on them (proof that Envoy 1.40 accepts what we generate).
//!
//! The JSON comes from the `.proto` files that `envoy-types` ships, compiled at test time with
//! protox into a `prost-reflect` pool (so `Any`s expand by their type URL, as Envoy prints them).
//! Envoy is the integration tests' (`ENVOY_BIN`, or `.venv/bin/envoy` at the workspace root,
//! where `scripts/test.sh` installs it). Also the resource fixtures the generator tests share.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use envoy_types::pb::google::protobuf::Any;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::{Value, json};

use crate::generate::Snapshot;
use crate::names::TypeUrl;

/// A resource of `testdata/resources`.
pub fn fixture(name: &str) -> meshzone_model::Resource {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/resources")
        .join(name);
    let text = std::fs::read_to_string(path).expect("fixture");
    meshzone_model::Resource::from_value(
        meshzone_model::parse_documents(&text)
            .expect("yaml")
            .remove(0),
    )
    .expect("valid")
}

/// The `proto/` folder of the `envoy-types` package this crate builds with.
fn proto_root() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
        ])
        // Only this platform's packages (the others may not be downloaded).
        .arg(format!("{}-unknown-linux-gnu", std::env::consts::ARCH))
        .arg("--manifest-path")
        .arg(&manifest)
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let envoy_types = meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "envoy-types"))
        .and_then(|p| p["manifest_path"].as_str())
        .expect("envoy-types among the packages");
    Path::new(envoy_types)
        .parent()
        .expect("package folder")
        .join("proto")
}

/// Every message type our generator emits, compiled from Envoy's protos.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let root = proto_root();
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
        let files = [
            "envoy/config/bootstrap/v3/bootstrap.proto",
            "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
            "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
            "envoy/extensions/filters/network/rbac/v3/rbac.proto",
            "envoy/extensions/filters/http/router/v3/router.proto",
            "envoy/extensions/filters/http/rbac/v3/rbac.proto",
            "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
            "envoy/extensions/filters/listener/original_dst/v3/original_dst.proto",
            "envoy/extensions/transport_sockets/tls/v3/tls.proto",
            "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
        ];
        let mut compiler = protox::Compiler::new(includes).expect("include paths");
        compiler.include_imports(true);
        compiler.open_files(files).expect("Envoy protos compile");
        compiler.descriptor_pool()
    })
}

/// One packed resource as Envoy's JSON.
pub fn any_json(any: &Any) -> Value {
    let name = any
        .type_url
        .strip_prefix("type.googleapis.com/")
        .unwrap_or(&any.type_url);
    let descriptor = pool()
        .get_message_by_name(name)
        .unwrap_or_else(|| panic!("{name} is not in the pool"));
    let message =
        DynamicMessage::decode(descriptor, any.value.as_slice()).expect("decodes by its type");
    message
        .serialize_with_options(
            serde_json::value::Serializer,
            &SerializeOptions::new()
                .stringify_64_bit_integers(false)
                .use_proto_field_name(true),
        )
        .expect("serializes")
}

fn resources_json(snapshot: &Snapshot, t: TypeUrl) -> Vec<Value> {
    snapshot
        .get(t)
        .map(|s| s.resources.iter().map(|r| any_json(&r.resource)).collect())
        .unwrap_or_default()
}

/// A snapshot as JSON by type (`listeners`, `clusters`, `endpoints`), for golden files.
pub fn snapshot_json(snapshot: &Snapshot) -> Value {
    json!({
        "listeners": resources_json(snapshot, TypeUrl::Listener),
        "clusters": resources_json(snapshot, TypeUrl::Cluster),
        "endpoints": resources_json(snapshot, TypeUrl::ClusterLoadAssignment),
    })
}

/// Compares `value` with the golden file `testdata/xds/<name>` (rewritten with
/// `UPDATE_GOLDEN=1`).
pub fn assert_golden(name: &str, value: &Value) {
    let text = serde_json::to_string_pretty(value).expect("json") + "\n";
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/xds")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).expect("write golden");
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{}: missing; run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(
        text, want,
        "{name} differs; rerun with UPDATE_GOLDEN=1 if intended"
    );
}

/// Runs `envoy --mode validate` on a bootstrap whose static listeners and clusters are the
/// snapshot's (EDS and SDS stay on ADS, towards a placeholder server that is never dialled).
/// Err carries Envoy's output.
pub fn envoy_validate(snapshot: &Snapshot) -> Result<(), String> {
    let ads = json!({"ads": {}, "resource_api_version": "V3"});
    let mut clusters = resources_json(snapshot, TypeUrl::Cluster);
    clusters.push(json!({
        "name": "xds_cluster",
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        },
        "load_assignment": {"cluster_name": "xds_cluster", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}}
        ]}]}
    }));
    let bootstrap = json!({
        "node": {"id": "validate", "cluster": "validate"},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}]
            },
            "cds_config": ads.clone(),
        },
        "static_resources": {
            "listeners": resources_json(snapshot, TypeUrl::Listener),
            "clusters": clusters,
        },
    });
    let dir = tempfile_dir();
    let file = dir.join("bootstrap.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&bootstrap).expect("json")).expect("write");
    let out = std::process::Command::new(meshzone_integration_tests::envoy_binary())
        .args(["--mode", "validate", "--log-level", "warn", "-c"])
        .arg(&file)
        .output()
        .expect("envoy runs");
    let _ = std::fs::remove_dir_all(&dir);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn tempfile_dir() -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "meshzone-xds-validate-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
