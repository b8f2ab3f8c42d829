//! Recovery: what a crash or a failed finish can leave half done, put right
//! before anything else can see it.

use super::Services;
use crate::error::ApiError;
use crate::storage::{Audience, ChangeOp, Job};

impl Services {
    /// Delete the audiences of jobs that are present but not finished.
    /// A job's audiences are written during its finish and released with its
    /// report, so only a finish that a crash (or an error) interrupted leaves
    /// them: they were never reported or meant to be pulled, and a resumed
    /// finish writes the job's audiences again. Call it before serving, when
    /// no finish of this server runs; a job whose finish another server
    /// sharing the store is running (it holds the job's finish lock) is
    /// left alone. Returns how many were deleted.
    pub fn discard_unfinished_audiences(&self) -> Result<usize, ApiError> {
        let mut discarded = 0;
        for status in ["open", "failed"] {
            for job in self
                .repo
                .jobs_touched_before(status, u64::MAX, usize::MAX)?
            {
                let Some(_finish) = self.repo.try_lock(&super::finish_lock(&job.id))? else {
                    continue;
                };
                discarded += self.discard_audiences_of(&job)?;
            }
        }
        Ok(discarded)
    }

    /// Delete (and audit) every audience a job wrote, and roll back every
    /// audience it refreshed to the version before; returns how many.
    pub(crate) fn discard_audiences_of(&self, job: &Job) -> Result<usize, ApiError> {
        let mut discarded = 0;
        for a in self.repo.audiences_of(&job.advertiser, &job.destination)? {
            if a.job_id != job.id {
                continue;
            }
            match a.prior {
                Some(prior) => {
                    self.roll_back(&a.id, *prior)?;
                    self.audit("system", "audience.rollback", &a.id, "ok")?;
                }
                None => {
                    self.repo.delete_audience(&a.id)?;
                    self.audit("system", "audience.discard", &a.id, "ok")?;
                }
            }
            discarded += 1;
        }
        Ok(discarded)
    }

    /// Put a refreshed audience back to its previous version: its members
    /// less the refresh's additions plus its removals. The changes that led
    /// to that version are gone with the refresh: none are kept.
    fn roll_back(&self, id: &str, prior: Audience) -> Result<(), ApiError> {
        let mut members = self.repo.members_after(id, None, usize::MAX)?;
        let changes = self.repo.changes_after(id, None, usize::MAX)?;
        let added: std::collections::BTreeSet<&[u8]> = changes
            .iter()
            .filter(|c| c.op == ChangeOp::Add)
            .map(|c| c.pos.as_slice())
            .collect();
        members.retain(|(pos, _)| !added.contains(pos.as_slice()));
        members.extend(
            changes
                .iter()
                .filter(|c| c.op == ChangeOp::Remove)
                .map(|c| (c.pos.clone(), c.sealed.clone())),
        );
        members.sort_unstable_by(|x, y| x.0.cmp(&y.0));
        let prior = Audience {
            size: members.len() as u64,
            changes_from: None,
            ..prior
        };
        self.repo.refresh_audience(&prior, &members, &[])?;
        Ok(())
    }
}
