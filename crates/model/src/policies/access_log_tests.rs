//! Table tests of MeshAccessLog: the golden document, `rules`, the merge (backends replaced
//! whole) and each mistake at its field path.

use serde_json::json;

use super::tests::{assert_each_mistake, edit, parse};
use super::*;

const MAL: &str = "
type: MeshAccessLog
name: all-traffic
mesh: default
spec:
  targetRef: {kind: Mesh}
  to:
    - targetRef: {kind: MeshService, name: backend}
      default:
        backends:
          - type: File
            file: {path: /tmp/out.log, format: {type: Plain, plain: '%KUMA_SOURCE_SERVICE% %RESPONSE_CODE%'}}
          - type: Tcp
            tcp:
              address: 127.0.0.1:5000
              format: {type: Json, json: [{key: code, value: '%RESPONSE_CODE%'}], omitEmptyValues: true}
  from:
    - targetRef: {kind: Mesh}
      default:
        backends: [{type: File, file: {path: /tmp/in.log}}]
";

const RULES: &str = "
type: MeshAccessLog
name: inbound
mesh: default
spec:
  rules:
    - default:
        backends: [{type: Tcp, tcp: {address: 'collector.local:514'}}]
";

#[test]
fn valid_documents_parse_and_convert() {
    let r = parse(MAL).unwrap_or_else(|v| panic!("{v}"));
    assert_eq!(r.resource_type(), ResourceType::MeshAccessLog);
    let engine = to_engine_policy(&r).expect("a policy");
    assert_eq!(engine.spec.to.len(), 1);
    assert_eq!(engine.spec.from.len(), 1);
    assert_eq!(
        engine.spec.to[0].default.as_ref().expect("conf")["backends"][1]["tcp"]["address"],
        json!("127.0.0.1:5000")
    );
    let rules = parse(RULES).unwrap_or_else(|v| panic!("{v}"));
    let engine = to_engine_policy(&rules).expect("a policy");
    assert_eq!(engine.spec.rules.len(), 1);
    assert!(engine.spec.rules[0].matches.is_none());
}

#[test]
fn backends_are_replaced_whole_on_merge() {
    let low = json!({"backends": [{"type": "File", "file": {"path": "/a"}}, {"type": "File", "file": {"path": "/b"}}]});
    let high = json!({"backends": [{"type": "Tcp", "tcp": {"address": "h:1"}}]});
    let merged = crate::policy::merge_confs([&low, &high]);
    assert_eq!(merged, high);
}

#[test]
#[rustfmt::skip]
fn each_mistake_is_reported_at_its_path() {
    let cases = [
        ("unknown section", edit(MAL, "  to:\n", "  tx:\n"), "spec.tx", "unknown field"),
        ("empty rules", RULES.replace("  rules:\n    - default:\n        backends: [{type: Tcp, tcp: {address: 'collector.local:514'}}]\n", "  to: []\n"), "spec", "at least one of"),
        ("no type", edit(MAL, "- type: File\n            file: {path: /tmp/out.log", "- file: {path: /tmp/out.log"), "spec.to[0].default.backends[0].type", "must be defined"),
        ("type without section", edit(MAL, "backends: [{type: File, file: {path: /tmp/in.log}}]", "backends: [{type: Tcp, file: {path: /tmp/in.log}}]"), "spec.from[0].default.backends[0].tcp", "must be defined"),
        ("two sections", edit(MAL, "backends: [{type: File, file: {path: /tmp/in.log}}]", "backends: [{type: File, file: {path: /tmp/in.log}, tcp: {address: 'a:1'}}]"), "spec.from[0].default.backends[0].tcp", "must not be defined"),
        ("relative path", edit(MAL, "path: /tmp/in.log", "path: in.log"), "spec.from[0].default.backends[0].file.path", "valid path"),
        ("bad address", edit(MAL, "address: 127.0.0.1:5000", "address: 127.0.0.1"), "spec.to[0].default.backends[1].tcp.address", "valid address"),
        ("port zero", edit(MAL, "address: 127.0.0.1:5000", "address: 127.0.0.1:0"), "spec.to[0].default.backends[1].tcp.address", "valid address"),
        ("plain without text", edit(MAL, "{type: Plain, plain: '%KUMA_SOURCE_SERVICE% %RESPONSE_CODE%'}", "{type: Plain}"), "spec.to[0].default.backends[0].file.format.plain", "must be defined"),
        ("format without type", edit(MAL, "{type: Plain, plain:", "{plain:"), "spec.to[0].default.backends[0].file.format.type", "must be defined"),
        ("empty json key", edit(MAL, "{key: code,", "{key: '',"), "spec.to[0].default.backends[1].tcp.format.json[0].key", "cannot be empty"),
        ("opentelemetry", edit(MAL, "backends: [{type: File, file: {path: /tmp/in.log}}]", "backends: [{type: OpenTelemetry, openTelemetry: {endpoint: 'otel:4317'}}]"), "spec.from[0].default.backends[0].type", "OpenTelemetry backends are not supported"),
        ("from subset", edit(MAL, "  from:\n    - targetRef: {kind: Mesh}", "  from:\n    - targetRef: {kind: MeshSubset, tags: {a: b}}"), "spec.from[0].targetRef.kind", "not allowed"),
        ("no backends", edit(MAL, "backends: [{type: File, file: {path: /tmp/in.log}}]", "{}"), "spec.from[0].default.backends", "must be defined"),
        ("rules with matches", edit(RULES, "    - default:", "    - matches: [{spiffeID: {type: Exact, value: 'spiffe://x'}}]\n      default:"), "spec.rules[0].matches", "not supported"),
        ("rules mixed with to", format!("{RULES}  to:\n    - targetRef: {{kind: Mesh}}\n      default: {{backends: []}}\n"), "spec.rules", "cannot be mixed"),
    ];
    assert_each_mistake(&cases);
}
