//! `_rules` on global: asked of the owning zone, its answer returned unchanged, the zone's
//! absence an error naming it — never a computation over global's copies.

use std::sync::Arc;

use super::*;

/// Global's API over a store holding zone-1's `web-1` as global names it.
async fn global(zone_rules: Option<ZoneRulesFn>) -> Router {
    let store = Store::new(AnyBackend::Memory(MemoryBackend::new()));
    let app = app_with(CpMode::Global, store.clone(), zone_rules).await;
    let mut copy = Resource::from_value(dataplane("zone-1.web-1", 8080)).expect("dataplane");
    copy.meta
        .labels
        .insert("kuma.io/zone".into(), "zone-1".into());
    store.create(copy).await.expect("copy");
    app
}

fn answering(answer: Result<Value, ZoneAnswerError>) -> ZoneRulesFn {
    Arc::new(move |key: ResourceKey| {
        let answer = answer.clone().map(|mut v| {
            v["asked"] = json!([key.mesh, key.name]);
            v
        });
        Box::pin(async move { answer })
    })
}

#[tokio::test]
async fn global_returns_the_owning_zones_answer_or_says_why_not() {
    let zone_answer = json!({"resource": {"type": "Dataplane", "mesh": "default", "name": "web-1"}, "rules": [], "httpMatches": []});
    let path = "/meshes/default/dataplanes/zone-1.web-1/_rules";
    let cases = [
        (
            "forwarded",
            Some(answering(Ok(zone_answer.clone()))),
            StatusCode::OK,
        ),
        (
            "zone offline",
            Some(answering(Err(ZoneAnswerError::Unavailable(
                "zone \"zone-1\" is not connected to global".into(),
            )))),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            "zone refuses",
            Some(answering(Err(ZoneAnswerError::Refused(
                "cannot show \"rules\"".into(),
            )))),
            StatusCode::BAD_GATEWAY,
        ),
        ("no way to zones", None, StatusCode::SERVICE_UNAVAILABLE),
    ];
    for (what, zone_rules, status) in cases {
        let app = global(zone_rules).await;
        let (s, _, v) = call(&app, "GET", path, None, None).await;
        assert_eq!(s, status, "{what}: {v}");
        match status {
            StatusCode::OK => {
                let mut expected = zone_answer.clone();
                expected["asked"] = json!(["default", "zone-1.web-1"]);
                assert_eq!(v, expected, "{what}: the zone's answer, unchanged");
            }
            _ => {
                assert!(
                    v["title"].is_string() && v["details"].is_string(),
                    "{what}: {v}"
                );
                assert!(v["details"] != json!(""), "{what}: says why: {v}");
            }
        }
        if what == "zone offline" {
            assert!(
                v["details"].as_str().is_some_and(|d| d.contains("zone-1")),
                "{v}"
            );
        }
    }
    // A proxy global has no copy of is not asked about.
    let app = global(Some(answering(Ok(zone_answer)))).await;
    let (s, _, _) = call(
        &app,
        "GET",
        "/meshes/default/dataplanes/zone-1.nope/_rules",
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
