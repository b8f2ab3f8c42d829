//! The operators' web console at `/console/`: server-rendered HTML (maud),
//! one stylesheet, inline SVG charts, no JavaScript and nothing loaded from
//! elsewhere, so it works air-gapped. Handlers here are as thin as the
//! API's: extract, one service call off the executor, render. Every action
//! goes through the same services as the API with the caller
//! `operator:NAME` (see [`auth::OperatorSession::caller`]), so it obeys the
//! same rules and lands in the audit log under the operator's name.
//!
//! Security: a login (password and TOTP) opens a session whose random ID
//! travels only in a `Secure; HttpOnly; SameSite=Strict; Path=/console`
//! cookie; every form carries a CSRF token derived from that cookie; every
//! answer carries a CSP without scripts and `X-Frame-Options: DENY`. API
//! keys never open it. Failed logins count against the same per-address
//! budget as failed API authentications (`auth_failures_per_minute`).
//! No page shows an identifier, a digest or a cookie ID: the services hold
//! none in clear, and the pages show names, IDs of our own objects and counts.

pub mod auth;
mod data;
mod pages;
mod svg;

use crate::error::ApiError;
use crate::http::AuthFailureLimiter;
use crate::services::{blocking, Services};
use actix_web::dev::Payload;
use actix_web::http::{header, StatusCode};
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, ResponseError};
use auth::OperatorSession;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// The session cookie.
pub const SESSION_COOKIE: &str = "onboard_console";
/// The login form's cookie (its CSRF token is derived from it).
const LOGIN_COOKIE: &str = "onboard_console_login";
/// The policy of every console answer: this origin's stylesheet, forms to
/// this origin, no script, no framing.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
                       form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
/// Largest console form accepted (an opt-out list of digests).
const FORM_LIMIT: usize = 1024 * 1024;

type State = web::Data<Arc<Services>>;

/// Mount `/console/` (when `enabled`) on the API's listener.
pub fn configure(cfg: &mut web::ServiceConfig, enabled: bool) {
    if !enabled {
        return;
    }
    cfg.service(
        web::scope("/console")
            .app_data(
                web::FormConfig::default()
                    .limit(FORM_LIMIT)
                    .error_handler(|_, _| ConsoleError::BadForm.into()),
            )
            .app_data(
                web::PathConfig::default().error_handler(|_, _| ConsoleError::NotFound.into()),
            )
            .wrap(
                actix_web::middleware::DefaultHeaders::new()
                    .add((header::CONTENT_SECURITY_POLICY, CSP))
                    .add((header::X_FRAME_OPTIONS, "DENY"))
                    .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                    .add((header::REFERRER_POLICY, "no-referrer"))
                    .add((header::CACHE_CONTROL, "no-store")),
            )
            .route("", web::get().to(to_overview))
            .route("/", web::get().to(pages::overview::show))
            .route("/style.css", web::get().to(stylesheet))
            .route("/login", web::get().to(pages::login::form))
            .route("/login", web::post().to(pages::login::submit))
            .route("/logout", web::post().to(pages::login::logout))
            .route("/graph", web::get().to(pages::graph::show))
            .route("/principals", web::get().to(pages::principals::show))
            .route("/principals", web::post().to(pages::principals::create))
            .route("/keys/revoke", web::post().to(pages::principals::revoke))
            .route("/jobs", web::get().to(pages::jobs::list))
            .route("/jobs/{id}", web::get().to(pages::jobs::detail))
            .route("/jobs/{id}/abort", web::post().to(pages::jobs::abort))
            .route("/audiences", web::get().to(pages::audiences::list))
            .route("/audiences/{id}", web::get().to(pages::audiences::detail))
            .route("/quality", web::get().to(pages::quality::show))
            .route("/privacy", web::get().to(pages::privacy::show))
            .route("/privacy/optout", web::post().to(pages::privacy::optout))
            .route("/privacy/erase", web::post().to(pages::privacy::erase))
            .route("/audit", web::get().to(pages::audit::show))
            .default_service(web::to(|| async {
                Err::<HttpResponse, _>(ConsoleError::NotFound)
            })),
    );
}

async fn to_overview() -> HttpResponse {
    see_other("/console/")
}

async fn stylesheet() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "max-age=3600"))
        .body(include_str!("style.css"))
}

/// `303 See Other` to `location` (after a form, or to the login page).
pub(crate) fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .finish()
}

/// A console failure, rendered as a small page (never a JSON error).
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No live session: to the login page.
    #[error("please log in")]
    LoginRequired,
    /// A form without its session's CSRF token.
    #[error(
        "this form has expired or did not come from this console; reload the page and try again"
    )]
    Csrf,
    /// A form that does not parse.
    #[error("the form is not valid")]
    BadForm,
    /// Unknown page or object.
    #[error("not found")]
    NotFound,
    /// The service refused or failed (5xx shown without details).
    #[error("{}", .0.public_message())]
    Api(#[from] ApiError),
}

impl ResponseError for ConsoleError {
    fn status_code(&self) -> StatusCode {
        let code = match self {
            ConsoleError::LoginRequired => 303,
            ConsoleError::Csrf => 403,
            ConsoleError::BadForm => 400,
            ConsoleError::NotFound => 404,
            ConsoleError::Api(e) => e.status(),
        };
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        if matches!(self, ConsoleError::LoginRequired) {
            return see_other("/console/login");
        }
        let mut resp = HttpResponse::build(self.status_code());
        if let ConsoleError::Api(ApiError::TooManyAuthFailures { retry_after }) = self {
            resp.insert_header((header::RETRY_AFTER, retry_after.to_string()));
        }
        resp.content_type("text/html; charset=utf-8").body(
            pages::layout::error_page(self.status_code().as_u16(), &self.to_string()).into_string(),
        )
    }
}

/// A result of a console handler.
pub type Page = Result<HttpResponse, ConsoleError>;

/// The value of cookie `name` in the request, if sent.
pub(crate) fn cookie(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// `Set-Cookie` of a console cookie: never readable by scripts, never sent
/// cross-site, only to `/console`; `max_age` 0 deletes it.
pub(crate) fn set_cookie(name: &str, value: &str, max_age: Option<u64>) -> String {
    let age = max_age.map_or(String::new(), |s| format!("; Max-Age={s}"));
    format!("{name}={value}; Path=/console; Secure; HttpOnly; SameSite=Strict{age}")
}

/// A logged-in operator (from the session cookie); any other request is
/// sent to the login page. A bearer API key is never looked at.
pub struct Operator {
    /// The session.
    pub session: OperatorSession,
    /// The session's cookie value (the key of its CSRF token).
    cookie: String,
}

impl Operator {
    /// Refuse a form whose CSRF token is not this session's.
    pub fn check_csrf(&self, state: &Services, token: &str) -> Result<(), ConsoleError> {
        if auth::csrf_matches(state.identity_key(), &self.cookie, token) {
            Ok(())
        } else {
            Err(ConsoleError::Csrf)
        }
    }
}

impl FromRequest for Operator {
    type Error = ConsoleError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<State>().cloned();
        let value = cookie(req, SESSION_COOKIE).filter(|v| v.len() <= 128);
        Box::pin(async move {
            let (Some(state), Some(value)) = (state, value) else {
                return Err(ConsoleError::LoginRequired);
            };
            let services = state.get_ref().clone();
            let id = value.clone();
            let session = blocking(move || services.console_session(&id)).await?;
            let session = session.ok_or(ConsoleError::LoginRequired)?;
            Ok(Operator {
                session,
                cookie: value,
            })
        })
    }
}

/// The services of a handler.
fn svc(state: &State) -> Arc<Services> {
    state.get_ref().clone()
}

/// The per-address failure budget (shared with the API's bearer keys).
fn limiter(req: &HttpRequest) -> Option<(web::Data<AuthFailureLimiter>, std::net::IpAddr)> {
    let limiter = req.app_data::<web::Data<AuthFailureLimiter>>().cloned()?;
    Some((limiter, req.peer_addr()?.ip()))
}
