//! The dispatcher: one background task per server that sends the outbox, at
//! least once. Each destination's messages go in order (a members page never
//! overtakes its `audience.released`); destinations are served side by side.
//! A 2xx answer is success; other answers and transport failures are retried
//! on [`RETRY_MULTIPLES`] × `webhook_retry_base` with ±20% jitter, then the
//! message is `failed`; `410 Gone` disables the endpoint.
//!
//! Each attempt resolves the host, refuses private targets (unless allowed)
//! and connects to the address it checked (reqwest's `resolve` pins it); no
//! proxy, no redirect, TLS verified against the system's roots (read the
//! way OpenSSL does, `SSL_CERT_FILE` included), Mozilla's roots and
//! `webhook_ca`. Response bodies are never read. Logs name messages,
//! destinations and statuses only.

use super::webhooks::{host_port, now_ms, pick_target, TargetError};
use super::{blocking, lock, unix_now, Services};
use crate::error::ApiError;
use crate::storage::{DeliveryStatus, HeldLock, MessageData, OutboxMessage, WebhookEndpoint};
use onboard_protocol::webhook::{self, signature_header};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Retry delays after the 1st, 2nd, … failed attempt, in multiples of
/// `webhook_retry_base`: at 5 s, 5 s, 1 min, 5 min, 30 min, 1 h, 2 h, 4 h,
/// 8 h, 8 h — about 23.6 hours in all; the 10th failure is final.
pub const RETRY_MULTIPLES: [u32; 9] = [1, 12, 60, 360, 720, 1440, 2880, 5760, 5760];

/// Attempts before a message is `failed`.
pub const MAX_ATTEMPTS: u32 = RETRY_MULTIPLES.len() as u32 + 1;

/// Messages of one destination sent per round before the queue is re-read.
const PER_DESTINATION: usize = 64;

/// Longest wait between two looks at the outbox when nothing is due.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Latency histogram bounds (seconds from enqueue to acknowledgement).
const LATENCY_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0, 300.0, 3600.0];

/// Delivery counters for /metrics.
#[derive(Default)]
pub struct DeliveryMetrics {
    inner: Mutex<MetricsInner>,
}

#[derive(Default)]
struct MetricsInner {
    outcomes: BTreeMap<&'static str, u64>,
    latency: [u64; LATENCY_BUCKETS.len()],
    latency_count: u64,
    latency_sum: f64,
}

impl DeliveryMetrics {
    fn outcome(&self, outcome: &'static str) {
        *lock(&self.inner).outcomes.entry(outcome).or_default() += 1;
    }

    fn latency(&self, seconds: f64) {
        let mut m = lock(&self.inner);
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            if seconds <= *b {
                m.latency[i] += 1;
            }
        }
        m.latency_count += 1;
        m.latency_sum += seconds;
    }

    /// Prometheus text: deliveries by outcome, outbox depth, latency.
    pub fn render(&self, depth: Option<u64>) -> String {
        use std::fmt::Write as _;
        let m = lock(&self.inner);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP onboard_webhook_deliveries_total Webhook delivery attempts by outcome."
        );
        let _ = writeln!(out, "# TYPE onboard_webhook_deliveries_total counter");
        for outcome in ["delivered", "retried", "failed", "gone", "refused-target"] {
            let n = m.outcomes.get(outcome).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "onboard_webhook_deliveries_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        if let Some(depth) = depth {
            let _ = writeln!(
                out,
                "# HELP onboard_webhook_outbox_depth Messages waiting for delivery."
            );
            let _ = writeln!(out, "# TYPE onboard_webhook_outbox_depth gauge");
            let _ = writeln!(out, "onboard_webhook_outbox_depth {depth}");
        }
        let name = "onboard_webhook_delivery_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} From enqueue (the release) to the acknowledged attempt."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (b, n) in LATENCY_BUCKETS.iter().zip(m.latency) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", m.latency_count);
        let _ = writeln!(out, "{name}_sum {}", m.latency_sum);
        let _ = writeln!(out, "{name}_count {}", m.latency_count);
        out
    }
}

/// What one attempt came to.
enum Outcome {
    /// 2xx.
    Delivered(u16),
    /// 410: the endpoint is disabled.
    Gone(u16),
    /// Another status (with an optional `Retry-After`, in seconds).
    Status(u16, Option<u64>),
    /// No answer: `timeout`, `connect`, `tls`, `refused-target`, ….
    NoAnswer(&'static str),
    /// Cannot be sent at all (`no-endpoint`, `expired`): failed at once.
    Undeliverable(&'static str),
}

/// The HTTP side: clients pinned to a checked address, reused while the
/// name keeps resolving to it.
pub struct Dispatcher {
    services: Arc<Services>,
    extra_roots: Vec<reqwest::Certificate>,
    clients: Mutex<HashMap<(String, SocketAddr), reqwest::Client>>,
}

/// Errors building the dispatcher.
#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    /// `webhook_ca` cannot be read or is not PEM.
    #[error("webhook_ca {path}: {reason}")]
    Ca {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
}

impl Dispatcher {
    /// Read `webhook_ca` (if set) now, so a bad file stops the start.
    pub fn new(services: Arc<Services>) -> Result<Self, DispatcherError> {
        let extra_roots = match &services.config.webhook_ca {
            Some(path) => {
                let bad = |reason: String| DispatcherError::Ca {
                    path: path.clone(),
                    reason,
                };
                let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
                let certs =
                    reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?;
                if certs.is_empty() {
                    return Err(bad("no PEM certificate found".into()));
                }
                certs
            }
            None => Vec::new(),
        };
        Ok(Self {
            services,
            extra_roots,
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// Run forever: send what is due, then wait for a wake-up or the next due time.
    pub async fn run(self: Arc<Self>) {
        loop {
            let next = match self.round().await {
                Ok(next) => next,
                Err(e) => {
                    tracing::error!(error = %e, "webhook dispatch round failed");
                    Some(now_ms() + IDLE_POLL.as_millis() as u64)
                }
            };
            let wait = next
                .map(|t| Duration::from_millis(t.saturating_sub(now_ms())))
                .unwrap_or(IDLE_POLL)
                .min(IDLE_POLL);
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                _ = self.services.outbox_wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One round: every destination's due messages, destinations side by
    /// side; returns when the earliest pending message is due (`None`: none).
    async fn round(self: &Arc<Self>) -> Result<Option<u64>, ApiError> {
        // One dispatcher per deployment: servers sharing a database would
        // otherwise send a message twice and out of order. The others poll.
        let s = self.services.clone();
        let Some(leading) = blocking(move || Ok(s.repo.try_lock("webhook-dispatch")?)).await?
        else {
            return Ok(Some(now_ms() + IDLE_POLL.as_millis() as u64));
        };
        let s = self.services.clone();
        let heads = blocking(move || Ok(s.repo.pending_heads(PER_DESTINATION)?)).await?;
        let mut by_destination: BTreeMap<String, Vec<OutboxMessage>> = BTreeMap::new();
        for m in heads {
            by_destination
                .entry(m.destination.clone())
                .or_default()
                .push(m);
        }
        let now = now_ms();
        let mut tasks = Vec::new();
        let mut next: Option<u64> = None;
        for (_, queue) in by_destination {
            match queue.first() {
                Some(first) if first.next_attempt_ms <= now => {
                    tasks.push(self.drain(queue, &leading))
                }
                Some(first) => {
                    next =
                        Some(next.map_or(first.next_attempt_ms, |n| n.min(first.next_attempt_ms)))
                }
                None => {}
            }
        }
        if tasks.is_empty() {
            return Ok(next);
        }
        for result in futures_util::future::join_all(tasks).await {
            if let Err(e) = result {
                tracing::error!(error = %e, "webhook delivery failed in storage");
            }
        }
        // Acknowledged deliveries are durable before the next round.
        let s = self.services.clone();
        blocking(move || Ok(s.repo.flush()?)).await?;
        Ok(Some(now_ms()))
    }

    /// A destination's queue in order, stopping at the first message that
    /// is not delivered (it keeps its place until its retry).
    async fn drain(&self, queue: Vec<OutboxMessage>, leading: &HeldLock) -> Result<(), ApiError> {
        let destination = queue[0].destination.clone();
        let s = self.services.clone();
        let dest = destination.clone();
        let endpoint = blocking(move || Ok(s.repo.webhook_endpoint(&dest)?)).await?;
        for m in queue {
            if m.next_attempt_ms > now_ms() {
                break;
            }
            if !leading.is_held() {
                // Another server may be the dispatcher now: leave it the queue.
                tracing::warn!("the webhook-dispatch lock was lost with its database session");
                break;
            }
            let outcome = match &endpoint {
                Some(e) if e.disabled.is_none() => self.attempt(&m, e).await,
                Some(_) => Outcome::Undeliverable("endpoint-disabled"),
                None => Outcome::Undeliverable("no-endpoint"),
            };
            let delivered = matches!(outcome, Outcome::Delivered(_));
            let gone = matches!(outcome, Outcome::Gone(_));
            self.record(m, outcome).await?;
            if gone {
                self.disable(&destination).await?;
            }
            if !delivered {
                break;
            }
        }
        Ok(())
    }

    async fn disable(&self, destination: &str) -> Result<(), ApiError> {
        let s = self.services.clone();
        let dest = destination.to_owned();
        blocking(move || {
            let _g = lock(&s.webhook_lock);
            if let Some(mut e) = s.repo.webhook_endpoint(&dest)? {
                e.disabled = Some("gone".into());
                s.repo.put_webhook_endpoint(&e)?;
            }
            Ok(s.audit("system", "webhook.disable", &dest, "gone")?)
        })
        .await?;
        tracing::warn!(destination, "webhook endpoint answered 410 Gone: disabled");
        Ok(())
    }

    /// Save the attempt's result on the message.
    async fn record(&self, mut m: OutboxMessage, outcome: Outcome) -> Result<(), ApiError> {
        let now = now_ms();
        let metrics = &self.services.delivery_metrics;
        if !matches!(outcome, Outcome::Undeliverable(_)) {
            m.attempts += 1;
        }
        m.last_error = None;
        let (label, retry_after) = match outcome {
            Outcome::Delivered(status) => {
                m.last_status = Some(status);
                m.status = DeliveryStatus::Delivered;
                m.delivered_ms = Some(now);
                metrics.latency(now.saturating_sub(m.created_ms) as f64 / 1000.0);
                ("delivered", None)
            }
            Outcome::Gone(status) => {
                m.last_status = Some(status);
                m.status = DeliveryStatus::Failed;
                ("gone", None)
            }
            Outcome::Undeliverable(why) => {
                m.last_error = Some(why.into());
                m.status = DeliveryStatus::Failed;
                ("failed", None)
            }
            Outcome::Status(status, retry_after) => {
                m.last_status = Some(status);
                ("retried", retry_after)
            }
            Outcome::NoAnswer(why) => {
                m.last_status = None;
                m.last_error = Some(why.into());
                (
                    if why == "refused-target" {
                        "refused-target"
                    } else {
                        "retried"
                    },
                    None,
                )
            }
        };
        if m.status == DeliveryStatus::Pending {
            if m.attempts >= MAX_ATTEMPTS {
                m.status = DeliveryStatus::Failed;
                metrics.outcome("failed");
            } else {
                let delay = retry_delay(
                    self.services.config.webhook_retry_base,
                    m.attempts,
                    retry_after,
                );
                m.next_attempt_ms = now + delay.as_millis() as u64;
                metrics.outcome(label);
            }
        } else {
            metrics.outcome(label);
        }
        if m.status != DeliveryStatus::Pending {
            m.ended_ms = Some(now);
        }
        tracing::info!(
            message = %m.id,
            destination = %m.destination,
            event = %m.event,
            attempt = m.attempts,
            http_status = m.last_status.unwrap_or(0),
            error = m.last_error.as_deref().unwrap_or(""),
            status = ?m.status,
            "webhook attempt"
        );
        let s = self.services.clone();
        blocking(move || {
            s.repo.update_message(&m)?;
            // Pushed members are audited like pulled ones, page by page.
            let pushed = match (m.status, &m.data) {
                (DeliveryStatus::Delivered, MessageData::MembersPage { page, pages, .. }) => {
                    Some(("audience.push", page == pages))
                }
                (DeliveryStatus::Delivered, MessageData::ChangesPage { page, pages, .. }) => {
                    Some(("audience.push-changes", page == pages))
                }
                _ => None,
            };
            if let Some((action, last)) = pushed {
                let outcome = if last { "ok:last-page" } else { "ok" };
                s.audit(&m.destination, action, &m.audience_id, outcome)?;
            }
            Ok(())
        })
        .await
    }

    /// One POST of one message.
    async fn attempt(&self, m: &OutboxMessage, e: &WebhookEndpoint) -> Outcome {
        let s = self.services.clone();
        let (msg, endpoint) = (m.clone(), e.clone());
        let prepared = blocking(move || {
            let body = s.message_body(&msg)?;
            let secrets = s.live_secrets(&endpoint, unix_now())?;
            Ok((body, secrets))
        })
        .await;
        let ((body, content_type), secrets) = match prepared {
            Ok(p) => p,
            Err(ApiError::Expired) => return Outcome::Undeliverable("expired"),
            Err(ApiError::VersionNotKept { .. }) => return Outcome::Undeliverable("superseded"),
            Err(err) => {
                tracing::error!(error = %err, message = %m.id, "webhook body could not be built");
                return Outcome::NoAnswer("internal");
            }
        };
        let client = match self.client_for(&e.url).await {
            Ok(c) => c,
            Err(why) => return Outcome::NoAnswer(why),
        };
        let timestamp = unix_now();
        let signature = signature_header(&secrets, &m.id, timestamp, &body);
        let sent = client
            .post(&e.url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .header(webhook::HEADER_ID, &m.id)
            .header(webhook::HEADER_TIMESTAMP, timestamp.to_string())
            .header(webhook::HEADER_SIGNATURE, signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                // The body is dropped unread.
                match status {
                    200..=299 => Outcome::Delivered(status),
                    410 => Outcome::Gone(status),
                    _ => Outcome::Status(status, retry_after),
                }
            }
            Err(err) if err.is_timeout() => Outcome::NoAnswer("timeout"),
            Err(err) if err.is_connect() => Outcome::NoAnswer("connect"),
            Err(_) => Outcome::NoAnswer("request"),
        }
    }

    /// A client pinned to the address the URL's host resolves to now,
    /// refused when that address is private (unless allowed).
    async fn client_for(&self, url: &str) -> Result<reqwest::Client, &'static str> {
        let url = onboard_protocol::check_webhook_url(url).map_err(|_| "bad-url")?;
        let (host, port) = host_port(&url).map_err(|_| "bad-url")?;
        let addrs = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|_| "unresolved")?;
        let addr = match pick_target(addrs, self.services.config.webhook_allow_private_targets) {
            Ok(a) => a,
            Err(TargetError::Unresolved) => return Err("unresolved"),
            Err(TargetError::Forbidden(_)) => return Err("refused-target"),
        };
        let key = (host.clone(), addr);
        if let Some(c) = lock(&self.clients).get(&key) {
            return Ok(c.clone());
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .https_only(true)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(self.services.config.webhook_timeout)
            .connect_timeout(self.services.config.webhook_timeout)
            .resolve(&host, addr)
            // The system's roots (an on-premises DSP's corporate CA) beside
            // Mozilla's (a container without a system store).
            .tls_built_in_native_certs(true)
            .tls_built_in_webpki_certs(true);
        for ca in &self.extra_roots {
            builder = builder.add_root_certificate(ca.clone());
        }
        let client = builder.build().map_err(|_| "client")?;
        let mut clients = lock(&self.clients);
        if clients.len() > 1024 {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// The wait after `attempts` failed attempts: the schedule's multiple of
/// `base`, ±20% jitter, and at least a `Retry-After` (capped at a day).
pub fn retry_delay(base: Duration, attempts: u32, retry_after_secs: Option<u64>) -> Duration {
    use rand::Rng as _;
    let i = (attempts.max(1) as usize - 1).min(RETRY_MULTIPLES.len() - 1);
    let nominal = base.saturating_mul(RETRY_MULTIPLES[i]);
    let jitter = rand::thread_rng().gen_range(0.8..1.2);
    let delay = nominal.mul_f64(jitter);
    match retry_after_secs {
        Some(s) => delay.max(Duration::from_secs(s.min(86_400))),
        None => delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_spans_about_a_day_with_jitter() {
        let base = Duration::from_secs(5);
        let total: u64 = RETRY_MULTIPLES.iter().map(|m| 5 * u64::from(*m)).sum();
        assert!((20 * 3600..26 * 3600).contains(&total), "{total} s");
        for attempts in 1..MAX_ATTEMPTS {
            let nominal = base * RETRY_MULTIPLES[attempts as usize - 1];
            let d = retry_delay(base, attempts, None);
            assert!(
                d >= nominal.mul_f64(0.8) && d <= nominal.mul_f64(1.2),
                "{attempts}: {d:?}"
            );
        }
        // Draws differ (jitter), so retries of many messages spread out.
        let draws: std::collections::BTreeSet<u128> = (0..20)
            .map(|_| retry_delay(base, 3, None).as_micros())
            .collect();
        assert!(draws.len() > 10);
        assert!(retry_delay(base, 1, Some(120)) >= Duration::from_secs(120));
        assert!(retry_delay(base, 1, Some(10_000_000)) <= Duration::from_secs(86_400));
    }
}
