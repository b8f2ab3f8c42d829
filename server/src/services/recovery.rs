//! Recovery: what a crash or a failed finish can leave half done, put right
//! before anything else can see it.

use super::Services;
use crate::error::ApiError;
use crate::storage::Job;

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

    /// Delete (and audit) every audience a job wrote; returns how many.
    pub(crate) fn discard_audiences_of(&self, job: &Job) -> Result<usize, ApiError> {
        let mut discarded = 0;
        for a in self.repo.audiences_of(&job.advertiser, &job.destination)? {
            if a.job_id == job.id {
                self.repo.delete_audience(&a.id)?;
                self.audit("system", "audience.discard", &a.id, "ok")?;
                discarded += 1;
            }
        }
        Ok(discarded)
    }
}
