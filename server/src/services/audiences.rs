//! Audiences for destinations: listing, paged pulls with an opaque,
//! authenticated cursor, removal of persons from unpulled audiences, expiry.

use super::{unix_now, Services};
use crate::error::ApiError;
use crate::services::auth::Caller;
use crate::storage::{Audience, ChangeOp};
use base64::Engine as _;

/// Jobs handled per index look-up of a clean-up pass.
const CLEANUP_PAGE: usize = 1000;

/// How long an expired audience's record (without members) is kept, so
/// pulls answer 410 `expired` rather than 404.
pub const EXPIRED_RECORD_SECS: u64 = 30 * 86_400;

/// Key label of members cursors (their own key, derived from the sealing key).
const CURSOR_LABEL: &[u8] = b"members-cursor-aead";

/// Longest cursor accepted (a position is at most ~290 bytes).
const MAX_CURSOR_LEN: usize = 1024;

/// One page of members.
#[derive(Debug)]
pub struct MembersPage {
    /// Cookie IDs.
    pub cookies: Vec<String>,
    /// Cursor for the next page, if any.
    pub next: Option<String>,
}

/// One page of an audience's changes since a version.
#[derive(Debug)]
pub struct ChangesPage {
    /// Cookie IDs added and removed, in position order.
    pub changes: Vec<(ChangeOp, String)>,
    /// Cursor for the next page, if any.
    pub next: Option<String>,
}

/// What a changes cursor is bound to: the audience and the version its
/// changes lead to, so a cursor dies with the changes it walked.
fn changes_scope(id: &str, version: u64) -> String {
    format!("{id}/changes/{version}")
}

/// Encode a cursor: base64url of the position encrypted and authenticated
/// under a server key, bound to the audience, with a fresh random nonce.
///
/// The position is a storage key that holds the person's pseudonym, which is
/// the same in every audience and at every destination: in clear (even
/// MAC'd) it would let a destination with `limit=1` group its cookies by
/// person and two destinations join on it. Encrypted with a random nonce, no
/// value repeats between cursors, pages, audiences or destinations.
///
/// During a sealing-key rotation cursors are sealed under the new key and
/// accepted under either; once it ends, a cursor of the old key is a
/// `bad-cursor` (the pull restarts from its first page).
pub fn encode_cursor(
    sealer: &super::seal::Sealer,
    audience: &str,
    position: &[u8],
) -> Result<String, ApiError> {
    let sealed = sealer
        .seal_bytes(CURSOR_LABEL, audience.as_bytes(), position)
        .ok_or_else(|| ApiError::Internal("cursor encryption failed".into()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed))
}

/// Decode a cursor issued for `audience`; anything else is `BadCursor`.
pub fn decode_cursor(
    sealer: &super::seal::Sealer,
    audience: &str,
    cursor: &str,
) -> Result<Vec<u8>, ApiError> {
    if cursor.len() > MAX_CURSOR_LEN {
        return Err(ApiError::BadCursor);
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| ApiError::BadCursor)?;
    sealer
        .open_bytes(CURSOR_LABEL, audience.as_bytes(), &raw)
        .ok_or(ApiError::BadCursor)
}

fn view(a: &Audience) -> serde_json::Value {
    serde_json::json!({
        "id": a.id, "segment": a.segment, "advertiser": a.advertiser, "size": a.size,
        "created": a.created, "expires": a.expires, "pulled": a.pulled,
        "version": a.version, "refreshed": a.refreshed,
    })
}

impl Services {
    /// A destination's unexpired audiences.
    pub fn list_audiences(&self, caller: &Caller) -> Result<serde_json::Value, ApiError> {
        let now = unix_now();
        let list: Vec<_> = self
            .repo
            .audiences_for_destination(&caller.name)?
            .iter()
            .filter(|a| a.expires_unix > now)
            .map(view)
            .collect();
        Ok(serde_json::json!({ "audiences": list }))
    }

    /// A destination's own unexpired audience, or 404 / 410.
    fn own_live_audience(&self, caller: &Caller, id: &str) -> Result<Audience, ApiError> {
        let a = self
            .repo
            .audience(id)?
            .filter(|a| a.destination == caller.name)
            .ok_or(ApiError::NotFound("audience"))?;
        if a.expires_unix <= unix_now() {
            return Err(ApiError::Expired);
        }
        Ok(a)
    }

    /// A page `limit`, checked against `members_page_limit`.
    fn page_limit(&self, limit: Option<usize>) -> Result<usize, ApiError> {
        let max = self.config.members_page_limit;
        let limit = limit.unwrap_or(max);
        if limit == 0 || limit > max {
            return Err(ApiError::BadRequest(format!("limit: between 1 and {max}")));
        }
        Ok(limit)
    }

    /// Open a stored sealed cookie ID.
    pub(crate) fn open_cookie(&self, sealed: &[u8]) -> Result<String, ApiError> {
        self.sealer()
            .open_cookie(sealed)
            .ok_or_else(|| ApiError::Internal("a stored cookie ID failed authentication".into()))
    }

    /// One page of the cookie IDs added and removed since version `since`
    /// (the current version: none; the previous one: the latest refresh's
    /// changes; older: `version-not-kept`); audited.
    pub fn pull_changes(
        &self,
        caller: &Caller,
        id: &str,
        since: u64,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<ChangesPage, ApiError> {
        let a = self.own_live_audience(caller, id)?;
        let limit = self.page_limit(limit)?;
        if since == 0 || since > a.version {
            return Err(ApiError::BadRequest(format!(
                "since: a version between 1 and {}",
                a.version
            )));
        }
        let scope = changes_scope(id, a.version);
        let after = cursor
            .map(|c| decode_cursor(&self.sealer(), &scope, c))
            .transpose()?;
        let mut page = ChangesPage {
            changes: Vec::new(),
            next: None,
        };
        if since < a.version {
            let kept = a.changes_from.unwrap_or(a.version);
            if since != kept {
                return Err(ApiError::VersionNotKept { since, kept });
            }
            let mut rows = self.repo.changes_after(id, after.as_deref(), limit + 1)?;
            let more = rows.len() > limit;
            rows.truncate(limit);
            if let (true, Some(last)) = (more, rows.last()) {
                page.next = Some(encode_cursor(&self.sealer(), &scope, &last.pos)?);
            }
            page.changes = rows
                .iter()
                .map(|c| Ok((c.op, self.open_cookie(&c.sealed)?)))
                .collect::<Result<_, ApiError>>()?;
        }
        self.audit(&caller.name, "audience.pull-changes", id, "ok")?;
        Ok(page)
    }

    /// One page of an audience's members; audited; marks the audience pulled
    /// when the last page is served.
    pub fn pull_members(
        &self,
        caller: &Caller,
        id: &str,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<MembersPage, ApiError> {
        let mut a = self.own_live_audience(caller, id)?;
        let sealer = self.sealer();
        let after = cursor.map(|c| decode_cursor(&sealer, id, c)).transpose()?;
        let limit = self.page_limit(limit)?;
        let mut rows = self.repo.members_after(id, after.as_deref(), limit + 1)?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let cookies = rows
            .iter()
            .map(|(_, sealed)| self.open_cookie(sealed))
            .collect::<Result<Vec<_>, _>>()?;
        let next = match (more, rows.last()) {
            (true, Some((pos, _))) => Some(encode_cursor(&sealer, id, pos)?),
            _ => None,
        };
        if next.is_none() && !a.pulled {
            let _g = self.exclusive(&self.audience_lock, "audiences")?;
            a.pulled = true;
            self.repo.put_audience(&a)?;
        }
        self.audit(
            &caller.name,
            "audience.pull",
            id,
            if next.is_none() { "ok:last-page" } else { "ok" },
        )?;
        Ok(MembersPage { cookies, next })
    }

    /// Remove a person from every audience not yet pulled; returns how many changed.
    pub fn remove_from_unpulled(&self, person: &str) -> Result<usize, ApiError> {
        let _g = self.exclusive(&self.audience_lock, "audiences")?;
        let mut n = 0;
        for mut a in self.repo.unpulled_audiences()? {
            let removed = self.repo.remove_member(&a.id, person)?;
            if removed > 0 {
                a.size = a.size.saturating_sub(removed as u64);
                let data =
                    serde_json::json!({"audience_id": a.id, "removed": removed, "size": a.size});
                let messages = self.audience_message(&a, super::webhooks::WITHDRAWN, data)?;
                self.repo.put_audience_with_messages(&a, messages)?;
                n += 1;
            }
        }
        if n > 0 {
            self.outbox_wake.notify_one();
        }
        Ok(n)
    }

    /// Forget finished and failed job records older than `job_retention`
    /// (their transient data went when they ended, unless a crash came
    /// between: it goes now); returns how many.
    pub fn prune_ended_jobs(&self, now: u64) -> Result<usize, ApiError> {
        let before = now.saturating_sub(self.config.job_retention.as_secs());
        let mut pruned = 0;
        for status in ["finished", "failed"] {
            loop {
                let old = self
                    .repo
                    .jobs_touched_before(status, before, CLEANUP_PAGE)?;
                for j in &old {
                    self.repo.delete_job_data(&j.id)?;
                    self.repo.delete_job(&j.id)?;
                }
                pruned += old.len();
                if old.len() < CLEANUP_PAGE {
                    break;
                }
            }
        }
        if pruned > 0 {
            self.audit("system", "job.prune", &format!("{pruned} jobs"), "ok")?;
        }
        Ok(pruned)
    }

    /// [`Self::cleanup`] unless another server sharing the store is running
    /// it (then this tick does nothing): clean-up runs once, not once per server.
    pub fn cleanup_if_leading(&self) -> Result<(usize, usize), ApiError> {
        let Some(_leading) = self.repo.try_lock("cleanup")? else {
            return Ok((0, 0));
        };
        self.cleanup()
    }

    /// Forget delivered and failed push messages older than `job_retention`.
    fn prune_ended_messages(&self, now: u64) -> Result<usize, ApiError> {
        let before_ms = now
            .saturating_sub(self.config.job_retention.as_secs())
            .saturating_mul(1000);
        let mut pruned = 0;
        loop {
            let n = self.repo.prune_messages(before_ms, CLEANUP_PAGE)?;
            pruned += n;
            if n < CLEANUP_PAGE {
                return Ok(pruned);
            }
        }
    }

    /// Delete expired audiences, fail abandoned jobs and forget long-ended
    /// ones; returns (audiences, abandoned jobs).
    pub fn cleanup(&self) -> Result<(usize, usize), ApiError> {
        let now = unix_now();
        let mut auds = 0;
        for a in self.repo.audiences_expiring_by(now)? {
            if now >= a.expires_unix.saturating_add(EXPIRED_RECORD_SECS) {
                // Long expired: forget the record too (pulls answer 404 from now on).
                self.repo.delete_audience(&a.id)?;
            } else if a.size > 0 {
                // Members go at expiry; the record stays a while so pulls answer 410.
                let _g = self.exclusive(&self.audience_lock, "audiences")?;
                self.repo.delete_members(&a.id)?;
                let expired = Audience {
                    size: 0,
                    ..a.clone()
                };
                let data = serde_json::json!({"audience_id": a.id, "expired": a.expires});
                let messages = self.audience_message(&expired, super::webhooks::EXPIRED, data)?;
                self.repo.put_audience_with_messages(&expired, messages)?;
                self.audit("system", "audience.expire", &a.id, "ok")?;
                auds += 1;
            }
        }
        let mut jobs = 0;
        let ttl = self.config.abandoned_job_ttl.as_secs();
        loop {
            let abandoned =
                self.repo
                    .jobs_touched_before("open", now.saturating_sub(ttl), CLEANUP_PAGE)?;
            for j in &abandoned {
                self.fail_job(&j.id, "system", "job.abandon")?;
                jobs += 1;
            }
            if abandoned.len() < CLEANUP_PAGE {
                break;
            }
        }
        self.prune_ended_jobs(now)?;
        self.prune_ended_messages(now)?;
        self.cleanup_graph_versions()?;
        Ok((auds, jobs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::seal::Sealer;
    use proptest::prelude::*;
    use zeroize::Zeroizing;

    #[test]
    fn ended_jobs_are_forgotten_after_the_retention_and_no_sooner() {
        let dir = tempfile::tempdir().unwrap();
        let services = Services::new(
            crate::storage::open_sled(dir.path()).unwrap(),
            crate::config::Config::default(),
            crate::keyfiles::ServerSecrets::derive_for_tests("prune"),
        )
        .unwrap();
        let retention = services.config.job_retention.as_secs();
        let now = 10 * retention;
        let job = |id: &str, status: &str, ended: u64| crate::storage::Job {
            id: id.into(),
            advertiser: "acme".into(),
            destination: "dsp".into(),
            kinds: vec![],
            key_fingerprint: String::new(),
            graph_version: 1,
            status: status.into(),
            created: String::new(),
            touched: ended,
            batches: 0,
            records: 0,
            pass: Default::default(),
            report: None,
            new_audience: false,
        };
        for j in [
            job("old-finished", "finished", now - retention - 1),
            job("old-failed", "failed", now - retention),
            job("recent", "finished", now - retention + 1),
            job("open", "open", 0),
        ] {
            services.repo.put_job(&j).unwrap();
        }
        // A crash between finishing and deleting left a page and an upload.
        let crashed = job("old-finished", "finished", now - retention - 1);
        let page = vec![vec![7u8; 32]];
        let repo = &services.repo;
        repo.put_pass_pages(&crashed.id, onboard_protocol::MatchKind::Email, 0, &page)
            .unwrap();
        repo.put_upload(&crashed, 0, [1; 32], b"frame").unwrap();
        assert_eq!(repo.job_data_count(&crashed.id).unwrap(), 2);
        assert_eq!(services.prune_ended_jobs(now).unwrap(), 2);
        assert_eq!(repo.job_data_count(&crashed.id).unwrap(), 0);
        let mut left: Vec<String> = services
            .repo
            .jobs_of("acme")
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect();
        left.sort();
        assert_eq!(left, ["open", "recent"]);
        assert_eq!(services.prune_ended_jobs(now).unwrap(), 0);
    }

    proptest! {
        #[test]
        fn cursors_round_trip(pos in proptest::collection::vec(any::<u8>(), 0..300)) {
            let key = Sealer::new(Zeroizing::new([7u8; 32]));
            let c = encode_cursor(&key, "a-1", &pos).unwrap();
            prop_assert_ne!(&c, &encode_cursor(&key, "a-1", &pos).unwrap(), "a fresh nonce each time");
            prop_assert_eq!(decode_cursor(&key, "a-1", &c).unwrap(), pos.clone());
            prop_assert!(decode_cursor(&key, "a-2", &c).is_err());
            prop_assert!(decode_cursor(&Sealer::new(Zeroizing::new([8u8; 32])), "a-1", &c).is_err());
        }

        /// During a sealing-key rotation cursors of both keys are accepted,
        /// new ones are made under the new key only.
        #[test]
        fn cursors_of_both_keys_pass_during_a_rotation(pos in proptest::collection::vec(any::<u8>(), 0..300)) {
            let old = Sealer::new(Zeroizing::new([7u8; 32]));
            let rotating = Sealer::rotating(Zeroizing::new([7u8; 32]), Zeroizing::new([8u8; 32]));
            let after = Sealer::new(Zeroizing::new([8u8; 32]));
            let before = encode_cursor(&old, "a-1", &pos).unwrap();
            let during = encode_cursor(&rotating, "a-1", &pos).unwrap();
            prop_assert_eq!(decode_cursor(&rotating, "a-1", &before).unwrap(), pos.clone());
            prop_assert_eq!(decode_cursor(&rotating, "a-1", &during).unwrap(), pos.clone());
            prop_assert_eq!(decode_cursor(&after, "a-1", &during).unwrap(), pos.clone());
            prop_assert!(decode_cursor(&old, "a-1", &during).is_err());
            prop_assert!(decode_cursor(&after, "a-1", &before).is_err());
        }

        #[test]
        fn junk_cursors_are_refused_without_panic(s in "\\PC{0,200}") {
            let r = decode_cursor(&Sealer::new(Zeroizing::new([7u8; 32])), "a-1", &s);
            prop_assert!(matches!(r, Err(ApiError::BadCursor)));
        }
    }
}
