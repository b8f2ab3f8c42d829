//! The advertiser's match pipeline, as a library: a local data-quality pass
//! over the CRM export (no crypto, nothing sent), then the job of
//! docs/api.md — create, graph pass (re-blind the server's `b·P(y)` with the
//! advertiser key), upload of shuffled `a·P(x)` record batches while the next
//! batch is being blinded, finish — and the server's report.

use crate::api::{segment, ApiClient, Body};
use crate::csv_input::{field, parse_consent, split_segments, CsvReader};
use crate::error::ClientError;
use crate::progress::{NoProgress, ProgressSink};
use csv::ByteRecord;
use onboard_protocol::wire::{
    PointPage, RecordBatch, MAX_IDS_PER_RECORD, MAX_LABEL_BYTES, MAX_RECORDS_PER_BATCH,
    MAX_SEGMENTS_PER_RECORD,
};
use onboard_protocol::{
    blind, normalize, Digest, IdKind, MatchKind, NormalizeError, Region, SecretKey,
};
use rand::seq::SliceRandom;
use rayon::prelude::*;
use reqwest::Method;
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Instant;

/// Row numbers kept per problem in the quality report.
pub const FIRST_ROWS_KEPT: usize = 5;
/// Records per uploaded batch unless told otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 8192;
/// Rows classified per parallel chunk in the quality pass.
const QUALITY_CHUNK: usize = 8192;
/// Graph pages in flight at once (network overlaps crypto).
const GRAPH_WORKERS: usize = 3;
/// Progress phase names of the two halves of the exchange.
const GRAPH_PHASE: &str = "graph pass";
const UPLOAD_PHASE: &str = "upload";

/// What to match and how.
#[derive(Debug, Clone)]
pub struct MatchOptions {
    /// The CRM export.
    pub input: PathBuf,
    /// The advertiser's key file (`onboard keygen`).
    pub key_file: PathBuf,
    /// The destination the audiences are for.
    pub destination: String,
    /// Columns holding email addresses.
    pub email_cols: Vec<String>,
    /// Columns holding phone numbers.
    pub phone_cols: Vec<String>,
    /// Columns holding mobile ad IDs.
    pub maid_cols: Vec<String>,
    /// Columns holding SHA-256 of normalised emails.
    pub email_sha256_cols: Vec<String>,
    /// Columns holding SHA-256 of normalised E.164 phones.
    pub phone_sha256_cols: Vec<String>,
    /// The column with the segment(s), several separated by `|`.
    pub segment_col: String,
    /// The consent column, if any; rows without consent are dropped.
    pub consent_col: Option<String>,
    /// Default region of phone numbers without a country code.
    pub region: Region,
    /// Only the quality pass: nothing is sent.
    pub dry_run: bool,
    /// Records per batch.
    pub batch_size: usize,
    /// Progress bars on stderr (when it is a terminal).
    pub show_progress: bool,
}

impl MatchOptions {
    /// Options with no identifier column yet and defaults elsewhere.
    pub fn new(
        input: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
        destination: &str,
        segment_col: &str,
    ) -> Self {
        Self {
            input: input.into(),
            key_file: key_file.into(),
            destination: destination.to_owned(),
            email_cols: vec![],
            phone_cols: vec![],
            maid_cols: vec![],
            email_sha256_cols: vec![],
            phone_sha256_cols: vec![],
            segment_col: segment_col.to_owned(),
            consent_col: None,
            region: Region::default(),
            dry_run: false,
            batch_size: DEFAULT_BATCH_SIZE,
            show_progress: false,
        }
    }

    fn id_columns(&self) -> Vec<(IdKind, &str)> {
        let mut out = Vec::new();
        for (kind, cols) in [
            (IdKind::Email, &self.email_cols),
            (IdKind::Phone, &self.phone_cols),
            (IdKind::Maid, &self.maid_cols),
            (IdKind::EmailSha256, &self.email_sha256_cols),
            (IdKind::PhoneSha256, &self.phone_sha256_cols),
        ] {
            out.extend(cols.iter().map(|c| (kind, c.as_str())));
        }
        out
    }
}

/// How many rows had one problem, and the first few of them (line numbers
/// in the file, the header being line 1). Never the values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowIssue {
    /// Rows with the problem.
    pub count: u64,
    /// Line numbers of the first few.
    pub first_rows: Vec<u64>,
}

impl RowIssue {
    fn add(&mut self, line: u64) {
        self.count += 1;
        if self.first_rows.len() < FIRST_ROWS_KEPT {
            self.first_rows.push(line);
        }
    }
}

/// Quality of one identifier column.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnQuality {
    /// Column name as given.
    pub column: String,
    /// Identifier kind of the column.
    pub kind: String,
    /// Valid values (among rows with consent).
    pub valid: u64,
    /// Empty cells.
    pub empty: u64,
    /// Invalid values by reason code (`NormalizeError::code`, or `not-utf8`).
    pub invalid: BTreeMap<String, RowIssue>,
}

/// Local counts of one segment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentQuality {
    /// Rows naming the segment.
    pub rows: u64,
    /// Of those, rows that will be uploaded.
    pub rows_to_upload: u64,
    /// Of those, rows dropped or rejected locally (no consent, bad consent
    /// value, no valid identifier, duplicate).
    pub rows_rejected: u64,
}

/// The data-quality pass: computed locally, nothing sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QualityReport {
    /// The input file.
    pub input: String,
    /// Detected delimiter (`,`, `;` or `\t`).
    pub delimiter: String,
    /// Data rows read (header excluded, blank lines skipped).
    pub rows_read: u64,
    /// Rows whose consent is false: dropped before blinding.
    pub rows_without_consent: u64,
    /// Rows whose consent cell is not a known yes/no value.
    pub bad_consent: RowIssue,
    /// Rows (with consent) without any segment.
    pub rows_without_segment: RowIssue,
    /// Rows whose segment cell is unusable (label too long, control characters, too many).
    pub bad_segment: RowIssue,
    /// Rows (with consent and segments) without any valid identifier.
    pub rows_without_identifier: RowIssue,
    /// Rows repeating an earlier row (same identifier digests and segments).
    pub duplicate_rows: RowIssue,
    /// Rows that will be uploaded.
    pub rows_to_upload: u64,
    /// Valid identifiers in those rows.
    pub identifiers_to_upload: u64,
    /// Match kinds present in the rows to upload.
    pub kinds: Vec<String>,
    /// Per identifier column.
    pub columns: Vec<ColumnQuality>,
    /// Per segment.
    pub segments: BTreeMap<String, SegmentQuality>,
}

/// One segment in the server's report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SegmentReport {
    /// Segment name.
    pub name: String,
    /// Rows uploaded for it.
    #[serde(default)]
    pub rows_uploaded: u64,
    /// Matched people: a noisy count, or `< k`.
    #[serde(default, deserialize_with = "text")]
    pub matched: String,
    /// `delivered` or `withheld`.
    #[serde(default)]
    pub status: String,
    /// Why withheld.
    #[serde(default)]
    pub reason: Option<String>,
    /// The audience, when delivered.
    #[serde(default)]
    pub audience_id: Option<String>,
}

/// The server's job report (docs/api.md), as received.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobReport {
    /// The job.
    pub job_id: String,
    /// `finished` (or `failed`).
    #[serde(default)]
    pub status: String,
    /// Graph version matched against.
    #[serde(default)]
    pub graph_version: u64,
    /// Destination.
    #[serde(default)]
    pub destination: String,
    /// Rows uploaded.
    #[serde(default)]
    pub rows_uploaded: u64,
    /// Match rate in whole percent (`62%`, `> 85%`).
    #[serde(default, deserialize_with = "text")]
    pub match_rate: String,
    /// Minimum audience size.
    #[serde(default)]
    pub k: u64,
    /// Privacy budget spent by this report.
    #[serde(default)]
    pub epsilon_spent: f64,
    /// Per segment.
    #[serde(default)]
    pub segments: Vec<SegmentReport>,
    /// Fields this client does not know yet.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A string or a number on the wire, kept as text.
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    })
}

/// What a match run produced.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MatchOutcome {
    /// The local quality pass.
    pub quality: QualityReport,
    /// The server's report (`None` on a dry run).
    pub report: Option<JobReport>,
    /// The job, when one was created.
    pub job_id: Option<String>,
    /// Graph points re-blinded in the graph pass.
    pub graph_points_blinded: u64,
    /// Graph pages re-blinded.
    pub graph_pages: u64,
    /// Record batches uploaded.
    pub batches_uploaded: u32,
    /// Records uploaded.
    pub records_uploaded: u64,
    /// Identifiers hashed to the curve and blinded.
    pub identifiers_blinded: u64,
    /// Wall time per phase in seconds, in order: `quality`, `create`,
    /// `graph-pass`, `upload`, `finish` (only the phases that ran).
    pub timings: Vec<(&'static str, f64)>,
}

/// Run the whole match: quality pass, then (unless `dry_run`) the job.
pub fn run_match(api: &ApiClient, opts: &MatchOptions) -> Result<MatchOutcome, ClientError> {
    let sink = crate::commands::progress::Bars::new_sink(opts.show_progress);
    run_match_with(api, opts, sink.as_ref())
}

/// [`run_match`] reporting progress to `progress`.
pub fn run_match_with(
    api: &ApiClient,
    opts: &MatchOptions,
    progress: &dyn ProgressSink,
) -> Result<MatchOutcome, ClientError> {
    let Some((key, selected, mut outcome)) = prepare(opts, progress)? else {
        return dry_outcome(opts, progress);
    };
    let t = Instant::now();
    let job: JobCreated = api.call_json(
        Method::POST,
        "/v1/jobs",
        &Body::json(&serde_json::json!({
            "destination": opts.destination,
            "kinds": outcome.quality.kinds,
            "key_fingerprint": key.fingerprint().to_string(),
        })),
    )?;
    outcome.job_id = Some(job.job_id.clone());
    outcome.timings.push(("create", t.elapsed().as_secs_f64()));
    tracing::info!(job = %job.job_id, graph_version = job.graph_version, "job created");
    let acked = AtomicU32::new(0);
    let job_id = job.job_id.clone();
    let result = exchange_and_finish(
        api,
        opts,
        &key,
        Upload {
            job_id: &job_id,
            selected: &selected,
            skip: 0,
            acked: &acked,
        },
        Some(job),
        progress,
        &mut outcome,
    );
    finish_or_keep(api, &job_id, result, &acked, progress, outcome)
}

/// Continue an interrupted job: graph-pass pages the server has not
/// acknowledged are done again, then the batches from the first one the
/// server is missing are blinded and sent, then the job is finished. `opts` must describe the
/// same file and columns as the interrupted run.
pub fn resume_match(
    api: &ApiClient,
    opts: &MatchOptions,
    job_id: &str,
    progress: &dyn ProgressSink,
) -> Result<MatchOutcome, ClientError> {
    if opts.dry_run {
        return Err(ClientError::Usage(
            "--resume and --dry-run exclude each other".into(),
        ));
    }
    let job = crate::jobs::get_job(api, job_id)?;
    if job.status != "open" {
        return Err(ClientError::Usage(format!(
            "job {job_id} is {}; only an open job can be resumed",
            job.status
        )));
    }
    if !job.destination.is_empty() && job.destination != opts.destination {
        return Err(ClientError::Usage(format!(
            "job {job_id} is for destination `{}`, not `{}`",
            job.destination, opts.destination
        )));
    }
    let Some((key, selected, mut outcome)) = prepare(opts, progress)? else {
        unreachable!("not a dry run")
    };
    outcome.job_id = Some(job_id.to_owned());
    // Pages the server never acknowledged are done again (page uploads are idempotent).
    let pass = job
        .graph_pass
        .values()
        .any(|p| p.done < p.pages)
        .then(|| JobCreated {
            job_id: job_id.to_owned(),
            graph_version: 0,
            page_size: None,
            graph_pass: job
                .graph_pass
                .iter()
                .map(|(kind, p)| {
                    (
                        kind.clone(),
                        GraphPassInfo {
                            pages: p.pages,
                            points: p.points,
                        },
                    )
                })
                .collect(),
        });
    // Batches may have arrived out of order: resume at the first one missing;
    // re-sent batches are byte-identical and answered as duplicates.
    let first_missing = job.next_batch.unwrap_or(job.batches);
    let skip = u32::try_from(first_missing).map_err(|_| {
        ClientError::Protocol(format!("job {job_id} reports batch {first_missing}"))
    })?;
    let acked = AtomicU32::new(skip);
    let result = exchange_and_finish(
        api,
        opts,
        &key,
        Upload {
            job_id,
            selected: &selected,
            skip,
            acked: &acked,
        },
        pass,
        progress,
        &mut outcome,
    );
    finish_or_keep(api, job_id, result, &acked, progress, outcome)
}

/// Key, quality pass and row selection; `None` on a dry run.
#[allow(clippy::type_complexity)]
fn prepare(
    opts: &MatchOptions,
    progress: &dyn ProgressSink,
) -> Result<Option<(SecretKey, RowSet, MatchOutcome)>, ClientError> {
    if opts.batch_size == 0 || opts.batch_size > MAX_RECORDS_PER_BATCH {
        return Err(ClientError::Usage(format!(
            "batch size must be between 1 and {MAX_RECORDS_PER_BATCH}"
        )));
    }
    if opts.dry_run {
        return Ok(None);
    }
    if opts.destination.trim().is_empty() {
        return Err(ClientError::Usage("--destination must not be empty".into()));
    }
    let key = load_key(&opts.key_file)?;
    let started = Instant::now();
    let (quality, selected) = quality_pass_with(opts, progress)?;
    let mut outcome = MatchOutcome {
        quality,
        ..MatchOutcome::default()
    };
    outcome
        .timings
        .push(("quality", started.elapsed().as_secs_f64()));
    if outcome.quality.rows_to_upload == 0 {
        return Err(ClientError::BadInput {
            path: opts.input.clone(),
            message: "no row can be uploaded (see the data-quality report)".into(),
        });
    }
    Ok(Some((key, selected, outcome)))
}

fn dry_outcome(
    opts: &MatchOptions,
    progress: &dyn ProgressSink,
) -> Result<MatchOutcome, ClientError> {
    let started = Instant::now();
    let (quality, _) = quality_pass_with(opts, progress)?;
    let mut outcome = MatchOutcome {
        quality,
        ..MatchOutcome::default()
    };
    outcome
        .timings
        .push(("quality", started.elapsed().as_secs_f64()));
    Ok(outcome)
}

/// Where the upload of a job stands: batches below `skip` were acknowledged
/// by an earlier run; `acked` follows the acknowledged prefix.
#[derive(Clone, Copy)]
struct Upload<'a> {
    job_id: &'a str,
    selected: &'a RowSet,
    skip: u32,
    acked: &'a AtomicU32,
}

/// The graph pass (if `pass` has pages to do) and the upload at the same
/// time, then finish. The two share no state on either side, and running
/// them together lets one's network and storage waits be filled with the
/// other's curve arithmetic. The first failure stops both.
fn exchange_and_finish(
    api: &ApiClient,
    opts: &MatchOptions,
    key: &SecretKey,
    up: Upload<'_>,
    pass: Option<JobCreated>,
    progress: &dyn ProgressSink,
    outcome: &mut MatchOutcome,
) -> Result<JobReport, ClientError> {
    let stop = AtomicBool::new(false);
    let rows = outcome.quality.rows_to_upload;
    let started = Instant::now();
    let (graph, uploaded) = std::thread::scope(|s| {
        let graph = pass.as_ref().map(|job| {
            s.spawn(|| {
                let r = graph_pass(api, key, job, progress, &stop);
                if r.is_err() {
                    stop.store(true, Ordering::SeqCst);
                }
                (r, started.elapsed().as_secs_f64())
            })
        });
        let r = upload(api, opts, key, up, rows, progress, &stop);
        if r.is_err() {
            stop.store(true, Ordering::SeqCst);
        }
        let uploaded = (r, started.elapsed().as_secs_f64());
        let graph = graph.map(|h| h.join().expect("graph pass panicked"));
        (graph, uploaded)
    });
    // A graph-pass failure stops the upload short, so it is the one to report.
    if let Some((r, secs)) = graph {
        let (pages, points) = r?;
        outcome.graph_pages = pages;
        outcome.graph_points_blinded = points;
        outcome.timings.push(("graph-pass", secs));
    }
    let ((batches, records, ids), secs) = (uploaded.0?, uploaded.1);
    outcome.batches_uploaded = batches;
    outcome.records_uploaded = records;
    outcome.identifiers_blinded = ids;
    outcome.timings.push(("upload", secs));

    let t = Instant::now();
    let report: JobReport = api.call_json(
        Method::POST,
        &format!("/v1/jobs/{}/finish", segment(up.job_id)),
        &Body::json(&serde_json::json!({ "batches": batches })),
    )?;
    outcome.timings.push(("finish", t.elapsed().as_secs_f64()));
    Ok(report)
}

/// On success attach the report. On a network failure after some batches
/// were acknowledged, keep the job open so that it can be resumed; on any
/// other failure abort it (the server deletes its uploads).
fn finish_or_keep(
    api: &ApiClient,
    job_id: &str,
    result: Result<JobReport, ClientError>,
    acked: &AtomicU32,
    progress: &dyn ProgressSink,
    mut outcome: MatchOutcome,
) -> Result<MatchOutcome, ClientError> {
    let e = match result {
        Ok(report) => {
            outcome.report = Some(report);
            return Ok(outcome);
        }
        Err(e) => e,
    };
    progress.end(GRAPH_PHASE);
    progress.end(UPLOAD_PHASE);
    let acknowledged = acked.load(Ordering::SeqCst);
    let network = matches!(
        e,
        ClientError::Unreachable { .. } | ClientError::Transport { .. }
    ) || e.api().is_some_and(|a| a.status >= 500);
    if network && acknowledged > 0 {
        return Err(ClientError::Interrupted {
            job_id: job_id.to_owned(),
            acknowledged_batches: acknowledged,
            source: Box::new(e),
        });
    }
    let _ = api.send(
        Method::DELETE,
        &format!("/v1/jobs/{}", segment(job_id)),
        &[],
        &Body::Empty,
        None,
    );
    Err(e)
}

/// Read and parse the advertiser key file, refusing one that is not safely
/// the user's own ([`crate::secret_file`]: no symlink, regular, owned, 0600).
pub fn load_key(path: &Path) -> Result<SecretKey, ClientError> {
    let text = crate::secret_file::read_key_file(path)?;
    SecretKey::from_file_string(&text).map_err(|source| ClientError::Key {
        path: path.to_owned(),
        source,
    })
}

#[derive(Debug, Deserialize)]
struct JobCreated {
    job_id: String,
    #[serde(default)]
    graph_version: u64,
    /// Points per graph-pass page, as the server announced it (not known on resume).
    #[serde(default)]
    page_size: Option<u32>,
    #[serde(default)]
    graph_pass: BTreeMap<String, GraphPassInfo>,
}

#[derive(Debug, Deserialize)]
struct GraphPassInfo {
    #[serde(default)]
    pages: u32,
    #[serde(default)]
    points: u64,
}

/// Which column is what, resolved against the header.
struct Plan {
    ids: Vec<(usize, IdKind)>,
    segment: usize,
    consent: Option<usize>,
    region: Region,
}

impl Plan {
    fn resolve(reader: &CsvReader, opts: &MatchOptions) -> Result<Self, ClientError> {
        let cols = opts.id_columns();
        if cols.is_empty() {
            return Err(ClientError::Usage(
                "name at least one identifier column (--email-col, --phone-col, --maid-col, --email-sha256-col or --phone-sha256-col)".into(),
            ));
        }
        if cols.len() > MAX_IDS_PER_RECORD {
            return Err(ClientError::Usage(format!(
                "at most {MAX_IDS_PER_RECORD} identifier columns"
            )));
        }
        let mut ids = Vec::with_capacity(cols.len());
        for (kind, name) in cols {
            ids.push((reader.column(name)?, kind));
        }
        Ok(Self {
            ids,
            segment: reader.column(&opts.segment_col)?,
            consent: opts
                .consent_col
                .as_deref()
                .map(|c| reader.column(c))
                .transpose()?,
            region: opts.region,
        })
    }

    /// Classify one CSV record into a recycled `row`, reusing its buffers.
    fn classify_into(&self, row: &mut Row, line: u64, record: &ByteRecord) {
        row.line = line;
        row.state = match self.consent {
            None => RowState::Ok,
            Some(c) => match field(record, c).ok().and_then(parse_consent) {
                Some(true) => RowState::Ok,
                Some(false) => RowState::NoConsent,
                None => RowState::BadConsent,
            },
        };
        let segs = field(record, self.segment)
            .ok()
            .map(split_segments)
            .filter(|segs| segments_usable(segs));
        row.segments_bad = segs.is_none();
        row.set_segments(segs.as_deref().unwrap_or_default());
        row.ids.clear();
        row.valid_cols.clear();
        row.empty_cols.clear();
        row.invalid.clear();
        if row.state != RowState::Ok {
            return; // Never look at the identifiers of rows without consent.
        }
        for (col_no, &(index, kind)) in self.ids.iter().enumerate() {
            match field(record, index) {
                Ok(cell) if cell.trim().is_empty() => row.empty_cols.push(col_no),
                Ok(cell) => match normalize(kind, cell, self.region) {
                    Ok(n) => {
                        if !row.ids.iter().any(|&(k, d)| k == n.kind && d == n.digest) {
                            row.ids.push((n.kind, n.digest));
                        }
                        row.valid_cols.push(col_no);
                    }
                    Err(e) => row.invalid.push((col_no, Some(e))),
                },
                Err(_) => row.invalid.push((col_no, None)),
            }
        }
    }
}

/// Whether a row's segments can be uploaded (within the wire's limits, no
/// control characters).
fn segments_usable(segs: &[&str]) -> bool {
    segs.len() <= MAX_SEGMENTS_PER_RECORD
        && segs
            .iter()
            .all(|s| s.len() <= MAX_LABEL_BYTES && !s.chars().any(char::is_control))
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum RowState {
    #[default]
    Ok,
    NoConsent,
    BadConsent,
}

#[derive(Default)]
struct Row {
    line: u64,
    state: RowState,
    segments: Vec<String>,
    segments_bad: bool,
    ids: Vec<(MatchKind, Digest)>,
    valid_cols: Vec<usize>,
    empty_cols: Vec<usize>,
    invalid: Vec<(usize, Option<NormalizeError>)>,
}

impl Row {
    fn uploadable(&self) -> bool {
        self.state == RowState::Ok
            && !self.segments_bad
            && !self.segments.is_empty()
            && !self.ids.is_empty()
    }

    /// Replace the segments, reusing the buffers of the strings already there.
    fn set_segments(&mut self, segs: &[&str]) {
        self.segments.truncate(segs.len());
        for (i, s) in segs.iter().enumerate() {
            match self.segments.get_mut(i) {
                Some(kept) => {
                    kept.clear();
                    kept.push_str(s);
                }
                None => self.segments.push((*s).to_owned()),
            }
        }
    }

    /// Identity of the row for duplicate detection: its digest set and segments.
    fn fingerprint(&self) -> Fingerprint {
        let mut h = Sha256::new();
        for (k, d) in sorted(&self.ids) {
            h.update([k.to_byte()]);
            h.update(d.as_bytes());
        }
        for s in sorted(&self.segments) {
            h.update((s.len() as u32).to_be_bytes());
            h.update(s.as_bytes());
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.finalize()[..16]);
        Fingerprint(out)
    }
}

/// The most items [`sorted`] sorts: a row's ids or segments (the wire's limits).
const MAX_SORTED: usize = if MAX_IDS_PER_RECORD > MAX_SEGMENTS_PER_RECORD {
    MAX_IDS_PER_RECORD
} else {
    MAX_SEGMENTS_PER_RECORD
};

/// `items` in sorted order, without allocating: their indices are sorted on
/// the stack (at most [`MAX_SORTED`] of them).
fn sorted<T: Ord>(items: &[T]) -> impl Iterator<Item = &T> {
    let mut order = [0u8; MAX_SORTED];
    let n = items.len();
    for (i, slot) in order[..n].iter_mut().enumerate() {
        *slot = i as u8;
    }
    order[..n].sort_unstable_by_key(|&i| &items[usize::from(i)]);
    order
        .into_iter()
        .take(n)
        .map(move |i| &items[usize::from(i)])
}

/// A row's identity: the first 16 bytes of a SHA-256 of its content.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Fingerprint([u8; 16]);

impl Hash for Fingerprint {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(&self.0);
    }
}

/// Hashes a [`Fingerprint`] to its first 8 bytes. Safe because fingerprints
/// are SHA-256 outputs: uniformly distributed, and rows cannot be chosen to
/// collide in the table short of brute-forcing SHA-256 (nor would anyone
/// attack their own file), so SipHash's protection buys nothing here.
#[derive(Default)]
struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut first = [0u8; 8];
        let n = bytes.len().min(8);
        first[..n].copy_from_slice(&bytes[..n]);
        self.0 = u64::from_le_bytes(first);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type FingerprintSet = HashSet<Fingerprint, BuildHasherDefault<FingerprintHasher>>;

/// The sequential part of the quality pass: counts classified rows in file
/// order, which decides the line numbers reported and which of identical
/// rows is uploaded (the first).
struct Tally {
    q: QualityReport,
    seen: FingerprintSet,
    kinds: BTreeSet<MatchKind>,
    selected: RowSet,
}

impl Tally {
    fn new(q: QualityReport) -> Self {
        Self {
            q,
            // Sized for a chunk, then grown with the file: sized for the
            // whole file up front it peaks lower in memory but measured
            // slower, as every insert then misses the cache.
            seen: FingerprintSet::with_capacity_and_hasher(QUALITY_CHUNK, Default::default()),
            kinds: BTreeSet::new(),
            selected: RowSet::default(),
        }
    }

    /// Count the next rows of the file (see [`Tally::row`]).
    fn rows(&mut self, rows: &[(Row, Option<Fingerprint>)]) {
        for (row, fingerprint) in rows {
            self.row(row, *fingerprint);
        }
    }

    /// Count one classified row in the report and choose whether it is
    /// uploaded. `fingerprint` is set for uploadable rows.
    fn row(&mut self, row: &Row, fingerprint: Option<Fingerprint>) {
        let q = &mut self.q;
        q.rows_read += 1;
        let mut upload = false;
        match row.state {
            RowState::NoConsent => q.rows_without_consent += 1,
            RowState::BadConsent => q.bad_consent.add(row.line),
            RowState::Ok => {
                for &col in &row.valid_cols {
                    q.columns[col].valid += 1;
                }
                for &col in &row.empty_cols {
                    q.columns[col].empty += 1;
                }
                for &(col, err) in &row.invalid {
                    let code = err.map(|e| e.code()).unwrap_or("not-utf8");
                    q.columns[col]
                        .invalid
                        .entry(code.to_owned())
                        .or_default()
                        .add(row.line);
                }
                if row.segments_bad {
                    q.bad_segment.add(row.line);
                } else if row.segments.is_empty() {
                    q.rows_without_segment.add(row.line);
                } else if row.ids.is_empty() {
                    q.rows_without_identifier.add(row.line);
                } else if fingerprint.is_some_and(|f| !self.seen.insert(f)) {
                    q.duplicate_rows.add(row.line);
                } else {
                    debug_assert!(row.uploadable());
                    upload = true;
                    q.rows_to_upload += 1;
                    q.identifiers_to_upload += row.ids.len() as u64;
                    self.kinds.extend(row.ids.iter().map(|(k, _)| *k));
                }
            }
        }
        let count = |e: &mut SegmentQuality| {
            e.rows += 1;
            if upload {
                e.rows_to_upload += 1;
            } else {
                e.rows_rejected += 1;
            }
        };
        for s in &row.segments {
            // Look up before inserting: most rows name segments already seen.
            match q.segments.get_mut(s) {
                Some(e) => count(e),
                None => count(q.segments.entry(s.clone()).or_default()),
            }
        }
        self.selected.push(upload);
    }

    fn finish(mut self) -> (QualityReport, RowSet) {
        self.q.kinds = self.kinds.iter().map(|k| k.as_str().to_owned()).collect();
        (self.q, self.selected)
    }
}

/// The rows (by ordinal among data rows) chosen for upload.
#[derive(Debug, Default, Clone)]
pub(crate) struct RowSet {
    bits: Vec<u64>,
    len: u64,
}

impl RowSet {
    fn push(&mut self, selected: bool) {
        let i = self.len as usize;
        if i / 64 >= self.bits.len() {
            self.bits.push(0);
        }
        if selected {
            self.bits[i / 64] |= 1 << (i % 64);
        }
        self.len += 1;
    }

    fn contains(&self, i: u64) -> bool {
        i < self.len && self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
}

/// The local quality pass: read every row, classify in parallel, count.
/// Returns the report and the set of rows to upload.
pub fn data_quality(opts: &MatchOptions) -> Result<QualityReport, ClientError> {
    quality_pass(opts).map(|(q, _)| q)
}

fn quality_pass(opts: &MatchOptions) -> Result<(QualityReport, RowSet), ClientError> {
    quality_pass_with(opts, &NoProgress)
}

fn quality_pass_with(
    opts: &MatchOptions,
    progress: &dyn ProgressSink,
) -> Result<(QualityReport, RowSet), ClientError> {
    let mut reader = CsvReader::open(&opts.input)?;
    let plan = Plan::resolve(&reader, opts)?;
    let mut q = QualityReport {
        input: opts.input.display().to_string(),
        delimiter: match reader.delimiter() {
            b'\t' => "\\t".into(),
            d => (d as char).to_string(),
        },
        ..QualityReport::default()
    };
    q.columns = opts
        .id_columns()
        .into_iter()
        .map(|(kind, column)| ColumnQuality {
            column: column.to_owned(),
            kind: kind.to_string(),
            ..ColumnQuality::default()
        })
        .collect();
    let mut tally = Tally::new(q);
    progress.begin("checking", 0);
    let (tx, rx) = mpsc::sync_channel::<Result<Chunk, ClientError>>(2);
    let (spare_tx, spare_rx) = mpsc::channel::<Chunk>();
    let reader = &mut reader;
    std::thread::scope(|s| -> Result<(), ClientError> {
        // Parsing the CSV is sequential: it runs a chunk or two ahead of the
        // parallel classification instead of between its rounds.
        s.spawn(move || parse_ahead(reader, tx, spare_rx));
        // Rows classified and waiting for the tally; the buffer for the next.
        let mut classified = Vec::new();
        let mut next = Vec::new();
        for chunk in rx {
            let chunk = chunk?;
            if chunk.is_empty() {
                break;
            }
            progress.advance("checking", chunk.len() as u64);
            // The tally runs in file order (it keeps the first of identical
            // rows and the first line numbers): it counts the previous chunk
            // while this one is classified.
            rayon::join(
                || classify_chunk(&plan, &chunk, &mut next),
                || tally.rows(&classified),
            );
            let _ = spare_tx.send(chunk); // Refilled by the parser.
            std::mem::swap(&mut classified, &mut next);
        }
        tally.rows(&classified);
        Ok(())
    })?;
    progress.end("checking");
    Ok(tally.finish())
}

/// Rows of the file with their line numbers.
type Chunk = Vec<(u64, ByteRecord)>;

/// Parse chunks of rows for the quality pass until the end of the file or
/// an error. Chunks sent back on `spare` are refilled: their records'
/// buffers are reused rather than allocated for every row.
fn parse_ahead(
    reader: &mut CsvReader,
    tx: mpsc::SyncSender<Result<Chunk, ClientError>>,
    spare: mpsc::Receiver<Chunk>,
) {
    loop {
        let mut chunk = spare.try_recv().unwrap_or_default();
        let read = refill(reader, &mut chunk, QUALITY_CHUNK).map(|()| chunk);
        let last = read.as_ref().map_or(true, Vec::is_empty);
        if tx.send(read).is_err() || last {
            break;
        }
    }
}

/// Read up to `max` rows into `chunk` (empty at the end of the file),
/// reusing the records already there.
fn refill(reader: &mut CsvReader, chunk: &mut Chunk, max: usize) -> Result<(), ClientError> {
    let mut n = 0;
    while n < max {
        if n == chunk.len() {
            chunk.push((0, ByteRecord::new()));
        }
        let (line, record) = &mut chunk[n];
        let Some(read) = reader.next_row(record)? else {
            break;
        };
        *line = read;
        n += 1;
    }
    chunk.truncate(n);
    Ok(())
}

/// Classify a chunk on all cores into `rows` (recycled: its rows' buffers
/// are reused), with the fingerprints of uploadable rows.
fn classify_chunk(plan: &Plan, chunk: &Chunk, rows: &mut Vec<(Row, Option<Fingerprint>)>) {
    rows.resize_with(chunk.len(), Default::default);
    rows.par_iter_mut()
        .zip(chunk)
        .for_each(|((row, fingerprint), (line, record))| {
            plan.classify_into(row, *line, record);
            *fingerprint = row.uploadable().then(|| row.fingerprint());
        });
}

/// Re-blind every page of the graph pass, a few pages in flight at once,
/// until done or `stop`.
fn graph_pass(
    api: &ApiClient,
    key: &SecretKey,
    job: &JobCreated,
    progress: &dyn ProgressSink,
    stop: &AtomicBool,
) -> Result<(u64, u64), ClientError> {
    // (kind, page number, the page's size limit in bytes)
    let mut work: Vec<(MatchKind, u32, u64)> = Vec::new();
    let mut total_points = 0;
    for (kind, info) in &job.graph_pass {
        if info.pages == 0 {
            continue;
        }
        let kind: MatchKind = kind.parse().map_err(|_| {
            ClientError::Protocol(format!("graph pass names an unknown kind `{kind}`"))
        })?;
        total_points += info.points;
        let limit = crate::api::limits::point_page(job.page_size, info.points);
        work.extend((0..info.pages).map(|p| (kind, p, limit)));
    }
    if work.is_empty() {
        return Ok((0, 0));
    }
    progress.begin(GRAPH_PHASE, total_points);
    let next = AtomicUsize::new(0);
    let done_points = AtomicU64::new(0);
    let job_path = format!("/v1/jobs/{}/graph", segment(&job.job_id));
    let result: Result<(), ClientError> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..GRAPH_WORKERS.min(work.len()))
            .map(|_| {
                s.spawn(|| -> Result<(), ClientError> {
                    loop {
                        if stop.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(kind, page_no, limit)) = work.get(i) else {
                            return Ok(());
                        };
                        let r = reblind_page(api, key, &job_path, (kind, page_no), limit);
                        match r {
                            Ok(n) => {
                                done_points.fetch_add(n, Ordering::Relaxed);
                                progress.advance(GRAPH_PHASE, n);
                            }
                            Err(e) => {
                                stop.store(true, Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                    }
                })
            })
            .collect();
        let mut first_err = None;
        for h in handles {
            if let Err(e) = h.join().expect("graph worker panicked") {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    });
    progress.end(GRAPH_PHASE);
    result?;
    Ok((work.len() as u64, done_points.into_inner()))
}

fn reblind_page(
    api: &ApiClient,
    key: &SecretKey,
    job_path: &str,
    (kind, page_no): (MatchKind, u32),
    limit: u64,
) -> Result<u64, ClientError> {
    let path = format!("{job_path}/{kind}/{page_no}");
    let bytes = api.get_bytes(&path, limit, &format!("graph page {kind}/{page_no}"))?;
    let page = PointPage::decode(&bytes)
        .map_err(|e| ClientError::Protocol(format!("graph page {kind}/{page_no}: {e}")))?;
    if page.kind != kind || page.page_no != page_no {
        return Err(ClientError::Protocol(format!(
            "asked for graph page {kind}/{page_no}, got {}/{}",
            page.kind, page.page_no
        )));
    }
    let points = blind::reblind(key, &page.points)
        .map_err(|e| ClientError::Protocol(format!("graph page {kind}/{page_no}: {e}")))?;
    let n = points.len() as u64;
    let out = PointPage {
        kind,
        page_no,
        points,
    };
    let _: serde_json::Value = api.call_json(Method::PUT, &path, &Body::Frame(out.encode()))?;
    Ok(n)
}

struct Encoded {
    batch_no: u32,
    records: u64,
    bytes: Vec<u8>,
}

#[derive(Deserialize)]
struct BatchAck {
    #[serde(default)]
    records: Option<u64>,
}

/// Stream the file again: select, normalise, blind, batch, upload; the next
/// batch is blinded while the previous one is on the wire. Batches below
/// `skip` were acknowledged by an earlier run: their rows are only counted.
/// Stops early on `stop` (set by a failure here or in the graph pass).
fn upload(
    api: &ApiClient,
    opts: &MatchOptions,
    key: &SecretKey,
    up: Upload<'_>,
    expected_rows: u64,
    progress: &dyn ProgressSink,
    stop: &AtomicBool,
) -> Result<(u32, u64, u64), ClientError> {
    let Upload {
        job_id,
        selected,
        skip,
        acked,
    } = up;
    let mut reader = CsvReader::open(&opts.input)?;
    let plan = Plan::resolve(&reader, opts)?;
    progress.begin(UPLOAD_PHASE, expected_rows);
    let (tx, rx) = mpsc::sync_channel::<Encoded>(UPLOADERS);
    let batch_path = format!("/v1/jobs/{}/batches", segment(job_id));
    let rx = Mutex::new(rx);
    let done = Mutex::new((0u32, BTreeSet::<u32>::new()));
    let shuffle_key = shuffle_key(key, job_id);
    let result: Result<(u32, u64, u64), ClientError> = std::thread::scope(|s| {
        let uploaders: Vec<_> = (0..UPLOADERS)
            .map(|_| {
                s.spawn(|| -> Result<u64, ClientError> {
                    let mut records = 0;
                    let mut error = None;
                    // Receive until the producer closes the channel, even
                    // after a failure: the producer may be blocked on a full
                    // channel and only stops at its next batch.
                    loop {
                        let next = rx.lock().expect("upload queue lock").recv();
                        let Ok(batch) = next else { break };
                        if stop.load(Ordering::SeqCst) {
                            continue;
                        }
                        if let Err(e) = put_batch(api, &batch_path, &batch) {
                            stop.store(true, Ordering::SeqCst);
                            error = Some(e);
                            continue;
                        }
                        // Acknowledged = the contiguous prefix of batches the
                        // server confirmed (several are in flight at once).
                        let mut guard = done.lock().expect("ack lock");
                        let (prefix, pending) = &mut *guard;
                        pending.insert(batch.batch_no);
                        while pending.remove(&(skip + *prefix)) {
                            *prefix += 1;
                        }
                        acked.store(skip + *prefix, Ordering::SeqCst);
                        drop(guard);
                        records += batch.records;
                        progress.advance(UPLOAD_PHASE, batch.records);
                    }
                    match error {
                        Some(e) => Err(e),
                        None => Ok(records),
                    }
                })
            })
            .collect();
        let produced = produce_batches(
            &mut reader,
            &plan,
            opts,
            key,
            selected,
            skip,
            &shuffle_key,
            stop,
            progress,
            tx,
        );
        let mut sent = 0;
        let mut upload_error = None;
        for u in uploaders {
            match u.join().expect("uploader panicked") {
                Ok(n) => sent += n,
                Err(e) => {
                    upload_error.get_or_insert(e);
                }
            }
        }
        // An upload error explains a producer's closed channel; report it first.
        if let Some(e) = upload_error {
            return Err(e);
        }
        let p = produced?;
        Ok((p.batches, sent + p.skipped_records, p.ids))
    });
    progress.end(UPLOAD_PHASE);
    let (batches, records, ids) = result?;
    if stop.load(Ordering::SeqCst) {
        return Err(ClientError::Protocol(
            "the upload was stopped by a failure of the graph pass".into(),
        ));
    }
    if records != expected_rows {
        return Err(ClientError::BadInput {
            path: opts.input.clone(),
            message: format!(
                "the file changed while being uploaded ({expected_rows} rows expected, {records} read)"
            ),
        });
    }
    Ok((batches, records, ids))
}

/// Record batches in flight at once.
const UPLOADERS: usize = 2;

/// Per-job secret for the in-batch shuffle: derived from the advertiser key,
/// so the server cannot undo the shuffle, and stable across runs of the same
/// job, so re-sent batches are identical.
fn shuffle_key(key: &SecretKey, job_id: &str) -> [u8; 32] {
    let text = key.to_file_string();
    Sha256::new()
        .chain_update(b"onboard-client/shuffle-v1\0")
        .chain_update(text.as_bytes())
        .chain_update(b"\0")
        .chain_update(job_id.as_bytes())
        .finalize()
        .into()
}

fn batch_rng(shuffle_key: &[u8; 32], batch_no: u32) -> rand::rngs::StdRng {
    use rand::SeedableRng;
    let seed: [u8; 32] = Sha256::new()
        .chain_update(shuffle_key)
        .chain_update(batch_no.to_be_bytes())
        .finalize()
        .into();
    rand::rngs::StdRng::from_seed(seed)
}

struct Produced {
    batches: u32,
    ids: u64,
    skipped_records: u64,
}

#[allow(clippy::too_many_arguments)]
fn produce_batches(
    reader: &mut CsvReader,
    plan: &Plan,
    opts: &MatchOptions,
    key: &SecretKey,
    selected: &RowSet,
    skip: u32,
    shuffle_key: &[u8; 32],
    failed: &AtomicBool,
    progress: &dyn ProgressSink,
    tx: mpsc::SyncSender<Encoded>,
) -> Result<Produced, ClientError> {
    let mut ordinal = 0u64;
    let mut batch_no = 0u32;
    let mut record = ByteRecord::new();
    let mut chunk: Vec<(u64, ByteRecord)> = Vec::new();
    let mut rows: Vec<Row> = Vec::new();
    let mut ids_total = 0;
    let mut skipped_records = 0;
    loop {
        if failed.load(Ordering::SeqCst) {
            break;
        }
        if batch_no < skip {
            // Acknowledged by an earlier run: count the rows, send nothing.
            let mut n = 0;
            while n < opts.batch_size {
                let Some(_) = reader.next_row(&mut record)? else {
                    break;
                };
                if selected.contains(ordinal) {
                    n += 1;
                }
                ordinal += 1;
            }
            if n == 0 {
                break;
            }
            skipped_records += n as u64;
            progress.advance(UPLOAD_PHASE, n as u64);
            batch_no += 1;
            continue;
        }
        // The batch's selected rows, read into (and classified into) the
        // buffers of the previous batch.
        let mut n = 0;
        while n < opts.batch_size {
            if n == chunk.len() {
                chunk.push((0, ByteRecord::new()));
            }
            let (line, record) = &mut chunk[n];
            let Some(read) = reader.next_row(record)? else {
                break;
            };
            if selected.contains(ordinal) {
                *line = read;
                n += 1;
            }
            ordinal += 1;
        }
        if n == 0 {
            break;
        }
        rows.resize_with(n, Row::default);
        rows.par_iter_mut()
            .zip(&chunk[..n])
            .for_each(|(row, (line, record))| plan.classify_into(row, *line, record));
        if let Some(bad) = rows.iter().find(|r| !r.uploadable()) {
            return Err(ClientError::BadInput {
                path: opts.input.clone(),
                message: format!("line {}: the file changed since the quality pass", bad.line),
            });
        }
        // Shuffled with a seed only the advertiser can compute, so that a
        // batch re-sent after an interruption is byte-identical.
        rows.shuffle(&mut batch_rng(shuffle_key, batch_no));
        let items: Vec<(MatchKind, Digest)> =
            rows.iter().flat_map(|r| r.ids.iter().copied()).collect();
        let points = blind::hash_and_blind(key, &items);
        ids_total += points.len() as u64;
        let mut labels: Vec<String> = Vec::new();
        let mut label_index: HashMap<&str, u16> = HashMap::new();
        let mut refs: Vec<Vec<u16>> = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut v = Vec::with_capacity(r.segments.len());
            for s in &r.segments {
                let i = match label_index.get(s.as_str()) {
                    Some(&i) => i,
                    None => {
                        let i = labels.len() as u16;
                        labels.push(s.clone());
                        label_index.insert(s.as_str(), i);
                        i
                    }
                };
                v.push(i);
            }
            refs.push(v);
        }
        if labels.len() > onboard_protocol::wire::MAX_LABELS {
            return Err(ClientError::Usage(format!(
                "one batch holds more than {} distinct segments; lower the batch size",
                onboard_protocol::wire::MAX_LABELS
            )));
        }
        let mut batch = RecordBatch::new(batch_no, labels.clone())
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let mut at = 0;
        for (r, segs) in rows.iter().zip(&refs) {
            let n = r.ids.len();
            let ids = r
                .ids
                .iter()
                .zip(&points[at..at + n])
                .map(|((k, _), p)| (*k, *p));
            batch
                .push(segs, ids)
                .map_err(|e| ClientError::Protocol(format!("building batch {batch_no}: {e}")))?;
            at += n;
        }
        let encoded = Encoded {
            batch_no,
            records: rows.len() as u64,
            bytes: batch.encode(),
        };
        if tx.send(encoded).is_err() {
            // The uploader stopped; its error is the one to report.
            break;
        }
        batch_no += 1;
    }
    Ok(Produced {
        batches: batch_no,
        ids: ids_total,
        skipped_records,
    })
}

/// PUT one batch; the PUT is idempotent, so transport failures are retried
/// again here beyond the client's own retries before giving up.
fn put_batch(api: &ApiClient, batch_path: &str, batch: &Encoded) -> Result<(), ClientError> {
    let path = format!("{batch_path}/{}", batch.batch_no);
    let body = Body::Frame(batch.bytes.clone());
    let mut tries = 0;
    loop {
        match api.call_json::<BatchAck>(Method::PUT, &path, &body) {
            Ok(ack) => {
                if let Some(r) = ack.records {
                    if r != batch.records {
                        return Err(ClientError::Protocol(format!(
                            "batch {}: the server counted {r} records, {} were sent",
                            batch.batch_no, batch.records
                        )));
                    }
                }
                return Ok(());
            }
            Err(ClientError::Unreachable { .. } | ClientError::Transport { .. }) if tries < 2 => {
                tries += 1;
                tracing::warn!(
                    batch = batch.batch_no,
                    "upload failed, resuming from this batch"
                );
                std::thread::sleep(std::time::Duration::from_secs(1 << tries));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A progress sink that reports nothing (re-exported for library users).
pub fn no_progress() -> &'static dyn ProgressSink {
    &NoProgress
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        path
    }

    const FILE: &str = "\u{feff}email;phone;segment;consent\n\
        jane@example.com;06 12 34 56 78;Gold|Silver;oui\n\
        not-an-email;;Gold;yes\n\
        ;0612;Gold;1\n\
        bob@example.com;;;true\n\
        amy@example.com;;Gold;non\n\
        carl@example.com;;Gold;maybe\n\
        Jane@Example.com;+33612345678;Silver|Gold;TRUE\n\
        dan@example.com;;Bronze;0\n\
        eve@example.com;+33 6 98 76 54 32;Bronze;1\n";

    fn opts(path: PathBuf) -> MatchOptions {
        let mut o = MatchOptions::new(path, "unused.key", "dsp-a", "segment");
        o.email_cols = vec!["email".into()];
        o.phone_cols = vec!["phone".into()];
        o.consent_col = Some("consent".into());
        o.dry_run = true;
        o
    }

    #[test]
    fn quality_counts_are_exact() {
        let dir = tempfile::tempdir().unwrap();
        let (q, selected) = quality_pass(&opts(write(&dir, "crm.csv", FILE))).unwrap();
        assert_eq!(q.delimiter, ";");
        assert_eq!(q.rows_read, 9);
        assert_eq!(q.rows_without_consent, 2, "amy and dan");
        assert_eq!(
            q.bad_consent,
            RowIssue {
                count: 1,
                first_rows: vec![7]
            }
        );
        assert_eq!(
            q.rows_without_segment,
            RowIssue {
                count: 1,
                first_rows: vec![5]
            }
        );
        assert_eq!(
            q.rows_without_identifier,
            RowIssue {
                count: 2,
                first_rows: vec![3, 4]
            }
        );
        assert_eq!(
            q.duplicate_rows,
            RowIssue {
                count: 1,
                first_rows: vec![8]
            }
        );
        assert_eq!(q.rows_to_upload, 2, "jane and eve");
        assert_eq!(q.kinds, vec!["email", "phone"]);
        let email = &q.columns[0];
        assert_eq!(
            email.invalid["email-shape"],
            RowIssue {
                count: 1,
                first_rows: vec![3]
            }
        );
        assert_eq!(email.valid, 4, "jane, bob, Jane, eve");
        let phone = &q.columns[1];
        assert_eq!(phone.valid, 3);
        assert_eq!(
            phone.invalid.values().map(|i| i.count).sum::<u64>(),
            1,
            "0612"
        );
        assert_eq!(
            q.segments["Gold"],
            SegmentQuality {
                rows: 6,
                rows_to_upload: 1,
                rows_rejected: 5
            }
        );
        assert_eq!(
            q.segments["Bronze"],
            SegmentQuality {
                rows: 2,
                rows_to_upload: 1,
                rows_rejected: 1
            }
        );
        let chosen: Vec<u64> = (0..9).filter(|&i| selected.contains(i)).collect();
        assert_eq!(chosen, vec![0, 8]);
        let json = serde_json::to_string(&q).unwrap();
        for secret in ["jane", "not-an-email", "0612", "example.com"] {
            assert!(
                !json.contains(secret),
                "the report must not carry values: {secret}"
            );
        }
    }

    #[test]
    fn unknown_columns_and_missing_columns() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(write(&dir, "crm.csv", FILE));
        o.maid_cols = vec!["idfa".into()];
        let err = quality_pass(&o).unwrap_err().to_string();
        assert!(
            err.contains("`idfa`") && err.contains("`email`, `phone`, `segment`, `consent`"),
            "{err}"
        );
        let mut o = opts(write(&dir, "crm.csv", FILE));
        o.email_cols.clear();
        o.phone_cols.clear();
        assert!(matches!(quality_pass(&o), Err(ClientError::Usage(_))));
    }

    #[test]
    fn report_parses_strings_and_numbers() {
        let r: JobReport = serde_json::from_str(
            r#"{"job_id":"j-1","status":"finished","graph_version":3,"destination":"dsp-a","rows_uploaded":10,
                "match_rate":"62%","k":100,"epsilon_spent":0.5,"new_field":1,
                "segments":[{"name":"Gold","rows_uploaded":4,"matched":2480,"status":"delivered","reason":null,"audience_id":"a-1"},
                            {"name":"Bronze","rows_uploaded":1,"matched":"< 100","status":"withheld","reason":"below-minimum-size","audience_id":null}]}"#,
        )
        .unwrap();
        assert_eq!(r.segments[0].matched, "2480");
        assert_eq!(r.segments[1].matched, "< 100");
        assert_eq!(r.extra["new_field"], 1);
    }

    #[test]
    fn rendered_reports_name_segments_and_never_values() {
        let dir = tempfile::tempdir().unwrap();
        let (q, _) = quality_pass(&opts(write(&dir, "crm.csv", FILE))).unwrap();
        let text = crate::render::render_quality(&q);
        assert!(
            text.contains("rows read                               9"),
            "{text}"
        );
        assert!(text.contains("email-shape: 1  (line 3)"), "{text}");
        assert!(text.contains("(lines 3, 4)"), "{text}");
        let report = JobReport {
            job_id: "j-1".into(),
            status: "finished".into(),
            match_rate: "50%".into(),
            k: 100,
            segments: vec![SegmentReport {
                name: "Gold".into(),
                rows_uploaded: 1,
                matched: "< 100".into(),
                status: "withheld".into(),
                reason: Some("below-minimum-size".into()),
                audience_id: None,
            }],
            ..JobReport::default()
        };
        let text = crate::render::render_report(&report, &q);
        let gold = text.lines().find(|l| l.starts_with("Gold")).unwrap();
        assert!(
            gold.contains("< 100")
                && gold.contains("withheld")
                && gold.contains("below-minimum-size"),
            "{text}"
        );
        assert!(text.contains("overall match rate: 50%"));
        for value in ["jane", "example.com", "0612"] {
            assert!(!text.contains(value), "{text}");
        }
    }

    #[test]
    fn duplicates_across_chunks_keep_file_order() {
        // Over three chunks: rows repeat every 10,000 (segments in another
        // order), so most duplicates are of rows in earlier chunks, tallied
        // while later chunks were being classified.
        let rows = 2 * QUALITY_CHUNK + 10_000;
        let mut text = String::from("email,segment\n");
        for i in 0..rows {
            let segs = if i % 2 == 0 {
                "Gold|Silver"
            } else {
                "Silver|Gold"
            };
            text.push_str(&format!("u{}@example.com,{segs}\n", i % 10_000));
        }
        let dir = tempfile::tempdir().unwrap();
        let mut o = MatchOptions::new(write(&dir, "crm.csv", &text), "unused.key", "d", "segment");
        o.email_cols = vec!["email".into()];
        let (q, selected) = quality_pass(&o).unwrap();
        assert_eq!(q.rows_read, rows as u64);
        assert_eq!(q.rows_to_upload, 10_000);
        assert_eq!(
            q.duplicate_rows,
            RowIssue {
                count: rows as u64 - 10_000,
                first_rows: (10_002..10_007).collect(),
            }
        );
        assert!((0..rows as u64).all(|i| selected.contains(i) == (i < 10_000)));
    }

    #[test]
    fn row_set_bits() {
        let mut s = RowSet::default();
        for i in 0..200 {
            s.push(i % 3 == 0);
        }
        assert!(s.contains(0) && !s.contains(1) && s.contains(198) && !s.contains(200));
    }
}
