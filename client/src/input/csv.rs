//! Reading CSV files as real CRM exports come: gzipped or not, in the
//! encodings of [`super::decode`] (BOM, UTF-8, Windows-1252, forced),
//! the delimiter (`,`, `;` or tab) detected from the header line, LF, CRLF
//! or CR line ends, quoted fields, ragged rows. Rows are streamed, never
//! held whole in memory.

use super::decode::{DecodeError, DecodedAs, DecodingReader, EncodingChoice, LineBreaks};
use super::header::find_column;
pub use super::record::{field, FieldError};
use crate::error::ClientError;
use csv::ByteRecord;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Separator of several segments in one cell.
pub const SEGMENT_SEPARATOR: char = '|';

/// The longest header line looked at for delimiter detection.
const MAX_HEADER_BYTES: usize = 1 << 20;

/// A CSV file being read row by row.
pub struct CsvReader {
    path: PathBuf,
    delimiter: u8,
    header: Vec<String>,
    reader: csv::Reader<Box<dyn Read + Send>>,
    lines: LineCounter,
    decoded: DecodedAs,
    gzip: bool,
}

/// The two bytes every gzip member starts with.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Line numbers of records from their byte offsets: the reader notes where
/// each line break passes, records consume the notes up to their start.
/// Only breaks still in csv's buffer are kept, so memory stays bounded.
#[derive(Clone, Default)]
struct LineCounter(Arc<Mutex<(u64, VecDeque<u64>)>>);

impl LineCounter {
    /// The 1-based line on which the byte at `offset` lies.
    fn line_at(&self, offset: u64) -> u64 {
        let mut guard = self.0.lock().expect("line counter lock");
        let (passed, pending) = &mut *guard;
        while pending.front().is_some_and(|&nl| nl <= offset) {
            pending.pop_front();
            *passed += 1;
        }
        *passed + 1
    }
}

struct CountingReader<R> {
    inner: R,
    offset: u64,
    breaks: LineBreaks,
    lines: LineCounter,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut guard = self.lines.0.lock().expect("line counter lock");
        let offset = self.offset;
        self.breaks
            .scan(&buf[..n], |i| guard.1.push_back(offset + i as u64));
        self.offset += n as u64;
        Ok(n)
    }
}

impl CsvReader {
    /// Open a file: encoding found out (BOM, else UTF-8, else Windows-1252),
    /// gzip when it starts like one, delimiter detected, header read.
    pub fn open(path: &Path) -> Result<Self, ClientError> {
        Self::open_with(path, EncodingChoice::Auto)
    }

    /// [`CsvReader::open`] in a given encoding (or `Auto`).
    pub fn open_with(path: &Path, encoding: EncodingChoice) -> Result<Self, ClientError> {
        let file = File::open(path).map_err(|e| ClientError::read(path, e))?;
        let mut file = BufReader::with_capacity(64 << 10, file);
        let head = file.fill_buf().map_err(|e| ClientError::read(path, e))?;
        let gzip = head.starts_with(&GZIP_MAGIC);
        let named_gz = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
        if named_gz && !gzip && !head.is_empty() {
            return Err(ClientError::BadInput {
                path: path.to_owned(),
                message: "the name ends in .gz but the file is not gzip-compressed".into(),
            });
        }
        let input: Box<dyn Read + Send> = if gzip {
            // Every member, as `cat a.gz b.gz` and parallel compressors make.
            Box::new(flate2::bufread::MultiGzDecoder::new(file))
        } else {
            Box::new(file)
        };
        let mut reader = Self::decoding(path, input, encoding)?;
        reader.gzip = gzip;
        Ok(reader)
    }

    /// Read from any byte source (`path` only names it in messages).
    pub fn from_reader(path: &Path, input: Box<dyn Read + Send>) -> Result<Self, ClientError> {
        Self::decoding(path, input, EncodingChoice::Auto)
    }

    fn decoding(
        path: &Path,
        input: Box<dyn Read + Send>,
        encoding: EncodingChoice,
    ) -> Result<Self, ClientError> {
        let mut input = DecodingReader::new(input, encoding).map_err(|e| io_error(path, e))?;
        let decoded = input.decided();
        // Read up to the end of the header line (or a bounded prefix).
        let mut prefix = Vec::with_capacity(8192);
        let mut chunk = [0u8; 8192];
        loop {
            let n = input.read(&mut chunk).map_err(|e| io_error(path, e))?;
            prefix.extend_from_slice(&chunk[..n]);
            let line_end = prefix.iter().any(|&b| b == b'\n' || b == b'\r');
            if n == 0 || line_end || prefix.len() >= MAX_HEADER_BYTES {
                break;
            }
        }
        let delimiter = detect_delimiter(header_line(&prefix));
        let lines = LineCounter::default();
        let source: Box<dyn Read + Send> = Box::new(CountingReader {
            inner: Cursor::new(prefix).chain(input),
            offset: 0,
            breaks: LineBreaks::default(),
            lines: lines.clone(),
        });
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(true)
            .flexible(true)
            .from_reader(source);
        let header = reader
            .byte_headers()
            .map_err(|e| csv_error(path, e))?
            .iter()
            .map(|h| String::from_utf8_lossy(h).trim().to_owned())
            .collect::<Vec<_>>();
        if header.iter().all(|h| h.is_empty()) {
            return Err(ClientError::BadInput {
                path: path.to_owned(),
                message: "the file is empty or has no header line".into(),
            });
        }
        Ok(Self {
            path: path.to_owned(),
            delimiter,
            header,
            reader,
            lines,
            decoded,
            gzip: false,
        })
    }

    /// The encoding read in, and how it was chosen; final once every row
    /// was read (a file ASCII so far may still turn out Windows-1252).
    pub fn encoding(&self) -> super::decode::Decoded {
        self.decoded.get()
    }

    /// Whether the file is gzip-compressed.
    pub fn is_gzip(&self) -> bool {
        self.gzip
    }

    /// The detected delimiter.
    pub fn delimiter(&self) -> u8 {
        self.delimiter
    }

    /// The header's column names, trimmed.
    pub fn header(&self) -> &[String] {
        &self.header
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Index of a column: exact name first, then after Unicode NFC,
    /// trimming and case folding (see [`find_column`]).
    pub fn column(&self, name: &str) -> Result<usize, ClientError> {
        find_column(&self.header, name, &self.path)
    }

    /// Read the next row into `record`; returns its line number (1-based,
    /// the header being line 1), or `None` at the end.
    pub fn next_row(&mut self, record: &mut ByteRecord) -> Result<Option<u64>, ClientError> {
        loop {
            match self.reader.read_byte_record(record) {
                Ok(false) => return Ok(None),
                Ok(true) => {
                    // Skip blank lines (a single empty field).
                    if record.len() == 1 && record[0].iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let start = record.position().map(|p| p.byte()).unwrap_or(0);
                    return Ok(Some(self.lines.line_at(start)));
                }
                Err(e) => return Err(csv_error(&self.path, e)),
            }
        }
    }

    /// Read up to `max` rows.
    pub fn next_chunk(&mut self, max: usize) -> Result<Vec<(u64, ByteRecord)>, ClientError> {
        let mut out = Vec::with_capacity(max.min(65_536));
        self.refill_chunk(max, &mut out)?;
        Ok(out)
    }

    /// Replace `chunk`'s rows with the next up to `max` rows, reading them
    /// into its records' buffers (no allocation per row once they are
    /// large enough).
    pub fn refill_chunk(
        &mut self,
        max: usize,
        chunk: &mut Vec<(u64, ByteRecord)>,
    ) -> Result<(), ClientError> {
        let mut filled = 0;
        while filled < max {
            if filled == chunk.len() {
                chunk.push((0, ByteRecord::new()));
            }
            let (line, record) = &mut chunk[filled];
            match self.next_row(record)? {
                Some(l) => *line = l,
                None => break,
            }
            filled += 1;
        }
        chunk.truncate(filled);
        Ok(())
    }
}

fn csv_error(path: &Path, e: csv::Error) -> ClientError {
    let line = e.position().map(|p| p.line());
    match e.into_kind() {
        csv::ErrorKind::Io(io) => io_error(path, io),
        _ => ClientError::BadInput {
            path: path.to_owned(),
            message: match line {
                Some(line) => format!("line {line}: malformed CSV"),
                None => "malformed CSV".into(),
            },
        },
    }
}

/// A read failure; bytes the encoding cannot decode are bad input, named
/// by their line.
fn io_error(path: &Path, e: std::io::Error) -> ClientError {
    match DecodeError::of(&e) {
        Some(d) => ClientError::BadInput {
            path: path.to_owned(),
            message: d.to_string(),
        },
        None => ClientError::read(path, e),
    }
}

fn header_line(bytes: &[u8]) -> &[u8] {
    match bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
        Some(end) => &bytes[..end],
        None => bytes,
    }
}

/// The delimiter of a header line: the most frequent of `,` `;` tab outside
/// quotes; `,` when none appears or on a tie with `,`.
pub fn detect_delimiter(header_line: &[u8]) -> u8 {
    let mut counts = [0usize; 3];
    let mut quoted = false;
    for &b in header_line {
        match b {
            b'"' => quoted = !quoted,
            b',' if !quoted => counts[0] += 1,
            b';' if !quoted => counts[1] += 1,
            b'\t' if !quoted => counts[2] += 1,
            _ => {}
        }
    }
    let candidates = [b',', b';', b'\t'];
    let mut best = 0;
    for i in 1..3 {
        if counts[i] > counts[best] {
            best = i;
        }
    }
    candidates[best]
}

/// A consent cell: true/false/1/0/yes/no/oui/non, case-insensitive, trimmed.
pub fn parse_consent(cell: &str) -> Option<bool> {
    let v = cell.trim();
    const YES: [&str; 4] = ["true", "1", "yes", "oui"];
    const NO: [&str; 4] = ["false", "0", "no", "non"];
    if YES.iter().any(|y| v.eq_ignore_ascii_case(y)) {
        Some(true)
    } else if NO.iter().any(|n| v.eq_ignore_ascii_case(n)) {
        Some(false)
    } else {
        None
    }
}

/// The segments of a cell: split on `|`, trimmed, empties dropped, first
/// occurrence order kept, duplicates removed.
pub fn split_segments(cell: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for s in cell
        .split(SEGMENT_SEPARATOR)
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reader(bytes: &[u8]) -> Result<CsvReader, ClientError> {
        CsvReader::from_reader(Path::new("test.csv"), Box::new(Cursor::new(bytes.to_vec())))
    }

    fn rows(r: &mut CsvReader) -> Vec<(u64, Vec<String>)> {
        let mut out = Vec::new();
        let mut rec = ByteRecord::new();
        while let Some(line) = r.next_row(&mut rec).unwrap() {
            out.push((
                line,
                rec.iter()
                    .map(|f| String::from_utf8_lossy(f).into_owned())
                    .collect(),
            ));
        }
        out
    }

    #[test]
    fn delimiters_are_detected() {
        assert_eq!(detect_delimiter(b"email,phone,segment"), b',');
        assert_eq!(detect_delimiter(b"email;phone;segment"), b';');
        assert_eq!(detect_delimiter(b"email\tphone\tsegment"), b'\t');
        assert_eq!(detect_delimiter(b"\"a;b\",c"), b',');
        assert_eq!(detect_delimiter(b"email"), b',');
    }

    #[test]
    fn bom_semicolons_and_quotes() {
        let mut r = reader(b"\xEF\xBB\xBFEmail;T\xC3\xA9l\xC3\xA9phone;Segment\r\n\"a;b@x.fr\";06 12;\"Gold|Silver\"\r\n").unwrap();
        assert_eq!(r.delimiter(), b';');
        assert_eq!(r.header(), ["Email", "Téléphone", "Segment"]);
        assert_eq!(r.column("email").unwrap(), 0);
        assert_eq!(r.column("Segment").unwrap(), 2);
        let rows = rows(&mut r);
        assert_eq!(
            rows,
            vec![(
                2,
                vec!["a;b@x.fr".into(), "06 12".into(), "Gold|Silver".into()]
            )]
        );
    }

    #[test]
    fn multi_line_quoted_fields_keep_line_numbers() {
        let mut r = reader(b"a,b\n\"x\ny\",1\n\n2,3\n4,5\r\n6,7").unwrap();
        let rows = rows(&mut r);
        assert_eq!(rows[0], (2, vec!["x\ny".to_string(), "1".into()]));
        assert_eq!(rows[1], (5, vec!["2".into(), "3".into()]));
        assert_eq!(rows[2].0, 6);
        assert_eq!(rows[3], (7, vec!["6".into(), "7".into()]));
    }

    #[test]
    fn refilled_chunks_read_every_row_once() {
        let text = b"a,b\nlong-value-one,1\n\nx,2\ny,3\nz,4\nlast,5\n";
        let expected = rows(&mut reader(text).unwrap());
        let mut r = reader(text).unwrap();
        let mut chunk = Vec::new();
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        loop {
            r.refill_chunk(2, &mut chunk).unwrap();
            if chunk.is_empty() {
                break;
            }
            sizes.push(chunk.len());
            for (line, rec) in &chunk {
                let fields = rec.iter().map(|f| String::from_utf8_lossy(f).into_owned());
                got.push((*line, fields.collect::<Vec<_>>()));
            }
        }
        assert_eq!(got, expected);
        assert_eq!(sizes, [2, 2, 1]);
    }

    #[test]
    fn unknown_column_lists_the_header() {
        let r = reader(b"email,segment\n").unwrap();
        let err = r.column("phone").unwrap_err().to_string();
        assert!(
            err.contains("`phone`") && err.contains("`email`, `segment`"),
            "{err}"
        );
    }

    #[test]
    fn empty_file_is_refused() {
        assert!(matches!(reader(b""), Err(ClientError::BadInput { .. })));
    }

    #[test]
    fn consent_values() {
        for yes in ["true", "TRUE", " 1 ", "yes", "Oui", "OUI"] {
            assert_eq!(parse_consent(yes), Some(true), "{yes}");
        }
        for no in ["false", "0", "No", "non", "NON "] {
            assert_eq!(parse_consent(no), Some(false), "{no}");
        }
        for bad in ["", "y", "2", "vrai", "nope"] {
            assert_eq!(parse_consent(bad), None, "{bad}");
        }
    }

    #[test]
    fn segments_split_on_pipes() {
        assert_eq!(
            split_segments("Gold| Silver ||Gold"),
            vec!["Gold", "Silver"]
        );
        assert!(split_segments(" | ").is_empty());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(mut r) = reader(&bytes) {
                let _ = r.column("email");
                let mut rec = ByteRecord::new();
                for _ in 0..1000 {
                    match r.next_row(&mut rec) {
                        Ok(Some(_)) => { for i in 0..4 { let _ = field(&rec, i); } }
                        _ => break,
                    }
                }
            }
        }

        #[test]
        fn delimiter_round_trip(cells in proptest::collection::vec("[a-z]{1,8}", 2..6), d in prop_oneof![Just(b','), Just(b';'), Just(b'\t')]) {
            let line = cells.join(&(d as char).to_string());
            prop_assert_eq!(detect_delimiter(line.as_bytes()), d);
            let r = reader(format!("{line}\n").as_bytes()).unwrap();
            prop_assert_eq!(r.header(), &cells[..]);
        }
    }
}
