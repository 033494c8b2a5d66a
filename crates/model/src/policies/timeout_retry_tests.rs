//! Table tests of MeshTimeout and MeshRetry: valid documents, defaults, each mistake at its
//! field path.

use serde_json::json;

use super::tests::{assert_each_mistake, edit, parse};
use super::*;

const TIMEOUT: &str = "
type: MeshTimeout
name: backend-slow
mesh: default
spec:
  targetRef: {kind: MeshService, name: web}
  to:
    - targetRef: {kind: MeshService, name: backend}
      default:
        connectionTimeout: 2s
        idleTimeout: 1h0m0s
        http: {requestTimeout: 1.5s, streamIdleTimeout: 30m, maxStreamDuration: 0s, maxConnectionDuration: 10m, requestHeadersTimeout: 500ms}
  from:
    - targetRef: {kind: Mesh}
      default: {idleTimeout: 2h, http: {requestTimeout: '0'}}
";

const RETRY: &str = "
type: MeshRetry
name: backend-retry
mesh: default
spec:
  targetRef: {kind: Mesh}
  to:
    - targetRef: {kind: MeshService, name: backend}
      default:
        tcp: {maxConnectAttempt: 3}
        http:
          numRetries: 3
          perTryTimeout: 2s
          backOff: {baseInterval: 25ms, maxInterval: 250ms}
          rateLimitedBackOff: {resetHeaders: [{name: retry-after, format: Seconds}], maxInterval: 300s}
          retryOn: [5xx, GatewayError, Reset, '503', HttpMethodGet]
          retriableResponseHeaders: [{name: x-retry, type: Exact, value: '1'}]
          retriableRequestHeaders: [{name: x-idempotent, type: Present}]
          hostSelection: [{predicate: OmitPreviousHosts}]
          hostSelectionMaxAttempts: 3
        grpc: {numRetries: 2, perTryTimeout: 1s, retryOn: [Unavailable, DeadlineExceeded]}
";

#[test]
fn valid_documents_round_trip_and_reach_the_engine() {
    for (doc, rt) in [
        (TIMEOUT, ResourceType::MeshTimeout),
        (RETRY, ResourceType::MeshRetry),
    ] {
        let r = parse(doc).unwrap_or_else(|v| panic!("{rt}: {v}"));
        assert_eq!(r.resource_type(), rt);
        let out = r.to_value();
        assert!(out["spec"].is_object());
        assert_eq!(Resource::from_value(out).expect("round trip"), r);
        let policy = to_engine_policy(&r).expect("a policy");
        crate::policy::validate_policy(&policy.spec).expect("engine accepts it");
    }
    let t = to_engine_policy(&parse(TIMEOUT).expect("valid")).expect("policy");
    assert_eq!(
        t.spec.to[0]
            .default
            .as_ref()
            .and_then(|d| d.pointer("/http/requestTimeout")),
        Some(&json!("1.5s"))
    );
    assert_eq!(
        t.spec.from[0]
            .default
            .as_ref()
            .and_then(|d| d.get("idleTimeout")),
        Some(&json!("2h"))
    );
    let r = to_engine_policy(&parse(RETRY).expect("valid")).expect("policy");
    assert_eq!(
        r.spec.to[0]
            .default
            .as_ref()
            .and_then(|d| d.pointer("/http/retryOn/3")),
        Some(&json!("503"))
    );
}

#[test]
fn the_defaults_are_kumas() {
    let t = json(&mesh_timeout::MeshTimeout::mesh_default());
    assert_eq!(
        t,
        json!({"targetRef": {"kind": "Mesh", "proxyTypes": ["Sidecar"]},
            "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": "5s", "idleTimeout": "1h",
                "http": {"requestTimeout": "15s", "streamIdleTimeout": "30m"}}}],
            "from": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": "10s", "idleTimeout": "2h",
                "http": {"requestTimeout": "0s", "streamIdleTimeout": "1h", "maxStreamDuration": "0s"}}}]})
    );
    let r = json(&mesh_retry::MeshRetry::mesh_default());
    let http = json!({"numRetries": 5, "perTryTimeout": "16s", "backOff": {"baseInterval": "25ms", "maxInterval": "250ms"}});
    assert_eq!(
        r,
        json!({"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"},
            "default": {"tcp": {"maxConnectAttempt": 5}, "http": http, "grpc": http}}]})
    );
}

#[test]
fn retry_on_entries_map_to_envoy() {
    use mesh_retry::{HttpRetryOn::*, http_retry_on};
    assert_eq!(
        http_retry_on("GatewayError"),
        Some(Condition("gateway-error"))
    );
    assert_eq!(
        http_retry_on("Retriable4xx"),
        Some(Condition("retriable-4xx"))
    );
    assert_eq!(http_retry_on("503"), Some(Status(503)));
    assert_eq!(http_retry_on("HttpMethodPost"), Some(Method("POST")));
    assert_eq!(http_retry_on("HttpMethodPOST"), None);
    assert_eq!(http_retry_on("600"), None);
    assert_eq!(http_retry_on("gateway-error"), None);
}

#[test]
fn each_mistake_is_reported_at_its_path() {
    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("zero connect timeout", edit(TIMEOUT, "connectionTimeout: 2s", "connectionTimeout: 0s"), "spec.to[0].default.connectionTimeout", "greater than zero"),
        ("bad duration", edit(TIMEOUT, "idleTimeout: 1h0m0s", "idleTimeout: 1day"), "spec.to[0].default.idleTimeout", "not a duration"),
        ("negative duration", edit(TIMEOUT, "requestTimeout: 1.5s", "requestTimeout: -1s"), "spec.to[0].default.http.requestTimeout", "must not be negative"),
        ("empty conf", edit(TIMEOUT, "default: {idleTimeout: 2h, http: {requestTimeout: '0'}}", "default: {}"), "spec.from[0].default", "at least one timeout"),
        ("empty http", edit(TIMEOUT, "http: {requestTimeout: '0'}", "http: {}"), "spec.from[0].default.http", "at least one timeout in this section"),
        ("from MeshSubset", edit(TIMEOUT, "    - targetRef: {kind: Mesh}\n      default: {idle", "    - targetRef: {kind: MeshSubset, tags: {a: b}}\n      default: {idle"), "spec.from[0].targetRef.kind", "not allowed"),
        ("to MeshHTTPRoute", edit(TIMEOUT, "{kind: MeshService, name: backend}", "{kind: MeshHTTPRoute, name: r}"), "spec.to[0].targetRef.kind", "not allowed"),
        ("unknown timeout field", edit(TIMEOUT, "idleTimeout: 1h0m0s", "idle: 1h"), "spec.to[0].default.idle", "unknown field"),
        ("timeout without to or from", "type: MeshTimeout\nname: a\nmesh: default\nspec: {targetRef: {kind: Mesh}}\n".into(), "spec", "at least one of 'from', 'to'"),
        ("top-level gateway", edit(TIMEOUT, "targetRef: {kind: MeshService, name: web}", "targetRef: {kind: MeshGateway, name: gw}"), "spec.targetRef.kind", "not allowed"),
        ("retry without to", "type: MeshRetry\nname: a\nmesh: default\nspec: {targetRef: {kind: Mesh}}\n".into(), "spec.to", "at least one"),
        ("retry with from", edit(RETRY, "  to:\n", "  from: []\n  to:\n"), "spec.from", "unknown field"),
        ("empty retry conf", "type: MeshRetry\nname: a\nmesh: default\nspec: {to: [{targetRef: {kind: Mesh}, default: {}}]}\n".into(), "spec.to[0].default", "at least one of 'tcp'"),
        ("zero connect attempts", edit(RETRY, "maxConnectAttempt: 3", "maxConnectAttempt: 0"), "spec.to[0].default.tcp.maxConnectAttempt", "greater than 0"),
        ("zero per-try timeout", edit(RETRY, "perTryTimeout: 2s", "perTryTimeout: 0s"), "spec.to[0].default.http.perTryTimeout", "greater than zero"),
        ("back-off max below base", edit(RETRY, "maxInterval: 250ms", "maxInterval: 10ms"), "spec.to[0].default.http.backOff.maxInterval", "greater than or equal"),
        ("bad back-off", edit(RETRY, "baseInterval: 25ms", "baseInterval: soon"), "spec.to[0].default.http.backOff.baseInterval", "not a duration"),
        ("bad retryOn", edit(RETRY, "retryOn: [5xx,", "retryOn: [6xx,"), "spec.to[0].default.http.retryOn[0]", "not a retry condition"),
        ("bad status retryOn", edit(RETRY, "'503'", "'700'"), "spec.to[0].default.http.retryOn[3]", "not a retry condition"),
        ("bad grpc retryOn", edit(RETRY, "[Unavailable, DeadlineExceeded]", "[Unavailable, Busy]"), "spec.to[0].default.grpc.retryOn[1]", "unknown variant"),
        ("present header with value", edit(RETRY, "{name: x-idempotent, type: Present}", "{name: x-idempotent, type: Present, value: a}"), "spec.to[0].default.http.retriableRequestHeaders[0].value", "must not be set"),
        ("exact header without value", edit(RETRY, "{name: x-retry, type: Exact, value: '1'}", "{name: x-retry}"), "spec.to[0].default.http.retriableResponseHeaders[0].value", "must be set"),
        ("bad predicate", edit(RETRY, "predicate: OmitPreviousHosts", "predicate: OmitAll"), "spec.to[0].default.http.hostSelection[0].predicate", "unknown variant"),
        ("tags predicate without tags", edit(RETRY, "predicate: OmitPreviousHosts", "predicate: OmitHostsWithTags"), "spec.to[0].default.http.hostSelection[0].tags", "must be set"),
        ("reset header format", edit(RETRY, "format: Seconds", "format: Minutes"), "spec.to[0].default.http.rateLimitedBackOff.resetHeaders[0].format", "unknown variant"),
        ("retry to MeshSubset", edit(RETRY, "{kind: MeshService, name: backend}", "{kind: MeshSubset, tags: {a: b}}"), "spec.to[0].targetRef.kind", "not allowed"),
    ];
    assert_each_mistake(&cases);
}
