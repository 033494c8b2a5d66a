//! In-process tests of the router over a memory store.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use meshzone_model::testdata::invalid_documents;
use meshzone_model::{Meta, Resource, ResourceType, Spec, parse_documents};
use meshzone_store::{AnyBackend, MemoryBackend, Store};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;

async fn app(mode: CpMode) -> Router {
    app_with(
        mode,
        Store::new(AnyBackend::Memory(MemoryBackend::new())),
        None,
    )
    .await
}

async fn app_with(mode: CpMode, store: Store, zone_rules: Option<ZoneRulesFn>) -> Router {
    app_full(mode, store, zone_rules, None).await
}

async fn app_full(
    mode: CpMode,
    store: Store,
    zone_rules: Option<ZoneRulesFn>,
    proxy_admin: Option<ProxyAdminFn>,
) -> Router {
    store
        .create(Resource::new(
            Meta::named("default", ""),
            Spec::Mesh(Default::default()),
        ))
        .await
        .expect("default mesh");
    let settings = ApiSettings {
        mode,
        instance_id: "test-1".into(),
        hostname: "host".into(),
        config: json!({"mode": "zone"}),
        store_type: "memory".into(),
        config_dump: None,
        proxy_admin,
        zone_rules,
        auth: AuthSettings::default(),
    };
    router(ApiContext::new(store, settings, ApiMetrics::default()))
}

fn standalone() -> CpMode {
    CpMode::Zone {
        name: "zone-1".into(),
        federated: false,
    }
}

async fn call(
    app: &Router,
    method: &str,
    path: &str,
    body: Option<Value>,
    if_match: Option<&str>,
) -> (StatusCode, Option<String>, Value) {
    // From the CP's own host, as an admin (the auth tests say otherwise).
    let mut req =
        Request::builder()
            .method(method)
            .uri(path)
            .extension(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                40000,
            ))));
    if let Some(v) = if_match {
        req = req.header("if-match", v);
    }
    let body = body.map(|b| Body::from(b.to_string())).unwrap_or_default();
    let resp = app
        .clone()
        .oneshot(req.body(body).expect("request"))
        .await
        .expect("response");
    let status = resp.status();
    let etag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, etag, value)
}

fn dataplane(name: &str, port: u16) -> Value {
    json!({
        "type": "Dataplane", "mesh": "default", "name": name,
        "networking": {"address": "10.0.0.1", "inbound": [{"port": port, "tags": {"kuma.io/service": "web"}}]}
    })
}

#[tokio::test]
async fn create_get_update_list_delete() {
    let app = app(standalone()).await;
    let (s, etag, body) = call(
        &app,
        "PUT",
        "/meshes/default/dataplanes/dp-1",
        Some(dataplane("dp-1", 8080)),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!(etag.as_deref(), Some("\"1\""));
    let (s, _, _) = call(
        &app,
        "PUT",
        "/meshes/default/dataplanes/dp-1",
        Some(dataplane("dp-1", 8081)),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, etag, body) = call(&app, "GET", "/meshes/default/dataplanes/dp-1", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(etag.as_deref(), Some("\"2\""));
    assert_eq!(body["networking"]["inbound"][0]["port"], 8081);
    assert!(body["creationTime"].is_string());

    for i in 2..=5 {
        let name = format!("dp-{i}");
        call(
            &app,
            "PUT",
            &format!("/meshes/default/dataplanes/{name}"),
            Some(dataplane(&name, 8080)),
            None,
        )
        .await;
    }
    let (s, _, body) = call(
        &app,
        "GET",
        "/meshes/default/dataplanes?size=2&offset=2",
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["total"], 5);
    assert_eq!(body["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(body["items"][0]["name"], "dp-3");
    assert!(
        body["next"]
            .as_str()
            .is_some_and(|n| n.ends_with("offset=4&size=2")),
        "{body}"
    );
    let (s, _, body) = call(&app, "GET", "/meshes/default/dataplanes?size=x", None, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(body["causes"][0]["field"], "size");

    let (s, _, body) = call(
        &app,
        "DELETE",
        "/meshes/default/dataplanes/dp-1",
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, _, body) = call(&app, "GET", "/meshes/default/dataplanes/dp-1", None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(body["title"], "Not found");
    assert!(body["details"].as_str().is_some_and(|d| d.contains("dp-1")));
}

#[tokio::test]
async fn conditional_writes_conflict() {
    let app = app(standalone()).await;
    call(
        &app,
        "PUT",
        "/meshes/default/dataplanes/dp",
        Some(dataplane("dp", 1)),
        None,
    )
    .await;
    let (s, _, _) = call(
        &app,
        "PUT",
        "/meshes/default/dataplanes/dp",
        Some(dataplane("dp", 2)),
        Some("\"1\""),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, body) = call(
        &app,
        "PUT",
        "/meshes/default/dataplanes/dp",
        Some(dataplane("dp", 3)),
        Some("\"1\""),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["title"], "Conflict");
    let (s, _, _) = call(
        &app,
        "DELETE",
        "/meshes/default/dataplanes/dp",
        None,
        Some("\"1\""),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
}

#[tokio::test]
async fn invalid_corpus_is_rejected_over_rest_and_nothing_is_stored() {
    let app = app(standalone()).await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/invalid");
    for doc in invalid_documents(&dir).expect("corpus") {
        let value = parse_documents(&doc.text).expect("yaml").remove(0);
        // Over REST the name is part of the URL, so a document without one cannot be sent.
        let Some(name) = value["name"].as_str().map(str::to_string) else {
            continue;
        };
        let rt = value["type"]
            .as_str()
            .and_then(|t| t.parse::<ResourceType>().ok())
            .unwrap_or(ResourceType::Dataplane);
        let ws = rt.descriptor().ws_path;
        let path = if rt.is_mesh_scoped() {
            let mesh = value["mesh"].as_str().unwrap_or("default");
            format!("/meshes/{mesh}/{ws}/{name}")
        } else {
            format!("/{ws}/{name}")
        };
        let (s, _, body) = call(&app, "PUT", &path, Some(value), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{}: {body}", doc.path.display());
        let causes = body["causes"].as_array().cloned().unwrap_or_default();
        assert!(
            causes.iter().any(|c| c["field"] == doc.field.as_str()
                && c["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(&doc.message))),
            "{}: expected {}: {}, got {body}",
            doc.path.display(),
            doc.field,
            doc.message
        );
        let (s, _, _) = call(&app, "GET", &path, None, None).await;
        assert_eq!(
            s,
            StatusCode::NOT_FOUND,
            "{} was stored",
            doc.path.display()
        );
    }
}

#[tokio::test]
async fn body_must_agree_with_path() {
    let app = app(standalone()).await;
    let (s, _, body) = call(
        &app,
        "PUT",
        "/meshes/default/dataplanes/other",
        Some(dataplane("dp", 1)),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(body["causes"][0]["field"], "name");
    let (s, _, body) = call(
        &app,
        "PUT",
        "/meshes/default/dataplanes/dp",
        Some(json!("text")),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    let (s, _, _) = call(
        &app,
        "PUT",
        "/meshes/default/nothings/x",
        Some(json!({})),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = call(&app, "GET", "/zones/x/y/z/w", None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn authority_follows_the_mode() {
    let global = app(CpMode::Global).await;
    let (s, _, body) = call(
        &global,
        "PUT",
        "/meshes/default/dataplanes/dp",
        Some(dataplane("dp", 1)),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert_eq!(body["title"], "Method not allowed");
    assert_eq!(
        body["details"],
        "On global control plane you can not modify Dataplane resources with 'kumactl apply' or via the HTTP API. You can still use 'kumactl' or the HTTP API to modify them on the zone control plane."
    );
    let (s, _, _) = call(
        &global,
        "PUT",
        "/meshes/m2",
        Some(json!({"type": "Mesh", "name": "m2"})),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);

    let federated = app(CpMode::Zone {
        name: "z".into(),
        federated: true,
    })
    .await;
    let (s, _, body) = call(
        &federated,
        "PUT",
        "/meshes/m2",
        Some(json!({"type": "Mesh", "name": "m2"})),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert_eq!(body["details"], ZONE_READ_ONLY);
    let (s, _, body) = call(&federated, "DELETE", "/meshes/default", None, None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    let (s, _, _) = call(
        &federated,
        "PUT",
        "/meshes/default/dataplanes/dp",
        Some(dataplane("dp", 1)),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);

    let (s, _, body) = call(&federated, "PUT", "/zone-insights/z", Some(json!({})), None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{body}");
}

/// Every type and mode: the API refuses exactly what the descriptor's owner says, always
/// with 405, and accepts the rest (a write that gets past authority may still be invalid: 400
/// or 404 from validation, never 405).
#[tokio::test]
async fn every_refusal_by_mode_is_405_and_follows_the_descriptor() {
    for mode in [
        CpMode::Global,
        standalone(),
        CpMode::Zone {
            name: "z".into(),
            federated: true,
        },
    ] {
        let app = app(mode.clone()).await;
        for rt in ResourceType::all() {
            let d = rt.descriptor();
            let path = if rt.is_mesh_scoped() {
                format!("/meshes/default/{}/x", d.ws_path)
            } else {
                format!("/{}/x", d.ws_path)
            };
            let (s, _, body) = call(&app, "PUT", &path, Some(json!({})), None).await;
            let refused = d.write_refusal(mode.role()).is_some();
            assert_eq!(
                s == StatusCode::METHOD_NOT_ALLOWED,
                refused,
                "{rt} on {mode:?}: {s} {body}"
            );
            let (s, _, body) = call(&app, "DELETE", &path, None, None).await;
            assert_eq!(
                s == StatusCode::METHOD_NOT_ALLOWED,
                refused,
                "delete {rt} on {mode:?}: {s} {body}"
            );
        }
    }
}

#[tokio::test]
async fn views_and_index() {
    let app = app(standalone()).await;
    call(
        &app,
        "PUT",
        "/meshes/default/dataplanes/dp",
        Some(dataplane("dp", 1)),
        None,
    )
    .await;
    let (s, _, body) = call(
        &app,
        "GET",
        "/meshes/default/dataplanes+insights",
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["items"][0]["type"], "DataplaneOverview");
    assert_eq!(
        body["items"][0]["dataplane"]["networking"]["address"],
        "10.0.0.1"
    );
    let (_, _, body) = call(&app, "GET", "/meshes/default/service-insights", None, None).await;
    assert_eq!(body["items"][0]["name"], "web");
    assert_eq!(body["items"][0]["status"], "offline");
    assert_eq!(body["items"][0]["dataplanes"]["total"], 1);
    let (s, _, _) = call(
        &app,
        "GET",
        "/meshes/default/service-insights/web",
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (_, _, body) = call(&app, "GET", "/", None, None).await;
    assert_eq!(body["mode"], "zone");
    assert_eq!(body["instanceId"], "test-1");
    let (_, _, body) = call(&app, "GET", "/dataplanes", None, None).await;
    assert_eq!(body["total"], 1);
}

#[tokio::test]
async fn zone_tokens_are_issued_by_global_only() {
    let global = app(CpMode::Global).await;
    let (s, _, _) = call(
        &global,
        "POST",
        "/tokens/zone",
        Some(json!({"zone": "zone-1", "scope": ["ingress"]})),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, body) = call(
        &global,
        "POST",
        "/tokens/zone",
        Some(json!({"zone": "Zone_1"})),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(body["causes"][0]["field"], "zone");
    let federated = app(CpMode::Zone {
        name: "z".into(),
        federated: true,
    })
    .await;
    let (s, _, body) = call(
        &federated,
        "POST",
        "/tokens/zone",
        Some(json!({"zone": "z"})),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert!(
        body["details"]
            .as_str()
            .is_some_and(|d| d.contains("global"))
    );
}

#[tokio::test]
async fn service_insights_say_why_a_mesh_without_mtls_has_no_cross_zone_traffic() {
    let app = app(standalone()).await;
    for (name, zone) in [("web-1", "zone-1"), ("web-2", "zone-2")] {
        let dp = json!({"type": "Dataplane", "mesh": "default", "name": name, "networking": {
            "address": "10.0.0.1", "inbound": [{"port": 8080, "tags": {
                "kuma.io/service": "web", "kuma.io/zone": zone}}]}});
        let (s, _, body) = call(
            &app,
            "PUT",
            &format!("/meshes/default/dataplanes/{name}"),
            Some(dp),
            None,
        )
        .await;
        assert!(s.is_success(), "{body}");
    }
    let (_, _, body) = call(&app, "GET", "/meshes/default/service-insights", None, None).await;
    let web = &body["items"][0];
    assert_eq!(web["zones"], json!(["zone-1", "zone-2"]));
    assert!(
        web["crossZone"].as_str().unwrap_or("").contains("no mTLS"),
        "{web}"
    );

    let mesh = json!({"type": "Mesh", "name": "default", "mtls": {"enabledBackend": "ca-1",
        "backends": [{"name": "ca-1", "type": "builtin"}]}});
    let (s, _, body) = call(&app, "PUT", "/meshes/default", Some(mesh), None).await;
    assert!(s.is_success(), "{body}");
    let (_, _, body) = call(&app, "GET", "/meshes/default/service-insights", None, None).await;
    assert!(body["items"][0]["crossZone"].is_null(), "{body}");
}

fn permission(name: &str) -> Value {
    json!({
        "type": "MeshTrafficPermission", "mesh": "default", "name": name,
        "spec": {"targetRef": {"kind": "Mesh"},
                 "from": [{"targetRef": {"kind": "MeshSubset", "tags": {"kuma.io/zone": "zone-2"}},
                           "default": {"action": "Deny"}}]}
    })
}

#[tokio::test]
async fn policies_are_written_on_global_and_standalone_zones_and_refused_on_federated_ones() {
    for mode in [CpMode::Global, standalone()] {
        let app = app(mode).await;
        let path = "/meshes/default/meshtrafficpermissions/deny-zone-2";
        let (s, _, body) = call(&app, "PUT", path, Some(permission("deny-zone-2")), None).await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
        assert_eq!(
            body["spec"]["from"][0]["default"]["action"], "Deny",
            "{body}"
        );
        let (s, _, body) = call(
            &app,
            "GET",
            "/meshes/default/meshtrafficpermissions",
            None,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(body["total"], 1, "{body}");
        let (s, _, _) = call(&app, "DELETE", path, None, None).await;
        assert_eq!(s, StatusCode::OK);
    }
    let federated = app(CpMode::Zone {
        name: "z".into(),
        federated: true,
    })
    .await;
    for (path, body) in [
        ("/meshes/default/meshtrafficpermissions/p", permission("p")),
        (
            "/meshes/default/meshtcproutes/p",
            json!({"type": "MeshTCPRoute", "spec": {"to": [{"targetRef": {"kind": "MeshService", "name": "a"}, "rules": [{"default": {"backendRefs": [{"kind": "MeshService", "name": "a"}]}}]}]}}),
        ),
    ] {
        let (s, _, answer) = call(&federated, "PUT", path, Some(body), None).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{answer}");
        assert_eq!(answer["details"], ZONE_READ_ONLY);
        let (s, _, _) = call(&federated, "DELETE", path, None, None).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    }
}

#[tokio::test]
async fn an_invalid_policy_is_a_400_with_each_cause() {
    let app = app(CpMode::Global).await;
    let mut bad = permission("bad");
    bad["spec"]["targetRef"] = json!({"kind": "MeshHTTPRoute", "name": "r"});
    bad["spec"]["from"][0]["default"]["action"] = json!("Maybe");
    let (s, _, body) = call(
        &app,
        "PUT",
        "/meshes/default/meshtrafficpermissions/bad",
        Some(bad),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body["causes"][0]["field"], "spec.from[0].default.action",
        "{body}"
    );
    let mut bad = permission("bad");
    bad["spec"]["targetRef"] = json!({"kind": "MeshHTTPRoute", "name": "r"});
    let (s, _, body) = call(
        &app,
        "PUT",
        "/meshes/default/meshtrafficpermissions/bad",
        Some(bad),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["causes"][0]["field"], "spec.targetRef.kind", "{body}");
    let (_, _, list) = call(
        &app,
        "GET",
        "/meshes/default/meshtrafficpermissions",
        None,
        None,
    )
    .await;
    assert_eq!(list["total"], 0, "nothing stored: {list}");
}

#[tokio::test]
async fn a_new_mesh_gets_allow_all_once_unless_skipped_and_not_on_a_federated_zone() {
    let global = app(CpMode::Global).await;
    let (s, _, _) = call(
        &global,
        "PUT",
        "/meshes/demo",
        Some(json!({"type": "Mesh", "name": "demo"})),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _, mtp) = call(
        &global,
        "GET",
        "/meshes/demo/meshtrafficpermissions/allow-all-demo",
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{mtp}");
    assert_eq!(
        mtp["spec"],
        json!({"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]})
    );
    // Deleted by the user, it stays deleted when the Mesh is updated.
    let (s, _, _) = call(
        &global,
        "DELETE",
        "/meshes/demo/meshtrafficpermissions/allow-all-demo",
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = call(&global, "PUT", "/meshes/demo", Some(json!({"type": "Mesh", "name": "demo", "mtls": {"enabledBackend": "ca", "backends": [{"name": "ca", "type": "builtin"}]}})), None).await;
    assert_eq!(s, StatusCode::OK);
    let (_, _, list) = call(
        &global,
        "GET",
        "/meshes/demo/meshtrafficpermissions",
        None,
        None,
    )
    .await;
    assert_eq!(list["total"], 0, "{list}");

    // skipCreatingInitialPolicies skips it (by type or "*").
    for (name, skip) in [
        ("m1", json!(["MeshTrafficPermission"])),
        ("m2", json!(["*"])),
    ] {
        let (s, _, _) = call(
            &global,
            "PUT",
            &format!("/meshes/{name}"),
            Some(json!({"type": "Mesh", "name": name, "skipCreatingInitialPolicies": skip})),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
        let (_, _, list) = call(
            &global,
            "GET",
            &format!("/meshes/{name}/meshtrafficpermissions"),
            None,
            None,
        )
        .await;
        assert_eq!(list["total"], 0, "{name}: {list}");
    }

    // A standalone zone creates it too.
    let zone = app(standalone()).await;
    let (s, _, _) = call(
        &zone,
        "PUT",
        "/meshes/z1",
        Some(json!({"type": "Mesh", "name": "z1"})),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _, _) = call(
        &zone,
        "GET",
        "/meshes/z1/meshtrafficpermissions/allow-all-z1",
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn a_federated_zone_creates_no_initial_policies() {
    let store = Store::new(AnyBackend::Memory(MemoryBackend::new()));
    let mesh = store
        .create(Resource::new(
            Meta::named("from-global", ""),
            Spec::Mesh(Default::default()),
        ))
        .await
        .expect("mesh");
    let made = create_initial_policies(&store, CpRole::FederatedZone, &mesh)
        .await
        .expect("ok");
    assert!(made.is_empty());
    assert!(
        store
            .list(ResourceType::MeshTrafficPermission, None)
            .await
            .expect("list")
            .is_empty()
    );
    let made = create_initial_policies(&store, CpRole::Global, &mesh)
        .await
        .expect("ok");
    assert_eq!(
        made.len(),
        meshzone_model::policies::initial_policies("from-global", &Default::default()).len()
    );
    // Created once: a second call leaves the existing one alone.
    assert!(
        create_initial_policies(&store, CpRole::Global, &mesh)
            .await
            .expect("ok")
            .is_empty()
    );
}

#[tokio::test]
async fn rules_of_a_dataplane_and_the_dataplanes_of_a_policy() {
    let app = app(standalone()).await;
    for (path, body) in [
        (
            "/meshes/default/meshtrafficpermissions/deny-zone-2",
            permission("deny-zone-2"),
        ),
        ("/meshes/default/dataplanes/web-1", dataplane("web-1", 8080)),
    ] {
        let (s, _, answer) = call(&app, "PUT", path, Some(body), None).await;
        assert_eq!(s, StatusCode::CREATED, "{path}: {answer}");
    }
    let (s, _, v) = call(
        &app,
        "GET",
        "/meshes/default/dataplanes/web-1/_rules",
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["resource"]["name"], "web-1");
    let mtp = &v["rules"][0];
    assert_eq!(mtp["type"], "MeshTrafficPermission", "{v}");
    assert_eq!(
        mtp["warnings"][0],
        "Mesh is not Mtls enabled this policy will have no effect"
    );
    // The zone stamps its name on the inbound; the deny subset and the rest are told apart.
    assert_eq!(
        mtp["fromRules"][0]["inbound"]["tags"]["kuma.io/zone"], "zone-1",
        "{v}"
    );
    assert_eq!(
        mtp["fromRules"][0]["rules"][0]["conf"]["action"], "Deny",
        "{v}"
    );
    let (s, _, _) = call(
        &app,
        "GET",
        "/meshes/default/dataplanes/nope/_rules",
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (s, _, list) = call(
        &app,
        "GET",
        "/meshes/default/meshtrafficpermissions/deny-zone-2/_resources/dataplanes",
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["items"][0]["name"], "web-1");
    assert!(list["next"].is_null());
    let (s, _, _) = call(
        &app,
        "GET",
        "/meshes/default/meshtrafficpermissions/nope/_resources/dataplanes",
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = call(
        &app,
        "GET",
        "/meshes/default/secrets/x/_resources/dataplanes",
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

mod global_rules;

mod overviews;
mod proxy_admin;
