//! The advertiser's match pipeline, as a library: a local data-quality pass
//! over the CRM export (no crypto, nothing sent), then the job of
//! docs/api.md — create, graph pass (re-blind the server's `b·P(y)` with the
//! advertiser key), upload of shuffled `a·P(x)` record batches while the next
//! batch is being blinded, finish — and the server's report.
//!
//! One file per phase: [`plan`] (which column is what; one row classified),
//! [`quality`] (the local pass over the whole file, and the rows chosen),
//! `graph_pass` and `upload` (the two halves of the exchange, run at the same
//! time) and `job` (start, resume, finish or keep for a resume).

mod graph_pass;
mod job;
pub(crate) mod plan;
pub mod quality;
mod upload;

pub use crate::report::{JobReport, SegmentReport};
pub use job::{resume_match, run_match, run_match_with};
pub use quality::{
    data_quality, ColumnQuality, QualityReport, RowIssue, SegmentQuality, FIRST_ROWS_KEPT,
};

use crate::error::ClientError;
use crate::input::RowSource;
use crate::progress::{NoProgress, ProgressSink};
use onboard_protocol::{IdKind, Region, SecretKey};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Records per uploaded batch unless told otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 8192;
/// Progress phase names of the two halves of the exchange.
const GRAPH_PHASE: &str = "graph pass";
const UPLOAD_PHASE: &str = "upload";

/// What to match and how.
#[derive(Debug, Clone)]
pub struct MatchOptions {
    /// The CRM export: CSV (gzipped or not) or a spreadsheet.
    pub input: PathBuf,
    /// A WHATWG label forcing the encoding of a CSV (`None`: BOM, else
    /// UTF-8, else Windows-1252).
    pub encoding: Option<String>,
    /// The sheet of a spreadsheet (`None`: the first).
    pub sheet: Option<String>,
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
    /// Release each segment as a new audience instead of refreshing the
    /// live audience of the same segment at this destination.
    pub new_audience: bool,
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
            encoding: None,
            sheet: None,
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
            new_audience: false,
            batch_size: DEFAULT_BATCH_SIZE,
            show_progress: false,
        }
    }

    /// The input, opened as its format asks.
    fn open_input(&self) -> Result<RowSource, ClientError> {
        RowSource::open(&self.input, self.encoding.as_deref(), self.sheet.as_deref())
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

/// Read and parse the advertiser key file, refusing one that is not safely
/// the user's own ([`crate::secret_file`]: no symlink, regular, owned, 0600).
pub fn load_key(path: &Path) -> Result<SecretKey, ClientError> {
    let text = crate::secret_file::read_key_file(path)?;
    SecretKey::from_file_string(&text).map_err(|source| ClientError::Key {
        path: path.to_owned(),
        source,
    })
}

/// A progress sink that reports nothing (re-exported for library users).
pub fn no_progress() -> &'static dyn ProgressSink {
    &NoProgress
}
