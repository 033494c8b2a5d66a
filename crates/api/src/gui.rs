//! The web GUI at `/gui`: plain HTML, CSS and ES modules from `crates/api/gui/`, embedded in the
//! binary with `include_str!` (ADR 0005). An exact asset path is served with its content type
//! and an `ETag`; every other path under `/gui` gets `index.html`, rendered once with the
//! control plane's config JSON and `<base href>`, so the browser's own router takes over (the
//! SPA fallback, as kuma-cp does). Nothing here reaches the network; the GUI only reads the
//! REST API of the control plane that serves it.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

/// Where the GUI is mounted on the API port.
pub const BASE_PATH: &str = "/gui";

/// The embedded files, by their path under `/gui/`.
const ASSETS: &[(&str, &str)] = &[
    ("style.css", include_str!("../gui/style.css")),
    ("app.js", include_str!("../gui/app.js")),
    ("lib.js", include_str!("../gui/lib.js")),
    ("zones.js", include_str!("../gui/zones.js")),
    ("meshes.js", include_str!("../gui/meshes.js")),
    ("dataplanes.js", include_str!("../gui/dataplanes.js")),
    ("policies.js", include_str!("../gui/policies.js")),
    ("favicon.svg", include_str!("../gui/favicon.svg")),
];

const INDEX_TEMPLATE: &str = include_str!("../gui/index.html");

/// The content type of an embedded file, by its extension.
fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("html") => "text/html; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// What the GUI is told about the control plane, as kuma-cp's `GuiConfig`.
#[derive(Debug, Clone)]
pub struct GuiConfig {
    pub mode: String,
    pub version: String,
    pub store_type: String,
    pub zone: Option<String>,
}

impl GuiConfig {
    fn to_json(&self) -> Value {
        json!({
            "apiUrl": "",
            "baseGuiPath": BASE_PATH,
            "version": self.version,
            "product": "meshzone",
            "mode": self.mode,
            "environment": "universal",
            "storeType": self.store_type,
            "apiReadOnly": true,
            "zone": self.zone,
        })
    }
}

/// `index.html` with the config JSON and the base path filled in. `</` is escaped inside the
/// JSON so no value can close the `<script>` element.
pub fn render_index(config: &GuiConfig) -> String {
    let json = config.to_json().to_string().replace("</", "<\\/");
    INDEX_TEMPLATE
        .replace("{{BASE_HREF}}", &format!("{BASE_PATH}/"))
        .replace("{{CONFIG_JSON}}", &json)
}

/// A strong validator for a body: FNV-1a 64 of its bytes.
fn etag_of(body: &str) -> String {
    let hash = body.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("\"{hash:016x}\"")
}

/// What `/gui/{path}` answers: an asset, or the index for every other path.
#[derive(Debug, PartialEq, Eq)]
enum Served {
    Asset(usize),
    Index,
}

fn resolve(path: &str) -> Served {
    ASSETS
        .iter()
        .position(|(p, _)| *p == path)
        .map_or(Served::Index, Served::Asset)
}

fn respond(
    headers: &HeaderMap,
    content_type: &'static str,
    body: String,
    etag: String,
) -> Response {
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut resp = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, content_type)], body).into_response()
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// The rendered index and its validator, shared by the handlers.
#[derive(Clone)]
struct Index {
    html: std::sync::Arc<str>,
    etag: std::sync::Arc<str>,
}

impl Index {
    fn respond(&self, headers: &HeaderMap) -> Response {
        respond(
            headers,
            "text/html; charset=utf-8",
            self.html.to_string(),
            self.etag.to_string(),
        )
    }
}

/// The routes under `/gui`, with the index rendered once from `config`.
pub fn router<S: Clone + Send + Sync + 'static>(config: &GuiConfig) -> Router<S> {
    let html = render_index(config);
    let index = Index {
        etag: etag_of(&html).into(),
        html: html.into(),
    };
    let root = index.clone();
    let serve_index = move |headers: HeaderMap| async move { root.respond(&headers) };
    let serve_path = move |Path(path): Path<String>, headers: HeaderMap| async move {
        match resolve(&path) {
            Served::Asset(i) => {
                let (path, body) = ASSETS[i];
                respond(
                    &headers,
                    content_type(path),
                    body.to_string(),
                    etag_of(body),
                )
            }
            Served::Index => index.respond(&headers),
        }
    };
    Router::new()
        .route(BASE_PATH, get(serve_index.clone()))
        .route(&format!("{BASE_PATH}/"), get(serve_index))
        .route(&format!("{BASE_PATH}/{{*path}}"), get(serve_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> GuiConfig {
        GuiConfig {
            mode: "global".into(),
            version: "1.2.3".into(),
            store_type: "sqlite".into(),
            zone: None,
        }
    }

    #[test]
    fn paths_resolve_to_assets_or_the_index() {
        let cases = [
            ("app.js", true),
            ("style.css", true),
            ("zones", false),
            ("meshes/default/dataplanes/dp-1", false),
            ("../Cargo.toml", false),
            ("app.js/x", false),
            ("", false),
        ];
        for (path, is_asset) in cases {
            assert_eq!(
                matches!(resolve(path), Served::Asset(_)),
                is_asset,
                "{path}"
            );
        }
    }

    #[test]
    fn index_carries_config_and_base_href() {
        let html = render_index(&config());
        assert!(html.contains(r#"<base href="/gui/">"#), "{html}");
        let marker = r#"id="kuma-config">"#;
        let start = html.find(marker).expect("config script") + marker.len();
        let end = start + html[start..].find("</script>").expect("end of script");
        let v: Value = serde_json::from_str(&html[start..end]).expect("config JSON");
        assert_eq!(v["mode"], "global");
        assert_eq!(v["version"], "1.2.3");
        assert_eq!(v["storeType"], "sqlite");
        assert_eq!(v["baseGuiPath"], "/gui");
        assert_eq!(v["apiReadOnly"], true);
        assert!(!html.contains("{{"), "every placeholder filled");
    }

    #[test]
    fn config_values_cannot_close_the_script() {
        let mut c = config();
        c.version = "</script><script>alert(1)</script>".into();
        let html = render_index(&c);
        assert_eq!(
            html.matches("</script>").count(),
            INDEX_TEMPLATE.matches("</script>").count()
        );
    }

    #[test]
    fn no_asset_reaches_the_network() {
        for a in ASSETS.iter().map(|(_, body)| *body).chain([INDEX_TEMPLATE]) {
            for needle in ["http://", "https://", "//cdn", "fonts.googleapis"] {
                let hits: Vec<&str> = a
                    .lines()
                    .filter(|l| l.contains(needle) && !l.contains("http://www.w3.org/2000/svg"))
                    .collect();
                assert!(hits.is_empty(), "{needle} in an asset: {hits:?}");
            }
        }
    }
}
