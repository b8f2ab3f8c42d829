//! Recovery at start: what a crash can leave half done and the next start
//! puts right before anything is served.

use super::Services;
use crate::error::ApiError;
use std::collections::HashSet;

impl Services {
    /// Delete the audiences of jobs that are present but not finished.
    /// A job's audiences are written during its finish and released with its
    /// report, so only a finish that a crash (or an error) interrupted leaves
    /// them: they were never reported, charged to the budget or meant to be
    /// pulled, and a resumed finish writes the job's audiences again. Call it
    /// before serving, when no finish runs. Returns how many were deleted.
    pub fn discard_unfinished_audiences(&self) -> Result<usize, ApiError> {
        let unfinished: HashSet<String> = self
            .repo
            .jobs()?
            .into_iter()
            .filter(|j| j.status != "finished")
            .map(|j| j.id)
            .collect();
        let mut discarded = 0;
        for a in self.repo.audiences()? {
            if unfinished.contains(&a.job_id) {
                self.repo.delete_audience(&a.id)?;
                self.audit("system", "audience.discard", &a.id, "ok")?;
                discarded += 1;
            }
        }
        Ok(discarded)
    }
}
