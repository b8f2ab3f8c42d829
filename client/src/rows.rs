//! Matching rows a program holds in memory (the Python package's
//! `match_rows`, a DataFrame's records) through the very pipeline that
//! matches a CSV export: the rows are written as CSV to an anonymous
//! in-memory file (Linux `memfd`; elsewhere a private temporary file in a
//! fresh 0700 directory), which the quality pass and the upload then read
//! like any export. The file disappears when the [`RowsInput`] is dropped.
//!
//! Only the columns the options name are kept. Line numbers in the quality
//! report count the header as line 1: the first row is line 2.

use crate::api::ApiClient;
use crate::error::ClientError;
use crate::matching::{data_quality, run_match_with, MatchOptions, MatchOutcome, QualityReport};
use crate::progress::ProgressSink;
use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;

/// What the quality report names as the input of in-memory rows.
pub const ROWS_INPUT_NAME: &str = "(rows)";

/// Rows being collected for a match, as CSV in a private file.
pub struct RowsInput {
    columns: Vec<String>,
    writer: csv::Writer<BufWriter<File>>,
    path: PathBuf,
    rows: u64,
    /// Kept alive as long as the file is used.
    _backing: Backing,
}

/// What must live as long as the file: nothing for a memfd, the directory
/// of the temporary file elsewhere.
#[cfg(target_os = "linux")]
type Backing = ();
#[cfg(not(target_os = "linux"))]
type Backing = tempfile::TempDir;

impl RowsInput {
    /// A new, empty input with the columns `opts` names (identifier columns,
    /// segment and consent), each once, as its header.
    pub fn new(opts: &MatchOptions) -> Result<Self, ClientError> {
        let mut columns: Vec<String> = Vec::new();
        let named = opts
            .email_cols
            .iter()
            .chain(&opts.phone_cols)
            .chain(&opts.maid_cols)
            .chain(&opts.email_sha256_cols)
            .chain(&opts.phone_sha256_cols)
            .chain(std::iter::once(&opts.segment_col))
            .chain(&opts.consent_col);
        for column in named {
            if !columns.contains(column) {
                columns.push(column.clone());
            }
        }
        let (file, path, backing) = private_file()?;
        let mut input = Self {
            columns,
            writer: csv::WriterBuilder::new().from_writer(BufWriter::new(file)),
            path,
            rows: 0,
            _backing: backing,
        };
        let header = input.columns.clone();
        input.write(&header)?;
        Ok(input)
    }

    /// The header: which value goes where in [`RowsInput::push`].
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Add one row: its values in the order of [`RowsInput::columns`]
    /// (an absent value as an empty string).
    pub fn push(&mut self, values: &[String]) -> Result<(), ClientError> {
        if values.len() != self.columns.len() {
            return Err(ClientError::Usage(format!(
                "row {} has {} values for {} columns",
                self.rows + 1,
                values.len(),
                self.columns.len()
            )));
        }
        self.write(values)?;
        self.rows += 1;
        Ok(())
    }

    /// Rows pushed so far.
    pub fn len(&self) -> u64 {
        self.rows
    }

    /// Whether no row was pushed.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The data-quality pass over the rows (nothing is sent).
    pub fn quality(mut self, opts: &MatchOptions) -> Result<QualityReport, ClientError> {
        let opts = self.finish(opts)?;
        let mut q = data_quality(&opts).map_err(|e| self.named(e))?;
        q.input = ROWS_INPUT_NAME.into();
        Ok(q)
    }

    /// Match the rows as [`run_match_with`] matches a file (`opts.input`
    /// is ignored).
    pub fn run_match(
        mut self,
        api: &ApiClient,
        opts: &MatchOptions,
        progress: &dyn ProgressSink,
    ) -> Result<MatchOutcome, ClientError> {
        let opts = self.finish(opts)?;
        let mut outcome = run_match_with(api, &opts, progress).map_err(|e| self.named(e))?;
        outcome.quality.input = ROWS_INPUT_NAME.into();
        Ok(outcome)
    }

    /// Flush the rows; the options with the rows as their input.
    fn finish(&mut self, opts: &MatchOptions) -> Result<MatchOptions, ClientError> {
        self.writer.flush().map_err(|e| self.write_error(e))?;
        Ok(MatchOptions {
            input: self.path.clone(),
            ..opts.clone()
        })
    }

    fn write(&mut self, record: &[String]) -> Result<(), ClientError> {
        self.writer.write_record(record).map_err(|e| {
            let source = match e.into_kind() {
                csv::ErrorKind::Io(io) => io,
                other => std::io::Error::other(format!("{other:?}")),
            };
            self.write_error(source)
        })
    }

    /// `e` naming the rows rather than the file that holds them.
    fn named(&self, e: ClientError) -> ClientError {
        let rows = || PathBuf::from(ROWS_INPUT_NAME);
        match e {
            ClientError::BadInput { path, message } if path == self.path => ClientError::BadInput {
                path: rows(),
                message,
            },
            ClientError::File {
                action,
                path,
                source,
            } if path == self.path => ClientError::File {
                action,
                path: rows(),
                source,
            },
            other => other,
        }
    }

    fn write_error(&self, source: std::io::Error) -> ClientError {
        ClientError::File {
            action: "cannot write the rows to",
            path: self.path.clone(),
            source,
        }
    }
}

/// An anonymous in-memory file, reopenable by its `/proc/self/fd` path.
#[cfg(target_os = "linux")]
fn private_file() -> Result<(File, PathBuf, Backing), ClientError> {
    use std::os::fd::AsRawFd;
    let fd = rustix::fs::memfd_create("onboard-rows", rustix::fs::MemfdFlags::CLOEXEC).map_err(
        |errno| ClientError::File {
            action: "cannot create",
            path: PathBuf::from("memfd:onboard-rows"),
            source: errno.into(),
        },
    )?;
    let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    Ok((File::from(fd), path, ()))
}

/// A file only we can read, in a fresh directory only we can enter.
#[cfg(not(target_os = "linux"))]
fn private_file() -> Result<(File, PathBuf, Backing), ClientError> {
    let dir = tempfile::tempdir().map_err(|source| ClientError::File {
        action: "cannot create",
        path: std::env::temp_dir(),
        source,
    })?;
    let path = dir.path().join("rows.csv");
    let file = File::create(&path).map_err(|source| ClientError::File {
        action: "cannot create",
        path: path.clone(),
        source,
    })?;
    Ok((file, path, dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> MatchOptions {
        let mut opts = MatchOptions::new("ignored.csv", "ignored.key", "dsp", "segment");
        opts.email_cols = vec!["email".into()];
        opts.phone_cols = vec!["phone".into(), "email".into()];
        opts.dry_run = true;
        opts
    }

    #[test]
    fn named_columns_are_the_header_once_each() {
        let input = RowsInput::new(&opts()).unwrap();
        assert_eq!(input.columns(), ["email", "phone", "segment"]);
    }

    #[test]
    fn the_quality_of_rows_equals_that_of_the_same_csv_file() {
        let dir = tempfile::tempdir().unwrap();
        let rows = [
            ["a@example.com", "0612345678", "Gold"],
            ["not an email", "", "Gold|Silver"],
            ["b@example.com", "+33 6 12 34 56 79", ""],
            ["a@example.com", "0612345678", "Gold"],
            ["c@example.com", "x,\"y\"\nz", "Silver"],
        ];
        let mut input = RowsInput::new(&opts()).unwrap();
        let mut text = String::from("email,phone,segment\n");
        let mut writer = csv::Writer::from_writer(vec![]);
        for row in &rows {
            input
                .push(&row.iter().map(|v| v.to_string()).collect::<Vec<_>>())
                .unwrap();
            writer.write_record(row).unwrap();
        }
        text.push_str(&String::from_utf8(writer.into_inner().unwrap()).unwrap());
        let file = dir.path().join("crm.csv");
        std::fs::write(&file, text).unwrap();
        assert_eq!(input.len(), 5);

        let from_rows = input.quality(&opts()).unwrap();
        let mut file_opts = opts();
        file_opts.input = file;
        let mut from_file = data_quality(&file_opts).unwrap();
        assert_eq!(from_rows.input, ROWS_INPUT_NAME);
        from_file.input = ROWS_INPUT_NAME.into();
        assert_eq!(from_rows, from_file);
        assert_eq!(from_rows.rows_to_upload, 2, "{from_rows:?}");
    }

    #[test]
    fn errors_name_the_rows_not_the_file_holding_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = opts();
        opts.dry_run = false;
        opts.key_file = dir.path().join("k.key");
        crate::keyfile::generate_key_file(&opts.key_file).unwrap();
        let mut input = RowsInput::new(&opts).unwrap();
        input
            .push(&["not an email".into(), String::new(), "Gold".into()])
            .unwrap();
        // Never contacted: no row can be uploaded, which is known before.
        let api = ApiClient::new("https://127.0.0.1:1", None, "obk_test").unwrap();
        let err = input
            .run_match(&api, &opts, &crate::progress::NoProgress)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "(rows): no row can be uploaded (see the data-quality report)"
        );
    }

    #[test]
    fn a_row_of_the_wrong_width_is_refused() {
        let mut input = RowsInput::new(&opts()).unwrap();
        let err = input.push(&["only one".into()]).unwrap_err();
        assert!(
            err.to_string().contains("row 1 has 1 values for 3 columns"),
            "{err}"
        );
    }
}
