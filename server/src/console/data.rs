//! What the console's pages show, read through the store on behalf of an
//! operator: the console's own read-only service calls, beside the API's
//! (which are scoped to one caller). Records only: names, our own object
//! IDs, counts, and the noisy values a report already released, never a
//! point, a digest, a cookie ID or a person ID.

use crate::error::ApiError;
use crate::services::audit::BrokenLink;
use crate::services::{unix_now, Services};
use crate::storage::{Audience, AuditEntry, GraphInfo, ImportRecord, Job, OutboxMessage, Role};

/// The overview page's figures.
pub struct Overview {
    /// The current graph.
    pub graph: Option<GraphInfo>,
    /// Jobs per status.
    pub job_counts: Vec<(&'static str, u64)>,
    /// Jobs created in the last 24 h.
    pub recent_jobs: Vec<Job>,
    /// Audiences created in the last 24 h.
    pub recent_audiences: Vec<Audience>,
    /// Pending webhook messages.
    pub outbox_pending: u64,
    /// Webhook messages that failed, among the recent ones of each destination.
    pub outbox_failed: u64,
}

/// One advertiser's ε in the current window.
pub struct Budget {
    /// Advertiser.
    pub advertiser: String,
    /// Spent, in micro-ε.
    pub spent_micro: u64,
}

/// A page of the audit log and the chain's state.
pub struct AuditPage {
    /// Matching entries, newest first.
    pub entries: Vec<AuditEntry>,
    /// Whether an older page exists.
    pub more: bool,
    /// Entries verified, or the first broken link.
    pub chain: Result<u64, BrokenLink>,
}

/// Most recent webhook messages read per destination for the overview.
const RECENT_MESSAGES: usize = 200;
/// Audit entries per page.
pub const AUDIT_PAGE: usize = 50;
/// Entries scanned at most for one audit search.
const AUDIT_SCAN: usize = 100_000;

/// RFC 3339 (seconds, UTC) of `unix - 24 h`: records carry RFC 3339 times,
/// which compare in time order as strings.
fn day_ago() -> String {
    crate::services::rfc3339(unix_now().saturating_sub(86_400))
}

impl Services {
    fn names_with(&self, role: Role) -> Result<Vec<String>, ApiError> {
        Ok(self
            .repo
            .principals()?
            .into_iter()
            .filter(|p| p.role == role)
            .map(|p| p.name)
            .collect())
    }

    /// Every job of every advertiser, newest first.
    pub fn console_jobs(&self) -> Result<Vec<Job>, ApiError> {
        let mut jobs = Vec::new();
        for advertiser in self.names_with(Role::Advertiser)? {
            jobs.extend(self.repo.jobs_of(&advertiser)?);
        }
        jobs.sort_by(|a, b| b.created.cmp(&a.created).then(b.id.cmp(&a.id)));
        Ok(jobs)
    }

    /// Every audience of every destination, newest first.
    pub fn console_audiences(&self) -> Result<Vec<Audience>, ApiError> {
        let mut audiences = Vec::new();
        for destination in self.names_with(Role::Destination)? {
            audiences.extend(self.repo.audiences_for_destination(&destination)?);
        }
        audiences.sort_by(|a, b| b.created.cmp(&a.created).then(b.id.cmp(&a.id)));
        Ok(audiences)
    }

    /// One job.
    pub fn console_job(&self, id: &str) -> Result<Job, ApiError> {
        self.repo.job(id)?.ok_or(ApiError::NotFound("job"))
    }

    /// Abort an open job as the operator (its uploads are deleted).
    pub fn console_abort_job(&self, actor: &str, id: &str) -> Result<(), ApiError> {
        let job = self.console_job(id)?;
        if job.status != "open" {
            return Err(ApiError::JobNotOpen(job.status));
        }
        self.fail_job(id, actor, "job.abort")
    }

    /// One audience and its push deliveries (newest first).
    pub fn console_audience(&self, id: &str) -> Result<(Audience, Vec<OutboxMessage>), ApiError> {
        let a = self
            .repo
            .audience(id)?
            .ok_or(ApiError::NotFound("audience"))?;
        let deliveries = self
            .repo
            .messages_of(&a.destination, RECENT_MESSAGES)?
            .into_iter()
            .filter(|m| m.audience_id == a.id)
            .collect();
        Ok((a, deliveries))
    }

    /// The overview's figures.
    pub fn console_overview(&self) -> Result<Overview, ApiError> {
        let since = day_ago();
        let recent_jobs = self
            .console_jobs()?
            .into_iter()
            .filter(|j| j.created >= since)
            .collect();
        let recent_audiences = self
            .console_audiences()?
            .into_iter()
            .filter(|a| a.created >= since)
            .collect();
        let mut outbox_failed = 0;
        for destination in self.names_with(Role::Destination)? {
            outbox_failed += self
                .repo
                .messages_of(&destination, RECENT_MESSAGES)?
                .iter()
                .filter(|m| m.status == crate::storage::DeliveryStatus::Failed)
                .count() as u64;
        }
        Ok(Overview {
            graph: self.repo.current_graph()?,
            job_counts: self.job_counts_by_status()?.into_iter().collect(),
            recent_jobs,
            recent_audiences,
            outbox_pending: self.repo.pending_count()?,
            outbox_failed,
        })
    }

    /// Graph imports (newest first), the opt-out and erasure counts.
    pub fn console_graph(&self) -> Result<(Vec<ImportRecord>, u64, u64), ApiError> {
        let mut imports = self.repo.imports()?;
        imports.sort_by(|a, b| b.created.cmp(&a.created).then(b.version.cmp(&a.version)));
        let optouts = self.repo.optouts()?.len() as u64;
        Ok((imports, optouts, self.repo.erasure_count()?))
    }

    /// ε spent per advertiser in the current budget window.
    pub fn console_budgets(&self) -> Result<Vec<Budget>, ApiError> {
        let window_start = unix_now().saturating_sub(self.config.budget_window.as_secs());
        self.names_with(Role::Advertiser)?
            .into_iter()
            .map(|advertiser| {
                let spent_micro = self.repo.budget_spent(&advertiser, window_start)?;
                Ok(Budget {
                    advertiser,
                    spent_micro,
                })
            })
            .collect()
    }

    /// A page of audit entries containing `search` (in actor, action,
    /// object or outcome), newest first, older than `before` when given.
    pub fn console_audit(&self, search: &str, before: Option<u64>) -> Result<AuditPage, ApiError> {
        let last = self.repo.last_audit()?.map_or(0, |e| e.seq);
        let mut end = before.unwrap_or(last + 1).min(last + 1);
        let needle = search.trim().to_lowercase();
        let mut entries = Vec::new();
        let mut scanned = 0;
        while end > 1 && entries.len() <= AUDIT_PAGE && scanned < AUDIT_SCAN {
            let start = end.saturating_sub(500).max(1);
            let mut chunk = self.repo.audit_after(start - 1, (end - start) as usize)?;
            scanned += chunk.len();
            chunk.reverse();
            entries.extend(chunk.into_iter().filter(|e| {
                needle.is_empty()
                    || [&e.actor, &e.action, &e.object, &e.outcome]
                        .iter()
                        .any(|f| f.to_lowercase().contains(&needle))
            }));
            end = start;
        }
        let more = entries.len() > AUDIT_PAGE;
        entries.truncate(AUDIT_PAGE);
        Ok(AuditPage {
            entries,
            more,
            chain: self.verify_audit_chain()?,
        })
    }
}

/// Opt-out lines of the console's form: `kind,sha256hex` (the digest
/// `onboard normalize` prints), `kind` one of `email`, `phone`, `maid`
/// (or `email_sha256`, `phone_sha256`); blank lines and `#` comments
/// skipped. The server sees digests only, as from `admin optout`.
pub fn optout_batch(text: &str) -> Result<Vec<u8>, ApiError> {
    use onboard_protocol::wire::{DigestBatch, DigestEntry};
    use onboard_protocol::{Digest, MatchKind};
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || {
            ApiError::BadRequest(format!(
                "opt-out line {}: expected `kind,sha256hex` (kind email, phone or maid)",
                i + 1
            ))
        };
        let (kind, digest) = line.split_once(',').ok_or_else(bad)?;
        let kind = kind.trim().trim_end_matches("_sha256");
        let kind: MatchKind = kind.parse().map_err(|_| bad())?;
        let digest = Digest::from_hex(digest.trim()).ok_or_else(bad)?;
        entries.push(DigestEntry {
            person: String::new(),
            kind,
            digest,
        });
    }
    if entries.is_empty() {
        return Err(ApiError::BadRequest("opt-out: no line to add".into()));
    }
    DigestBatch {
        batch_no: 0,
        entries,
    }
    .encode()
    .map_err(|e| ApiError::BadRequest(format!("opt-out: {e}")))
}

#[cfg(test)]
mod tests {
    use super::optout_batch;
    use onboard_protocol::wire::DigestBatch;

    #[test]
    fn optout_lines_become_a_digest_batch_and_bad_lines_are_named() {
        let hex = "ab".repeat(32);
        let text = format!(
            "# list\nemail,{hex}\n\nphone_sha256,{}\n",
            hex.to_uppercase()
        );
        let batch = DigestBatch::decode(&optout_batch(&text).unwrap()).unwrap();
        assert_eq!(batch.entries.len(), 2);
        assert!(batch.entries.iter().all(|e| e.person.is_empty()));
        for (bad, line) in [
            (format!("email,{hex}\nperson@example.com\n"), 2),
            (format!("fax,{hex}"), 1),
            ("email,abc".to_string(), 1),
        ] {
            let err = optout_batch(&bad).unwrap_err().to_string();
            assert!(err.contains(&format!("line {line}")), "{err}");
            assert!(!err.contains("example.com"), "{err}");
        }
        assert!(optout_batch("\n# nothing\n").is_err());
    }
}
