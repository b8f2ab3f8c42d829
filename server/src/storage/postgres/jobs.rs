//! Jobs on PostgreSQL: the record beside its indexed columns (advertiser,
//! status and last touch), graph-pass pages, their marks and the uploads.

use super::graph::{batch_col, batch_of};
use super::*;

/// Upsert a job record with its indexed columns.
const PUT_JOB: &str = "INSERT INTO jobs (id, advertiser, status, touched, record)
     VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (id) DO UPDATE SET advertiser = EXCLUDED.advertiser,
         status = EXCLUDED.status, touched = EXCLUDED.touched, record = EXCLUDED.record";

impl JobRepo for PgStore {
    fn put_job(&self, job: &Job) -> StoreResult<()> {
        self.execute(
            PUT_JOB,
            &[
                &job.id,
                &job.advertiser,
                &job.status,
                &i64_of(job.touched),
                &json(job)?,
            ],
        )?;
        Ok(())
    }
    fn job(&self, id: &str) -> StoreResult<Option<Job>> {
        self.record("jobs", "SELECT record FROM jobs WHERE id = $1", &[&id])
    }
    fn jobs_of(&self, advertiser: &str) -> StoreResult<Vec<Job>> {
        self.records(
            "jobs",
            "SELECT record FROM jobs WHERE advertiser = $1 ORDER BY id",
            &[&advertiser],
        )
    }
    fn jobs_touched_before(
        &self,
        status: &str,
        before_unix: u64,
        limit: usize,
    ) -> StoreResult<Vec<Job>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.records(
            "jobs",
            "SELECT record FROM jobs WHERE status = $1 AND touched <= $2
             ORDER BY touched, id LIMIT $3",
            &[&status, &i64_of(before_unix), &limit],
        )
    }
    fn job_counts(&self) -> StoreResult<BTreeMap<String, u64>> {
        Ok(self
            .query("SELECT status, count(*) FROM jobs GROUP BY status", &[])?
            .iter()
            .map(|r| (r.get(0), u64_of(r.get(1))))
            .collect())
    }
    fn delete_job(&self, id: &str) -> StoreResult<()> {
        self.execute("DELETE FROM jobs WHERE id = $1", &[&id])?;
        Ok(())
    }
    fn put_pass_pages(
        &self,
        job: &str,
        kind: MatchKind,
        first_page: u32,
        pages: &[Vec<u8>],
    ) -> StoreResult<()> {
        let numbers: Vec<i32> = (first_page..).take(pages.len()).map(batch_col).collect();
        let bytes: Vec<&[u8]> = pages.iter().map(Vec::as_slice).collect();
        self.execute(
            "INSERT INTO job_pages (job, kind, page_no, points)
             SELECT $1, $2, n, p FROM unnest($3::int4[], $4::bytea[]) AS u(n, p)
             ON CONFLICT (job, kind, page_no) DO UPDATE SET points = EXCLUDED.points",
            &[&job, &kind_col(kind), &numbers, &bytes],
        )?;
        Ok(())
    }
    fn pass_page(&self, job: &str, kind: MatchKind, page_no: u32) -> StoreResult<Option<Vec<u8>>> {
        Ok(self
            .query(
                "SELECT points FROM job_pages WHERE job = $1 AND kind = $2 AND page_no = $3",
                &[&job, &kind_col(kind), &batch_col(page_no)],
            )?
            .first()
            .map(|r| r.get::<_, Vec<u8>>(0)))
    }
    fn mark_page_done(&self, job: &str, kind: MatchKind, page_no: u32) -> StoreResult<()> {
        self.execute(
            "INSERT INTO job_pages_done (job, kind, page_no) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[&job, &kind_col(kind), &batch_col(page_no)],
        )?;
        Ok(())
    }
    fn page_done(&self, job: &str, kind: MatchKind, page_no: u32) -> StoreResult<bool> {
        self.exists(
            "SELECT 1 FROM job_pages_done WHERE job = $1 AND kind = $2 AND page_no = $3",
            &[&job, &kind_col(kind), &batch_col(page_no)],
        )
    }
    fn put_upload(
        &self,
        job: &Job,
        batch_no: u32,
        hash: [u8; 32],
        frame: &[u8],
    ) -> StoreResult<()> {
        let record = json(job)?;
        let touched = i64_of(job.touched);
        self.execute_all(&[
            (
                "INSERT INTO job_uploads (job, batch_no, hash, frame) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (job, batch_no) DO UPDATE SET hash = EXCLUDED.hash, frame = EXCLUDED.frame",
                &[&job.id, &batch_col(batch_no), &&hash[..], &frame],
            ),
            (
                PUT_JOB,
                &[&job.id, &job.advertiser, &job.status, &touched, &record],
            ),
        ])?;
        Ok(())
    }
    fn upload_hash(&self, job: &str, batch_no: u32) -> StoreResult<Option<[u8; 32]>> {
        self.query(
            "SELECT hash FROM job_uploads WHERE job = $1 AND batch_no = $2",
            &[&job, &batch_col(batch_no)],
        )?
        .first()
        .map(|r| point_of("job_uploads", r.get(0)).map(|p| p.0))
        .transpose()
    }
    fn upload(&self, job: &str, batch_no: u32) -> StoreResult<Option<Vec<u8>>> {
        Ok(self
            .query(
                "SELECT frame FROM job_uploads WHERE job = $1 AND batch_no = $2",
                &[&job, &batch_col(batch_no)],
            )?
            .first()
            .map(|r| r.get::<_, Vec<u8>>(0)))
    }
    fn upload_numbers(&self, job: &str) -> StoreResult<Vec<u32>> {
        Ok(self
            .query(
                "SELECT batch_no FROM job_uploads WHERE job = $1 ORDER BY batch_no",
                &[&job],
            )?
            .iter()
            .map(|r| batch_of(r.get(0)))
            .collect())
    }
    fn delete_job_data(&self, job: &str) -> StoreResult<()> {
        self.execute_all(&[
            ("DELETE FROM job_uploads WHERE job = $1", &[&job]),
            ("DELETE FROM job_pages WHERE job = $1", &[&job]),
            ("DELETE FROM job_pages_done WHERE job = $1", &[&job]),
        ])?;
        Ok(())
    }
    fn job_data_count(&self, job: &str) -> StoreResult<usize> {
        let n = self.count(
            "SELECT (SELECT count(*) FROM job_uploads WHERE job = $1)
                  + (SELECT count(*) FROM job_pages WHERE job = $1)
                  + (SELECT count(*) FROM job_pages_done WHERE job = $1)",
            &[&job],
        )?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}
