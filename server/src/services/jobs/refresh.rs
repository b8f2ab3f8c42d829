//! Segment refreshes: a finishing job's segment that has a live audience of
//! the same advertiser, destination and segment name becomes that
//! audience's next version instead of a new audience.
//!
//! Each side of the change — the persons added, the persons removed — is
//! applied only when it is at least `k` persons and its noisy count clears
//! `k` by the release margin (`release::change_applies`); a side that does
//! not is deferred: the persons it would add stay out and those it would
//! remove stay in, until a later refresh's side is large enough. A refresh
//! with neither side applied is held back (`refresh-change-below-k`). So no
//! version, size or change ever shows a change of fewer than `k` persons,
//! and the status cannot tell an empty side from a small one (see
//! docs/threat-model.md, "Refresh differencing").

use super::finish::Candidate;
use super::*;
use crate::storage::{member_position, position_person, ChangeOp, MemberChange};

/// Why a refresh is held back: neither side of its change is applied.
pub(super) const HELD_BACK: &str = "refresh-change-below-k";

/// A segment's planned refresh of a live audience.
pub(super) struct Refresh {
    /// The audience as it stands (the version being replaced).
    pub base: Audience,
    /// The new version's members: `(position, sealed)`, sorted by position.
    pub records: Vec<(Vec<u8>, Vec<u8>)>,
    /// The new version's persons, sorted (for the difference check).
    pub persons: Vec<String>,
    /// The member cookies added and removed, sorted by position.
    pub changes: Vec<MemberChange>,
}

impl Refresh {
    /// The new version's record.
    pub fn next_record(&self, job: &Job, now: u64, ttl: u64) -> Audience {
        let base = &self.base;
        Audience {
            job_id: job.id.clone(),
            size: self.records.len() as u64,
            version: base.version + 1,
            refreshed: Some(rfc3339(now)),
            // Expiry restarts at each refresh.
            expires: rfc3339(now + ttl),
            expires_unix: now + ttl,
            pulled: false,
            changes_from: Some(base.version),
            prior: Some(Box::new(Audience {
                prior: None,
                ..base.clone()
            })),
            ..base.clone()
        }
    }
}

/// The person of a stored member position.
fn person_of(pos: &[u8]) -> Result<&str, ApiError> {
    position_person(pos).ok_or_else(|| ApiError::Internal("a stored member position".into()))
}

/// The sorted, distinct persons of position-sorted member records.
fn persons_of(records: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<String>, ApiError> {
    let mut out: Vec<String> = Vec::new();
    for (pos, _) in records {
        let p = person_of(pos)?;
        if out.last().map(String::as_str) != Some(p) {
            out.push(p.to_owned());
        }
    }
    Ok(out)
}

/// Persons of `a` not in `b` (both sorted, distinct).
fn minus<'a>(a: &'a [String], b: &[String]) -> BTreeSet<&'a str> {
    a.iter()
        .filter(|p| b.binary_search(p).is_err())
        .map(String::as_str)
        .collect()
}

impl Services {
    /// The live audience each of `labels` would refresh — the latest of
    /// that segment name for the job's advertiser and destination — unless
    /// the job asked for new audiences. Decided before the ε spend (each
    /// refresh releases two more noisy values), from records the advertiser
    /// knows of, so the charge says nothing about the graph.
    pub(super) fn refresh_targets(
        &self,
        job: &Job,
        labels: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, String>, ApiError> {
        if job.new_audience {
            return Ok(BTreeMap::new());
        }
        let now = unix_now();
        let mut latest: BTreeMap<String, Audience> = BTreeMap::new();
        for a in self
            .repo
            .audiences_of(&job.advertiser, &job.destination)?
            .into_iter()
            .filter(|a| a.expires_unix > now && a.size > 0 && labels.contains(&a.segment))
        {
            let newer = |b: &Audience| (&a.created, &a.id) > (&b.created, &b.id);
            if latest.get(&a.segment).is_none_or(newer) {
                latest.insert(a.segment.clone(), a);
            }
        }
        Ok(latest.into_iter().map(|(s, a)| (s, a.id)).collect())
    }

    /// Plan the refresh of each candidate that has a target and passed the
    /// size rule: its change's sides applied or deferred, or held back.
    /// A target gone or expired since the charge leaves a new audience.
    /// Runs under the audience lock, so the audience read is the one replaced.
    pub(super) fn plan_refreshes(
        &self,
        targets: &BTreeMap<String, String>,
        now: u64,
        margin: u64,
        candidates: &mut [Candidate],
    ) -> Result<(), ApiError> {
        for c in candidates.iter_mut().filter(|c| c.reason.is_none()) {
            let Some(id) = targets.get(&c.name) else {
                continue;
            };
            let Some(base) = self.repo.audience(id)? else {
                continue;
            };
            if base.expires_unix <= now || base.size == 0 {
                continue;
            }
            match self.plan_refresh(base, c, margin)? {
                Ok(refresh) => c.refresh = Some(refresh),
                Err(reason) => c.reason = Some(reason),
            }
        }
        Ok(())
    }

    /// One segment's refresh of `base`, or why it is not released.
    fn plan_refresh(
        &self,
        base: Audience,
        c: &Candidate,
        margin: u64,
    ) -> Result<Result<Refresh, &'static str>, ApiError> {
        let k = self.config.k;
        let old = self.repo.members_after(&base.id, None, usize::MAX)?;
        let old_persons = persons_of(&old)?;
        let new_persons: Vec<String> = c.names().cloned().collect();
        let added = minus(&new_persons, &old_persons);
        let removed = minus(&old_persons, &new_persons);
        let noisy_added = self.noisy_count(added.len() as u64);
        let noisy_removed = self.noisy_count(removed.len() as u64);
        let add = release::change_applies(added.len(), noisy_added, k, margin);
        let remove = release::change_applies(removed.len(), noisy_removed, k, margin);
        if !add && !remove {
            return Ok(Err(HELD_BACK));
        }
        let mut records = Vec::with_capacity(old.len());
        let mut changes = Vec::new();
        for (pos, sealed) in old {
            if remove && removed.contains(person_of(&pos)?) {
                changes.push(MemberChange {
                    pos,
                    op: ChangeOp::Remove,
                    sealed,
                });
            } else {
                records.push((pos, sealed));
            }
        }
        if add {
            for (person, cookies) in c.members.iter().filter(|m| added.contains(m.0.as_str())) {
                for cookie in cookies.iter() {
                    let pos = member_position(person, &cookie.tag);
                    records.push((pos.clone(), cookie.sealed.clone()));
                    changes.push(MemberChange {
                        pos,
                        op: ChangeOp::Add,
                        sealed: cookie.sealed.clone(),
                    });
                }
            }
        }
        records.sort_unstable_by(|x, y| x.0.cmp(&y.0));
        records.dedup_by(|x, y| x.0 == y.0);
        changes.sort_unstable_by(|x, y| x.pos.cmp(&y.pos));
        changes.dedup_by(|x, y| x.pos == y.pos);
        let persons = persons_of(&records)?;
        // Removals applied, additions deferred: the new version is the
        // segment less its deferred persons, estimated from values already
        // paid for (post-processing costs no ε).
        if remove
            && !add
            && release::size_withheld(
                persons.len(),
                c.noisy.saturating_sub(noisy_added),
                k,
                2 * margin,
            )
            .is_some()
        {
            return Ok(Err("below-minimum-size"));
        }
        Ok(Ok(Refresh {
            base,
            records,
            persons,
            changes,
        }))
    }
}
