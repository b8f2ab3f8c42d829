//! Push delivery, the domain side: destinations' endpoints (URL rule,
//! target addresses, sealed signing secrets, rotation), the messages an
//! event enqueues, message bodies, the delivery list and redelivery. The
//! dispatcher that sends them is `services/delivery.rs`.

use super::{lock, new_id, rfc3339, unix_now, Services};
use crate::error::ApiError;
use crate::storage::{
    Audience, ChangeOp, DeliveryStatus, Job, MessageData, OutboxMessage, SealedWebhookSecret,
    WebhookEndpoint, WebhookMode,
};
use onboard_protocol::webhook::SigningSecret;
use std::net::{SocketAddr, ToSocketAddrs as _};
use zeroize::Zeroizing;

/// Key label of sealed signing secrets.
pub(crate) const SECRET_LABEL: &[u8] = b"webhook-secret-aead";

/// How long a rotated-out secret keeps signing beside the new one.
pub const ROTATION_OVERLAP_SECS: u64 = 24 * 3600;

/// Event names.
pub const RELEASED: &str = "audience.released";
/// One page of members (members mode).
pub const MEMBERS: &str = "audience.members";
/// A refresh released the audience's next version (counts).
pub const REFRESHED: &str = "audience.refreshed";
/// One page of a refresh's changes (members mode).
pub const CHANGES: &str = "audience.changes";
/// The audience expired (its members are deleted).
pub const EXPIRED: &str = "audience.expired";
/// Opt-out or erasure removed members (counts only).
pub const WITHDRAWN: &str = "audience.withdrawn";

/// Why a target address may not be called.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The host did not resolve.
    #[error("the host does not resolve")]
    Unresolved,
    /// It resolves to an address the server may not call.
    #[error("the host resolves to a loopback, private, link-local, multicast or unspecified address ({0}); the operator allows such targets with webhook_allow_private_targets = true")]
    Forbidden(std::net::IpAddr),
}

/// The address to connect to: every resolved address must be allowed (a
/// name with one public and one private address is refused), then the
/// first is used, so the checked address is the connected one.
pub fn pick_target(
    addrs: impl IntoIterator<Item = SocketAddr>,
    allow_private: bool,
) -> Result<SocketAddr, TargetError> {
    let addrs: Vec<SocketAddr> = addrs.into_iter().collect();
    if !allow_private {
        if let Some(bad) = addrs
            .iter()
            .find(|a| onboard_protocol::is_forbidden_target(a.ip()))
        {
            return Err(TargetError::Forbidden(bad.ip()));
        }
    }
    addrs.first().copied().ok_or(TargetError::Unresolved)
}

/// Host and port of a checked URL.
pub fn host_port(url: &url::Url) -> Result<(String, u16), ApiError> {
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_owned(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        None => return Err(ApiError::BadRequest("url: the URL has no host".into())),
    };
    Ok((host, url.port_or_known_default().unwrap_or(443)))
}

/// Where a page of members starts (after) and ends (last), as in
/// [`MessageData::MembersPage`].
type PageBounds = (Option<Vec<u8>>, Vec<u8>);

/// The data of an event releasing a version of `a`, with `extra` fields.
fn event_data(a: &Audience, pages: usize, extra: serde_json::Value) -> serde_json::Value {
    let mut data = serde_json::json!({
        "audience_id": a.id,
        "segment": a.segment,
        "advertiser": a.advertiser,
        "size": a.size,
        "member_count": a.size,
        "expires": a.expires,
        "members_url": format!("/v1/audiences/{}/members", a.id),
        "pages": pages,
    });
    if let (Some(data), serde_json::Value::Object(extra)) = (data.as_object_mut(), extra) {
        data.extend(extra);
    }
    data
}

/// An event about `a`, then one `page_event` message per page, in order
/// (`page_data(page, pages, after, last)`, pages numbered from 1).
fn event_and_pages(
    a: &Audience,
    event: &str,
    data: serde_json::Value,
    page_event: &str,
    pages: Vec<PageBounds>,
    page_data: impl Fn(u32, u32, Option<Vec<u8>>, Vec<u8>) -> MessageData,
) -> Vec<OutboxMessage> {
    let count = pages.len() as u32;
    let mut out = vec![Services::message(
        &a.destination,
        event,
        &a.id,
        MessageData::Event(data),
    )];
    for (i, (after, last)) in pages.into_iter().enumerate() {
        let data = page_data(i as u32 + 1, count, after, last);
        out.push(Services::message(&a.destination, page_event, &a.id, data));
    }
    out
}

/// An NDJSON body: the head line, then one line each, newline-terminated.
fn ndjson_body(head: &serde_json::Value, lines: &[serde_json::Value]) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    for line in std::iter::once(head).chain(lines) {
        serde_json::to_writer(&mut body, line).map_err(|e| ApiError::Internal(e.to_string()))?;
        body.push(b'\n');
    }
    Ok(body)
}

/// One change as an NDJSON line: `{"op":"add"|"remove","cookie_id":…}`
/// (the changes endpoint and pushed changes pages alike).
pub fn change_line(op: ChangeOp, cookie: &str) -> serde_json::Value {
    serde_json::json!({"op": op, "cookie_id": cookie})
}

fn endpoint_view(e: &WebhookEndpoint) -> serde_json::Value {
    serde_json::json!({
        "destination": e.destination,
        "url": e.url,
        "mode": e.mode,
        "status": if e.disabled.is_some() { "disabled" } else { "enabled" },
        "disabled_reason": e.disabled,
        "created": rfc3339(e.created),
        "secrets": e.secrets.iter().map(|s| serde_json::json!({
            "created": rfc3339(s.created),
            "expires": s.expires.map(rfc3339),
        })).collect::<Vec<_>>(),
    })
}

/// A message as listed to its destination.
pub fn message_view(m: &OutboxMessage) -> serde_json::Value {
    let ms = |t: u64| rfc3339(t / 1000);
    serde_json::json!({
        "id": m.id,
        "event": m.event,
        "audience_id": m.audience_id,
        "page": match &m.data {
            MessageData::MembersPage { page, .. } | MessageData::ChangesPage { page, .. } => Some(*page),
            MessageData::Event(_) => None,
        },
        "status": m.status,
        "attempts": m.attempts,
        "last_status": m.last_status,
        "last_error": m.last_error,
        "created": ms(m.created_ms),
        "next_attempt": (m.status == DeliveryStatus::Pending).then(|| ms(m.next_attempt_ms)),
        "delivered": m.delivered_ms.map(ms),
    })
}

/// Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Services {
    /// Check a webhook URL: the URL rule, then its host's addresses.
    fn checked_webhook_url(&self, text: &str) -> Result<String, ApiError> {
        let url = onboard_protocol::check_webhook_url(text)
            .map_err(|e| ApiError::BadRequest(format!("url: {e}")))?;
        let (host, port) = host_port(&url)?;
        let addrs = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|_| ApiError::Invalid(format!("url: {}", TargetError::Unresolved)))?;
        pick_target(addrs, self.config.webhook_allow_private_targets)
            .map_err(|e| ApiError::Invalid(format!("url: {e}")))?;
        Ok(url.to_string())
    }

    fn seal_secret(&self, destination: &str, s: &SigningSecret) -> Result<Vec<u8>, ApiError> {
        self.sealer()
            .seal_bytes(SECRET_LABEL, destination.as_bytes(), s.as_bytes())
            .ok_or_else(|| ApiError::Internal("sealing a webhook secret failed".into()))
    }

    /// The secrets that sign now, newest first.
    pub(crate) fn live_secrets(
        &self,
        e: &WebhookEndpoint,
        now: u64,
    ) -> Result<Vec<SigningSecret>, ApiError> {
        e.secrets
            .iter()
            .filter(|s| s.expires.is_none_or(|t| t > now))
            .map(|s| {
                let bytes = Zeroizing::new(
                    self.sealer()
                        .open_bytes(SECRET_LABEL, e.destination.as_bytes(), &s.sealed)
                        .ok_or_else(|| {
                            ApiError::Internal("a webhook secret failed authentication".into())
                        })?,
                );
                SigningSecret::from_bytes(&bytes).map_err(|_| {
                    ApiError::Internal("a stored webhook secret has a bad length".into())
                })
            })
            .collect()
    }

    fn destination_exists(&self, name: &str) -> Result<(), ApiError> {
        match self.repo.principal(name)? {
            Some(p) if p.role == crate::storage::Role::Destination => Ok(()),
            _ => Err(ApiError::NotFound("destination")),
        }
    }

    /// Register or change a destination's endpoint. A new endpoint gets a
    /// signing secret, returned this once (`"secret"`); a changed one keeps
    /// its secrets and is enabled again.
    pub fn set_webhook(
        &self,
        actor: &str,
        destination: &str,
        url: &str,
        mode: Option<WebhookMode>,
    ) -> Result<serde_json::Value, ApiError> {
        self.destination_exists(destination)?;
        let url = self.checked_webhook_url(url)?;
        let now = unix_now();
        let _g = lock(&self.webhook_lock);
        let (endpoint, secret) = match self.repo.webhook_endpoint(destination)? {
            Some(old) => (
                WebhookEndpoint {
                    url,
                    mode: mode.unwrap_or(old.mode),
                    disabled: None,
                    ..old
                },
                None,
            ),
            None => {
                let secret = SigningSecret::generate(&mut rand::rngs::OsRng);
                let endpoint = WebhookEndpoint {
                    destination: destination.to_owned(),
                    url,
                    mode: mode.unwrap_or(WebhookMode::Notify),
                    secrets: vec![SealedWebhookSecret {
                        sealed: self.seal_secret(destination, &secret)?,
                        created: now,
                        expires: None,
                    }],
                    disabled: None,
                    created: now,
                };
                (endpoint, Some(secret))
            }
        };
        self.repo.put_webhook_endpoint(&endpoint)?;
        self.audit(actor, "webhook.set", destination, "ok")?;
        let mut view = endpoint_view(&endpoint);
        view["secret"] = serde_json::json!(secret.map(|s| s.to_text().to_string()));
        Ok(view)
    }

    /// A destination's endpoint (never its secrets).
    pub fn webhook(&self, destination: &str) -> Result<serde_json::Value, ApiError> {
        let e = self
            .repo
            .webhook_endpoint(destination)?
            .ok_or(ApiError::NotFound("webhook"))?;
        Ok(endpoint_view(&e))
    }

    /// A new signing secret, returned this once; the previous one keeps
    /// signing beside it for [`ROTATION_OVERLAP_SECS`].
    pub fn rotate_webhook_secret(
        &self,
        actor: &str,
        destination: &str,
    ) -> Result<serde_json::Value, ApiError> {
        let now = unix_now();
        let _g = lock(&self.webhook_lock);
        let mut e = self
            .repo
            .webhook_endpoint(destination)?
            .ok_or(ApiError::NotFound("webhook"))?;
        let secret = SigningSecret::generate(&mut rand::rngs::OsRng);
        let overlap_end = now + ROTATION_OVERLAP_SECS;
        // Older secrets end within the overlap too; expired ones go.
        e.secrets.retain(|s| s.expires.is_none_or(|t| t > now));
        for s in &mut e.secrets {
            s.expires = Some(s.expires.map_or(overlap_end, |t| t.min(overlap_end)));
        }
        e.secrets.insert(
            0,
            SealedWebhookSecret {
                sealed: self.seal_secret(destination, &secret)?,
                created: now,
                expires: None,
            },
        );
        self.repo.put_webhook_endpoint(&e)?;
        self.audit(actor, "webhook.rotate-secret", destination, "ok")?;
        let mut view = endpoint_view(&e);
        view["secret"] = serde_json::json!(secret.to_text().to_string());
        Ok(view)
    }

    /// Remove a destination's endpoint; its pending messages fail when
    /// their turn comes.
    pub fn remove_webhook(
        &self,
        actor: &str,
        destination: &str,
    ) -> Result<serde_json::Value, ApiError> {
        let _g = lock(&self.webhook_lock);
        if !self.repo.delete_webhook_endpoint(destination)? {
            return Err(ApiError::NotFound("webhook"));
        }
        self.audit(actor, "webhook.remove", destination, "ok")?;
        Ok(serde_json::json!({"destination": destination, "removed": true}))
    }

    /// A destination's messages, newest first.
    pub fn deliveries(
        &self,
        destination: &str,
        limit: usize,
    ) -> Result<serde_json::Value, ApiError> {
        let list: Vec<_> = self
            .repo
            .messages_of(destination, limit)?
            .iter()
            .map(message_view)
            .collect();
        Ok(serde_json::json!({ "deliveries": list }))
    }

    /// Queue a message of the caller's again for an attempt now, with the
    /// same `webhook-id` (receivers that deduplicate acknowledge it again).
    pub fn redeliver(
        &self,
        actor: &str,
        destination: &str,
        id: &str,
    ) -> Result<serde_json::Value, ApiError> {
        let mut m = self
            .repo
            .message(id)?
            .filter(|m| m.destination == destination)
            .ok_or(ApiError::NotFound("message"))?;
        m.status = DeliveryStatus::Pending;
        m.attempts = 0;
        m.next_attempt_ms = now_ms();
        m.delivered_ms = None;
        m.ended_ms = None;
        self.repo.update_message(&m)?;
        self.audit(actor, "webhook.redeliver", id, "ok")?;
        self.outbox_wake.notify_one();
        Ok(message_view(&m))
    }

    /// The endpoint messages for `destination` go to, if it takes them now.
    fn live_endpoint(&self, destination: &str) -> Result<Option<WebhookEndpoint>, ApiError> {
        Ok(self
            .repo
            .webhook_endpoint(destination)?
            .filter(|e| e.disabled.is_none()))
    }

    fn message(
        destination: &str,
        event: &str,
        audience_id: &str,
        data: MessageData,
    ) -> OutboxMessage {
        let now = now_ms();
        OutboxMessage {
            id: new_id("msg_"),
            destination: destination.to_owned(),
            seq: 0,
            event: event.to_owned(),
            audience_id: audience_id.to_owned(),
            data,
            status: DeliveryStatus::Pending,
            attempts: 0,
            last_status: None,
            last_error: None,
            created_ms: now,
            next_attempt_ms: now,
            delivered_ms: None,
            ended_ms: None,
        }
    }

    /// The messages a finish enqueues with its job record for the released
    /// audiences: `audience.released`, then in members mode every page.
    pub(crate) fn release_messages(
        &self,
        job: &Job,
        audience_ids: &[String],
    ) -> Result<Vec<OutboxMessage>, ApiError> {
        let Some(endpoint) = self.live_endpoint(&job.destination)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for id in audience_ids {
            let a = self
                .repo
                .audience(id)?
                .ok_or_else(|| ApiError::Internal("a released audience vanished".into()))?;
            if a.version > 1 {
                out.extend(self.refresh_messages(&a, endpoint.mode)?);
                continue;
            }
            let pages = match endpoint.mode {
                WebhookMode::Members => self.page_bounds(&a.id)?,
                WebhookMode::Notify => Vec::new(),
            };
            let data = event_data(&a, pages.len(), serde_json::json!({}));
            out.extend(event_and_pages(
                &a,
                RELEASED,
                data,
                MEMBERS,
                pages,
                |page, pages, after, last| MessageData::MembersPage {
                    page,
                    pages,
                    after,
                    last,
                },
            ));
        }
        Ok(out)
    }

    /// A refresh's messages: `audience.refreshed` with the counts of cookie
    /// IDs added and removed (each side at least `k` persons or none), then
    /// in members mode every page of the changes.
    fn refresh_messages(
        &self,
        a: &Audience,
        mode: WebhookMode,
    ) -> Result<Vec<OutboxMessage>, ApiError> {
        let (pages, added, removed) = self.change_pages(&a.id)?;
        let pages = match mode {
            WebhookMode::Members => pages,
            WebhookMode::Notify => Vec::new(),
        };
        let since = a.changes_from.unwrap_or(a.version);
        let extra = serde_json::json!({
            "version": a.version,
            "added": added,
            "removed": removed,
            "changes_url": format!("/v1/audiences/{}/changes?since={since}", a.id),
        });
        let data = event_data(a, pages.len(), extra);
        let version = a.version;
        Ok(event_and_pages(
            a,
            REFRESHED,
            data,
            CHANGES,
            pages,
            |page, pages, after, last| MessageData::ChangesPage {
                version,
                page,
                pages,
                after,
                last,
            },
        ))
    }

    /// The pages of an audience's kept changes, and how many are additions
    /// and removals.
    fn change_pages(&self, audience: &str) -> Result<(Vec<PageBounds>, u64, u64), ApiError> {
        let limit = self.config.members_page_limit;
        let (mut pages, mut added, mut removed) = (Vec::new(), 0, 0);
        let mut after: Option<Vec<u8>> = None;
        loop {
            let rows = self.repo.changes_after(audience, after.as_deref(), limit)?;
            let Some(last) = rows.last() else { break };
            for c in &rows {
                match c.op {
                    ChangeOp::Add => added += 1,
                    ChangeOp::Remove => removed += 1,
                }
            }
            pages.push((after.clone(), last.pos.clone()));
            if rows.len() < limit {
                break;
            }
            after = Some(last.pos.clone());
        }
        Ok((pages, added, removed))
    }

    /// The pages of an audience's members: where each starts and ends.
    fn page_bounds(&self, audience: &str) -> Result<Vec<PageBounds>, ApiError> {
        let limit = self.config.members_page_limit;
        let mut pages = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let rows = self.repo.members_after(audience, after.as_deref(), limit)?;
            let Some((last, _)) = rows.last() else { break };
            pages.push((after.clone(), last.clone()));
            if rows.len() < limit {
                break;
            }
            after = Some(last.clone());
        }
        Ok(pages)
    }

    /// A message about one audience (expiry, withdrawal) for its
    /// destination's endpoint, if it has one.
    pub(crate) fn audience_message(
        &self,
        a: &Audience,
        event: &str,
        data: serde_json::Value,
    ) -> Result<Vec<OutboxMessage>, ApiError> {
        Ok(match self.live_endpoint(&a.destination)? {
            Some(_) => vec![Self::message(
                &a.destination,
                event,
                &a.id,
                MessageData::Event(data),
            )],
            None => Vec::new(),
        })
    }

    /// The body of a message and its Content-Type; the same bytes on every
    /// attempt (a members page is read from the audience each time; an
    /// erasure in between can only remove lines).
    pub(crate) fn message_body(
        &self,
        m: &OutboxMessage,
    ) -> Result<(Vec<u8>, &'static str), ApiError> {
        let timestamp = rfc3339(m.created_ms / 1000);
        match &m.data {
            MessageData::Event(data) => {
                let body =
                    serde_json::json!({"type": m.event, "timestamp": timestamp, "data": data});
                Ok((
                    serde_json::to_vec(&body).map_err(|e| ApiError::Internal(e.to_string()))?,
                    "application/json",
                ))
            }
            MessageData::MembersPage {
                page,
                pages,
                after,
                last,
            } => {
                let a = self.message_audience(m)?;
                let rows = self.repo.members_after(
                    &a.id,
                    after.as_deref(),
                    self.config.members_page_limit,
                )?;
                let lines = rows
                    .iter()
                    .filter(|(pos, _)| pos <= last)
                    .map(|(_, sealed)| {
                        Ok(serde_json::json!({ "cookie": self.open_cookie(sealed)? }))
                    })
                    .collect::<Result<Vec<_>, ApiError>>()?;
                let head = serde_json::json!({
                    "type": m.event, "timestamp": timestamp,
                    "data": {"audience_id": a.id, "page": page, "pages": pages, "count": lines.len()},
                });
                Ok((ndjson_body(&head, &lines)?, "application/x-ndjson"))
            }
            MessageData::ChangesPage {
                version,
                page,
                pages,
                after,
                last,
            } => {
                let a = self.message_audience(m)?;
                // A later refresh replaced these changes: the destination
                // gets that one's pages instead.
                if a.version != *version {
                    return Err(ApiError::VersionNotKept {
                        since: version - 1,
                        kept: a.changes_from.unwrap_or(a.version),
                    });
                }
                let rows = self.repo.changes_after(
                    &a.id,
                    after.as_deref(),
                    self.config.members_page_limit,
                )?;
                let lines = rows
                    .iter()
                    .filter(|c| &c.pos <= last)
                    .map(|c| Ok(change_line(c.op, &self.open_cookie(&c.sealed)?)))
                    .collect::<Result<Vec<_>, ApiError>>()?;
                let head = serde_json::json!({
                    "type": m.event, "timestamp": timestamp,
                    "data": {"audience_id": a.id, "version": version, "page": page,
                             "pages": pages, "count": lines.len()},
                });
                Ok((ndjson_body(&head, &lines)?, "application/x-ndjson"))
            }
        }
    }

    /// The unexpired audience a message is about (`Expired` otherwise).
    fn message_audience(&self, m: &OutboxMessage) -> Result<Audience, ApiError> {
        self.repo
            .audience(&m.audience_id)?
            .filter(|a| a.expires_unix > unix_now())
            .ok_or(ApiError::Expired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_name_with_any_private_address_is_refused_unless_allowed() {
        let public = addr("93.184.216.34:443");
        let local = addr("127.0.0.1:443");
        assert_eq!(pick_target([public], false).unwrap(), public);
        assert!(matches!(
            pick_target([public, local], false),
            Err(TargetError::Forbidden(_))
        ));
        assert!(matches!(
            pick_target([addr("[::ffff:10.0.0.1]:443")], false),
            Err(TargetError::Forbidden(_))
        ));
        assert_eq!(pick_target([local], true).unwrap(), local);
        assert!(matches!(
            pick_target([], true),
            Err(TargetError::Unresolved)
        ));
    }
}
