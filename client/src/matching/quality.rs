//! The local data-quality pass: read every row, classify in parallel, count
//! in file order; the report (never a value) and the rows chosen for upload.

use super::plan::{Fingerprint, FingerprintSet, Plan, Row, RowState};
use super::MatchOptions;
use crate::error::ClientError;
use crate::input::{Detection, Record, RowSource, SourceInfo};
use crate::progress::{NoProgress, ProgressSink};
use onboard_protocol::MatchKind;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;

/// Row numbers kept per problem in the quality report.
pub const FIRST_ROWS_KEPT: usize = 5;
/// Rows classified per parallel chunk in the quality pass.
const QUALITY_CHUNK: usize = 8192;

/// How many rows had one problem, and the first few of them: line numbers
/// in a CSV (the header being line 1), row numbers in a spreadsheet's
/// sheet. Never the values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowIssue {
    /// Rows with the problem.
    pub count: u64,
    /// Line (or sheet row) numbers of the first few.
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
    /// Its format: `csv`, `csv+gzip`, `xlsx`, `xlsm`, `xlsb`, `xls` or `ods`.
    #[serde(default)]
    pub format: String,
    /// The encoding a CSV was read in (`UTF-8`, `windows-1252`,
    /// `UTF-16LE`, … as WHATWG names them); empty for a spreadsheet.
    #[serde(default)]
    pub encoding: String,
    /// How that encoding was chosen: `bom`, `detected` (valid UTF-8),
    /// `fallback` (not UTF-8, so read as Windows-1252) or `forced`
    /// (`--encoding`); empty for a spreadsheet.
    #[serde(default)]
    pub encoding_source: String,
    /// Detected delimiter of a CSV (`,`, `;` or `\t`); empty for a spreadsheet.
    pub delimiter: String,
    /// The sheet read, for a spreadsheet (row numbers are its rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sheet: Option<String>,
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

impl QualityReport {
    /// The counts sent with the finish for the operators' data-quality view
    /// (docs/api.md): rows read and not uploaded, valid and invalid values
    /// per identifier kind. Counts only, never a value or a row number.
    pub fn server_counts(&self) -> serde_json::Value {
        let mut kinds: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for c in &self.columns {
            let e = kinds.entry(c.kind.as_str()).or_default();
            e.0 += c.valid;
            e.1 += c.invalid.values().map(|i| i.count).sum::<u64>();
        }
        let kinds: serde_json::Map<String, serde_json::Value> = kinds
            .into_iter()
            .map(|(k, (valid, invalid))| {
                (
                    k.to_string(),
                    serde_json::json!({"valid": valid, "invalid": invalid}),
                )
            })
            .collect();
        serde_json::json!({
            "rows_read": self.rows_read,
            "rows_rejected": self.rows_read.saturating_sub(self.rows_to_upload),
            "kinds": kinds,
        })
    }

    /// Whether the file was not UTF-8 and read as Windows-1252 instead
    /// (worth a notice: the user may know better, see `--encoding`).
    pub fn encoding_fell_back(&self) -> bool {
        self.encoding_source == "fallback"
    }

    /// The one-line notice of a file read as Windows-1252 because it was
    /// not UTF-8 (the CLI prints it, the Python package warns with it).
    pub fn encoding_notice(&self) -> Option<String> {
        self.encoding_fell_back().then(|| {
            format!(
                "{} is not valid UTF-8; it was read as {} (give --encoding NAME if that is wrong)",
                self.input, self.encoding
            )
        })
    }

    fn describe_source(&mut self, info: &SourceInfo) {
        self.format = info.format.to_owned();
        if let Some(decoded) = info.encoding {
            self.encoding = decoded.name().to_owned();
            self.encoding_source = match decoded.detection {
                Detection::Bom => "bom",
                Detection::Utf8 => "detected",
                Detection::Fallback => "fallback",
                Detection::Forced => "forced",
            }
            .to_owned();
        }
        self.delimiter = match info.delimiter {
            Some(b'\t') => "\\t".into(),
            Some(d) => char::from(d).to_string(),
            None => String::new(),
        };
        self.sheet = info.sheet.clone();
    }
}

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
                for &(col, code) in &row.invalid {
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

    pub(super) fn contains(&self, i: u64) -> bool {
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

pub(super) fn quality_pass_with(
    opts: &MatchOptions,
    progress: &dyn ProgressSink,
) -> Result<(QualityReport, RowSet), ClientError> {
    let mut reader = opts.open_input()?;
    let plan = Plan::resolve(&reader, opts)?;
    let mut q = QualityReport {
        input: opts.input.display().to_string(),
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
    let rows = &mut reader;
    std::thread::scope(|s| -> Result<(), ClientError> {
        // Reading the file is sequential: it runs a chunk or two ahead of the
        // parallel classification instead of between its rounds.
        s.spawn(move || parse_ahead(rows, tx, spare_rx));
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
    let (mut q, selected) = tally.finish();
    // Read last: a CSV's encoding is final only once every row was read.
    q.describe_source(&reader.info());
    Ok((q, selected))
}

/// Rows of the file with their numbers.
pub(super) type Chunk = Vec<(u64, Record)>;

/// Parse chunks of rows for the quality pass until the end of the file or
/// an error. Chunks sent back on `spare` are refilled: their records'
/// buffers are reused rather than allocated for every row.
fn parse_ahead(
    reader: &mut RowSource,
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
fn refill(reader: &mut RowSource, chunk: &mut Chunk, max: usize) -> Result<(), ClientError> {
    let n = read_rows(reader, chunk, max, || true)?;
    chunk.truncate(n);
    Ok(())
}

/// Read rows into `chunk`, reusing its records, until `max` of them are
/// kept or the file ends; `keep` says of each row read whether it is.
/// Returns how many were kept (at the front of `chunk`).
pub(super) fn read_rows(
    reader: &mut RowSource,
    chunk: &mut Chunk,
    max: usize,
    mut keep: impl FnMut() -> bool,
) -> Result<usize, ClientError> {
    let mut n = 0;
    while n < max {
        if n == chunk.len() {
            chunk.push((0, Record::default()));
        }
        let (number, record) = &mut chunk[n];
        let Some(read) = reader.next_row(record)? else {
            break;
        };
        if keep() {
            *number = read;
            n += 1;
        }
    }
    Ok(n)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{JobReport, SegmentReport};
    use std::path::PathBuf;

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
        assert_eq!(
            (
                q.format.as_str(),
                q.encoding.as_str(),
                q.encoding_source.as_str()
            ),
            ("csv", "UTF-8", "bom")
        );
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
    fn rendered_reports_name_segments_and_never_values() {
        let dir = tempfile::tempdir().unwrap();
        let (q, _) = quality_pass(&opts(write(&dir, "crm.csv", FILE))).unwrap();
        let text = crate::render::render_quality(&q);
        assert!(
            text.contains("rows read                               9"),
            "{text}"
        );
        assert!(text.contains("email-shape: 1  (line 3)"), "{text}");
        assert!(
            text.contains("(csv, encoding UTF-8 (BOM), delimiter ';')"),
            "{text}"
        );
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
                version: None,
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
