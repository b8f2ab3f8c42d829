//! Uploads: record batches of `a·P(x)`, re-blinded to `b·a·P(x)` on
//! arrival and stored with the job's count in one atomic write.

use super::*;

impl Services {
    /// Accept a `RecordBatch` of `a·P(x)`: re-blind every point with `b` now.
    pub fn upload_batch(
        &self,
        caller: &Caller,
        id: &str,
        batch_no: u32,
        body: &[u8],
    ) -> Result<UploadOutcome, ApiError> {
        self.own_open_job(caller, id)?;
        let batch = RecordBatch::decode(body)
            .map_err(|e| ApiError::BadFrame(format!("batch {batch_no}: {e}")))?;
        if batch.labels.len() > self.config.max_segments_per_job {
            return Err(self.too_many_segments(batch.labels.len()));
        }
        if batch.batch_no != batch_no {
            return Err(ApiError::BadFrame(format!(
                "batch {batch_no}: the frame says batch_no {}",
                batch.batch_no
            )));
        }
        let hash: [u8; 32] = Sha256::digest(body).into();
        match self.repo.upload_hash(id, batch_no)? {
            Some(h) if h == hash => {
                return Ok(UploadOutcome {
                    records: batch.len(),
                    duplicate: true,
                })
            }
            Some(_) => {
                return Err(ApiError::Conflict(format!(
                    "batch {batch_no} was already sent with different content"
                )))
            }
            None => {}
        }
        let key = self.key_gate(KeyUse::Continue)?;
        let reblinded = blind::reblind(key.key(), batch.points()).map_err(|e| {
            ApiError::BadPoint(format!("batch {batch_no}: point {}: {}", e.index, e.error))
        })?;
        let mut stored = RecordBatch::new(batch_no, batch.labels.clone())
            .map_err(|e| ApiError::BadFrame(format!("batch {batch_no}: {e}")))?;
        let mut offset = 0;
        for r in batch.records() {
            let n = r.points.len();
            stored
                .push(
                    r.segments,
                    r.kinds
                        .iter()
                        .copied()
                        .zip(reblinded[offset..offset + n].iter().copied()),
                )
                .map_err(|e| ApiError::BadFrame(format!("batch {batch_no}: {e}")))?;
            offset += n;
        }
        let _g = self.exclusive(&self.job_lock, "jobs")?;
        let mut job = self.repo.job(id)?.ok_or(ApiError::NotFound("job"))?;
        if job.status != "open" {
            return Err(ApiError::JobNotOpen(job.status));
        }
        if let Some(h) = self.repo.upload_hash(id, batch_no)? {
            return if h == hash {
                Ok(UploadOutcome {
                    records: batch.len(),
                    duplicate: true,
                })
            } else {
                Err(ApiError::Conflict(format!(
                    "batch {batch_no} was already sent with different content"
                )))
            };
        }
        job.batches += 1;
        job.records += batch.len() as u64;
        job.touched = unix_now();
        self.repo
            .put_upload(&job, batch_no, hash, &stored.encode())?;
        // An acknowledged batch is durable: the client resumes after it.
        self.repo.flush()?;
        // Crash test: stored and flushed, not yet acknowledged.
        crate::faults::crash_point!("upload-batch-stored", self.repo);
        Ok(UploadOutcome {
            records: batch.len(),
            duplicate: false,
        })
    }
}
