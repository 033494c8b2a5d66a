//! The GUI routes and the summary endpoints, through the router over a memory store.

use super::*;

async fn raw(
    app: &Router,
    path: &str,
    if_none_match: Option<&str>,
) -> (StatusCode, HeaderMap, String) {
    let mut req = Request::builder().uri(path);
    if let Some(t) = if_none_match {
        req = req.header("if-none-match", t);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).expect("request"))
        .await
        .expect("response");
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[tokio::test]
async fn gui_serves_assets_and_falls_back_to_the_index() {
    let app = app(CpMode::Global).await;
    for path in [
        "/gui",
        "/gui/",
        "/gui/zones",
        "/gui/meshes/default/dataplanes/dp-1",
    ] {
        let (s, h, body) = raw(&app, path, None).await;
        assert_eq!(s, StatusCode::OK, "{path}");
        assert_eq!(h["content-type"], "text/html; charset=utf-8", "{path}");
        assert!(body.contains(r#""mode":"global""#), "{path}: {body}");
        assert!(body.contains(r#"<base href="/gui/">"#), "{path}");
    }
    let (s, h, body) = raw(&app, "/gui/app.js", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["content-type"], "text/javascript; charset=utf-8");
    assert!(body.contains("import"), "{body}");
    let (_, h, _) = raw(&app, "/gui/style.css", None).await;
    assert_eq!(h["content-type"], "text/css; charset=utf-8");
    let etag = h["etag"].to_str().expect("etag").to_string();
    let (s, _, body) = raw(&app, "/gui/style.css", Some(&etag)).await;
    assert_eq!((s, body.as_str()), (StatusCode::NOT_MODIFIED, ""));
    // Paths outside /gui are still the API.
    let (s, _, _) = raw(&app, "/guide", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn zone_cp_gui_says_zone() {
    let app = app(standalone()).await;
    let (_, _, body) = raw(&app, "/gui/", None).await;
    assert!(
        body.contains(r#""mode":"zone""#) && body.contains(r#""zone":"zone-1""#),
        "{body}"
    );
}

async fn seed_dataplanes(app: &Router, n: usize) {
    for i in 0..n {
        let zone = if i % 2 == 0 { "zone-1" } else { "zone-2" };
        let service = if i % 3 == 0 { "web" } else { "db" };
        let dp = json!({
            "type": "Dataplane", "mesh": "default", "name": format!("dp-{i:02}"),
            "networking": {"address": "10.0.0.1", "inbound": [{"port": 8000 + i,
                "tags": {"kuma.io/service": service, "kuma.io/zone": zone}}]}
        });
        let (s, _, b) = call(
            app,
            "PUT",
            &format!("/meshes/default/dataplanes/dp-{i:02}"),
            Some(dp),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
}

#[tokio::test]
async fn dataplane_overviews_filter_then_page() {
    let app = app(standalone()).await;
    seed_dataplanes(&app, 12).await;
    let base = "/meshes/default/dataplanes/_overview";
    let (s, _, all) = call(&app, "GET", base, None, None).await;
    assert_eq!(s, StatusCode::OK, "{all}");
    assert_eq!(all["total"], 12);
    assert_eq!(all["items"][0]["type"], "DataplaneOverview");
    assert_eq!(all["items"][0]["status"], "offline", "no insight: offline");
    let (_, _, z) = call(
        &app,
        "GET",
        &format!("{base}?tag=kuma.io/zone:zone-2&tag=kuma.io/service:db"),
        None,
        None,
    )
    .await;
    // Odd i (zone-2) and not a multiple of 3 (db): 1, 5, 7, 11.
    let names: Vec<&str> = z["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(names, ["dp-01", "dp-05", "dp-07", "dp-11"]);
    let (_, _, p) = call(
        &app,
        "GET",
        &format!("{base}?tag=kuma.io/zone:zone-2&offset=2&size=2"),
        None,
        None,
    )
    .await;
    assert_eq!(p["total"], 6);
    assert_eq!(p["items"][0]["name"], "dp-05");
    assert!(
        p["next"].as_str().expect("next page").contains("offset=4"),
        "{p}"
    );
    let (_, _, on) = call(&app, "GET", &format!("{base}?status=online"), None, None).await;
    assert_eq!(on["total"], 0);
    let (_, _, n) = call(&app, "GET", &format!("{base}?name=dp-1"), None, None).await;
    assert_eq!(n["total"], 2, "dp-10 and dp-11: {n}");
    let (s, _, bad) = call(&app, "GET", &format!("{base}?status=up"), None, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
    assert!(bad.to_string().contains("status"), "{bad}");
    let (s, _, one) = call(
        &app,
        "GET",
        "/meshes/default/dataplanes/dp-03/_overview",
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(one["dataplane"]["networking"]["inbound"][0]["port"], 8003);
    let (s, _, _) = call(
        &app,
        "GET",
        "/meshes/default/dataplanes/nope/_overview",
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn zone_overviews_join_zones_with_insights() {
    let store = Store::new(AnyBackend::Memory(MemoryBackend::new()));
    let app = app_with(CpMode::Global, store.clone(), None).await;
    let docs = parse_documents(
        "type: Zone\nname: zone-1\n---\ntype: Zone\nname: zone-2\nenabled: false\n---\ntype: ZoneInsight\nname: zone-1\nsubscriptions:\n- id: s1\n  connectTime: 2026-01-01T00:00:00Z\n",
    )
    .expect("docs");
    for r in docs {
        store
            .create(Resource::from_value(r).expect("resource"))
            .await
            .expect("create");
    }
    let (s, _, v) = call(&app, "GET", "/zones/_overview", None, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["total"], 2);
    assert_eq!(v["items"][0]["type"], "ZoneOverview");
    assert_eq!(v["items"][0]["zoneInsight"]["subscriptions"][0]["id"], "s1");
    assert_eq!(v["items"][1]["zone"]["enabled"], false);
    let (_, _, one) = call(&app, "GET", "/zones/zone-2/_overview", None, None).await;
    assert_eq!(one["name"], "zone-2");
    let (_, _, g) = call(&app, "GET", "/global-insight", None, None).await;
    assert_eq!(
        g["zones"]["controlPlanes"],
        json!({"total": 2, "online": 1})
    );
    assert_eq!(g["meshes"]["total"], 1);
    let (_, _, ing) = call(&app, "GET", "/zoneingresses/_overview", None, None).await;
    assert_eq!(ing["total"], 0);
    let (s, _, eg) = call(&app, "GET", "/zone-egresses/_overview", None, None).await;
    assert_eq!((s, &eg["total"]), (StatusCode::OK, &json!(0)));
    let (s, _, _) = call(&app, "GET", "/meshes/_overview", None, None).await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "only zones and zone proxies have overviews"
    );
}

#[tokio::test]
async fn mesh_insights_and_resource_types() {
    let app = app(standalone()).await;
    seed_dataplanes(&app, 3).await;
    let (s, _, v) = call(&app, "GET", "/mesh-insights", None, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let m = &v["items"][0];
    assert_eq!(m["name"], "default");
    assert_eq!(m["dataplanes"]["total"], 3);
    assert_eq!(m["services"]["internal"], 2, "web and db: {m}");
    let (_, _, one) = call(&app, "GET", "/mesh-insights/default", None, None).await;
    assert_eq!(one["dataplanes"]["offline"], 3);
    let (s, _, _) = call(&app, "GET", "/mesh-insights/nope", None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, _, r) = call(&app, "GET", "/_resources", None, None).await;
    let names: Vec<&str> = r["resources"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|x| x["name"].as_str())
        .collect();
    assert!(
        names.contains(&"MeshTrafficPermission") && names.contains(&"Zone"),
        "{names:?}"
    );
}
