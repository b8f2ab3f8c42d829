//! Login (name, password, TOTP code) and logout. The login form's CSRF
//! token is derived from a short-lived cookie set with the form; a failed
//! login costs the address one token of its failure budget and says only
//! that it failed (the audit log says why).

use super::layout::{bare, html_response};
use crate::console::auth::{csrf_token, new_cookie_value};
use crate::console::{
    cookie, limiter, see_other, set_cookie, svc, ConsoleError, Operator, Page, State, LOGIN_COOKIE,
    SESSION_COOKIE,
};
use crate::error::ApiError;
use crate::services::blocking;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, Markup};
use serde::Deserialize;

/// Seconds the login form stays usable.
const LOGIN_FORM_SECS: u64 = 600;

fn login_page(csrf: &str, failed: bool) -> Markup {
    bare(
        "Log in",
        html! {
            @if failed {
                p.error role="alert" { "Login failed: check the name, the password and the code." }
            }
            form.login method="post" action="/console/login" {
                input type="hidden" name="csrf" value=(csrf);
                label { "Operator name" input type="text" name="name" autocomplete="username" required; }
                label { "Password" input type="password" name="password" autocomplete="current-password" required; }
                label { "Authenticator code" input type="text" name="totp" inputmode="numeric" pattern="[0-9]{6}" autocomplete="one-time-code" required; }
                button type="submit" { "Log in" }
            }
        },
    )
}

/// A login form with a fresh login cookie.
fn fresh_form(state: &State, status: StatusCode, failed: bool) -> HttpResponse {
    let nonce = new_cookie_value();
    let csrf = csrf_token(state.identity_key(), &nonce);
    let mut resp = html_response(login_page(&csrf, failed));
    *resp.status_mut() = status;
    if let Ok(v) =
        header::HeaderValue::from_str(&set_cookie(LOGIN_COOKIE, &nonce, Some(LOGIN_FORM_SECS)))
    {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// `GET /console/login`.
pub async fn form(state: State) -> HttpResponse {
    fresh_form(&state, StatusCode::OK, false)
}

/// The login form's fields.
#[derive(Deserialize)]
pub struct Login {
    name: String,
    password: String,
    totp: String,
    csrf: String,
}

/// `POST /console/login`.
pub async fn submit(state: State, req: HttpRequest, form: web::Form<Login>) -> Page {
    let limit = limiter(&req);
    if let Some((limiter, ip)) = &limit {
        limiter
            .check(*ip, std::time::Instant::now())
            .map_err(|retry_after| ApiError::TooManyAuthFailures { retry_after })?;
    }
    let nonce = cookie(&req, LOGIN_COOKIE).unwrap_or_default();
    if nonce.is_empty()
        || !crate::console::auth::csrf_matches(state.identity_key(), &nonce, &form.csrf)
    {
        return Err(ConsoleError::Csrf);
    }
    let form = form.into_inner();
    let s = svc(&state);
    let outcome = blocking(move || s.console_login(&form.name, &form.password, &form.totp)).await?;
    match outcome {
        Ok(session) => {
            let mut resp = see_other("/console/");
            for c in [
                set_cookie(SESSION_COOKIE, &session, None),
                set_cookie(LOGIN_COOKIE, "", Some(0)),
            ] {
                if let Ok(v) = header::HeaderValue::from_str(&c) {
                    resp.headers_mut().append(header::SET_COOKIE, v);
                }
            }
            Ok(resp)
        }
        Err(_) => {
            if let Some((limiter, ip)) = &limit {
                limiter.record_failure(*ip, std::time::Instant::now());
            }
            Ok(fresh_form(&state, StatusCode::UNAUTHORIZED, true))
        }
    }
}

/// The logout form's field.
#[derive(Deserialize)]
pub struct Logout {
    csrf: String,
}

/// `POST /console/logout`.
pub async fn logout(state: State, op: Operator, req: HttpRequest, form: web::Form<Logout>) -> Page {
    op.check_csrf(&state, &form.csrf)?;
    let id = cookie(&req, SESSION_COOKIE).unwrap_or_default();
    let s = svc(&state);
    let session = op.session.clone();
    blocking(move || s.console_logout(&id, &session)).await?;
    let mut resp = see_other("/console/login");
    if let Ok(v) = header::HeaderValue::from_str(&set_cookie(SESSION_COOKIE, "", Some(0))) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(resp)
}
