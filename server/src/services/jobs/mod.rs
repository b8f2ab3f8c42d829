//! Matching jobs: the graph pass (pages of `b·P(y)` out, `a·b·P(y)` back
//! into the per-key cache), uploads re-blinded to `b·a·P(x)` on arrival, and
//! the finish that joins, thresholds and releases audiences. One file per
//! phase: `graph_pass` (with the cache merge of `cache`), `upload`, `finish`;
//! this file holds creation, the job views and what the phases share.

mod cache;
mod finish;
mod graph_pass;
mod refresh;
mod upload;

use super::{lock, new_id, rfc3339, unix_now, Services};
use crate::config::Epsilon;
use crate::error::ApiError;
use crate::services::auth::Caller;
use crate::services::privacy::{shown_count, symmetric_difference};
use crate::services::release;
use crate::services::rotation::KeyUse;
use crate::storage::{Audience, Job, PassInfo, PersonKey, Role, SealedCookie};
use crate::uniform::{self, UniformMap, UniformSet};
use onboard_protocol::wire::{PointPage, RecordBatch};
use onboard_protocol::{blind, Fingerprint, MatchKind, PointBytes};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::str::FromStr;
use std::time::Instant;

/// Body of `POST /v1/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// Destination principal name.
    pub destination: String,
    /// Kinds to match on.
    pub kinds: Vec<String>,
    /// The advertiser key's fingerprint (32 hex).
    pub key_fingerprint: String,
    /// Release each segment as a new audience, never as a refresh of the
    /// advertiser's live audience of the same segment at this destination.
    #[serde(default)]
    pub new_audience: bool,
}

/// The advertiser's own counts of its file, sent with the finish (optional)
/// and kept in the job's report for the console's data-quality view: rows
/// its tool read and rejected before blinding (no consent, no valid
/// identifier, duplicates, bad cells), and per identifier kind the valid and
/// invalid values. Aggregates of the advertiser's file only: nothing of the
/// graph, and no row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalQuality {
    /// Data rows read.
    pub rows_read: u64,
    /// Rows not uploaded.
    pub rows_rejected: u64,
    /// Per identifier kind (`email`, `phone`, `maid`, `email_sha256`, `phone_sha256`).
    #[serde(default)]
    pub kinds: BTreeMap<String, KindQuality>,
}

/// Valid and invalid values of one identifier kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindQuality {
    /// Values that normalised.
    pub valid: u64,
    /// Values refused (empty cells not counted).
    pub invalid: u64,
}

impl LocalQuality {
    /// Refuse counts that cannot describe a file, naming the field.
    pub fn check(&self) -> Result<(), ApiError> {
        let bad = |what: String| ApiError::BadRequest(format!("quality: {what}"));
        if self.rows_rejected > self.rows_read {
            return Err(bad("rows_rejected is larger than rows_read".into()));
        }
        for kind in self.kinds.keys() {
            if onboard_protocol::IdKind::from_str(kind).is_err() {
                return Err(bad(format!(
                    "kinds: `{}` is not an identifier kind",
                    kind.chars().take(20).collect::<String>()
                )));
            }
        }
        Ok(())
    }

    /// The share of rows rejected, in percent.
    pub fn rejected_percent(&self) -> Option<f64> {
        (self.rows_read > 0).then(|| 100.0 * self.rows_rejected as f64 / self.rows_read as f64)
    }
}

/// Outcome of an upload.
#[derive(Debug)]
pub struct UploadOutcome {
    /// Records in the batch.
    pub records: usize,
    /// True if the same bytes had been accepted before.
    pub duplicate: bool,
}

fn cache_namespace(advertiser: &str, fingerprint: &str) -> [u8; 16] {
    let h = Sha256::new()
        .chain_update(b"onboard-cache-v1\0")
        .chain_update(advertiser.as_bytes())
        .chain_update([0])
        .chain_update(fingerprint.as_bytes())
        .finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&h[..16]);
    out
}

fn kind_of(path: &str) -> Result<MatchKind, ApiError> {
    MatchKind::from_str(path)
        .map_err(|_| ApiError::BadRequest("kind: one of email, phone, maid".into()))
}

impl Services {
    /// The caller's job, or 404 (also for other advertisers' jobs).
    pub fn own_job(&self, caller: &Caller, id: &str) -> Result<Job, ApiError> {
        self.repo
            .job(id)?
            .filter(|j| j.advertiser == caller.name)
            .ok_or(ApiError::NotFound("job"))
    }

    fn own_open_job(&self, caller: &Caller, id: &str) -> Result<Job, ApiError> {
        let j = self.own_job(caller, id)?;
        if j.status != "open" {
            return Err(ApiError::JobNotOpen(j.status));
        }
        Ok(j)
    }

    /// Create a job and its graph pass (only points not yet cached for this key).
    pub fn create_job(
        &self,
        caller: &Caller,
        req: CreateJob,
    ) -> Result<serde_json::Value, ApiError> {
        let fp = Fingerprint::from_hex(&req.key_fingerprint).ok_or_else(|| {
            ApiError::BadRequest("key_fingerprint: 32 hexadecimal characters".into())
        })?;
        let mut kinds = BTreeSet::new();
        for k in &req.kinds {
            kinds.insert(MatchKind::from_str(k).map_err(|_| {
                ApiError::BadRequest("kinds: each one of email, phone, maid".into())
            })?);
        }
        if kinds.is_empty() {
            return Err(ApiError::BadRequest("kinds: at least one kind".into()));
        }
        let _key = self.key_gate(KeyUse::Start)?;
        match self.repo.principal(&req.destination)? {
            Some(p) if p.role == Role::Destination => {}
            _ => {
                // The caller's text is not echoed back.
                return Err(ApiError::Invalid(
                    "destination: not a known destination".into(),
                ));
            }
        }
        let graph = self
            .repo
            .current_graph()?
            .ok_or_else(|| ApiError::Invalid("no graph version has been imported yet".into()))?;
        let fingerprint = fp.to_string();
        let ns = cache_namespace(&caller.name, &fingerprint);
        let id = new_id("j-");
        let mut job = Job {
            id: id.clone(),
            advertiser: caller.name.clone(),
            destination: req.destination,
            kinds: kinds.iter().map(|k| k.as_str().to_string()).collect(),
            key_fingerprint: fingerprint,
            graph_version: graph.version,
            status: "open".into(),
            created: rfc3339(unix_now()),
            touched: unix_now(),
            batches: 0,
            records: 0,
            pass: BTreeMap::new(),
            report: None,
            new_audience: req.new_audience,
        };
        {
            // Count and reserve under one lock, so concurrent creates cannot pass the limit.
            let _g = self.exclusive(&self.job_lock, "jobs")?;
            let open = self
                .repo
                .jobs_of(&caller.name)?
                .iter()
                .filter(|j| j.status == "open")
                .count();
            if open >= self.config.max_open_jobs {
                return Err(ApiError::TooManyJobs(open));
            }
            self.repo.put_job(&job)?;
        }
        match self.build_graph_pass(&id, ns, graph.version, &kinds) {
            Ok(pass) => {
                let _g = self.exclusive(&self.job_lock, "jobs")?;
                job.pass = pass;
                job.touched = unix_now();
                self.repo.put_job(&job)?;
            }
            Err(e) => {
                self.fail_job(&id, &caller.name, "job.fail.graph-pass")?;
                return Err(e);
            }
        }
        self.audit(&caller.name, "job.create", &id, "ok")?;
        Ok(serde_json::json!({
            "job_id": id,
            "graph_version": graph.version,
            "page_size": self.config.page_size,
            "graph_pass": job.pass,
        }))
    }

    fn too_many_segments(&self, labels: usize) -> ApiError {
        ApiError::Invalid(format!(
            "the job names {labels} segments, at most {} are allowed (max_segments_per_job)",
            self.config.max_segments_per_job
        ))
    }

    fn touch(&self, id: &str) -> Result<(), ApiError> {
        let _g = self.exclusive(&self.job_lock, "jobs")?;
        if let Some(mut j) = self.repo.job(id)? {
            j.touched = unix_now();
            self.repo.put_job(&j)?;
        }
        Ok(())
    }

    /// Mark a job failed and delete its transient data.
    pub fn fail_job(&self, id: &str, actor: &str, action: &str) -> Result<(), ApiError> {
        {
            let _g = self.exclusive(&self.job_lock, "jobs")?;
            if let Some(mut j) = self.repo.job(id)? {
                j.status = "failed".into();
                j.touched = unix_now();
                self.repo.put_job(&j)?;
                // A finish that failed half-way may have written audiences.
                self.discard_audiences_of(&j)?;
            }
        }
        self.repo.delete_job_data(id)?;
        self.audit(actor, action, id, "failed")?;
        Ok(())
    }

    /// Abort (DELETE): uploads deleted, status failed.
    pub fn abort_job(&self, caller: &Caller, id: &str) -> Result<serde_json::Value, ApiError> {
        let j = self.own_open_job(caller, id)?;
        self.fail_job(&j.id, &caller.name, "job.abort")?;
        Ok(serde_json::json!({"job_id": id, "status": "failed"}))
    }

    /// A job's public view.
    pub fn job_view(j: &Job) -> serde_json::Value {
        serde_json::json!({
            "job_id": j.id, "status": j.status, "destination": j.destination, "created": j.created,
            "graph_version": j.graph_version, "kinds": j.kinds, "batches": j.batches, "records": j.records,
            "graph_pass": j.pass, "report": j.report,
        })
    }

    /// One job, and for an open job what a resumed client needs: the first
    /// batch number not yet received (batches may arrive out of order) and
    /// the graph-pass pages done per kind.
    pub fn job_detail(&self, caller: &Caller, id: &str) -> Result<serde_json::Value, ApiError> {
        let j = self.own_job(caller, id)?;
        let mut view = Self::job_view(&j);
        if j.status == "open" {
            let uploaded: std::collections::BTreeSet<u32> =
                self.repo.upload_numbers(id)?.into_iter().collect();
            let next_batch = (0..).find(|b| !uploaded.contains(b)).unwrap_or(0);
            let mut pass = serde_json::Map::new();
            for (kind_name, info) in &j.pass {
                let kind = kind_of(kind_name)?;
                let mut done = 0u32;
                for page in 0..info.pages {
                    done += u32::from(self.repo.page_done(id, kind, page)?);
                }
                pass.insert(
                    kind_name.clone(),
                    serde_json::json!({"pages": info.pages, "points": info.points, "done": done}),
                );
            }
            view["next_batch"] = next_batch.into();
            view["graph_pass"] = pass.into();
        }
        Ok(view)
    }

    /// Jobs per status, every status present (zero when it has none), from
    /// the index: for `admin stats` and `/metrics`.
    pub fn job_counts_by_status(&self) -> Result<BTreeMap<&'static str, u64>, ApiError> {
        let mut counts = BTreeMap::from([("open", 0u64), ("finished", 0), ("failed", 0)]);
        for (status, n) in self.repo.job_counts()? {
            if let Some(count) = counts.get_mut(status.as_str()) {
                *count = n;
            }
        }
        Ok(counts)
    }

    /// The caller's jobs.
    pub fn list_jobs(&self, caller: &Caller) -> Result<serde_json::Value, ApiError> {
        let jobs: Vec<_> = self
            .repo
            .jobs_of(&caller.name)?
            .iter()
            .map(Self::job_view)
            .collect();
        Ok(serde_json::json!({ "jobs": jobs }))
    }
}

#[cfg(test)]
mod quality_tests {
    use super::{KindQuality, LocalQuality};

    #[test]
    fn local_quality_counts_must_describe_a_file() {
        let mut q = LocalQuality {
            rows_read: 10,
            rows_rejected: 4,
            kinds: [(
                "email".to_string(),
                KindQuality {
                    valid: 6,
                    invalid: 3,
                },
            )]
            .into(),
        };
        assert!(q.check().is_ok());
        assert_eq!(q.rejected_percent(), Some(40.0));
        q.kinds
            .insert("email_sha256".into(), KindQuality::default());
        assert!(q.check().is_ok());
        q.kinds.insert("fax".into(), KindQuality::default());
        assert!(q.check().unwrap_err().to_string().contains("`fax`"));
        q.kinds.remove("fax");
        q.rows_rejected = 11;
        assert!(q.check().unwrap_err().to_string().contains("rows_rejected"));
        let parsed: Result<LocalQuality, _> =
            serde_json::from_str(r#"{"rows_read":1,"rows_rejected":0,"extra":1}"#);
        assert!(parsed.is_err(), "unknown fields are refused");
        assert_eq!(LocalQuality::default().rejected_percent(), None);
    }
}
