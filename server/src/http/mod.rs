//! HTTP: one route table ([`configure`]), thin handlers (extract → one
//! service call off the executor → JSON), the bearer-key extractor
//! [`Auth`], request metrics, body limits and Content-Type checks.

mod auth_limit;
mod body;
mod error;
mod metrics;
mod parse;
mod webhooks;

pub use auth_limit::AuthFailureLimiter;
pub use metrics::Metrics;

use crate::error::ApiError;
use crate::services::audiences::{ChangesPage, MembersPage};
use crate::services::auth::Caller;
use crate::services::graph::{CookieRow, ImportBatches};
use crate::services::jobs::CreateJob;
use crate::services::webhooks::change_line;
use crate::services::{blocking, Services};
use crate::storage::{ChangeOp, GraphInfo, ImportMode, Role};
use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use serde::Deserialize;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Shared state handed to handlers.
pub type State = web::Data<Arc<Services>>;

/// The OpenAPI document (kept beside the routes).
pub const OPENAPI: &str = include_str!("openapi.json");

/// An authenticated caller (401 when the bearer key is not a live key).
pub struct Auth(pub Caller);

impl FromRequest for Auth {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    /// An address past its failed-authentication budget gets 429 before
    /// its key is looked at; a failure (never the key) is counted against it.
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<State>().cloned();
        let limiter = req.app_data::<web::Data<AuthFailureLimiter>>().cloned();
        let source = req.peer_addr().map(|a| a.ip());
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_string());
        Box::pin(async move {
            let limit = limiter.zip(source);
            if let Some((limiter, ip)) = &limit {
                limiter
                    .check(*ip, std::time::Instant::now())
                    .map_err(|retry_after| ApiError::TooManyAuthFailures { retry_after })?;
            }
            let result = match (state, token) {
                (Some(state), Some(token)) => {
                    let services = state.get_ref().clone();
                    blocking(move || services.authenticate(&token)).await
                }
                _ => Err(ApiError::Unauthenticated),
            };
            if let (Err(ApiError::Unauthenticated), Some((limiter, ip))) = (&result, &limit) {
                limiter.record_failure(*ip, std::time::Instant::now());
            }
            result.map(Auth)
        })
    }
}

impl Auth {
    fn role(self, role: Role) -> Result<Caller, ApiError> {
        self.0.require(role)?;
        Ok(self.0)
    }
}

/// Read a body up to `limit` bytes (413 beyond) at the configured pace (408).
async fn read_body(
    payload: web::Payload,
    limit: usize,
    state: &State,
) -> Result<web::Bytes, ApiError> {
    let pace = body::BodyPace {
        timeout: state.config.client_body_timeout,
        min_rate: state.config.client_body_min_rate,
    };
    body::read(payload, limit, pace).await
}

fn content_type(req: &HttpRequest) -> String {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn require_type(req: &HttpRequest, expected: &str) -> Result<(), ApiError> {
    let found = content_type(req);
    if found != expected {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type must be {expected}, got {}",
            if found.is_empty() { "none" } else { &found }
        )));
    }
    Ok(())
}

/// A binary frame body.
async fn frame(
    req: &HttpRequest,
    payload: web::Payload,
    state: &State,
) -> Result<web::Bytes, ApiError> {
    require_type(req, "application/octet-stream")?;
    read_body(payload, state.config.max_frame_body, state).await
}

/// A JSON body; an empty body without Content-Type reads as `{}` when
/// `optional`. Errors name our field, never the parser's text (`parse`).
async fn json_body<T: for<'de> Deserialize<'de>>(
    req: &HttpRequest,
    payload: web::Payload,
    state: &State,
    optional: bool,
) -> Result<(T, web::Bytes), ApiError> {
    let ct = content_type(req);
    if !(optional && ct.is_empty()) {
        require_type(req, "application/json")?;
    }
    let body = read_body(payload, state.config.max_json_body, state).await?;
    let text: &[u8] = if body.is_empty() && optional {
        b"{}"
    } else {
        &body
    };
    let value = parse::json(text)?;
    Ok((value, body))
}

fn path_u32(s: &str, name: &str) -> Result<u32, ApiError> {
    s.parse()
        .map_err(|_| ApiError::BadRequest(format!("{name}: a non-negative integer")))
}

fn svc(state: &State) -> Arc<Services> {
    state.get_ref().clone()
}

/// The route table.
pub fn configure(cfg: &mut web::ServiceConfig) {
    // Handlers parse queries with `parse::Query`; these cover actix's own
    // extractors, without their parser's text.
    cfg.app_data(
        web::QueryConfig::default().error_handler(|_, _| {
            ApiError::BadRequest("the query string is not valid".into()).into()
        }),
    )
    .app_data(
        web::PathConfig::default().error_handler(|_, _| {
            ApiError::BadRequest("a path segment is not valid".into()).into()
        }),
    );
    cfg.route("/healthz", web::get().to(healthz))
        .route("/v1/openapi.json", web::get().to(openapi))
        .route("/v1/admin/principals", web::post().to(create_principal))
        .route("/v1/admin/principals", web::get().to(list_principals))
        .route(
            "/v1/admin/principals/{name}/keys",
            web::post().to(create_key),
        )
        .route(
            "/v1/admin/principals/{name}/revoke",
            web::post().to(revoke_principal),
        )
        .route("/v1/admin/keys/{key_id}/revoke", web::post().to(revoke_key))
        .route("/v1/admin/graph/imports", web::post().to(create_import))
        .route(
            "/v1/admin/graph/imports/{id}/identifiers/{batch_no}",
            web::put().to(import_identifiers),
        )
        .route(
            "/v1/admin/graph/imports/{id}/cookies/{batch_no}",
            web::put().to(import_cookies),
        )
        .route(
            "/v1/admin/graph/imports/{id}/removals/{batch_no}",
            web::put().to(import_removals),
        )
        .route(
            "/v1/admin/graph/imports/{id}/commit",
            web::post().to(commit_import),
        )
        .route("/v1/admin/graph/versions", web::get().to(graph_versions))
        .route(
            "/v1/admin/graph/versions/{version}/activate",
            web::post().to(activate_version),
        )
        .route("/v1/admin/stats", web::get().to(stats))
        .route("/v1/admin/optouts", web::post().to(optouts))
        .route("/v1/admin/erase", web::post().to(erase))
        .route("/v1/admin/erase/lift", web::post().to(lift_erasure))
        .route("/v1/admin/audit", web::get().to(audit))
        .route("/v1/jobs", web::post().to(create_job))
        .route("/v1/jobs", web::get().to(list_jobs))
        .route("/v1/jobs/{id}", web::get().to(get_job))
        .route("/v1/jobs/{id}", web::delete().to(abort_job))
        .route(
            "/v1/jobs/{id}/graph/{kind}/{page_no}",
            web::get().to(get_graph_page),
        )
        .route(
            "/v1/jobs/{id}/graph/{kind}/{page_no}",
            web::put().to(put_graph_page),
        )
        .route(
            "/v1/jobs/{id}/batches/{batch_no}",
            web::put().to(upload_batch),
        )
        .route("/v1/jobs/{id}/finish", web::post().to(finish_job))
        .route("/v1/audiences", web::get().to(list_audiences))
        .route("/v1/audiences/{id}/members", web::get().to(members))
        .route("/v1/audiences/{id}/changes", web::get().to(changes))
        .route("/v1/webhook", web::put().to(webhooks::set_own))
        .route("/v1/webhook", web::get().to(webhooks::show))
        .route("/v1/webhook", web::delete().to(webhooks::remove))
        .route(
            "/v1/webhook/rotate-secret",
            web::post().to(webhooks::rotate),
        )
        .route("/v1/deliveries", web::get().to(webhooks::deliveries))
        .route(
            "/v1/deliveries/{id}/redeliver",
            web::post().to(webhooks::redeliver),
        )
        .route(
            "/v1/admin/destinations/{name}/webhook",
            web::put().to(webhooks::set_for),
        )
        .default_service(web::to(|| async {
            Err::<HttpResponse, _>(ApiError::NotFound("route"))
        }));
}

/// The route table of the metrics listener: `/metrics` and nothing else.
pub fn configure_metrics(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics_text))
        .default_service(web::to(|| async {
            Err::<HttpResponse, _>(ApiError::NotFound("route"))
        }));
}

type Reply = Result<HttpResponse, ApiError>;

fn ok(v: serde_json::Value) -> Reply {
    Ok(HttpResponse::Ok().json(v))
}

fn created(v: serde_json::Value) -> Reply {
    Ok(HttpResponse::Created().json(v))
}

async fn healthz(state: State) -> Reply {
    let s = svc(&state);
    let g = blocking(move || Ok(s.repo.current_graph()?)).await?;
    ok(serde_json::json!({"status": "ok", "graph_version": g.map(|g| g.version).unwrap_or(0)}))
}

async fn metrics_text(state: State, metrics: web::Data<Metrics>) -> HttpResponse {
    let s = svc(&state);
    let job_counts = blocking(move || s.job_counts_by_status())
        .await
        .unwrap_or_default();
    let s = svc(&state);
    // When storage fails, the depth line is left out rather than shown as zero.
    let depth = blocking(move || Ok(s.repo.pending_count()?)).await.ok();
    let imported = state
        .identifiers_imported
        .load(std::sync::atomic::Ordering::Relaxed);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(metrics.render(imported, &job_counts) + &state.delivery_metrics.render(depth))
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPrincipal {
    name: String,
    role: Role,
    #[serde(default)]
    webhook_url: Option<String>,
}

async fn create_principal(
    state: State,
    auth: Auth,
    req: HttpRequest,
    payload: web::Payload,
) -> Reply {
    let caller = auth.role(Role::Admin)?;
    let (body, _): (NewPrincipal, _) = json_body(&req, payload, &state, false).await?;
    let s = svc(&state);
    let k = blocking(move || s.create_principal(&caller, &body.name, body.role, body.webhook_url))
        .await?;
    created(
        serde_json::json!({"name": k.name, "role": k.role, "key_id": k.key_id, "api_key": k.api_key}),
    )
}

async fn list_principals(state: State, auth: Auth) -> Reply {
    auth.role(Role::Admin)?;
    let s = svc(&state);
    ok(blocking(move || s.list_principals()).await?)
}

async fn create_key(state: State, auth: Auth, path: web::Path<String>) -> Reply {
    let caller = auth.role(Role::Admin)?;
    let s = svc(&state);
    let k = blocking(move || s.create_key(&caller, &path)).await?;
    created(serde_json::json!({"name": k.name, "key_id": k.key_id, "api_key": k.api_key}))
}

async fn revoke_key(state: State, auth: Auth, path: web::Path<String>) -> Reply {
    let caller = auth.role(Role::Admin)?;
    let s = svc(&state);
    let id = path.into_inner();
    let id2 = id.clone();
    blocking(move || s.revoke_key(&caller, &id2)).await?;
    ok(serde_json::json!({"key_id": id, "revoked": true}))
}

async fn revoke_principal(state: State, auth: Auth, path: web::Path<String>) -> Reply {
    let caller = auth.role(Role::Admin)?;
    let s = svc(&state);
    let name = path.into_inner();
    let name2 = name.clone();
    let n = blocking(move || s.revoke_principal(&caller, &name2)).await?;
    ok(serde_json::json!({"name": name, "revoked_keys": n}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateImport {
    #[serde(default)]
    mode: ImportMode,
}

async fn create_import(state: State, auth: Auth, req: HttpRequest, payload: web::Payload) -> Reply {
    let caller = auth.role(Role::Admin)?;
    let (c, _): (CreateImport, _) = json_body(&req, payload, &state, true).await?;
    let mode = c.mode;
    let s = svc(&state);
    let id = blocking(move || s.create_import(&caller, mode)).await?;
    created(serde_json::json!({"import_id": id, "mode": mode}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Removals {
    persons: Vec<String>,
}

async fn import_removals(
    state: State,
    auth: Auth,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Reply {
    json_import_batch(
        state,
        auth,
        req,
        path,
        payload,
        |s, id, batch, raw, rows: Removals| s.import_removals(id, batch, raw, &rows.persons),
    )
    .await
}

/// A graph version's counts as the API shows them (every kind named).
fn graph_json(info: &GraphInfo) -> serde_json::Value {
    let identifiers: serde_json::Map<String, serde_json::Value> = onboard_protocol::MatchKind::ALL
        .iter()
        .map(|k| {
            let n = info.identifiers.get(k.as_str()).copied().unwrap_or(0);
            (k.as_str().to_string(), n.into())
        })
        .collect();
    serde_json::json!({
        "version": info.version,
        "persons": info.persons,
        "identifiers": identifiers,
        "cookies": info.cookies,
        "added": info.added,
        "removed": info.removed,
    })
}

async fn graph_versions(state: State, auth: Auth) -> Reply {
    auth.role(Role::Admin)?;
    let s = svc(&state);
    let versions = blocking(move || s.graph_versions()).await?;
    ok(serde_json::json!({"versions": versions}))
}

async fn activate_version(
    state: State,
    auth: Auth,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Reply {
    let caller = auth.role(Role::Admin)?;
    let _: (serde_json::Value, _) = json_body(&req, payload, &state, true).await?;
    let version: u64 = path
        .parse()
        .map_err(|_| ApiError::BadRequest("version: a non-negative integer".into()))?;
    let s = svc(&state);
    let info = blocking(move || s.activate_version(&caller, version)).await?;
    ok(graph_json(&info))
}

async fn import_identifiers(
    state: State,
    auth: Auth,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Reply {
    auth.role(Role::Admin)?;
    let (id, batch) = path.into_inner();
    let batch = path_u32(&batch, "batch_no")?;
    let body = frame(&req, payload, &state).await?;
    let s = svc(&state);
    let n = blocking(move || s.import_identifiers(&id, batch, &body)).await?;
    ok(serde_json::json!({"batch_no": batch, "accepted": n}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Cookies {
    cookies: Vec<CookieRow>,
}

async fn import_cookies(
    state: State,
    auth: Auth,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Reply {
    json_import_batch(
        state,
        auth,
        req,
        path,
        payload,
        |s, id, batch, raw, rows: Cookies| s.import_cookies(id, batch, raw, &rows.cookies),
    )
    .await
}

/// A JSON batch of an import (`{id}/…/{batch_no}`), applied by `apply`.
async fn json_import_batch<T: for<'de> Deserialize<'de> + Send + 'static>(
    state: State,
    auth: Auth,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    apply: impl FnOnce(&Services, &str, u32, &[u8], T) -> Result<usize, ApiError> + Send + 'static,
) -> Reply {
    auth.role(Role::Admin)?;
    let (id, batch) = path.into_inner();
    let batch = path_u32(&batch, "batch_no")?;
    let (rows, raw): (T, _) = json_body(&req, payload, &state, false).await?;
    let s = svc(&state);
    let n = blocking(move || apply(&s, &id, batch, &raw, rows)).await?;
    ok(serde_json::json!({"batch_no": batch, "accepted": n}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Commit {
    identifier_batches: u32,
    #[serde(default)]
    cookie_batches: u32,
    #[serde(default)]
    removal_batches: u32,
}

async fn commit_import(
    state: State,
    auth: Auth,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Reply {
    let caller = auth.role(Role::Admin)?;
    let (c, _): (Commit, _) = json_body(&req, payload, &state, false).await?;
    let batches = ImportBatches {
        identifiers: c.identifier_batches,
        cookies: c.cookie_batches,
        removals: c.removal_batches,
    };
    let s = svc(&state);
    let (info, skipped_erased) = blocking(move || {
        let info = s.commit_import(&caller, &path, batches)?;
        Ok((info, s.import_skipped_erased(&path)?))
    })
    .await?;
    let mut answer = graph_json(&info);
    answer["skipped_erased"] = skipped_erased.into();
    ok(answer)
}

async fn stats(state: State, auth: Auth) -> Reply {
    auth.role(Role::Admin)?;
    let s = svc(&state);
    ok(blocking(move || s.stats()).await?)
}

async fn optouts(state: State, auth: Auth, req: HttpRequest, payload: web::Payload) -> Reply {
    let caller = auth.role(Role::Admin)?;
    let body = frame(&req, payload, &state).await?;
    let s = svc(&state);
    let (accepted, suppressed) = blocking(move || s.optout(&caller, &body)).await?;
    ok(serde_json::json!({"accepted": accepted, "persons_suppressed": suppressed}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Erase {
    person: String,
}

async fn erase(state: State, auth: Auth, req: HttpRequest, payload: web::Payload) -> Reply {
    let caller = auth.role(Role::Admin)?;
    let (e, _): (Erase, _) = json_body(&req, payload, &state, false).await?;
    let s = svc(&state);
    let person = e.person.clone();
    let n = blocking(move || s.erase(&caller, &person)).await?;
    ok(serde_json::json!({"person": e.person, "erased": true, "audiences_updated": n}))
}

async fn lift_erasure(state: State, auth: Auth, req: HttpRequest, payload: web::Payload) -> Reply {
    let caller = auth.role(Role::Admin)?;
    let (e, _): (Erase, _) = json_body(&req, payload, &state, false).await?;
    let s = svc(&state);
    let person = e.person.clone();
    blocking(move || s.lift_erasure(&caller, &person)).await?;
    ok(serde_json::json!({"person": e.person, "lifted": true}))
}

#[derive(Deserialize)]
struct AuditQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

async fn audit(state: State, auth: Auth, q: parse::Query<AuditQuery>) -> Reply {
    auth.role(Role::Admin)?;
    let s = svc(&state);
    let (after, limit) = (q.after.unwrap_or(0), q.limit.unwrap_or(100).clamp(1, 1000));
    let entries = blocking(move || Ok(s.repo.audit_after(after, limit)?)).await?;
    ok(serde_json::json!({ "entries": entries }))
}

async fn create_job(state: State, auth: Auth, req: HttpRequest, payload: web::Payload) -> Reply {
    let caller = auth.role(Role::Advertiser)?;
    let (body, _): (CreateJob, _) = json_body(&req, payload, &state, false).await?;
    let s = svc(&state);
    created(blocking(move || s.create_job(&caller, body)).await?)
}

async fn list_jobs(state: State, auth: Auth) -> Reply {
    let caller = auth.role(Role::Advertiser)?;
    let s = svc(&state);
    ok(blocking(move || s.list_jobs(&caller)).await?)
}

async fn get_job(state: State, auth: Auth, path: web::Path<String>) -> Reply {
    let caller = auth.role(Role::Advertiser)?;
    let s = svc(&state);
    ok(blocking(move || s.job_detail(&caller, &path)).await?)
}

async fn abort_job(state: State, auth: Auth, path: web::Path<String>) -> Reply {
    let caller = auth.role(Role::Advertiser)?;
    let s = svc(&state);
    ok(blocking(move || s.abort_job(&caller, &path)).await?)
}

async fn get_graph_page(
    state: State,
    auth: Auth,
    path: web::Path<(String, String, String)>,
) -> Reply {
    let caller = auth.role(Role::Advertiser)?;
    let (id, kind, page) = path.into_inner();
    let page = path_u32(&page, "page_no")?;
    let s = svc(&state);
    let bytes = blocking(move || s.graph_page(&caller, &id, &kind, page)).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(bytes))
}

async fn put_graph_page(
    state: State,
    auth: Auth,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    payload: web::Payload,
) -> Reply {
    let caller = auth.role(Role::Advertiser)?;
    let (id, kind, page) = path.into_inner();
    let page = path_u32(&page, "page_no")?;
    let body = frame(&req, payload, &state).await?;
    let s = svc(&state);
    let n = blocking(move || s.put_graph_page(&caller, &id, &kind, page, &body)).await?;
    ok(serde_json::json!({"page_no": page, "accepted": n}))
}

async fn upload_batch(
    state: State,
    auth: Auth,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Reply {
    let caller = auth.role(Role::Advertiser)?;
    let (id, batch) = path.into_inner();
    let batch = path_u32(&batch, "batch_no")?;
    let body = frame(&req, payload, &state).await?;
    let s = svc(&state);
    let out = blocking(move || s.upload_batch(&caller, &id, batch, &body)).await?;
    ok(serde_json::json!({"batch_no": batch, "records": out.records, "duplicate": out.duplicate}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Finish {
    batches: u32,
    #[serde(default)]
    quality: Option<crate::services::jobs::LocalQuality>,
}

async fn finish_job(
    state: State,
    auth: Auth,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Reply {
    let caller = auth.role(Role::Advertiser)?;
    let (f, _): (Finish, _) = json_body(&req, payload, &state, false).await?;
    let s = svc(&state);
    ok(blocking(move || s.finish_job(&caller, &path, f.batches, f.quality)).await?)
}

async fn list_audiences(state: State, auth: Auth) -> Reply {
    let caller = auth.role(Role::Destination)?;
    let s = svc(&state);
    ok(blocking(move || s.list_audiences(&caller)).await?)
}

#[derive(Deserialize)]
struct MembersQuery {
    cursor: Option<String>,
    limit: Option<usize>,
}

/// Does the request ask for CSV (else NDJSON)?
fn wants_csv(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
        .contains("text/csv")
}

/// One CSV field and its line end, quoted when it must be.
fn push_csv_line(out: &mut String, field: &str) {
    if field.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(field);
    }
    out.push('\n');
}

/// A page of lines as CSV or NDJSON, with the next cursor in a header.
fn page_response(body: String, csv: bool, next: Option<String>) -> HttpResponse {
    let mut resp = HttpResponse::Ok();
    resp.content_type(if csv {
        "text/csv"
    } else {
        "application/x-ndjson"
    });
    if let Some(next) = next {
        resp.insert_header(("Onboard-Next-Cursor", next));
    }
    resp.body(body)
}

async fn members(
    state: State,
    auth: Auth,
    req: HttpRequest,
    path: web::Path<String>,
    q: parse::Query<MembersQuery>,
) -> Reply {
    let caller = auth.role(Role::Destination)?;
    let csv = wants_csv(&req);
    let s = svc(&state);
    let q = q.into_inner();
    let page: MembersPage =
        blocking(move || s.pull_members(&caller, &path, q.cursor.as_deref(), q.limit)).await?;
    let mut out = String::new();
    if csv {
        out.push_str("cookie_id\n");
        for c in &page.cookies {
            push_csv_line(&mut out, c);
        }
    } else {
        for c in &page.cookies {
            out.push_str(&serde_json::json!({ "cookie": c }).to_string());
            out.push('\n');
        }
    }
    Ok(page_response(out, csv, page.next))
}

#[derive(Deserialize)]
struct ChangesQuery {
    since: u64,
    cursor: Option<String>,
    limit: Option<usize>,
}

async fn changes(
    state: State,
    auth: Auth,
    req: HttpRequest,
    path: web::Path<String>,
    q: parse::Query<ChangesQuery>,
) -> Reply {
    let caller = auth.role(Role::Destination)?;
    let csv = wants_csv(&req);
    let s = svc(&state);
    let q = q.into_inner();
    let page: ChangesPage =
        blocking(move || s.pull_changes(&caller, &path, q.since, q.cursor.as_deref(), q.limit))
            .await?;
    let mut out = String::new();
    for (op, cookie) in &page.changes {
        if csv {
            let sign = if *op == ChangeOp::Add { '+' } else { '-' };
            push_csv_line(&mut out, &format!("{sign}{cookie}"));
        } else {
            out.push_str(&change_line(*op, cookie).to_string());
            out.push('\n');
        }
    }
    Ok(page_response(out, csv, page.next))
}

#[cfg(test)]
mod tests {
    /// Every route of the table is described in the OpenAPI document, with
    /// the same methods, and the document describes no other route.
    #[test]
    fn openapi_covers_every_route() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let source: String = include_str!("mod.rs").split_whitespace().collect();
        // The API's table and the metrics listener's.
        let tables = ["fnconfigure(", "fnconfigure_metrics("].map(|start| {
            source
                .split(start)
                .nth(1)
                .unwrap()
                .split("default_service")
                .next()
                .unwrap()
        });
        let mut seen = std::collections::BTreeSet::new();
        for chunk in tables.iter().flat_map(|t| t.split("route(\"").skip(1)) {
            let (path, rest) = chunk.split_once('"').unwrap();
            let method = rest
                .split("web::")
                .nth(1)
                .unwrap()
                .split('(')
                .next()
                .unwrap();
            assert!(
                paths[path][method].is_object(),
                "{method} {path} missing from openapi.json"
            );
            seen.insert((path.to_string(), method.to_string()));
        }
        // Operations only (a path's `servers` is not one).
        let documented: usize = paths
            .values()
            .flat_map(|v| v.as_object().unwrap().keys())
            .filter(|k| *k != "servers")
            .count();
        assert_eq!(
            seen.len(),
            documented,
            "openapi.json documents routes the server does not have"
        );
        assert!(seen.len() >= 26);
    }
}
