//! Principals: advertisers and destinations with their keys; create one
//! (its first API key is shown once, in the answer to the form, never in a
//! URL) and revoke keys. Admin keys are listed but the console makes none.

use super::layout::{badge, csrf, notice, page};
use crate::console::{see_other, svc, ConsoleError, Operator, Page, State};
use crate::services::auth::NewKey;
use crate::services::blocking;
use crate::storage::Role;
use actix_web::web;
use maud::{html, Markup};
use serde::Deserialize;

async fn render(state: &State, op: &Operator, created: Option<NewKey>) -> Page {
    let s = svc(state);
    let listing = blocking(move || s.list_principals()).await?;
    let none = Vec::new();
    let principals = listing["principals"].as_array().unwrap_or(&none);
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let new_key: Option<Markup> = created.map(|k| {
        notice(html! {
            p { "Created " strong { (k.name) } " (" (k.role.as_str()) "). Its API key, shown once:" }
            pre.key { (k.api_key) }
        })
    });
    let content = html! {
        @if let Some(n) = new_key { (n) }
        h2 { "Create" }
        form.inline method="post" action="/console/principals" {
            (csrf(&op.session))
            label { "Name" input type="text" name="name" required maxlength="64" pattern="[A-Za-z0-9._-]+"; }
            label { "Role"
                select name="role" {
                    option value="advertiser" { "advertiser" }
                    option value="destination" { "destination" }
                }
            }
            button type="submit" { "Create" }
        }
        h2 { "Principals and keys" }
        table {
            thead { tr { th { "name" } th { "role" } th { "created" } th { "key" } th { "key created" } th { "state" } th {} } }
            tbody {
                @for p in principals {
                    @let keys = p["keys"].as_array().cloned().unwrap_or_default();
                    @for (i, k) in keys.iter().enumerate() {
                        tr {
                            @if i == 0 {
                                td { (text(&p["name"])) } td { (text(&p["role"])) } td { (text(&p["created"])) }
                            } @else { td {} td {} td {} }
                            td { code { (text(&k["key_id"])) } }
                            td { (text(&k["created"])) }
                            @if k["revoked"].as_bool() == Some(true) {
                                td { (badge("revoked")) } td {}
                            } @else {
                                td { (badge("ok")) }
                                td {
                                    form method="post" action="/console/keys/revoke" {
                                        (csrf(&op.session))
                                        input type="hidden" name="key_id" value=(text(&k["key_id"]));
                                        button.danger type="submit" { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(
        &op.session,
        "/console/principals",
        "Principals",
        content,
    ))
}

/// `GET /console/principals`.
pub async fn show(state: State, op: Operator) -> Page {
    render(&state, &op, None).await
}

/// The creation form.
#[derive(Deserialize)]
pub struct Create {
    csrf: String,
    name: String,
    role: String,
}

/// `POST /console/principals`: the page again, with the new key.
pub async fn create(state: State, op: Operator, form: web::Form<Create>) -> Page {
    op.check_csrf(&state, &form.csrf)?;
    let role = match form.role.as_str() {
        "advertiser" => Role::Advertiser,
        "destination" => Role::Destination,
        _ => return Err(ConsoleError::BadForm),
    };
    let s = svc(&state);
    let caller = op.session.caller();
    let name = form.name.clone();
    let key = blocking(move || s.create_principal(&caller, &name, role, None)).await?;
    render(&state, &op, Some(key)).await
}

/// The revocation form.
#[derive(Deserialize)]
pub struct Revoke {
    csrf: String,
    key_id: String,
}

/// `POST /console/keys/revoke`.
pub async fn revoke(state: State, op: Operator, form: web::Form<Revoke>) -> Page {
    op.check_csrf(&state, &form.csrf)?;
    let s = svc(&state);
    let caller = op.session.caller();
    let key_id = form.key_id.clone();
    blocking(move || s.revoke_key(&caller, &key_id)).await?;
    Ok(see_other("/console/principals"))
}
