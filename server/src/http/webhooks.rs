//! Handlers of push delivery: a destination's own endpoint, its deliveries
//! and redelivery, and the operator's endpoint for a named destination.

use super::{blocking, json_body, ok, parse, svc, Auth, Reply, State};
use crate::storage::{Role, WebhookMode};
use actix_web::{web, HttpRequest};
use serde::Deserialize;

/// Largest `limit` of a deliveries listing.
const MAX_DELIVERIES: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SetWebhook {
    url: String,
    #[serde(default)]
    mode: Option<WebhookMode>,
}

pub(super) async fn set_own(
    state: State,
    auth: Auth,
    req: HttpRequest,
    payload: web::Payload,
) -> Reply {
    let caller = auth.role(Role::Destination)?;
    let (body, _): (SetWebhook, _) = json_body(&req, payload, &state, false).await?;
    let s = svc(&state);
    ok(blocking(move || s.set_webhook(&caller.name, &caller.name, &body.url, body.mode)).await?)
}

pub(super) async fn set_for(
    state: State,
    auth: Auth,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Reply {
    let caller = auth.role(Role::Admin)?;
    let (body, _): (SetWebhook, _) = json_body(&req, payload, &state, false).await?;
    let s = svc(&state);
    ok(blocking(move || s.set_webhook(&caller.name, &path, &body.url, body.mode)).await?)
}

pub(super) async fn show(state: State, auth: Auth) -> Reply {
    let caller = auth.role(Role::Destination)?;
    let s = svc(&state);
    ok(blocking(move || s.webhook(&caller.name)).await?)
}

pub(super) async fn rotate(state: State, auth: Auth) -> Reply {
    let caller = auth.role(Role::Destination)?;
    let s = svc(&state);
    ok(blocking(move || s.rotate_webhook_secret(&caller.name, &caller.name)).await?)
}

pub(super) async fn remove(state: State, auth: Auth) -> Reply {
    let caller = auth.role(Role::Destination)?;
    let s = svc(&state);
    ok(blocking(move || s.remove_webhook(&caller.name, &caller.name)).await?)
}

#[derive(Deserialize)]
pub(super) struct DeliveriesQuery {
    limit: Option<usize>,
}

pub(super) async fn deliveries(
    state: State,
    auth: Auth,
    q: parse::Query<DeliveriesQuery>,
) -> Reply {
    let caller = auth.role(Role::Destination)?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_DELIVERIES {
        return Err(crate::error::ApiError::BadRequest(format!(
            "limit: between 1 and {MAX_DELIVERIES}"
        )));
    }
    let s = svc(&state);
    ok(blocking(move || s.deliveries(&caller.name, limit)).await?)
}

pub(super) async fn redeliver(state: State, auth: Auth, path: web::Path<String>) -> Reply {
    let caller = auth.role(Role::Destination)?;
    let s = svc(&state);
    ok(blocking(move || s.redeliver(&caller.name, &caller.name, &path)).await?)
}
