//! The REST API of the control plane, with Kuma's paths: `/meshes[/{name}]`,
//! `/meshes/{mesh}/{type}[/{name}]` for mesh-scoped types, `/{type}[/{name}]` for global-scoped
//! ones, plus `dataplanes+insights` and `service-insights` views.
//!
//! It validates and authorizes requests and maps errors to HTTP; it owns no state beyond the
//! store handle and does no KDS/xDS work.

pub mod auth;
mod defaults;
mod error;
pub mod gui;
mod inspect;
mod metrics;
mod overviews;
mod views;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use meshzone_model::{
    CpRole, Resource, ResourceKey, ResourceType, Scope, Violations, WriteRefusal,
};
use meshzone_store::Store;
use serde::Deserialize;
use serde_json::{Value, json};

pub use auth::{AdminClientCert, AuthSettings};
pub use defaults::create_initial_policies;
pub use error::ApiError;
pub use inspect::local_dataplane_rules;
pub use metrics::ApiMetrics;

/// How this control plane runs; decides who may write what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpMode {
    Global,
    /// A zone; `federated` when it is connected to a global control plane.
    Zone {
        name: String,
        federated: bool,
    },
}

impl CpMode {
    pub fn name(&self) -> &'static str {
        match self {
            CpMode::Global => "global",
            CpMode::Zone { .. } => "zone",
        }
    }
}

/// Facts the API reports about the control plane it serves.
#[derive(Clone)]
pub struct ApiSettings {
    pub mode: CpMode,
    pub instance_id: String,
    pub hostname: String,
    /// The effective configuration, shown by `GET /config`.
    pub config: Value,
    pub store_type: String,
    /// Where `GET /meshes/{mesh}/dataplanes/{name}/xds` reads a connected proxy's configuration:
    /// the local DP server on a zone, the owning zone (over KDS) on global.
    pub config_dump: Option<ConfigDumpFn>,
    /// On global, where `GET /meshes/{mesh}/dataplanes/{name}/_rules` is asked: the zone that
    /// owns the proxy (over KDS). Zones compute it themselves.
    pub zone_rules: Option<ZoneRulesFn>,
    /// Where `GET …/stats` and `…/clusters` of a proxy are read: from the proxy over its admin
    /// stream on a zone, from the owning zone (over KDS) on global.
    pub proxy_admin: Option<ProxyAdminFn>,
    /// Who may do what ([`auth`]).
    pub auth: AuthSettings,
}

/// Asks the zone that owns a Dataplane (named as global names it) for its `_rules`.
pub type ZoneRulesFn = std::sync::Arc<
    dyn Fn(
            ResourceKey,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Value, ZoneAnswerError>> + Send>,
        > + Send
        + Sync,
>;

/// Reads a proxy's Envoy-style text admin data: `what` is `"stats"` or `"clusters"`.
pub type ProxyAdminFn = std::sync::Arc<
    dyn Fn(
            ResourceKey,
            &'static str,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<String, ZoneAnswerError>> + Send>,
        > + Send
        + Sync,
>;

/// Why the zone owning a proxy (or the proxy) gave no answer; each message names who.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneAnswerError {
    /// The zone is not connected, went away or did not answer in time (HTTP 503).
    Unavailable(String),
    /// The zone answered that it cannot (HTTP 502).
    Refused(String),
    /// The proxy is not connected to the control plane asked (HTTP 404).
    NotConnected(String),
}

impl From<ZoneAnswerError> for ApiError {
    fn from(e: ZoneAnswerError) -> Self {
        match e {
            ZoneAnswerError::Unavailable(why) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Zone unavailable", why)
            }
            ZoneAnswerError::Refused(why) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "The zone could not answer", why)
            }
            ZoneAnswerError::NotConnected(why) => ApiError::not_found(why),
        }
    }
}

/// Looks up the configuration of a connected proxy by its resource key; `Err` says why not.
pub type ConfigDumpFn = std::sync::Arc<
    dyn Fn(
            ResourceKey,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Value, ZoneAnswerError>> + Send>,
        > + Send
        + Sync,
>;

struct Inner {
    store: Store,
    settings: ApiSettings,
    metrics: ApiMetrics,
}

/// Shared state of every handler. Cheap to clone.
#[derive(Clone)]
pub struct ApiContext(Arc<Inner>);

impl ApiContext {
    pub fn new(store: Store, settings: ApiSettings, metrics: ApiMetrics) -> Self {
        ApiContext(Arc::new(Inner {
            store,
            settings,
            metrics,
        }))
    }
}

/// The whole REST API.
pub fn router(ctx: ApiContext) -> Router {
    let metrics = ctx.0.metrics.clone();
    let gui = gui::router(&gui_config(&ctx.0.settings));
    Router::new()
        .merge(gui)
        .route("/_resources", get(overviews::resource_types))
        .route("/global-insight", get(overviews::global_insight))
        .route("/mesh-insights", get(overviews::list_mesh_insights))
        .route("/mesh-insights/{name}", get(overviews::get_mesh_insight))
        .route("/{ws}/_overview", get(overviews::list_overviews))
        .route("/{ws}/{name}/_overview", get(overviews::get_overview))
        .route(
            "/meshes/{mesh}/dataplanes/_overview",
            get(overviews::list_dataplane_overviews),
        )
        .route(
            "/meshes/{mesh}/dataplanes/{name}/_overview",
            get(overviews::get_dataplane_overview),
        )
        .route("/", get(index))
        .route("/config", get(config))
        .route("/tokens/dataplane", axum::routing::post(dataplane_token))
        .route("/tokens/zone", axum::routing::post(zone_token))
        .route("/tokens/user", axum::routing::post(user_token))
        .route("/meshes", get(list_meshes))
        .route(
            "/meshes/{name}",
            get(get_mesh).put(put_mesh).delete(delete_mesh),
        )
        .route("/meshes/{mesh}/{ws}", get(list_in_mesh))
        .route(
            "/meshes/{mesh}/dataplanes/{name}/xds",
            get(dataplane_config_dump),
        )
        .route(
            "/meshes/{mesh}/dataplanes/{name}/{what}",
            get(dataplane_admin_text),
        )
        .route("/{ws}/{name}/{what}", get(zone_proxy_admin_text))
        .route(
            "/meshes/{mesh}/dataplanes/{name}/_rules",
            get(inspect::dataplane_rules_handler),
        )
        .route(
            "/meshes/{mesh}/{ws}/{name}/_resources/dataplanes",
            get(inspect::policy_dataplanes_handler),
        )
        .route(
            "/meshes/{mesh}/{ws}/{name}",
            get(get_in_mesh).put(put_in_mesh).delete(delete_in_mesh),
        )
        .route("/{ws}", get(list_top))
        .route("/{ws}/{name}", get(get_top).put(put_top).delete(delete_top))
        .fallback(|| async { ApiError::not_found("no such path") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
                "this path does not accept that method",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            auth::authorize,
        ))
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            metrics::count_requests,
        ))
        .with_state(ctx)
}

type ApiResult<T = Response> = Result<T, ApiError>;

fn gui_config(s: &ApiSettings) -> gui::GuiConfig {
    gui::GuiConfig {
        mode: s.mode.name().to_string(),
        version: meshzone_model::VERSION.to_string(),
        store_type: s.store_type.clone(),
        zone: match &s.mode {
            CpMode::Zone { name, .. } => Some(name.clone()),
            CpMode::Global => None,
        },
    }
}

async fn index(State(ctx): State<ApiContext>) -> Json<Value> {
    let s = &ctx.0.settings;
    let mut body = json!({
        "hostname": s.hostname,
        "tagline": "Kuma",
        "product": "meshzone",
        "version": meshzone_model::VERSION,
        "instanceId": s.instance_id,
        "mode": s.mode.name(),
        "storeType": s.store_type,
    });
    if let CpMode::Zone { name, federated } = &s.mode {
        body["zone"] = json!(name);
        body["federated"] = json!(federated);
    }
    Json(body)
}

async fn config(State(ctx): State<ApiContext>) -> Json<Value> {
    Json(ctx.0.settings.config.clone())
}

/// A token as `text/plain`, or the reason it was not issued (`field: message` → 400).
fn token_response(result: Result<String, String>) -> ApiResult {
    let token = result.map_err(|e| match e.split_once(": ") {
        Some((field, msg))
            if matches!(
                field,
                "mesh" | "validFor" | "zone" | "scope" | "name" | "groups"
            ) =>
        {
            ApiError::invalid_field(field, msg)
        }
        _ => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal server error",
            e,
        ),
    })?;
    Ok(([(header::CONTENT_TYPE, "text/plain")], token).into_response())
}

/// `POST /tokens/dataplane` with `{mesh, name, type, tags, validFor}`: a signed token, as text.
async fn user_token(State(ctx): State<ApiContext>, body: Bytes) -> ApiResult {
    let value = parse_body(&body)?;
    let req: meshzone_identity::UserTokenRequest = serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("token request: {e}")))?;
    token_response(
        meshzone_identity::issue_user_token(&ctx.0.store, &req, std::time::SystemTime::now()).await,
    )
}

async fn dataplane_token(State(ctx): State<ApiContext>, body: Bytes) -> ApiResult {
    let value = parse_body(&body)?;
    let req: meshzone_identity::DataplaneTokenRequest = serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("token request: {e}")))?;
    if req.mesh.is_empty() {
        return Err(ApiError::invalid_field("mesh", "cannot be empty"));
    }
    token_response(
        meshzone_identity::issue_dataplane_token(&ctx.0.store, &req, std::time::SystemTime::now())
            .await,
    )
}

/// `POST /tokens/zone` with `{zone, scope[], validFor}`: a zone token, issued by global (or a
/// standalone zone); a zone connected to a global sends the user there (405, like every
/// refusal because of the mode).
async fn zone_token(State(ctx): State<ApiContext>, body: Bytes) -> ApiResult {
    if matches!(
        ctx.0.settings.mode,
        CpMode::Zone {
            federated: true,
            ..
        }
    ) {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed",
            "zone tokens are issued by the global control plane: run this against global",
        ));
    }
    let value = parse_body(&body)?;
    let req: meshzone_identity::ZoneTokenRequest = serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("token request: {e}")))?;
    token_response(
        meshzone_identity::issue_zone_token(&ctx.0.store, &req, std::time::SystemTime::now()).await,
    )
}

// --- path resolution ---------------------------------------------------------------------------

fn resolve(ws: &str, in_mesh: bool) -> ApiResult<ResourceType> {
    let rt = ResourceType::from_ws_path(ws)
        .ok_or_else(|| ApiError::not_found(format!("unknown resource path {ws:?}")))?;
    match (rt.scope(), in_mesh) {
        (Scope::Mesh, true) | (Scope::Global, false) => Ok(rt),
        (Scope::Mesh, false) => Err(ApiError::not_found(format!(
            "{rt} is mesh-scoped: use /meshes/{{mesh}}/{ws}"
        ))),
        (Scope::Global, true) => Err(ApiError::not_found(format!(
            "{rt} is not mesh-scoped: use /{ws}"
        ))),
    }
}

/// Kuma's answer to a write of a global-owned type on a zone connected to a global
/// (`pkg/api-server/resource_endpoints.go`, `zoneReadOnlyMessage`, K214 wording).
pub const ZONE_READ_ONLY: &str = "On zone control plane you can only modify zone resources with 'kumactl apply' or via the HTTP API. You can still use 'kumactl' or the HTTP API to modify the rest of the resource on the global control plane.";

/// Kuma's answer to a write of a zone-owned type on global (`globalReadOnlyMessage`), naming
/// the type where Kuma says "dataplane".
pub fn global_read_only(rt: ResourceType) -> String {
    format!(
        "On global control plane you can not modify {rt} resources with 'kumactl apply' or via the HTTP API. You can still use 'kumactl' or the HTTP API to modify them on the zone control plane."
    )
}

impl CpMode {
    /// What write authority this mode has.
    pub fn role(&self) -> CpRole {
        match self {
            CpMode::Global => CpRole::Global,
            CpMode::Zone {
                federated: false, ..
            } => CpRole::StandaloneZone,
            CpMode::Zone {
                federated: true, ..
            } => CpRole::FederatedZone,
        }
    }
}

/// Who may write what, from the type's owner (`Descriptor::write_refusal`): zone-owned types
/// only in zones, global-owned types only on global (or a standalone zone), computed types
/// never. Every refusal is 405, as in Kuma.
fn authorize_write(ctx: &ApiContext, rt: ResourceType) -> ApiResult<()> {
    let details = match rt.descriptor().write_refusal(ctx.0.settings.mode.role()) {
        None => return Ok(()),
        Some(WriteRefusal::Computed) => {
            format!("{rt} is computed by the control plane and cannot be written")
        }
        Some(WriteRefusal::OwnedByGlobal) => ZONE_READ_ONLY.to_string(),
        Some(WriteRefusal::OwnedByZones) => global_read_only(rt),
    };
    Err(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed",
        details,
    ))
}

// --- list --------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct PageQuery {
    size: Option<String>,
    offset: Option<String>,
}

const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 10_000;

struct Page {
    size: usize,
    offset: usize,
}

fn page(q: &PageQuery) -> ApiResult<Page> {
    let parse = |field: &str, v: &Option<String>, default: usize| -> ApiResult<usize> {
        match v {
            None => Ok(default),
            Some(s) => s.parse::<usize>().map_err(|_| {
                ApiError::invalid_field(field, format!("{s:?} is not a non-negative integer"))
            }),
        }
    };
    let size = parse("size", &q.size, DEFAULT_PAGE_SIZE)?;
    if size == 0 || size > MAX_PAGE_SIZE {
        return Err(ApiError::invalid_field(
            "size",
            format!("must be between 1 and {MAX_PAGE_SIZE}"),
        ));
    }
    Ok(Page {
        size,
        offset: parse("offset", &q.offset, 0)?,
    })
}

fn paged<T: serde::Serialize>(items: Vec<T>, p: Page, headers: &HeaderMap, path: &str) -> Response {
    paged_map(&items, p, headers, path, |x| x)
}

/// Like [`paged`], converting only the items of the requested page with `f`.
fn paged_map<'a, T, U: serde::Serialize>(
    items: &'a [T],
    p: Page,
    headers: &HeaderMap,
    path: &str,
    f: impl Fn(&'a T) -> U,
) -> Response {
    let total = items.len();
    let end = p.offset.saturating_add(p.size).min(total);
    let next = (end < total).then(|| {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| format!("http://{h}"))
            .unwrap_or_default();
        format!("{host}{path}?offset={end}&size={}", p.size)
    });
    // end >= start: end = min(offset + size, total) and start = min(offset, total).
    let start = p.offset.min(total);
    let items: Vec<U> = items[start..end].iter().map(f).collect();
    Json(ListBody { total, items, next }).into_response()
}

#[derive(serde::Serialize)]
struct ListBody<T> {
    total: usize,
    items: Vec<T>,
    next: Option<String>,
}

async fn list_values(
    ctx: &ApiContext,
    rt: ResourceType,
    mesh: Option<&str>,
) -> ApiResult<Vec<Resource>> {
    Ok(ctx.0.store.list(rt, mesh).await?)
}

async fn list_meshes(
    State(ctx): State<ApiContext>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let p = page(&q)?;
    let items = list_values(&ctx, ResourceType::Mesh, None).await?;
    Ok(paged(items, p, &headers, "/meshes"))
}

async fn list_top(
    State(ctx): State<ApiContext>,
    Path(ws): Path<String>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let p = page(&q)?;
    let rt = ResourceType::from_ws_path(&ws)
        .ok_or_else(|| ApiError::not_found(format!("unknown resource path {ws:?}")))?;
    // Mesh-scoped types may also be listed across all meshes.
    let items = list_values(&ctx, rt, None).await?;
    Ok(paged(items, p, &headers, &format!("/{ws}")))
}

async fn list_in_mesh(
    State(ctx): State<ApiContext>,
    Path((mesh, ws)): Path<(String, String)>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let p = page(&q)?;
    let path = format!("/meshes/{mesh}/{ws}");
    Ok(match ws.as_str() {
        "dataplanes+insights" => {
            let items = views::dataplane_overviews(&ctx.0.store, &mesh).await?;
            paged(items, p, &headers, &path)
        }
        // ServiceInsight is computed on read, never stored (see its descriptor).
        ws if ResourceType::from_ws_path(ws) == Some(ResourceType::ServiceInsight) => {
            let items: Vec<Value> = views::service_insights(&ctx.0.store, &mesh)
                .await?
                .into_values()
                .collect();
            paged(items, p, &headers, &path)
        }
        _ => {
            let rt = resolve(&ws, true)?;
            paged(
                list_values(&ctx, rt, Some(&mesh)).await?,
                p,
                &headers,
                &path,
            )
        }
    })
}

// --- get ---------------------------------------------------------------------------------------

fn with_etag(resource: &Resource, status: StatusCode) -> Response {
    let mut resp = (status, Json(resource)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", resource.meta.version)) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

async fn get_one(ctx: &ApiContext, key: ResourceKey) -> ApiResult {
    let resource = ctx.0.store.get(&key).await?;
    Ok(with_etag(&resource, StatusCode::OK))
}

async fn get_mesh(State(ctx): State<ApiContext>, Path(name): Path<String>) -> ApiResult {
    get_one(&ctx, ResourceKey::global(ResourceType::Mesh, &name)).await
}

async fn get_top(
    State(ctx): State<ApiContext>,
    Path((ws, name)): Path<(String, String)>,
) -> ApiResult {
    let rt = resolve(&ws, false)?;
    get_one(&ctx, ResourceKey::global(rt, &name)).await
}

/// `GET /meshes/{mesh}/dataplanes/{name}/xds`: what the control plane last sent to a connected
/// proxy, decoded (private keys never included).
async fn dataplane_config_dump(
    State(ctx): State<ApiContext>,
    Path((mesh, name)): Path<(String, String)>,
) -> ApiResult {
    let key = ResourceKey::new(ResourceType::Dataplane, &mesh, &name);
    if ctx.0.store.find(&key).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "Dataplane {name:?} not found in mesh {mesh:?}"
        )));
    }
    let Some(dump) = &ctx.0.settings.config_dump else {
        return Err(ApiError::not_found(
            "this control plane serves no proxies: ask the zone control plane the proxy is connected to",
        ));
    };
    // 404 when the proxy is not connected, 503 when its zone cannot be reached (as `_rules`).
    match dump(key).await {
        Ok(v) => Ok(Json(v).into_response()),
        Err(why) => Err(why.into()),
    }
}

/// What a proxy's admin data may be asked for: `stats` or `clusters`.
fn admin_kind(what: &str) -> ApiResult<&'static str> {
    ["stats", "clusters"]
        .into_iter()
        .find(|k| *k == what)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no such path: a proxy has stats and clusters, not {what:?}"
            ))
        })
}

/// `GET /meshes/{mesh}/dataplanes/{name}/stats|clusters`.
async fn dataplane_admin_text(
    ctx: State<ApiContext>,
    Path((mesh, name, what)): Path<(String, String, String)>,
) -> ApiResult {
    let key = ResourceKey::new(ResourceType::Dataplane, &mesh, &name);
    proxy_admin_text(ctx, key, admin_kind(&what)?).await
}

/// `GET /zoneingresses/{name}/stats|clusters` and the same of `zoneegresses`.
async fn zone_proxy_admin_text(
    ctx: State<ApiContext>,
    Path((ws, name, what)): Path<(String, String, String)>,
) -> ApiResult {
    let rt = match ResourceType::from_ws_path(&ws) {
        Some(rt @ (ResourceType::ZoneIngress | ResourceType::ZoneEgress)) => rt,
        _ => return Err(ApiError::not_found("no such path")),
    };
    proxy_admin_text(ctx, ResourceKey::global(rt, &name), admin_kind(&what)?).await
}

/// `GET …/stats` and `…/clusters` of a proxy: Envoy's text form, read from the proxy.
async fn proxy_admin_text(
    State(ctx): State<ApiContext>,
    key: ResourceKey,
    what: &'static str,
) -> ApiResult {
    if ctx.0.store.find(&key).await?.is_none() {
        return Err(ApiError::not_found(format!("{key} not found")));
    }
    let Some(read) = &ctx.0.settings.proxy_admin else {
        return Err(ApiError::not_found(
            "this control plane serves no proxies: ask the zone control plane the proxy is connected to",
        ));
    };
    let text = read(key, what).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

async fn get_in_mesh(
    State(ctx): State<ApiContext>,
    Path((mesh, ws, name)): Path<(String, String, String)>,
) -> ApiResult {
    if ResourceType::from_ws_path(&ws) == Some(ResourceType::ServiceInsight) {
        let mut all = views::service_insights(&ctx.0.store, &mesh).await?;
        return all
            .remove(&name)
            .map(|v| Json(v).into_response())
            .ok_or_else(|| {
                ApiError::not_found(format!("service {name:?} not found in mesh {mesh:?}"))
            });
    }
    let rt = resolve(&ws, true)?;
    get_one(&ctx, ResourceKey::new(rt, &mesh, &name)).await
}

// --- put ---------------------------------------------------------------------------------------

/// `If-Match: "<version>"` makes a write conditional on the stored version.
fn expected_version(headers: &HeaderMap) -> ApiResult<Option<u64>> {
    let Some(raw) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = raw.to_str().unwrap_or("").trim().trim_matches('"');
    text.parse::<u64>().map(Some).map_err(|_| {
        ApiError::bad_request(format!(
            "If-Match must be a version as returned in ETag, got {text:?}"
        ))
    })
}

fn parse_body(body: &Bytes) -> ApiResult<Value> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "request body is empty: send the resource as JSON",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))
}

async fn put_one(
    ctx: &ApiContext,
    rt: ResourceType,
    mesh: &str,
    name: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> ApiResult {
    authorize_write(ctx, rt)?;
    let expected = expected_version(headers)?;
    let mut value = parse_body(&body)?;
    // The path decides type, mesh and name; the body may repeat them but not contradict them.
    let mut v = Violations::default();
    if let Some(obj) = value.as_object_mut() {
        match obj.get("type").and_then(Value::as_str) {
            Some(t) if t != rt.name() => match t.parse::<ResourceType>() {
                Err(unknown) => v.push("type", unknown.to_string()),
                Ok(_) => v.push(
                    "type",
                    format!("{t:?} does not match the path, which is for {rt}"),
                ),
            },
            _ => {}
        }
        obj.insert("type".into(), Value::from(rt.name()));
        match obj.get("name").and_then(Value::as_str) {
            Some(n) if n != name => v.push(
                "name",
                format!("{n:?} does not match the name in the path ({name:?})"),
            ),
            _ => {}
        }
        obj.insert("name".into(), Value::from(name));
        if rt.is_mesh_scoped() {
            match obj.get("mesh").and_then(Value::as_str) {
                Some(m) if m != mesh => v.push(
                    "mesh",
                    format!("{m:?} does not match the mesh in the path ({mesh:?})"),
                ),
                _ => {}
            }
            obj.insert("mesh".into(), Value::from(mesh));
        }
    }
    v.into_result().map_err(ApiError::invalid)?;
    let resource = Resource::from_value(value).map_err(ApiError::invalid)?;
    meshzone_model::validate(&resource).map_err(ApiError::invalid)?;
    let (stored, created) = ctx.0.store.upsert(resource, expected).await?;
    if created && rt == ResourceType::Mesh {
        create_initial_policies(&ctx.0.store, ctx.0.settings.mode.role(), &stored).await?;
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(with_etag(&stored, status))
}

async fn put_mesh(
    State(ctx): State<ApiContext>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    put_one(&ctx, ResourceType::Mesh, "", &name, &headers, body).await
}

async fn put_top(
    State(ctx): State<ApiContext>,
    Path((ws, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let rt = resolve(&ws, false)?;
    put_one(&ctx, rt, "", &name, &headers, body).await
}

async fn put_in_mesh(
    State(ctx): State<ApiContext>,
    Path((mesh, ws, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let rt = resolve(&ws, true)?;
    put_one(&ctx, rt, &mesh, &name, &headers, body).await
}

// --- delete ------------------------------------------------------------------------------------

/// Exactly Kuma's message, which the seed quotes.
pub const ZONE_STILL_CONNECTED: &str =
    "unable to delete Zone, Zone CP is still connected, please shut it down first";

async fn delete_one(ctx: &ApiContext, key: ResourceKey, headers: &HeaderMap) -> ApiResult {
    authorize_write(ctx, key.resource_type)?;
    if key.resource_type == ResourceType::Zone {
        let insight = ctx
            .0
            .store
            .find(&ResourceKey::global(ResourceType::ZoneInsight, &key.name))
            .await?;
        if let Some(Resource {
            spec: meshzone_model::Spec::ZoneInsight(i),
            ..
        }) = insight
            && meshzone_model::specs::Subscriptions::is_online(&i)
        {
            return Err(ApiError::invalid_field("zone", ZONE_STILL_CONNECTED));
        }
    }
    let expected = expected_version(headers)?;
    let deleted = ctx.0.store.delete(&key, expected).await?;
    let cascaded: Vec<BTreeMap<&str, String>> = deleted
        .iter()
        .skip(1)
        .map(|k| {
            BTreeMap::from([
                ("type", k.resource_type.name().to_string()),
                ("mesh", k.mesh.clone()),
                ("name", k.name.clone()),
            ])
        })
        .collect();
    Ok(Json(json!({ "deleted": cascaded.len() + 1, "cascaded": cascaded })).into_response())
}

async fn delete_mesh(
    State(ctx): State<ApiContext>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    delete_one(
        &ctx,
        ResourceKey::global(ResourceType::Mesh, &name),
        &headers,
    )
    .await
}

async fn delete_top(
    State(ctx): State<ApiContext>,
    Path((ws, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let rt = resolve(&ws, false)?;
    delete_one(&ctx, ResourceKey::global(rt, &name), &headers).await
}

async fn delete_in_mesh(
    State(ctx): State<ApiContext>,
    Path((mesh, ws, name)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let rt = resolve(&ws, true)?;
    delete_one(&ctx, ResourceKey::new(rt, &mesh, &name), &headers).await
}

#[cfg(test)]
mod tests;
