//! Privacy: opt-outs (digests, as `onboard normalize` prints them: the
//! server never receives a raw identifier), erasure of a person by the
//! onboarder's person ID, and the ε each advertiser spent in the window.

use super::layout::{csrf, figures, notice, page};
use crate::config::MicroEpsilon;
use crate::console::data::optout_batch;
use crate::console::{svc, Operator, Page, State};
use crate::services::blocking;
use actix_web::web;
use maud::{html, Markup};
use serde::Deserialize;

async fn render(state: &State, op: &Operator, done: Option<Markup>) -> Page {
    let s = svc(state);
    let budgets = blocking(move || s.console_budgets()).await?;
    let total = MicroEpsilon(state.config.privacy_budget_micro);
    let content = html! {
        @if let Some(d) = done { (notice(d)) }
        (figures(&[
            ("ε per released value", state.config.epsilon.to_string()),
            ("budget per advertiser", total.to_string()),
            ("window (days)", (state.config.budget_window.as_secs() / 86_400).to_string()),
        ]))
        h2 { "ε spent in the current window" }
        table {
            thead { tr { th { "advertiser" } th.num { "ε spent" } th.num { "ε left" } } }
            tbody {
                @for b in &budgets {
                    tr {
                        td { (b.advertiser) }
                        td.num { (MicroEpsilon(b.spent_micro)) }
                        td.num { (MicroEpsilon(state.config.privacy_budget_micro.saturating_sub(b.spent_micro))) }
                    }
                }
            }
        }
        h2 { "Opt-out" }
        p { "One " code { "kind,sha256" } " per line (kind " code { "email" } ", " code { "phone" } " or "
            code { "maid" } "), the digest of the normalised identifier as "
            code { "onboard normalize --kind KIND VALUE" } " prints it. Opted-out identifiers never match again." }
        form method="post" action="/console/privacy/optout" {
            (csrf(&op.session))
            textarea name="lines" rows="6" cols="80" required {}
            button type="submit" { "Add opt-outs" }
        }
        h2 { "Erase a person" }
        p { "Removes the person from the graph and from audiences not yet pulled; later imports skip it." }
        form.inline method="post" action="/console/privacy/erase" {
            (csrf(&op.session))
            label { "Person ID" input type="text" name="person" required maxlength="255"; }
            button.danger type="submit" { "Erase" }
        }
    };
    Ok(page(&op.session, "/console/privacy", "Privacy", content))
}

/// `GET /console/privacy`.
pub async fn show(state: State, op: Operator) -> Page {
    render(&state, &op, None).await
}

/// The opt-out form.
#[derive(Deserialize)]
pub struct Optout {
    csrf: String,
    lines: String,
}

/// `POST /console/privacy/optout`.
pub async fn optout(state: State, op: Operator, form: web::Form<Optout>) -> Page {
    op.check_csrf(&state, &form.csrf)?;
    let body = optout_batch(&form.lines)?;
    let s = svc(&state);
    let caller = op.session.caller();
    let (accepted, suppressed) = blocking(move || s.optout(&caller, &body)).await?;
    let done = html! { "Opt-outs accepted: " (accepted) "; persons suppressed: " (suppressed) "." };
    render(&state, &op, Some(done)).await
}

/// The erasure form.
#[derive(Deserialize)]
pub struct Erase {
    csrf: String,
    person: String,
}

/// `POST /console/privacy/erase`.
pub async fn erase(state: State, op: Operator, form: web::Form<Erase>) -> Page {
    op.check_csrf(&state, &form.csrf)?;
    let s = svc(&state);
    let caller = op.session.caller();
    let person = form.person.clone();
    let updated = blocking(move || s.erase(&caller, &person)).await?;
    // The person ID is not echoed: the audit log keeps a pseudonym only.
    let done = html! { "The person was erased; audiences updated: " (updated) "." };
    render(&state, &op, Some(done)).await
}
