//! Spreadsheets (`.xlsx`, `.xlsm`, `.xlsb`, `.xls`, `.ods`) read with
//! calamine: one sheet, loaded whole (workbooks are zip or OLE containers,
//! not streams), its first non-blank row the header, rows numbered as the
//! spreadsheet numbers them.
//!
//! Cells come typed. Text is text; a whole number is written without a
//! fraction or exponent, so a phone stored as the number 612345678 reads
//! `612345678`; anything else (a date, a boolean, an error, a fraction, a
//! formula's result) is marked with its [`CellKind`] so that identifier
//! columns count it invalid instead of matching on its rendering.

use super::header::canonical_eq;
use super::record::{CellKind, Record};
use crate::error::ClientError;
use calamine::{open_workbook, Data, Ods, Range, Reader, Sheets, Xls, Xlsb, Xlsx};
use std::path::{Path, PathBuf};

/// File extensions read as spreadsheets (lower case).
pub const SPREADSHEET_EXTENSIONS: [&str; 5] = ["xlsx", "xlsm", "xlsb", "xls", "ods"];

/// The largest magnitude below which every whole `f64` is exact (2⁵³).
const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0;

/// One sheet of a workbook, row by row.
pub struct SheetReader {
    path: PathBuf,
    sheet: String,
    header: Vec<String>,
    cells: Range<Data>,
    formulas: Range<String>,
    /// Index in `cells` of the next row to read.
    next: usize,
    text: String,
}

impl SheetReader {
    /// Open `path` (its lower-case extension is `extension`) and load the
    /// sheet named `sheet`, or the first one.
    pub fn open(path: &Path, extension: &str, sheet: Option<&str>) -> Result<Self, ClientError> {
        let bad = |e: &dyn std::fmt::Display| ClientError::BadInput {
            path: path.to_owned(),
            message: format!("cannot read it as a {extension} workbook: {e}"),
        };
        let mut book: Sheets<_> = match extension {
            "xls" => Sheets::Xls(open_workbook::<Xls<_>, _>(path).map_err(|e| bad(&e))?),
            "xlsb" => Sheets::Xlsb(open_workbook::<Xlsb<_>, _>(path).map_err(|e| bad(&e))?),
            "ods" => Sheets::Ods(open_workbook::<Ods<_>, _>(path).map_err(|e| bad(&e))?),
            _ => Sheets::Xlsx(open_workbook::<Xlsx<_>, _>(path).map_err(|e| bad(&e))?),
        };
        let names = book.sheet_names();
        let name = choose_sheet(&names, sheet, path)?;
        let cells = book.worksheet_range(&name).map_err(|e| bad(&e))?;
        // Formulas are only looked up to mark cells; a format without them
        // (or an unreadable formula part) marks none.
        let formulas = book.worksheet_formula(&name).unwrap_or_default();
        let mut reader = Self {
            path: path.to_owned(),
            sheet: name,
            header: Vec::new(),
            cells,
            formulas,
            next: 0,
            text: String::new(),
        };
        let mut header = Record::default();
        if reader.next_row(&mut header).is_none() {
            return Err(ClientError::BadInput {
                path: path.to_owned(),
                message: format!("sheet `{}` is empty or has no header row", reader.sheet),
            });
        }
        reader.header = (0..header.len())
            .map(|i| header.text(i).unwrap_or_default().trim().to_owned())
            .collect();
        Ok(reader)
    }

    /// The sheet read.
    pub fn sheet(&self) -> &str {
        &self.sheet
    }

    /// The header row's cells, trimmed.
    pub fn header(&self) -> &[String] {
        &self.header
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read the next non-blank row into `record`; its row number in the
    /// spreadsheet (1-based), or `None` at the end.
    pub fn next_row(&mut self, record: &mut Record) -> Option<u64> {
        let (top, left) = self.cells.start()?;
        let (height, width) = self.cells.get_size();
        while self.next < height {
            let row = top + self.next as u32;
            let mut blank = true;
            record.clear();
            for col in 0..width {
                let cell = self.cells.get((self.next, col)).unwrap_or(&Data::Empty);
                let formula = self
                    .formulas
                    .get_value((row, left + col as u32))
                    .is_some_and(|f| !f.is_empty());
                let kind = cell_text(cell, &mut self.text);
                blank &= self.text.trim().is_empty() && !formula;
                record.push(
                    &self.text,
                    if formula {
                        Some(CellKind::Formula)
                    } else {
                        kind
                    },
                );
            }
            self.next += 1;
            if !blank {
                return Some(u64::from(row) + 1);
            }
        }
        None
    }
}

/// The sheet asked for (same name, else the same after NFC, trimming and
/// case folding), or the first; an unknown name lists the sheets.
fn choose_sheet(
    names: &[String],
    wanted: Option<&str>,
    path: &Path,
) -> Result<String, ClientError> {
    let found = match wanted {
        None => names.first(),
        Some(w) => names
            .iter()
            .find(|n| n.as_str() == w)
            .or_else(|| names.iter().find(|n| canonical_eq(n, w))),
    };
    found.cloned().ok_or_else(|| {
        let list = names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ");
        ClientError::BadInput {
            path: path.to_owned(),
            message: match wanted {
                Some(w) => format!("the workbook has no sheet `{w}`; its sheets are: {list}"),
                None => "the workbook has no sheet".into(),
            },
        }
    })
}

/// Write a cell's text into `out`; its kind unless it is text or a whole number.
fn cell_text(cell: &Data, out: &mut String) -> Option<CellKind> {
    use std::fmt::Write as _;
    out.clear();
    match cell {
        Data::Empty => None,
        Data::String(s) => {
            out.push_str(s);
            None
        }
        Data::Int(i) => {
            let _ = write!(out, "{i}");
            None
        }
        Data::Float(f) => match whole_number(*f) {
            Some(i) => {
                let _ = write!(out, "{i}");
                None
            }
            None => {
                let _ = write!(out, "{f}");
                Some(CellKind::InexactNumber)
            }
        },
        Data::Bool(b) => {
            out.push_str(if *b { "true" } else { "false" });
            Some(CellKind::Boolean)
        }
        Data::DateTime(d) => {
            let _ = write!(out, "{d}");
            Some(CellKind::Date)
        }
        Data::DateTimeIso(s) | Data::DurationIso(s) => {
            out.push_str(s);
            Some(CellKind::Date)
        }
        Data::Error(e) => {
            let _ = write!(out, "{e}");
            Some(CellKind::Error)
        }
    }
}

/// A number cell as the whole number it holds: `None` for a fraction, a
/// non-finite value, or one beyond 2⁵³ (where `f64` no longer holds every
/// integer, so the digits shown might not be the ones typed).
pub fn whole_number(f: f64) -> Option<i64> {
    (f.is_finite() && f.fract() == 0.0 && f.abs() <= EXACT_INTEGER_LIMIT).then_some(f as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rust_xlsxwriter::{ExcelDateTime, Format, Formula, Workbook};

    #[test]
    fn numbers_become_whole_numbers_or_are_marked() {
        let mut s = String::new();
        assert_eq!(cell_text(&Data::Float(612345678.0), &mut s), None);
        assert_eq!(s, "612345678");
        assert_eq!(cell_text(&Data::Float(33612345678.0), &mut s), None);
        assert_eq!(s, "33612345678");
        assert_eq!(
            cell_text(&Data::Float(6.5), &mut s),
            Some(CellKind::InexactNumber)
        );
        assert_eq!(
            cell_text(&Data::Float(1e300), &mut s),
            Some(CellKind::InexactNumber)
        );
        assert_eq!(cell_text(&Data::Int(-7), &mut s), None);
        assert_eq!(s, "-7");
    }

    proptest! {
        #[test]
        fn whole_numbers_print_their_digits(n in -(1i64 << 53)..=(1i64 << 53)) {
            let mut s = String::new();
            prop_assert_eq!(cell_text(&Data::Float(n as f64), &mut s), None);
            prop_assert_eq!(s, n.to_string());
        }

        #[test]
        fn fractions_are_refused(n in -1e12f64..1e12, frac in 0.001f64..0.999) {
            let f = n.trunc() + frac.copysign(n);
            prop_assume!(f.fract() != 0.0);
            let mut s = String::new();
            prop_assert_eq!(cell_text(&Data::Float(f), &mut s), Some(CellKind::InexactNumber));
            prop_assert!(!s.is_empty());
        }
    }

    #[test]
    fn a_workbook_with_typed_cells() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crm.xlsx");
        let mut book = Workbook::new();
        book.add_worksheet().set_name("Notes").unwrap();
        let sheet = book.add_worksheet().set_name("Clients").unwrap();
        // The table starts at B3: row numbers are the sheet's.
        for (c, h) in [" Téléphone", "segment", "consent"].iter().enumerate() {
            sheet.write_string(2, 1 + c as u16, *h).unwrap();
        }
        sheet.write_number(3, 1, 612345678.0).unwrap();
        sheet.write_string(3, 2, "Gold").unwrap();
        sheet.write_boolean(3, 3, true).unwrap();
        sheet
            .write_datetime_with_format(
                5,
                1,
                ExcelDateTime::from_ymd(2024, 1, 31).unwrap(),
                &Format::new().set_num_format("yyyy-mm-dd"),
            )
            .unwrap();
        sheet.write_number(6, 1, 0.5).unwrap();
        sheet.write_boolean(7, 1, false).unwrap();
        sheet
            .write_formula(8, 1, Formula::new("=1+1").set_result("2"))
            .unwrap();
        sheet.write_number(8, 2, 3.0).unwrap();
        book.save(&path).unwrap();

        let err = SheetReader::open(&path, "xlsx", Some("Feuil1"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("`Feuil1`") && err.contains("`Notes`, `Clients`"),
            "{err}"
        );
        let notes = SheetReader::open(&path, "xlsx", None)
            .err()
            .unwrap()
            .to_string();
        assert!(notes.contains("`Notes` is empty"), "{notes}");

        let mut r = SheetReader::open(&path, "xlsx", Some("clients")).unwrap();
        assert_eq!(r.sheet(), "Clients");
        assert_eq!(r.header(), ["Téléphone", "segment", "consent"]);
        let mut rec = Record::default();
        let mut rows = Vec::new();
        while let Some(n) = r.next_row(&mut rec) {
            let id = rec.identifier(0).map(str::to_owned).map_err(|e| e.code());
            rows.push((n, id, rec.text(1).map(str::to_owned)));
        }
        assert_eq!(
            rows,
            vec![
                (4, Ok("612345678".into()), Ok("Gold".into())),
                (6, Err("date-cell"), Ok(String::new())),
                (7, Err("not-a-whole-number"), Ok(String::new())),
                (8, Err("boolean-cell"), Ok(String::new())),
                (9, Err("formula-cell"), Ok("3".into())),
            ]
        );
    }
}
