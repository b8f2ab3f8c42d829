//! Push delivery, the destination's and the operator's calls: the push
//! endpoint (set, show, rotate its secret, remove), the deliveries list and
//! redelivery. The reference receiver is [`crate::receiver`].

use crate::api::{segment, ApiClient, Body};
use crate::error::ClientError;
use reqwest::Method;
use serde::{Deserialize, Serialize};

/// Most deliveries one listing asks for.
pub const MAX_DELIVERIES: u32 = 1000;

/// A signing secret's dates (the secret itself is never shown again).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SecretInfo {
    /// When it was made.
    #[serde(default)]
    pub created: String,
    /// When it stops signing (a rotated-out secret), if it does.
    #[serde(default)]
    pub expires: Option<String>,
}

/// A destination's push endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WebhookInfo {
    /// Destination name.
    pub destination: String,
    /// The endpoint URL.
    pub url: String,
    /// `notify` or `members`.
    pub mode: String,
    /// `enabled` or `disabled`.
    #[serde(default)]
    pub status: String,
    /// Why it is disabled (`gone`: it answered 410).
    #[serde(default)]
    pub disabled_reason: Option<String>,
    /// Live signing secrets, newest first.
    #[serde(default)]
    pub secrets: Vec<SecretInfo>,
    /// A new signing secret (`whsec_…`), present only in the answer that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// One outbox message as its destination sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// `msg_…`: the `webhook-id` of every attempt.
    pub id: String,
    /// The event.
    pub event: String,
    /// The audience it is about.
    #[serde(default)]
    pub audience_id: String,
    /// Members page number, for `audience.members`.
    #[serde(default)]
    pub page: Option<u32>,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts made.
    #[serde(default)]
    pub attempts: u32,
    /// HTTP status of the last answer.
    #[serde(default)]
    pub last_status: Option<u16>,
    /// Why the last attempt got no answer.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Enqueued at.
    #[serde(default)]
    pub created: String,
    /// Next attempt (pending messages).
    #[serde(default)]
    pub next_attempt: Option<String>,
    /// Acknowledged at.
    #[serde(default)]
    pub delivered: Option<String>,
}

fn set_body(url: &str, mode: Option<&str>) -> Body {
    match mode {
        Some(mode) => Body::json(&serde_json::json!({"url": url, "mode": mode})),
        None => Body::json(&serde_json::json!({ "url": url })),
    }
}

/// Register or change the caller's endpoint (destination key); a new
/// endpoint's answer carries its signing secret.
pub fn set_webhook(
    api: &ApiClient,
    url: &str,
    mode: Option<&str>,
) -> Result<WebhookInfo, ClientError> {
    api.call_json(Method::PUT, "/v1/webhook", &set_body(url, mode))
}

/// Register or change a named destination's endpoint (admin key).
pub fn admin_set_webhook(
    api: &ApiClient,
    destination: &str,
    url: &str,
    mode: Option<&str>,
) -> Result<WebhookInfo, ClientError> {
    let path = format!("/v1/admin/destinations/{}/webhook", segment(destination));
    api.call_json(Method::PUT, &path, &set_body(url, mode))
}

/// The caller's endpoint.
pub fn show_webhook(api: &ApiClient) -> Result<WebhookInfo, ClientError> {
    api.get_json("/v1/webhook", &[])
}

/// A new signing secret; the old one signs beside it for 24 hours.
pub fn rotate_webhook_secret(api: &ApiClient) -> Result<WebhookInfo, ClientError> {
    api.call_json(Method::POST, "/v1/webhook/rotate-secret", &Body::Empty)
}

/// Remove the caller's endpoint.
pub fn remove_webhook(api: &ApiClient) -> Result<(), ClientError> {
    let _: serde_json::Value = api.call_json(Method::DELETE, "/v1/webhook", &Body::Empty)?;
    Ok(())
}

/// The caller's messages, newest first (at most `limit`, up to [`MAX_DELIVERIES`]).
pub fn deliveries(api: &ApiClient, limit: u32) -> Result<Vec<Delivery>, ClientError> {
    #[derive(Deserialize)]
    struct List {
        deliveries: Vec<Delivery>,
    }
    let limit = limit.clamp(1, MAX_DELIVERIES).to_string();
    Ok(api
        .get_json::<List>("/v1/deliveries", &[("limit", &limit)])?
        .deliveries)
}

/// Queue a message again for an attempt now (same `webhook-id`).
pub fn redeliver(api: &ApiClient, id: &str) -> Result<Delivery, ClientError> {
    let path = format!("/v1/deliveries/{}/redeliver", segment(id));
    api.call_json(Method::POST, &path, &Body::Empty)
}
