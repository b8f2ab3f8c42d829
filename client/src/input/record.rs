//! One row of an input file as the match reads it: its cells as text, and
//! for spreadsheet cells typed as something other than text or a whole
//! number, what they were, so that an identifier column can refuse them.

use csv::ByteRecord;

/// A spreadsheet cell that is not text or a whole number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellKind {
    /// A date, time or duration.
    Date,
    /// TRUE or FALSE.
    Boolean,
    /// An error value (`#N/A`, `#DIV/0!`, …).
    Error,
    /// The result of a formula.
    Formula,
    /// A number that is not a whole number exactly representable (a
    /// fraction, or beyond 2⁵³): no identifier is one.
    InexactNumber,
}

/// A cell that cannot be read as the text it should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldError {
    /// Bytes that are not UTF-8.
    NotUtf8,
    /// A typed spreadsheet cell where an identifier is expected (or an
    /// error cell anywhere).
    Cell(CellKind),
}

impl FieldError {
    /// The reason code in the quality report.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotUtf8 => "not-utf8",
            Self::Cell(CellKind::Date) => "date-cell",
            Self::Cell(CellKind::Boolean) => "boolean-cell",
            Self::Cell(CellKind::Error) => "error-cell",
            Self::Cell(CellKind::Formula) => "formula-cell",
            Self::Cell(CellKind::InexactNumber) => "not-a-whole-number",
        }
    }
}

/// A row: its cells as text, and the typed ones among them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    fields: ByteRecord,
    /// (column, kind) of the typed cells; always empty for CSV.
    kinds: Vec<(usize, CellKind)>,
}

impl Record {
    /// A cell as text: `""` past the end of a short row. Refuses bytes that
    /// are not UTF-8 and error cells; other typed cells read as their text
    /// (`true`, a date, a formula's value).
    pub fn text(&self, index: usize) -> Result<&str, FieldError> {
        if self.kind(index) == Some(CellKind::Error) {
            return Err(FieldError::Cell(CellKind::Error));
        }
        field(&self.fields, index)
    }

    /// A cell holding an identifier: as [`Record::text`], and refusing
    /// every typed cell (dates, booleans, formulas, fractions).
    pub fn identifier(&self, index: usize) -> Result<&str, FieldError> {
        match self.kind(index) {
            Some(kind) => Err(FieldError::Cell(kind)),
            None => field(&self.fields, index),
        }
    }

    /// Cells in the row.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether the row has no cell.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    fn kind(&self, index: usize) -> Option<CellKind> {
        self.kinds
            .iter()
            .find_map(|&(i, kind)| (i == index).then_some(kind))
    }

    /// The text cells, to be refilled by a CSV reader (typed cells cleared).
    pub(crate) fn csv_fields(&mut self) -> &mut ByteRecord {
        self.kinds.clear();
        &mut self.fields
    }

    /// Empty the row for refilling cell by cell.
    pub(crate) fn clear(&mut self) {
        self.fields.clear();
        self.kinds.clear();
    }

    /// Append a cell.
    pub(crate) fn push(&mut self, text: &str, kind: Option<CellKind>) {
        if let Some(kind) = kind {
            self.kinds.push((self.fields.len(), kind));
        }
        self.fields.push_field(text.as_bytes());
    }
}

impl From<ByteRecord> for Record {
    fn from(fields: ByteRecord) -> Self {
        Self {
            fields,
            kinds: Vec::new(),
        }
    }
}

/// A CSV field as text; `""` when the row is too short.
pub fn field(record: &ByteRecord, index: usize) -> Result<&str, FieldError> {
    match record.get(index) {
        None => Ok(""),
        Some(bytes) => std::str::from_utf8(bytes).map_err(|_| FieldError::NotUtf8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_cells_are_text_but_not_identifiers() {
        let mut r = Record::default();
        r.push("612345678", None);
        r.push("true", Some(CellKind::Boolean));
        r.push("#N/A", Some(CellKind::Error));
        r.push("a@b.fr", Some(CellKind::Formula));
        assert_eq!(r.identifier(0), Ok("612345678"));
        assert_eq!(r.text(1), Ok("true"));
        assert_eq!(r.identifier(1), Err(FieldError::Cell(CellKind::Boolean)));
        assert_eq!(r.text(2), Err(FieldError::Cell(CellKind::Error)));
        assert_eq!(r.text(3), Ok("a@b.fr"));
        assert_eq!(r.identifier(3).unwrap_err().code(), "formula-cell");
        assert_eq!(r.text(9), Ok(""));
        r.csv_fields().push_field(b"\xff");
        assert_eq!(r.identifier(3), Ok("a@b.fr"), "CSV refill clears the kinds");
        assert_eq!(r.text(4), Err(FieldError::NotUtf8));
    }
}
