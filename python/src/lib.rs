//! # onboard for Python
//!
//! The `onboard` extension module (PyO3, built with maturin): thin bindings
//! over `onboard-client` and `onboard-protocol` — no matching, checking or
//! normalising logic of its own. Every failure is raised as
//! `onboard.OnboardError` with the Rust library's message (which never
//! quotes an identifier or a key). Network and crypto work runs with the
//! GIL released. `onboard.pyi` is the typed, documented interface.

use onboard_client::matching::load_key;
use onboard_client::progress::NoProgress;
use onboard_client::{
    api_client, data_quality, generate_key_file, list_audiences, pull_audience, run_match_with,
    ApiClient, MatchOptions, MatchOutcome, QualityReport, RowsInput,
};
use onboard_protocol::{IdKind, Normalized, Region};
use pyo3::exceptions::{PyException, PyUserWarning};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyString};
use serde::Serialize;
use std::ffi::CString;
use std::path::PathBuf;

pyo3::create_exception!(
    onboard,
    OnboardError,
    PyException,
    "An onboard operation failed; the message is the Rust library's."
);

/// An `OnboardError` carrying `e`'s message.
fn failed(e: impl std::fmt::Display) -> PyErr {
    OnboardError::new_err(e.to_string())
}

/// A Rust value as the Python object its JSON form reads as (dicts, lists,
/// strings, numbers): the same shape as the CLI's `--json` output.
fn to_python(py: Python<'_>, value: &impl Serialize) -> PyResult<PyObject> {
    let text = serde_json::to_string(value).map_err(failed)?;
    Ok(py.import("json")?.call_method1("loads", (text,))?.unbind())
}

/// `value` normalised as the match normalises it.
fn normalized(kind: &str, value: &str, region: &str) -> PyResult<Normalized> {
    let kind: IdKind = kind.parse().map_err(failed)?;
    let region: Region = region.parse().map_err(failed)?;
    // The reason and its code, never the value (as `onboard normalize`).
    onboard_protocol::normalize(kind, value, region)
        .map_err(|e| failed(format!("invalid {kind}: {e} ({})", e.code())))
}

/// The normalised form of an identifier, as the match uses it.
#[pyfunction]
#[pyo3(signature = (kind, value, region = "FR"))]
fn normalize(kind: &str, value: &str, region: &str) -> PyResult<String> {
    Ok(normalized(kind, value, region)?.value)
}

/// The SHA-256 (lower-case hex) of an identifier's normalised form.
#[pyfunction]
#[pyo3(signature = (kind, value, region = "FR"))]
fn digest(kind: &str, value: &str, region: &str) -> PyResult<String> {
    Ok(normalized(kind, value, region)?.digest.to_hex())
}

/// An advertiser secret key file: its path and fingerprint (the secret
/// itself stays in the file).
#[pyclass(module = "onboard", frozen)]
#[derive(Clone)]
struct Key {
    path: PathBuf,
    fingerprint: String,
}

#[pymethods]
impl Key {
    /// Write a new secret key to `path` (mode 0600; never overwrites).
    #[staticmethod]
    fn generate(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let key = py
            .allow_threads(|| generate_key_file(&path))
            .map_err(failed)?;
        Ok(Self {
            fingerprint: key.fingerprint().to_string(),
            path,
        })
    }

    /// Read a key file (refused unless a regular file of yours, mode 0600).
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let key = py.allow_threads(|| load_key(&path)).map_err(failed)?;
        Ok(Self {
            fingerprint: key.fingerprint().to_string(),
            path,
        })
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    #[getter]
    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn __repr__(&self) -> String {
        format!(
            "Key(path={:?}, fingerprint={:?})",
            self.path.display().to_string(),
            self.fingerprint
        )
    }
}

/// A key argument: a `Key` or the path of a key file.
#[derive(FromPyObject)]
enum KeyArg {
    Key(Key),
    Path(PathBuf),
}

impl KeyArg {
    fn path(self) -> PathBuf {
        match self {
            KeyArg::Key(key) => key.path,
            KeyArg::Path(path) => path,
        }
    }
}

/// Column names: one as a string, or a sequence of them.
#[derive(Default)]
struct Columns(Vec<String>);

impl<'py> FromPyObject<'py> for Columns {
    fn extract_bound(value: &Bound<'py, PyAny>) -> PyResult<Self> {
        if value.is_instance_of::<PyString>() {
            return Ok(Columns(vec![value.extract()?]));
        }
        Ok(Columns(value.extract()?))
    }
}

/// The column options every check and match takes.
struct ColumnArgs {
    email_cols: Columns,
    phone_cols: Columns,
    maid_cols: Columns,
    email_sha256_cols: Columns,
    phone_sha256_cols: Columns,
    segment_col: String,
    consent_col: Option<String>,
    region: String,
}

impl ColumnArgs {
    /// Match options for `input`, `key` and `destination` with these columns.
    fn options(
        self,
        input: PathBuf,
        key: PathBuf,
        destination: &str,
        dry_run: bool,
    ) -> PyResult<MatchOptions> {
        let mut opts = MatchOptions::new(input, key, destination, &self.segment_col);
        opts.email_cols = self.email_cols.0;
        opts.phone_cols = self.phone_cols.0;
        opts.maid_cols = self.maid_cols.0;
        opts.email_sha256_cols = self.email_sha256_cols.0;
        opts.phone_sha256_cols = self.phone_sha256_cols.0;
        opts.consent_col = self.consent_col;
        opts.region = self.region.parse().map_err(failed)?;
        opts.dry_run = dry_run;
        Ok(opts)
    }
}

/// How a file is read, when its format leaves a choice: a forced encoding
/// (a CSV's), a sheet (a spreadsheet's).
struct FileArgs {
    encoding: Option<String>,
    sheet: Option<String>,
}

impl FileArgs {
    fn apply(self, mut opts: MatchOptions) -> MatchOptions {
        opts.encoding = self.encoding;
        opts.sheet = self.sheet;
        opts
    }
}

/// The data-quality report of a CRM export (nothing is sent), as a dict.
/// `path` is a CSV (any delimiter, gzipped or not) or a spreadsheet;
/// `encoding` forces a CSV's encoding, `sheet` picks a spreadsheet's sheet
/// (as `onboard match --encoding/--sheet`). See onboard.pyi.
#[pyfunction]
#[pyo3(signature = (
    path, *, segment_col, email_cols = Columns::default(), phone_cols = Columns::default(),
    maid_cols = Columns::default(), email_sha256_cols = Columns::default(),
    phone_sha256_cols = Columns::default(), consent_col = None, region = "FR".to_owned(),
    encoding = None, sheet = None
))]
#[pyo3(
    text_signature = "(path, *, segment_col, email_cols=(), phone_cols=(), maid_cols=(), email_sha256_cols=(), phone_sha256_cols=(), consent_col=None, region='FR', encoding=None, sheet=None)"
)]
#[allow(clippy::too_many_arguments)]
fn quality(
    py: Python<'_>,
    path: PathBuf,
    segment_col: String,
    email_cols: Columns,
    phone_cols: Columns,
    maid_cols: Columns,
    email_sha256_cols: Columns,
    phone_sha256_cols: Columns,
    consent_col: Option<String>,
    region: String,
    encoding: Option<String>,
    sheet: Option<String>,
) -> PyResult<PyObject> {
    let columns = ColumnArgs {
        email_cols,
        phone_cols,
        maid_cols,
        email_sha256_cols,
        phone_sha256_cols,
        segment_col,
        consent_col,
        region,
    };
    let opts = columns.options(path, PathBuf::new(), "", true)?;
    let opts = FileArgs { encoding, sheet }.apply(opts);
    let report = py.allow_threads(|| data_quality(&opts)).map_err(failed)?;
    warn_of_encoding(py, &report)?;
    to_python(py, &report)
}

/// A connection to an onboard server with one API key.
#[pyclass(module = "onboard", frozen)]
struct Client {
    api: ApiClient,
}

/// A `UserWarning` when the file was not UTF-8 and was read as
/// Windows-1252: the CLI's notice line, for a notebook.
fn warn_of_encoding(py: Python<'_>, quality: &QualityReport) -> PyResult<()> {
    let Some(notice) = quality.encoding_notice() else {
        return Ok(());
    };
    let message = CString::new(notice).map_err(failed)?;
    PyErr::warn(py, &py.get_type::<PyUserWarning>(), &message, 1)
}

/// The outcome of a match as `onboard match --json` prints it.
fn report_dict(py: Python<'_>, outcome: &MatchOutcome) -> PyResult<PyObject> {
    to_python(
        py,
        &serde_json::json!({ "quality": outcome.quality, "report": outcome.report }),
    )
}

/// One cell of a row as the CSV text the match reads: `None` and NaN (a
/// DataFrame's missing value) are empty, a whole float is written as an
/// integer (a phone read as `612345678.0`), booleans as `true`/`false`.
fn cell_text(value: &Bound<'_, PyAny>) -> PyResult<String> {
    if value.is_none() {
        return Ok(String::new());
    }
    if value.is_instance_of::<PyString>() {
        return value.extract();
    }
    if let Ok(b) = value.downcast::<PyBool>() {
        return Ok(if b.is_true() { "true" } else { "false" }.to_owned());
    }
    if let Ok(f) = value.downcast::<PyFloat>() {
        let f = f.value();
        return Ok(if f.is_nan() {
            String::new()
        } else if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e15 {
            format!("{f:.0}")
        } else {
            f.to_string()
        });
    }
    value.str()?.extract()
}

#[pymethods]
impl Client {
    /// Connect to `server`, trusting only `ca` (a PEM file) when given, with
    /// the API key read from `api_key_file` (mode 0600) or ONBOARD_API_KEY.
    #[new]
    #[pyo3(signature = (server, *, ca = None, api_key_file = None))]
    fn new(
        py: Python<'_>,
        server: &str,
        ca: Option<PathBuf>,
        api_key_file: Option<PathBuf>,
    ) -> PyResult<Self> {
        let api = py
            .allow_threads(|| api_client(server, ca.as_deref(), api_key_file.as_deref()))
            .map_err(failed)?;
        Ok(Self { api })
    }

    /// Check a CRM export, then match it for `destination`; the report dict
    /// has `quality` and `report` (`None` on a dry run). `path`, `encoding`
    /// and `sheet` as in `quality`.
    #[pyo3(signature = (
        path, *, key, destination, segment_col, email_cols = Columns::default(),
        phone_cols = Columns::default(), maid_cols = Columns::default(),
        email_sha256_cols = Columns::default(), phone_sha256_cols = Columns::default(),
        consent_col = None, region = "FR".to_owned(), dry_run = false, encoding = None,
        sheet = None
    ))]
    #[pyo3(
        text_signature = "($self, path, *, key, destination, segment_col, email_cols=(), phone_cols=(), maid_cols=(), email_sha256_cols=(), phone_sha256_cols=(), consent_col=None, region='FR', dry_run=False, encoding=None, sheet=None)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn match_file(
        &self,
        py: Python<'_>,
        path: PathBuf,
        key: KeyArg,
        destination: &str,
        segment_col: String,
        email_cols: Columns,
        phone_cols: Columns,
        maid_cols: Columns,
        email_sha256_cols: Columns,
        phone_sha256_cols: Columns,
        consent_col: Option<String>,
        region: String,
        dry_run: bool,
        encoding: Option<String>,
        sheet: Option<String>,
    ) -> PyResult<PyObject> {
        let columns = ColumnArgs {
            email_cols,
            phone_cols,
            maid_cols,
            email_sha256_cols,
            phone_sha256_cols,
            segment_col,
            consent_col,
            region,
        };
        let opts = columns.options(path, key.path(), destination, dry_run)?;
        let opts = FileArgs { encoding, sheet }.apply(opts);
        let outcome = py
            .allow_threads(|| run_match_with(&self.api, &opts, &NoProgress))
            .map_err(failed)?;
        warn_of_encoding(py, &outcome.quality)?;
        report_dict(py, &outcome)
    }

    /// Like `match_file`, over an iterable of dicts (column name to value),
    /// e.g. a DataFrame's `to_dict("records")`. Only the named columns are
    /// read; a missing key, None or NaN is an empty cell. The quality
    /// report numbers rows from 2 (line 1 being the header).
    #[pyo3(signature = (
        rows, *, key, destination, segment_col, email_cols = Columns::default(),
        phone_cols = Columns::default(), maid_cols = Columns::default(),
        email_sha256_cols = Columns::default(), phone_sha256_cols = Columns::default(),
        consent_col = None, region = "FR".to_owned(), dry_run = false
    ))]
    #[pyo3(
        text_signature = "($self, rows, *, key, destination, segment_col, email_cols=(), phone_cols=(), maid_cols=(), email_sha256_cols=(), phone_sha256_cols=(), consent_col=None, region='FR', dry_run=False)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn match_rows(
        &self,
        py: Python<'_>,
        rows: &Bound<'_, PyAny>,
        key: KeyArg,
        destination: &str,
        segment_col: String,
        email_cols: Columns,
        phone_cols: Columns,
        maid_cols: Columns,
        email_sha256_cols: Columns,
        phone_sha256_cols: Columns,
        consent_col: Option<String>,
        region: String,
        dry_run: bool,
    ) -> PyResult<PyObject> {
        let columns = ColumnArgs {
            email_cols,
            phone_cols,
            maid_cols,
            email_sha256_cols,
            phone_sha256_cols,
            segment_col,
            consent_col,
            region,
        };
        let opts = columns.options(PathBuf::new(), key.path(), destination, dry_run)?;
        let mut input = RowsInput::new(&opts).map_err(failed)?;
        let names = input.columns().to_vec();
        let mut values = Vec::with_capacity(names.len());
        for (i, row) in rows.try_iter()?.enumerate() {
            let row = row?;
            values.clear();
            for name in &names {
                let cell = row.call_method1("get", (name,)).map_err(|_| {
                    failed(format!(
                        "row {}: expected a dict of column name to value",
                        i + 1
                    ))
                })?;
                values.push(cell_text(&cell)?);
            }
            input.push(&values).map_err(failed)?;
        }
        let outcome = py
            .allow_threads(|| input.run_match(&self.api, &opts, &NoProgress))
            .map_err(failed)?;
        report_dict(py, &outcome)
    }

    /// The audiences delivered to this destination, as dicts.
    fn audiences(&self, py: Python<'_>) -> PyResult<PyObject> {
        let listed = py
            .allow_threads(|| list_audiences(&self.api))
            .map_err(failed)?;
        to_python(py, &listed)
    }

    /// Every member's cookie ID of an audience, in the server's order.
    fn pull(&self, py: Python<'_>, audience_id: &str) -> PyResult<Vec<String>> {
        let mut out = Vec::new();
        py.allow_threads(|| pull_audience(&self.api, audience_id, &mut out))
            .map_err(failed)?;
        let text = String::from_utf8(out).map_err(failed)?;
        Ok(text.lines().map(str::to_owned).collect())
    }

    fn __repr__(&self) -> String {
        format!("Client(server={:?})", self.api.server())
    }
}

/// The `onboard` module.
#[pymodule]
fn onboard(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("OnboardError", m.py().get_type::<OnboardError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(normalize, m)?)?;
    m.add_function(wrap_pyfunction!(digest, m)?)?;
    m.add_function(wrap_pyfunction!(quality, m)?)?;
    m.add_class::<Key>()?;
    m.add_class::<Client>()?;
    Ok(())
}
