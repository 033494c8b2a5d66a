//! `GET …/stats` and `…/clusters` of proxies: what is asked of whom, and the refusals.

use super::*;

/// A reader that answers for `zone-1.web-1` only, as a zone whose proxy is connected would.
fn reader() -> ProxyAdminFn {
    std::sync::Arc::new(|key: ResourceKey, what| {
        Box::pin(async move {
            if key.name == "web-1" {
                Ok(format!("{what} of {key}\n"))
            } else {
                Err(ZoneAnswerError::NotConnected(format!(
                    "{key} is not connected"
                )))
            }
        })
    })
}

async fn get_text(app: &Router, path: &str) -> (StatusCode, String, String) {
    let req = Request::builder()
        .uri(path)
        .extension(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            40000,
        ))))
        .body(Body::empty())
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("response");
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        content_type,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[tokio::test]
async fn stats_and_clusters_are_read_as_text_and_refusals_say_why() {
    let store = Store::new(AnyBackend::Memory(MemoryBackend::new()));
    let app = app_full(standalone(), store, None, Some(reader())).await;
    for (name, port) in [("web-1", 8080), ("web-2", 8081)] {
        let (s, _, _) = call(
            &app,
            "PUT",
            &format!("/meshes/default/dataplanes/{name}"),
            Some(dataplane(name, port)),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
    }

    for what in ["stats", "clusters"] {
        let (s, ct, body) =
            get_text(&app, &format!("/meshes/default/dataplanes/web-1/{what}")).await;
        assert_eq!(
            (s, ct.as_str()),
            (StatusCode::OK, "text/plain; charset=utf-8")
        );
        assert!(body.starts_with(&format!("{what} of ")), "{body}");
    }

    let cases = [
        ("/meshes/default/dataplanes/web-2/stats", "is not connected"),
        ("/meshes/default/dataplanes/nope/stats", "not found"),
        (
            "/meshes/default/dataplanes/web-1/memory",
            "not \\\"memory\\\"",
        ),
        ("/zoneingresses/nope/stats", "not found"),
        ("/zones/zone-1/stats", "no such path"),
    ];
    for (path, expected) in cases {
        let (s, ct, body) = get_text(&app, path).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {body}");
        assert!(ct.starts_with("application/json"), "{path}: {ct}");
        assert!(body.contains(expected), "{path}: {body}");
    }

    // A control plane that serves no proxies says where to ask.
    let store = Store::new(AnyBackend::Memory(MemoryBackend::new()));
    let bare = app_full(standalone(), store, None, None).await;
    let _ = call(
        &bare,
        "PUT",
        "/meshes/default/dataplanes/web-1",
        Some(dataplane("web-1", 8080)),
        None,
    )
    .await;
    let (s, _, body) = get_text(&bare, "/meshes/default/dataplanes/web-1/stats").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(body.contains("serves no proxies"), "{body}");
}
