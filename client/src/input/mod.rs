//! The advertiser's files as they come, behind one [`RowSource`]: CSV (its
//! encoding and delimiter found out, see [`decode`] and [`csv`]), the same
//! gzip-compressed, and spreadsheets ([`sheet`]). The quality pass and the
//! upload both read rows through it, so every format is checked and sent
//! the same way: a row number (the file's line, or the sheet's row) and
//! its cells ([`Record`]).
//!
//! CSV and gzip are streamed; a spreadsheet's sheet is loaded whole.

pub mod csv;
pub mod decode;
mod header;
mod record;
pub mod sheet;

pub use decode::{DecodeError, Decoded, Detection, EncodingChoice};
pub use header::find_column;
pub use record::{field, CellKind, FieldError, Record};

use self::csv::CsvReader;
use self::sheet::{SheetReader, SPREADSHEET_EXTENSIONS};
use crate::error::ClientError;
use std::path::Path;

/// Where rows come from.
enum Rows {
    Csv(Box<CsvReader>),
    Sheet(Box<SheetReader>),
}

/// An input file read row by row, whatever its format.
pub struct RowSource {
    rows: Rows,
    format: &'static str,
}

/// What an input turned out to be, for the quality report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    /// `csv`, `csv+gzip`, `xlsx`, `xlsm`, `xlsb`, `xls` or `ods`.
    pub format: &'static str,
    /// The encoding of a CSV (final once every row was read).
    pub encoding: Option<Decoded>,
    /// The delimiter of a CSV.
    pub delimiter: Option<u8>,
    /// The sheet of a spreadsheet.
    pub sheet: Option<String>,
}

impl RowSource {
    /// Open `path`: a spreadsheet by its extension (then `sheet` picks the
    /// sheet, the first by default), otherwise CSV, gzip-compressed or not
    /// (then `encoding` is a WHATWG label forcing the encoding).
    pub fn open(
        path: &Path,
        encoding: Option<&str>,
        sheet: Option<&str>,
    ) -> Result<Self, ClientError> {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        let spreadsheet = SPREADSHEET_EXTENSIONS
            .iter()
            .find(|&&e| e == extension.as_str());
        if let Some(&format) = spreadsheet {
            if encoding.is_some() {
                return Err(ClientError::Usage(format!(
                    "--encoding applies to CSV files; a .{format} workbook carries its own"
                )));
            }
            let reader = SheetReader::open(path, format, sheet)?;
            return Ok(Self {
                rows: Rows::Sheet(Box::new(reader)),
                format,
            });
        }
        if sheet.is_some() {
            return Err(ClientError::Usage(format!(
                "--sheet applies to spreadsheets (.{}), not to a CSV file",
                SPREADSHEET_EXTENSIONS.join(", .")
            )));
        }
        let choice = EncodingChoice::from_label(encoding).ok_or_else(|| {
            ClientError::Usage(format!(
                "--encoding `{}` is not an encoding label (try utf-8, windows-1252, latin1, utf-16le, utf-16be)",
                encoding.unwrap_or_default()
            ))
        })?;
        let reader = CsvReader::open_with(path, choice)?;
        let format = if reader.is_gzip() { "csv+gzip" } else { "csv" };
        Ok(Self {
            rows: Rows::Csv(Box::new(reader)),
            format,
        })
    }

    /// The header's column names, trimmed.
    pub fn header(&self) -> &[String] {
        match &self.rows {
            Rows::Csv(r) => r.header(),
            Rows::Sheet(r) => r.header(),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        match &self.rows {
            Rows::Csv(r) => r.path(),
            Rows::Sheet(r) => r.path(),
        }
    }

    /// Index of a column ([`find_column`]: NFC, trimmed, any case).
    pub fn column(&self, name: &str) -> Result<usize, ClientError> {
        find_column(self.header(), name, self.path())
    }

    /// Read the next row into `record` (its buffers reused); returns its
    /// number — the line in a CSV (the header being line 1), the row in a
    /// sheet — or `None` at the end. Blank rows are skipped.
    pub fn next_row(&mut self, record: &mut Record) -> Result<Option<u64>, ClientError> {
        match &mut self.rows {
            Rows::Csv(r) => r.next_row(record.csv_fields()),
            Rows::Sheet(r) => Ok(r.next_row(record)),
        }
    }

    /// What the input is: format, and encoding and delimiter, or sheet.
    pub fn info(&self) -> SourceInfo {
        match &self.rows {
            Rows::Csv(r) => SourceInfo {
                format: self.format,
                encoding: Some(r.encoding()),
                delimiter: Some(r.delimiter()),
                sheet: None,
            },
            Rows::Sheet(r) => SourceInfo {
                format: self.format,
                encoding: None,
                delimiter: None,
                sheet: Some(r.sheet().to_owned()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn rows(source: &mut RowSource, col: usize) -> Vec<(u64, String)> {
        let mut rec = Record::default();
        let mut out = Vec::new();
        while let Some(n) = source.next_row(&mut rec).unwrap() {
            out.push((n, rec.text(col).unwrap().to_owned()));
        }
        out
    }

    #[test]
    fn gzip_windows_1252_and_lone_cr() {
        let dir = tempfile::tempdir().unwrap();
        let text = b"Nom;T\xE9l\xE9phone\rA;0612\r\rB\xE9;0613\r";
        let path = dir.path().join("crm.csv.gz");
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&path).unwrap(),
            flate2::Compression::default(),
        );
        gz.write_all(text).unwrap();
        gz.finish().unwrap();
        let mut source = RowSource::open(&path, None, None).unwrap();
        assert_eq!(source.column("téléphone").unwrap(), 1);
        assert_eq!(rows(&mut source, 0), [(2, "A".into()), (4, "Bé".into())]);
        let info = source.info();
        assert_eq!((info.format, info.delimiter), ("csv+gzip", Some(b';')));
        assert_eq!(info.encoding.unwrap().detection, Detection::Fallback);
    }

    #[test]
    fn options_that_do_not_fit_the_format() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("crm.csv");
        std::fs::write(&csv, "email\na@b.fr\n").unwrap();
        let usage = |r: Result<RowSource, ClientError>| match r {
            Err(ClientError::Usage(m)) => m,
            Err(e) => panic!("not a usage error: {e}"),
            Ok(_) => panic!("accepted"),
        };
        assert!(usage(RowSource::open(&csv, Some("klingon"), None)).contains("`klingon`"));
        assert!(usage(RowSource::open(&csv, None, Some("Feuil1"))).contains("--sheet"));
        let xlsx = dir.path().join("crm.XLSX");
        assert!(usage(RowSource::open(&xlsx, Some("utf-8"), None)).contains("--encoding"));
        let gz = dir.path().join("crm.csv.gz");
        std::fs::write(&gz, "email\n").unwrap();
        let err = RowSource::open(&gz, None, None).err().unwrap().to_string();
        assert!(err.contains("not gzip"), "{err}");
    }

    #[test]
    fn forced_encoding_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("crm.csv");
        std::fs::write(
            &csv,
            b"email;segment\r\na@b.fr;Gold\r\nb@c.fr;Or \xE9t\xE9\r\n",
        )
        .unwrap();
        // The error comes at open or at a row, as the bytes reach the decoder.
        let err = match RowSource::open(&csv, Some("utf-8"), None) {
            Err(e) => e.to_string(),
            Ok(mut source) => {
                let mut rec = Record::default();
                loop {
                    match source.next_row(&mut rec) {
                        Ok(Some(_)) => continue,
                        Ok(None) => panic!("read to the end"),
                        Err(e) => break e.to_string(),
                    }
                }
            }
        };
        assert!(
            err.contains("line 3") && err.contains("not valid UTF-8"),
            "{err}"
        );
    }
}
