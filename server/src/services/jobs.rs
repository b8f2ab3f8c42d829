//! Matching jobs: the graph pass (pages of `b·P(y)` out, `a·b·P(y)` back
//! into the per-key cache), uploads re-blinded to `b·a·P(x)` on arrival, and
//! the finish that joins, thresholds and releases audiences.

use super::{lock, new_id, rfc3339, unix_now, Services};
use crate::config::Epsilon;
use crate::error::ApiError;
use crate::services::auth::Caller;
use crate::services::privacy::{shown_count, symmetric_difference};
use crate::services::release;
use crate::services::uniform::{self, UniformMap, UniformSet};
use crate::storage::{Audience, Job, PassInfo, PersonKey, Role, SealedCookie};
use onboard_protocol::wire::{PointPage, RecordBatch};
use onboard_protocol::{blind, Fingerprint, MatchKind, PointBytes};
use rayon::prelude::*;
use serde::Deserialize;
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

/// Graph-pass pages written (and synced) per store call.
const PAGES_PER_WRITE: usize = 32;
/// Sorted look-ups (owners, cookies) per parallel task at finish: each task
/// walks its own stretch of the graph in order.
const LOOKUP_STRETCH: usize = 32_768;

/// Cached runs fetched per store call.
const RUNS_PER_FETCH: usize = 4;

/// A forward-only merge of one cache namespace's runs: every cached pair
/// `(b·P(y), a·b·P(y))` once, in `b·P(y)` order (the graph's order too, so
/// the graph pass and the join are merges, with no random reads). Runs are
/// opened when the merge reaches their first point; only overlapping runs
/// are held at once.
struct CacheMerge<'a> {
    services: &'a Services,
    ns: [u8; 16],
    /// Fetched runs not yet opened, in key order.
    pending: std::collections::VecDeque<Vec<(PointBytes, PointBytes)>>,
    last_key: Option<Vec<u8>>,
    fetched_all: bool,
    /// Open runs with their position; the heap holds (next point, slot).
    open: Vec<(Vec<(PointBytes, PointBytes)>, usize)>,
    heap: BinaryHeap<Reverse<([u8; 32], usize)>>,
    last: Option<PointBytes>,
}

impl<'a> CacheMerge<'a> {
    fn new(services: &'a Services, ns: [u8; 16]) -> Self {
        Self {
            services,
            ns,
            pending: Default::default(),
            last_key: None,
            fetched_all: false,
            open: Vec::new(),
            heap: BinaryHeap::new(),
            last: None,
        }
    }

    fn front_first(&mut self) -> Result<Option<[u8; 32]>, ApiError> {
        while self.pending.is_empty() && !self.fetched_all {
            let runs = self.services.repo.cache_runs_after(
                &self.ns,
                self.last_key.as_deref(),
                RUNS_PER_FETCH,
            )?;
            match runs.last() {
                None => self.fetched_all = true,
                Some((k, _)) => self.last_key = Some(k.clone()),
            }
            self.pending
                .extend(runs.into_iter().map(|(_, r)| r).filter(|r| !r.is_empty()));
        }
        Ok(self.pending.front().map(|r| r[0].0 .0))
    }

    /// The next cached pair, or `None` at the end.
    fn next_pair(&mut self) -> Result<Option<(PointBytes, PointBytes)>, ApiError> {
        loop {
            if let Some(first) = self.front_first()? {
                if self.heap.peek().is_none_or(|Reverse((p, _))| first <= *p) {
                    // front_first just returned Some, so a pending run exists.
                    let Some(run) = self.pending.pop_front() else {
                        return Err(ApiError::Internal("cache merge lost its front run".into()));
                    };
                    let slot = match self.open.iter().position(|(r, _)| r.is_empty()) {
                        Some(i) => {
                            self.open[i] = (run, 0);
                            i
                        }
                        None => {
                            self.open.push((run, 0));
                            self.open.len() - 1
                        }
                    };
                    self.heap.push(Reverse((first, slot)));
                    continue;
                }
            }
            let Some(Reverse((_, slot))) = self.heap.pop() else {
                return Ok(None);
            };
            let (run, pos) = &mut self.open[slot];
            let pair = run[*pos];
            *pos += 1;
            if let Some(next) = run.get(*pos) {
                self.heap.push(Reverse((next.0 .0, slot)));
            } else {
                *run = Vec::new();
            }
            // Overlapping runs may repeat a point: the first one counts.
            if self.last == Some(pair.0) {
                continue;
            }
            self.last = Some(pair.0);
            return Ok(Some(pair));
        }
    }
}

/// Membership tests in increasing order against a [`CacheMerge`].
struct CacheCursor<'a> {
    merge: CacheMerge<'a>,
    current: Option<PointBytes>,
    started: bool,
}

impl<'a> CacheCursor<'a> {
    fn new(services: &'a Services, ns: [u8; 16]) -> Self {
        Self {
            merge: CacheMerge::new(services, ns),
            current: None,
            started: false,
        }
    }

    /// Is `p` cached? Calls must come in increasing order of `p`.
    fn contains(&mut self, p: &PointBytes) -> Result<bool, ApiError> {
        if !self.started {
            self.started = true;
            self.current = self.merge.next_pair()?.map(|(b, _)| b);
        }
        while let Some(c) = self.current {
            match c.0.cmp(&p.0) {
                std::cmp::Ordering::Less => self.current = self.merge.next_pair()?.map(|(b, _)| b),
                std::cmp::Ordering::Equal => return Ok(true),
                std::cmp::Ordering::Greater => return Ok(false),
            }
        }
        Ok(false)
    }
}

/// Marks a job as finishing while held; a second finish gets `job-not-open`.
struct FinishGuard<'a> {
    services: &'a Services,
    id: String,
}

impl<'a> FinishGuard<'a> {
    fn take(services: &'a Services, id: &str) -> Result<Self, ApiError> {
        if !lock(&services.finishing).insert(id.to_string()) {
            return Err(ApiError::JobNotOpen("finishing".into()));
        }
        Ok(Self {
            services,
            id: id.to_string(),
        })
    }
}

impl Drop for FinishGuard<'_> {
    fn drop(&mut self) {
        lock(&self.services.finishing).remove(&self.id);
    }
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
        };
        {
            // Count and reserve under one lock, so concurrent creates cannot pass the limit.
            let _g = lock(&self.job_lock);
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
                let _g = lock(&self.job_lock);
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

    /// Store the job's graph pass: the version's points of each kind, in
    /// blinded-value order, minus those cached for this key and opted out.
    fn build_graph_pass(
        &self,
        id: &str,
        ns: [u8; 16],
        version: u64,
        kinds: &BTreeSet<MatchKind>,
    ) -> Result<BTreeMap<String, PassInfo>, ApiError> {
        let page_size = self.config.page_size;
        let mut pass = BTreeMap::new();
        for kind in kinds {
            let mut info = PassInfo::default();
            // A finished pass of this version for this key: nothing is new.
            if self.repo.cache_complete(&ns, version, *kind)? {
                pass.insert(kind.as_str().to_string(), info);
                continue;
            }
            let mut page: Vec<u8> = Vec::with_capacity(page_size * 32);
            // Pages are written a few at a time: one sync per group.
            let mut pending: Vec<Vec<u8>> = Vec::new();
            let mut after: Option<PointBytes> = None;
            // Both sequences are in blinded-value order: a merge, no random reads.
            let mut cached = CacheCursor::new(self, ns);
            loop {
                let chunk = self
                    .repo
                    .points_after(version, *kind, after.as_ref(), 8192)?;
                let Some(last) = chunk.last() else { break };
                after = Some(last.0);
                let points: Vec<PointBytes> = chunk.iter().map(|(p, _)| *p).collect();
                let opted_out = self.opted_out_each(&points)?;
                for (p, opted_out) in points.iter().zip(opted_out) {
                    if opted_out || cached.contains(p)? {
                        continue;
                    }
                    page.extend_from_slice(&p.0);
                    info.points += 1;
                    if page.len() == page_size * 32 {
                        pending.push(std::mem::replace(
                            &mut page,
                            Vec::with_capacity(page_size * 32),
                        ));
                        if pending.len() == PAGES_PER_WRITE {
                            self.repo.put_pass_pages(id, *kind, info.pages, &pending)?;
                            info.pages += pending.len() as u32;
                            pending.clear();
                        }
                    }
                }
            }
            if !page.is_empty() {
                pending.push(page);
            }
            if !pending.is_empty() {
                self.repo.put_pass_pages(id, *kind, info.pages, &pending)?;
                info.pages += pending.len() as u32;
            }
            pass.insert(kind.as_str().to_string(), info);
        }
        Ok(pass)
    }

    /// A graph-pass page of `b·P(y)`, as a `PointPage` frame.
    pub fn graph_page(
        &self,
        caller: &Caller,
        id: &str,
        kind: &str,
        page_no: u32,
    ) -> Result<Vec<u8>, ApiError> {
        let kind = kind_of(kind)?;
        let job = self.own_open_job(caller, id)?;
        if !job.kinds.iter().any(|k| k == kind.as_str()) {
            return Err(ApiError::NotFound("graph page"));
        }
        let bytes = self
            .repo
            .pass_page(id, kind, page_no)?
            .ok_or(ApiError::NotFound("graph page"))?;
        let points = bytes
            .chunks_exact(32)
            .map(PointBytes::from_slice)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| ApiError::Internal("corrupt graph-pass page".into()))?;
        Ok(PointPage {
            kind,
            page_no,
            points,
        }
        .encode())
    }

    /// The advertiser's `a·b·P(y)` for a page: validated, cached.
    pub fn put_graph_page(
        &self,
        caller: &Caller,
        id: &str,
        kind: &str,
        page_no: u32,
        body: &[u8],
    ) -> Result<usize, ApiError> {
        let kind = kind_of(kind)?;
        let job = self.own_open_job(caller, id)?;
        let sent = self
            .repo
            .pass_page(id, kind, page_no)?
            .ok_or(ApiError::NotFound("graph page"))?;
        let page = PointPage::decode(body)
            .map_err(|e| ApiError::BadFrame(format!("{kind} page {page_no}: {e}")))?;
        if page.kind != kind || page.page_no != page_no {
            return Err(ApiError::BadRequest(format!(
                "frame is {} page {}, path says {kind} page {page_no}",
                page.kind, page.page_no
            )));
        }
        if page.points.len() * 32 != sent.len() {
            return Err(ApiError::BadRequest(format!(
                "{kind} page {page_no}: {} points returned, {} sent",
                page.points.len(),
                sent.len() / 32
            )));
        }
        // a·b·P(y) is only compared with the server's canonical b·a·P(x),
        // never used in arithmetic: the encoding's form is checked (no field
        // arithmetic), since a point off the curve can match nothing anyway.
        let bad = page
            .points
            .iter()
            .enumerate()
            .find_map(|(i, p)| p.check_form().err().map(|e| (i, e)));
        if let Some((i, e)) = bad {
            return Err(ApiError::BadPoint(format!(
                "{kind} page {page_no}: point {i}: {e}"
            )));
        }
        let pairs: Vec<(PointBytes, PointBytes)> = sent
            .chunks_exact(32)
            .zip(&page.points)
            .filter_map(|(b, ab)| PointBytes::from_slice(b).ok().map(|b| (b, *ab)))
            .collect();
        let ns = cache_namespace(&job.advertiser, &job.key_fingerprint);
        self.repo.cache_put(&ns, &pairs)?;
        // Crash test: cached, the page not yet marked done.
        crate::faults::crash_point!("graph-page-cached", self.repo);
        self.repo.mark_page_done(id, kind, page_no)?;
        self.touch(id)?;
        // An acknowledged page is durable: a resumed job does not redo it.
        self.repo.flush()?;
        Ok(pairs.len())
    }

    fn too_many_segments(&self, labels: usize) -> ApiError {
        ApiError::Invalid(format!(
            "the job names {labels} segments, at most {} are allowed (max_segments_per_job)",
            self.config.max_segments_per_job
        ))
    }

    fn touch(&self, id: &str) -> Result<(), ApiError> {
        let _g = lock(&self.job_lock);
        if let Some(mut j) = self.repo.job(id)? {
            j.touched = unix_now();
            self.repo.put_job(&j)?;
        }
        Ok(())
    }

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
        let reblinded = blind::reblind(self.key(), batch.points()).map_err(|e| {
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
        let _g = lock(&self.job_lock);
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

    /// Mark a job failed and delete its transient data.
    pub fn fail_job(&self, id: &str, actor: &str, action: &str) -> Result<(), ApiError> {
        {
            let _g = lock(&self.job_lock);
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
            "report": j.report,
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

    /// Finish: check completeness, rows and budget, join, release audiences.
    pub fn finish_job(
        &self,
        caller: &Caller,
        id: &str,
        batches: u32,
    ) -> Result<serde_json::Value, ApiError> {
        let job = self.own_open_job(caller, id)?;
        let _finishing = FinishGuard::take(self, id)?;
        let received: BTreeSet<u32> = self.repo.upload_numbers(id)?.into_iter().collect();
        let missing: Vec<String> = (0..batches)
            .filter(|b| !received.contains(b))
            .take(10)
            .map(|b| b.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(ApiError::Incomplete(format!(
                "batches missing: {}",
                missing.join(", ")
            )));
        }
        if let Some(extra) = received.iter().find(|&&b| b >= batches) {
            return Err(ApiError::Invalid(format!(
                "batch {extra} was uploaded but batches is {batches}"
            )));
        }
        for (kind, info) in &job.pass {
            let kind = kind_of(kind)?;
            for page in 0..info.pages {
                if !self.repo.page_done(id, kind, page)? {
                    return Err(ApiError::Incomplete(format!(
                        "graph pass: {kind} page {page} not returned"
                    )));
                }
            }
        }
        // Distinct identifiers, not rows: one email on 1,000 rows under
        // 1,000 labels is one identifier. Uploads are deterministic per
        // advertiser key, so equal identifiers are equal points here.
        let uploaded = timed(id, "uploaded points", || {
            self.uploaded_points(&job, batches)
        })?;
        if uploaded.wanted.len() < self.config.min_job_rows {
            self.fail_job(id, &caller.name, "job.fail.too-few-rows")?;
            return Err(ApiError::TooFewRows {
                rows: uploaded.wanted.len() as u64,
                min: self.config.min_job_rows,
            });
        }
        if uploaded.labels.len() > self.config.max_segments_per_job {
            self.fail_job(id, &caller.name, "job.fail.too-many-segments")?;
            return Err(self.too_many_segments(uploaded.labels.len()));
        }
        // Paid before the join, in one atomic step: nothing is released unpaid.
        let charged = match self.spend_budget(&caller.name, id, uploaded.released_values()) {
            Ok(charged) => charged,
            Err(e) => {
                self.fail_job(id, &caller.name, "job.fail.privacy-budget")?;
                return Err(e);
            }
        };
        let result = timed(id, "join and release", || {
            self.join_and_release(&job, batches, uploaded.wanted, charged)
        });
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                self.fail_job(id, &caller.name, "job.fail.internal")?;
                return Err(e);
            }
        };
        // Every page came back: this key now caches the whole version.
        let ns = cache_namespace(&job.advertiser, &job.key_fingerprint);
        for kind in job.pass.keys() {
            self.repo
                .set_cache_complete(&ns, job.graph_version, kind_of(kind)?)?;
        }
        {
            let _g = lock(&self.job_lock);
            let mut j = self.repo.job(id)?.ok_or(ApiError::NotFound("job"))?;
            j.status = "finished".into();
            // The end time: retention counts from here.
            j.touched = unix_now();
            j.report = Some(report.clone());
            self.repo.put_job(&j)?;
        }
        timed(id, "delete job data", || self.repo.delete_job_data(id))?;
        self.audit(&caller.name, "job.finish", id, "ok")?;
        // The report the advertiser receives describes audiences that survive a crash.
        timed(id, "flush", || self.repo.flush())?;
        Ok(report)
    }

    fn stored_batch(&self, job: &str, b: u32) -> Result<RecordBatch, ApiError> {
        let frame = self
            .repo
            .upload(job, b)?
            .ok_or_else(|| ApiError::Internal("upload vanished".into()))?;
        RecordBatch::decode(&frame).map_err(|e| ApiError::Internal(format!("stored batch: {e}")))
    }

    fn join_and_release(
        &self,
        job: &Job,
        batches: u32,
        mut wanted: Wanted,
        charged: Epsilon,
    ) -> Result<serde_json::Value, ApiError> {
        let graph = self
            .repo
            .current_graph()?
            .ok_or_else(|| ApiError::Internal("graph vanished".into()))?;
        let version = graph.version;
        let hits = timed(&job.id, "cached hits", || self.cached_hits(job, &wanted))?;
        timed(&job.id, "owners", || {
            self.resolve_owners(version, &hits, &mut wanted)
        })?;
        drop(hits);
        let identifiers = wanted.len() as u64;
        let matched_identifiers = wanted
            .values()
            .filter(|(_, person)| person.is_some())
            .count() as u64;
        let Joined {
            rows,
            segments: joined,
        } = timed(&job.id, "segments", || {
            self.tally_segments(job, batches, &wanted)
        })?;
        drop(wanted);
        let k = self.config.k;
        let margin = release::release_margin(self.config.epsilon);
        let now = unix_now();
        let ttl = self.config.audience_ttl.as_secs();
        let cookies = timed(&job.id, "cookies", || {
            self.cookies_of_segments(version, &job.destination, &joined)
        })?;
        // Per segment (on all cores): its members, and why it is withheld if it is.
        let mut candidates: Vec<Candidate> = timed(&job.id, "members", || {
            joined
                .par_iter()
                .map(|segment| self.candidate(segment, &cookies, margin))
                .collect()
        });
        let _g = lock(&self.audience_lock);
        timed(&job.id, "difference check", || {
            self.difference_check(job, now, margin, &mut candidates)
        })?;
        // Each audience is its own atomic write to its own files: on all cores.
        let audience_ids: Vec<Option<String>> = timed(&job.id, "audiences", || {
            candidates
                .par_iter()
                .map(|c| -> Result<_, ApiError> {
                    if c.reason.is_some() {
                        return Ok(None);
                    }
                    let a = Audience {
                        id: new_id("a-"),
                        segment: c.name.clone(),
                        advertiser: job.advertiser.clone(),
                        destination: job.destination.clone(),
                        job_id: job.id.clone(),
                        size: c
                            .members
                            .iter()
                            .map(|(_, cookies)| cookies.len() as u64)
                            .sum(),
                        created: rfc3339(now),
                        expires: rfc3339(now + ttl),
                        expires_unix: now + ttl,
                        pulled: false,
                    };
                    self.repo.create_audience(&a, &c.members)?;
                    // Crash test: an audience written, the job not yet finished.
                    crate::faults::crash_point!("finish-audience-written", self.repo);
                    Ok(Some(a.id))
                })
                .collect::<Result<_, _>>()
        })?;
        let mut segments = Vec::new();
        for (c, audience_id) in candidates.into_iter().zip(audience_ids) {
            segments.push(serde_json::json!({
                "name": c.name,
                "rows_uploaded": c.rows,
                "matched": c.shown,
                "status": if c.reason.is_none() { "delivered" } else { "withheld" },
                "reason": c.reason,
                "audience_id": audience_id,
            }));
        }
        Ok(serde_json::json!({
            "job_id": job.id,
            "status": "finished",
            "graph_version": version,
            "destination": job.destination,
            "rows_uploaded": rows,
            "identifiers": identifiers,
            "match_rate": self.noisy_match_rate(matched_identifiers, identifiers),
            "k": k,
            "epsilon_spent": charged,
            "segments": segments,
        }))
    }

    /// Join, step 1: the distinct uploaded `b·a·P(x)` of the job's kinds,
    /// and every segment label the batches name (batches decoded on all cores).
    fn uploaded_points(&self, job: &Job, batches: u32) -> Result<Uploaded, ApiError> {
        let kinds: Vec<MatchKind> = job
            .kinds
            .iter()
            .map(|k| kind_of(k))
            .collect::<Result<_, _>>()?;
        let per_batch: Vec<(UploadedPoints, Vec<String>)> = (0..batches)
            .into_par_iter()
            .map(|b| -> Result<_, ApiError> {
                let batch = self.stored_batch(&job.id, b)?;
                let points = batch
                    .kinds()
                    .iter()
                    .zip(batch.points())
                    .filter(|(kind, _)| kinds.contains(kind))
                    .map(|(kind, point)| (point.0, *kind))
                    .collect();
                Ok((points, batch.labels))
            })
            .collect::<Result<_, _>>()?;
        let mut wanted = uniform::map_with_capacity(per_batch.iter().map(|b| b.0.len()).sum());
        let mut labels = BTreeSet::new();
        for (points, batch_labels) in per_batch {
            for (point, kind) in points {
                wanted.entry(point).or_insert((kind, None));
            }
            labels.extend(batch_labels);
        }
        Ok(Uploaded { wanted, labels })
    }

    /// Join, step 2: every cached run of this key, on all cores: an
    /// `a·b·P(y)` equal to an upload gives `b·P(y)`, hence the person. Runs
    /// may overlap, so the hits are sorted by `b·P(y)` and deduplicated.
    fn cached_hits(&self, job: &Job, wanted: &Wanted) -> Result<Vec<Hit>, ApiError> {
        let ns = cache_namespace(&job.advertiser, &job.key_fingerprint);
        let run_keys = self.repo.cache_run_keys(&ns)?;
        let per_run: Vec<Vec<Hit>> = run_keys
            .par_iter()
            .map(|k| -> Result<_, ApiError> {
                Ok(self
                    .repo
                    .cache_run(&ns, k)?
                    .into_iter()
                    .filter_map(|(bpy, abpy)| wanted.get(&abpy.0).map(|slot| (bpy, slot.0, abpy.0)))
                    .collect())
            })
            .collect::<Result<_, _>>()?;
        let mut hits: Vec<Hit> = per_run.into_iter().flatten().collect();
        hits.par_sort_unstable_by_key(|h| h.0 .0);
        hits.dedup_by_key(|h| h.0 .0);
        Ok(hits)
    }

    /// Join, step 3: the owner of each hit, per kind in ordered passes over
    /// the graph (each core takes a sorted stretch of hits); opted-out points
    /// and suppressed persons count as none.
    fn resolve_owners(
        &self,
        version: u64,
        hits: &[Hit],
        wanted: &mut Wanted,
    ) -> Result<(), ApiError> {
        let suppressed: UniformSet<PersonKey> =
            self.repo.suppressed_persons(version)?.into_iter().collect();
        for kind in MatchKind::ALL {
            let of_kind: Vec<&Hit> = hits.iter().filter(|h| h.1 == kind).collect();
            if of_kind.is_empty() {
                continue;
            }
            let owned: Vec<Vec<([u8; 32], PersonKey)>> = of_kind
                .par_chunks(LOOKUP_STRETCH)
                .map(|stretch| self.live_owners(version, kind, stretch, &suppressed))
                .collect::<Result<_, _>>()?;
            for (abpy, person) in owned.into_iter().flatten() {
                if let Some(slot) = wanted.get_mut(&abpy) {
                    slot.1 = Some(person);
                }
            }
        }
        Ok(())
    }

    /// The live owners of a sorted stretch of hits: `(a·b·P(y), person)` for
    /// each hit whose point is not opted out and whose person is not suppressed.
    fn live_owners(
        &self,
        version: u64,
        kind: MatchKind,
        stretch: &[&Hit],
        suppressed: &UniformSet<PersonKey>,
    ) -> Result<Vec<([u8; 32], PersonKey)>, ApiError> {
        let points: Vec<PointBytes> = stretch.iter().map(|h| h.0).collect();
        let owners = self.repo.owners_of_sorted(version, kind, &points)?;
        let opted_out = self.opted_out_each(&points)?;
        Ok(stretch
            .iter()
            .zip(owners)
            .zip(opted_out)
            .filter_map(|((hit, owner), opted_out)| {
                let person = owner?;
                (!opted_out && !suppressed.contains(&person)).then_some((hit.2, person))
            })
            .collect())
    }

    /// Join, step 4: records to persons. A record counts once, via its first
    /// matching identifier (batches tallied on all cores, then merged; each
    /// segment's persons sorted and deduplicated on all cores).
    fn tally_segments(&self, job: &Job, batches: u32, wanted: &Wanted) -> Result<Joined, ApiError> {
        let tallies: Vec<BatchTally> = (0..batches)
            .into_par_iter()
            .map(|b| -> Result<_, ApiError> {
                Ok(BatchTally::of(&self.stored_batch(&job.id, b)?, wanted))
            })
            .collect::<Result<_, _>>()?;
        let mut per_segment: BTreeMap<String, (u64, Vec<PersonKey>)> = BTreeMap::new();
        let mut rows = 0u64;
        for t in tallies {
            rows += t.rows;
            for (label, (n, persons)) in t.labels.into_iter().zip(t.per_label) {
                if n == 0 {
                    continue;
                }
                let segment = per_segment.entry(label).or_default();
                segment.0 += n;
                segment.1.extend(persons);
            }
        }
        let segments = per_segment
            .into_iter()
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|(name, (rows, mut persons))| {
                persons.sort_unstable();
                persons.dedup();
                JoinedSegment {
                    name,
                    rows,
                    persons,
                }
            })
            .collect();
        Ok(Joined { rows, segments })
    }

    /// The destination's cookies of every person of every segment, sorted by
    /// person, in ordered passes over its cookie table. Small segments are
    /// looked up too: their reachable persons are noised and shown like any.
    fn cookies_of_segments(
        &self,
        version: u64,
        destination: &str,
        segments: &[JoinedSegment],
    ) -> Result<Vec<(PersonKey, Vec<SealedCookie>)>, ApiError> {
        let mut persons: Vec<PersonKey> = segments
            .iter()
            .flat_map(|s| s.persons.iter().copied())
            .collect();
        persons.par_sort_unstable();
        persons.dedup();
        let found: Vec<Vec<(PersonKey, Vec<SealedCookie>)>> = persons
            .par_chunks(LOOKUP_STRETCH)
            .map(|stretch| self.repo.cookies_of_sorted(version, destination, stretch))
            .collect::<Result<_, _>>()?;
        Ok(found.into_iter().flatten().collect())
    }

    /// One segment's members (the destination's cookies of its persons), its
    /// noisy size as shown, and the size rule's verdict on that noisy size;
    /// the difference check comes after.
    fn candidate<'c>(
        &self,
        segment: &JoinedSegment,
        cookies: &'c [(PersonKey, Vec<SealedCookie>)],
        margin: u64,
    ) -> Candidate<'c> {
        // Both sorted by person: one merge. Member names (hex) keep that order.
        let mut members: Vec<(String, &'c [SealedCookie])> = Vec::new();
        let mut rest = cookies;
        for p in &segment.persons {
            let skip = rest.partition_point(|(c, _)| c < p);
            rest = &rest[skip..];
            if let Some((c, sealed)) = rest.first() {
                if c == p {
                    members.push((Self::member_name(p), sealed.as_slice()));
                }
            }
        }
        let k = self.config.k;
        let noisy = self.noisy_count(members.len() as u64);
        Candidate {
            name: segment.name.clone(),
            rows: segment.rows,
            shown: shown_count(noisy, k),
            reason: release::size_withheld(members.len(), noisy, k, margin),
            members,
        }
    }

    /// Withhold every candidate whose person set differs from a live
    /// audience of the same advertiser and destination by fewer than `k`
    /// persons, **zero included**, or whose smallest such difference, noised,
    /// does not clear `k` by the release margin (see `release.rs`): earlier
    /// audiences (each read once, one at a time, so memory does not grow
    /// with their number), then the candidates released before it in this
    /// job, in segment order.
    ///
    /// Zero counts as too close because otherwise `Base` and `Base+target`
    /// would come back "delivered, withheld" when the target is in the graph
    /// and "delivered, delivered" (identical sets) when it is not; the noise
    /// keeps nested segments from finding the exact row at which a
    /// difference reaches `k`.
    fn difference_check(
        &self,
        job: &Job,
        now: u64,
        margin: u64,
        candidates: &mut [Candidate],
    ) -> Result<(), ApiError> {
        let k = self.config.k;
        // Per candidate: its smallest difference from an earlier audience.
        let mut closest: Vec<Option<usize>> = vec![None; candidates.len()];
        for earlier in self
            .repo
            .audiences_of(&job.advertiser, &job.destination)?
            .iter()
            .filter(|a| a.expires_unix > now)
        {
            // The merge below wants sorted, distinct names.
            let mut other = self.repo.audience_persons(&earlier.id)?;
            other.sort_unstable();
            other.dedup();
            for (c, best) in candidates.iter().zip(closest.iter_mut()) {
                if c.reason.is_none() {
                    let d = symmetric_difference(c.names(), &other);
                    *best = Some(best.map_or(d, |b| b.min(d)));
                }
            }
        }
        for i in 0..candidates.len() {
            if candidates[i].reason.is_some() {
                continue;
            }
            let (released, rest) = candidates.split_at_mut(i);
            let c = &mut rest[0];
            let in_job = released
                .iter()
                .filter(|r| r.reason.is_none())
                .map(|r| symmetric_difference(c.names(), r.names()))
                .min();
            let smallest = match (closest[i], in_job) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            // No earlier audience (which the advertiser knows): nothing to compare.
            let Some(d) = smallest else { continue };
            let noisy = self.noisy_count(d as u64);
            if release::too_close(d, noisy, k, margin) {
                c.reason = Some("too-close-to-earlier-audience");
            }
        }
        Ok(())
    }
}

/// Run one step of the finish and log how long it took (debug level: for
/// an operator sizing the finish of large jobs; job ids only, no data).
fn timed<T>(job: &str, step: &'static str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    let ms = started.elapsed().as_secs_f64() * 1e3;
    tracing::debug!(job, step, ms = format!("{ms:.1}"), "finish step");
    out
}

/// The job's distinct uploaded `b·a·P(x)`: kind, and the live person behind
/// it once the join has found one.
type Wanted = UniformMap<[u8; 32], (MatchKind, Option<PersonKey>)>;

/// One batch's uploaded `b·a·P(x)` of the job's kinds, with their kinds.
type UploadedPoints = Vec<([u8; 32], MatchKind)>;

/// What a job uploaded, as the finish sees it before the join.
struct Uploaded {
    wanted: Wanted,
    /// Every segment label named by the batches.
    labels: BTreeSet<String>,
}

impl Uploaded {
    /// Noisy values the job's report releases, each paid for with ε: per
    /// segment its reachable-person count and its smallest difference from
    /// earlier audiences, and the match rate's matched count. Counted from
    /// the labels alone, so the charge says nothing about the graph.
    fn released_values(&self) -> u64 {
        2 * self.labels.len() as u64 + 1
    }
}

/// A cached `a·b·P(y)` equal to an upload: `(b·P(y), kind, a·b·P(y))`.
type Hit = (PointBytes, MatchKind, [u8; 32]);

/// What the join found, before the release rules.
struct Joined {
    rows: u64,
    /// In segment-name order.
    segments: Vec<JoinedSegment>,
}

/// One segment after the join.
struct JoinedSegment {
    name: String,
    rows: u64,
    /// The persons of its matched rows: sorted, distinct.
    persons: Vec<PersonKey>,
}

/// One stored batch's share of the join: rows and matched persons per label.
struct BatchTally {
    rows: u64,
    labels: Vec<String>,
    /// Per label (same order): rows, and the persons of its matched rows.
    per_label: Vec<(u64, Vec<PersonKey>)>,
}

impl BatchTally {
    fn of(batch: &RecordBatch, wanted: &Wanted) -> Self {
        // A label index past the table (never in a decoded frame) counts as "".
        let mut labels = batch.labels.clone();
        labels.push(String::new());
        let unknown = labels.len() - 1;
        let mut per_label = vec![(0u64, Vec::new()); labels.len()];
        let mut rows = 0;
        for r in batch.records() {
            rows += 1;
            let person = r
                .points
                .iter()
                .find_map(|p| wanted.get(&p.0).and_then(|(_, person)| *person));
            for &s in r.segments {
                let slot = &mut per_label[usize::from(s).min(unknown)];
                slot.0 += 1;
                if let Some(p) = person {
                    slot.1.push(p);
                }
            }
        }
        Self {
            rows,
            labels,
            per_label,
        }
    }
}

/// A segment of a finishing job on its way to becoming an audience.
struct Candidate<'c> {
    name: String,
    rows: u64,
    shown: String,
    /// Member names (sorted) with their sealed cookies.
    members: Vec<(String, &'c [SealedCookie])>,
    reason: Option<&'static str>,
}

impl Candidate<'_> {
    fn names(&self) -> impl Iterator<Item = &String> {
        self.members.iter().map(|(name, _)| name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(i: u32) -> PointBytes {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&i.to_be_bytes());
        b[31] = 1;
        PointBytes(b)
    }

    fn pair(i: u32) -> (PointBytes, PointBytes) {
        let mut ab = point(i);
        ab.0[30] = 9;
        (point(i), ab)
    }

    #[test]
    fn cache_merge_yields_overlapping_runs_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let repo = crate::storage::open(dir.path()).unwrap();
        let services = Services::new(
            repo,
            crate::config::Config::default(),
            crate::keyfiles::ServerSecrets::derive_for_tests("merge"),
        )
        .unwrap();
        let ns = [1u8; 16];
        let other = [2u8; 16];
        // Runs that interleave and overlap (and one re-sent), out of order.
        let runs: Vec<Vec<u32>> = vec![
            (0..50).map(|i| i * 3).collect(),
            (0..40).map(|i| i * 5 + 1).collect(),
            vec![2, 3, 4, 5, 6, 7],
            (0..50).map(|i| i * 3).collect(),
            vec![500, 400, 300],
        ];
        let mut expected = BTreeSet::new();
        for r in &runs {
            let pairs: Vec<_> = r.iter().map(|&i| pair(i)).collect();
            services.repo.cache_put(&ns, &pairs).unwrap();
            expected.extend(r.iter().copied());
        }
        services.repo.cache_put(&other, &[pair(1000)]).unwrap();
        let mut merge = CacheMerge::new(&services, ns);
        let mut got = Vec::new();
        while let Some((b, ab)) = merge.next_pair().unwrap() {
            assert_eq!(
                (b, ab),
                pair(u32::from_be_bytes(b.0[..4].try_into().unwrap()))
            );
            got.push(u32::from_be_bytes(b.0[..4].try_into().unwrap()));
        }
        assert_eq!(got, expected.iter().copied().collect::<Vec<_>>());
        let mut cursor = CacheCursor::new(&services, ns);
        for i in 0..600 {
            assert_eq!(
                cursor.contains(&point(i)).unwrap(),
                expected.contains(&i),
                "{i}"
            );
        }
        for i in [0, 7, 300, 500] {
            assert!(services.repo.cache_contains(&ns, &point(i)).unwrap());
        }
        assert!(!services.repo.cache_contains(&ns, &point(8)).unwrap());
        assert!(!services.repo.cache_contains(&ns, &point(1000)).unwrap());
    }
}
