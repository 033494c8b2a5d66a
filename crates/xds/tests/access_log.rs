//! MeshAccessLog's Envoy output from a real policy resource through the engine: File and Tcp
//! backends on the outbounds (`to`) and the inbound (`from`), Kuma's placeholders resolved per
//! listener and direction, pinned by golden JSON (`testdata/xds/mesh-access-log.golden.json`,
//! `UPDATE_GOLDEN=1` rewrites it), accepted by Envoy 1.40 (`envoy --mode validate`), and
//! decoded by the proxy into the plans kuma-dp writes.

mod support;

use std::collections::BTreeMap;

use meshzone_model::policies::MeshPolicies;
use meshzone_model::{Resource, ResourceType};
use meshzone_xds::decode::ProxyConfig;
use meshzone_xds::decode::access_log::{
    AccessLogPlan, HeaderRef, JsonTemplate, LineFormat, LogSink, Operator, Piece, Template,
};
use meshzone_xds::generate::{EndpointInfo, ProxyInput, Resources, base_resources};
use meshzone_xds::names::TypeUrl;
use meshzone_xds::policy::mesh_access_log::socket_path;
use meshzone_xds::policy::{ProxyPolicies, configure};
use serde_json::json;
use support::{assert_envoy_accepts, assert_golden, json_by_name};

fn resource(v: serde_json::Value) -> Resource {
    let r = Resource::from_value(v).expect("parses");
    meshzone_model::validate(&r).expect("valid");
    r
}

/// An HTTP inbound (web), outbounds to backend (http) and db (tcp).
fn dataplane() -> Resource {
    resource(
        json!({"type": "Dataplane", "mesh": "default", "name": "web-1", "networking": {
        "address": "10.0.0.1",
        "inbound": [{"port": 10001, "servicePort": 20001,
            "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http"}}],
        "outbound": [
            {"port": 30001, "tags": {"kuma.io/service": "backend"}},
            {"port": 30003, "tags": {"kuma.io/service": "db"}}
        ]}}),
    )
}

fn policy() -> Resource {
    resource(
        json!({"type": "MeshAccessLog", "mesh": "default", "name": "all",
        "spec": {"targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "Mesh"}, "default": {"backends": [
                {"type": "File", "file": {"path": "/tmp/outbound.log"}},
                {"type": "Tcp", "tcp": {"address": "127.0.0.1:5170", "format": {"type": "Json",
                    "json": [{"key": "src", "value": "%KUMA_SOURCE_SERVICE%"},
                             {"key": "dst", "value": "%KUMA_DESTINATION_SERVICE%"},
                             {"key": "code", "value": "%RESPONSE_CODE%"}],
                    "omitEmptyValues": true}}}]}}],
            "from": [{"targetRef": {"kind": "Mesh"}, "default": {"backends": [
                {"type": "File", "file": {"path": "/tmp/inbound.log", "format": {"type": "Plain",
                    "plain": "%KUMA_TRAFFIC_DIRECTION% %KUMA_SOURCE_SERVICE%->%KUMA_DESTINATION_SERVICE% %REQ(:METHOD)% %RESPONSE_CODE% %BYTES_SENT%"}}}]}}]}}),
    )
}

fn policies(dp: &Resource, resources: &[Resource]) -> ProxyPolicies {
    let mesh = MeshPolicies::from_resources(resources);
    let mut rules = mesh.dataplane_rules(dp, Some("zone-1")).expect("rules");
    ProxyPolicies {
        access_log: rules
            .remove(&ResourceType::MeshAccessLog)
            .unwrap_or_default(),
        access_log_socket: socket_path(&dp.meta.name, &dp.meta.mesh),
        ..Default::default()
    }
}

/// The configured resources of `dataplane()` under the access-log policies `resources`, with
/// backend (http) and db (tcp) reachable.
fn generated_with(resources: &[Resource]) -> Resources {
    let dp = dataplane();
    let meshzone_model::Spec::Dataplane(spec) = &dp.spec else {
        panic!("dataplane");
    };
    let endpoint = |address: &str| EndpointInfo {
        address: address.into(),
        port: 10001,
        weight: 1,
        zone: None,
        priority: 0,
        tags: Default::default(),
        via_egress: false,
    };
    let endpoints = BTreeMap::from([
        ("backend".to_string(), vec![endpoint("10.0.0.5")]),
        ("db".to_string(), vec![endpoint("10.0.0.8")]),
    ]);
    let protocols = BTreeMap::from([("backend".to_string(), "http".to_string())]);
    let policies = policies(&dp, resources);
    let mesh_spec = Default::default();
    let input = ProxyInput {
        transparent: None,
        mesh: "default",
        mesh_spec: &mesh_spec,
        dataplane: spec,
        endpoints: &endpoints,
        tls: None,
        protocols: &protocols,
        proxyless: false,
        policies: &policies,
        external_services: &Default::default(),
    };
    let mut out = base_resources(&input);
    configure(&input, &mut out);
    out
}

fn generated() -> Resources {
    generated_with(&[policy()])
}

#[test]
fn access_logs_golden_envoy_json_that_envoy_accepts() {
    let resources = generated();
    let snapshot = resources.clone().into_snapshot();
    assert_golden(
        "mesh-access-log.golden.json",
        &json!({"listeners": json_by_name(&snapshot, TypeUrl::Listener)}),
    );
    assert_envoy_accepts("mesh-access-log", &resources);
}

fn text(s: &str) -> Piece {
    Piece::Text(s.into())
}

#[test]
fn the_proxy_decodes_what_it_writes() {
    let snapshot = generated().into_snapshot();
    let (config, errors) = ProxyConfig::from_snapshot(&snapshot);
    assert!(errors.is_empty(), "refused: {errors:?}");
    let listener = |port: u16| {
        config
            .listeners
            .values()
            .find(|l| l.address.port() == port)
            .expect("listener")
    };
    // The inbound: the placeholders are the CP's, Envoy's operators are kuma-dp's.
    let inbound = &listener(10001).access_logs;
    assert_eq!(inbound.len(), 1);
    assert_eq!(inbound[0].sink, LogSink::File("/tmp/inbound.log".into()));
    let req = |name: &str| {
        Piece::Op(Operator::Req(HeaderRef {
            name: name.into(),
            fallback: None,
            max_len: None,
        }))
    };
    assert_eq!(
        inbound[0].format.line,
        LineFormat::Text(Template(vec![
            text("INBOUND unknown->web "),
            req(":method"),
            text(" "),
            Piece::Op(Operator::ResponseCode),
            text(" "),
            Piece::Op(Operator::BytesSent),
            text("\n"),
        ]))
    );
    // The HTTP outbound: Kuma's default HTTP format to the file, JSON to the collector.
    let backend = &listener(30001).access_logs;
    assert_eq!(backend.len(), 2);
    let LineFormat::Text(Template(pieces)) = &backend[0].format.line else {
        panic!("text: {:?}", backend[0]);
    };
    assert!(
        pieces.contains(&text("\" \"web\" \"backend\" \"10.0.0.1\" \"")),
        "{pieces:?}"
    );
    let AccessLogPlan { sink, format } = &backend[1];
    assert_eq!(sink, &LogSink::Tcp("127.0.0.1:5170".into()));
    assert!(format.omit_empty);
    let LineFormat::Json(fields) = &format.line else {
        panic!("json: {format:?}");
    };
    assert_eq!(
        fields["src"],
        JsonTemplate::Value(Template(vec![text("web")]))
    );
    assert_eq!(
        fields["code"],
        JsonTemplate::Value(Template(vec![Piece::Op(Operator::ResponseCode)]))
    );
    // The TCP outbound: Kuma's default TCP format.
    let db = &listener(30003).access_logs;
    let LineFormat::Text(Template(pieces)) = &db[0].format.line else {
        panic!("text: {:?}", db[0]);
    };
    assert!(
        pieces.contains(&text(" default 10.0.0.1(web)->")),
        "{pieces:?}"
    );
    assert!(pieces.contains(&text("(db) took ")), "{pieces:?}");
}

/// What kuma-dp cannot write is refused with the field path.
#[test]
fn unsupported_access_logs_are_refused_with_their_path() {
    use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType;
    use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, AccessLogFilter};
    use envoy_types::pb::envoy::config::core::v3::SubstitutionFormatString;
    use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format;
    use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
    use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
    use envoy_types::pb::envoy::extensions::access_loggers::file::v3::file_access_log::AccessLogFormat;
    use envoy_types::util::pack_any;
    use meshzone_xds::decode::access_log::decode;

    let file = |text: &str| FileAccessLog {
        path: "/tmp/x.log".into(),
        access_log_format: Some(AccessLogFormat::LogFormat(SubstitutionFormatString {
            format: Some(Format::TextFormatSource(DataSource {
                specifier: Some(data_source::Specifier::InlineString(text.into())),
                ..Default::default()
            })),
            ..Default::default()
        })),
    };
    let log = |f: FileAccessLog| AccessLog {
        name: "envoy.access_loggers.file".into(),
        filter: None,
        config_type: Some(ConfigType::TypedConfig(pack_any(f))),
    };
    let at = "hcm.access_log";
    assert!(decode(&[log(file("%RESPONSE_CODE%\n"))], at).is_ok());
    let cases = [
        (
            log(file("%UPSTREAM_TRANSPORT_FAILURE_REASON%")),
            "hcm.access_log[0].typed_config.log_format.text_format_source: position 0: %UPSTREAM_TRANSPORT_FAILURE_REASON% is not a command operator kuma-dp fills",
        ),
        (
            AccessLog {
                filter: Some(AccessLogFilter::default()),
                ..log(file("x"))
            },
            "hcm.access_log[0].filter: access log filters are not supported",
        ),
        (
            log(FileAccessLog {
                access_log_format: None,
                ..file("x")
            }),
            "hcm.access_log[0].typed_config.log_format: required",
        ),
        (
            AccessLog {
                config_type: Some(ConfigType::TypedConfig(pack_any(
                    SubstitutionFormatString::default(),
                ))),
                ..log(file("x"))
            },
            "is not supported by kuma-dp (only envoy.access_loggers.file)",
        ),
    ];
    for (entry, want) in cases {
        let got = decode(&[entry], at).expect_err(want);
        assert!(got.contains(want), "want {want}, got {got}");
    }
}

/// A `rules` entry (Kuma 2.10+) logs the inbound, for every client, and not the outbounds.
#[test]
fn rules_log_the_inbound() {
    let generated = generated_with(&[resource(
        json!({"type": "MeshAccessLog", "mesh": "default", "name": "inbound-only",
        "spec": {"rules": [{"default": {"backends": [{"type": "File", "file": {"path": "/tmp/rules.log"}}]}}]}}),
    )]);
    let (config, errors) = ProxyConfig::from_snapshot(&generated.into_snapshot());
    assert!(errors.is_empty(), "refused: {errors:?}");
    for l in config.listeners.values() {
        let want = usize::from(l.address.port() == 10001);
        assert_eq!(l.access_logs.len(), want, "{}", l.name);
    }
    let inbound = config
        .listeners
        .values()
        .find(|l| l.address.port() == 10001)
        .expect("inbound");
    assert_eq!(
        inbound.access_logs[0].sink,
        LogSink::File("/tmp/rules.log".into())
    );
}
