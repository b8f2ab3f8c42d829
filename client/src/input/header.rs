//! Finding a column by name the way people type it: `--phone-col téléphone`
//! finds `Téléphone `, whichever Unicode form either was written in.

use crate::error::ClientError;
use std::path::Path;
use unicode_normalization::UnicodeNormalization;

/// A name as compared: trimmed, then in Unicode NFC.
fn canonical(name: &str) -> String {
    name.trim().nfc().collect()
}

/// Whether two names are the same after NFC, trimming and case folding.
pub(crate) fn canonical_eq(a: &str, b: &str) -> bool {
    canonical(a).to_lowercase() == canonical(b).to_lowercase()
}

/// The index of the column `name` in `header`: the same name first, then
/// the same name ignoring case (both after NFC and trimming). The error
/// lists the header (column names, never a value).
pub fn find_column(header: &[String], name: &str, path: &Path) -> Result<usize, ClientError> {
    let wanted = canonical(name);
    let names: Vec<String> = header.iter().map(|h| canonical(h)).collect();
    names
        .iter()
        .position(|h| *h == wanted)
        .or_else(|| {
            let wanted = wanted.to_lowercase();
            names.iter().position(|h| h.to_lowercase() == wanted)
        })
        .ok_or_else(|| ClientError::UnknownColumn {
            column: name.trim().to_owned(),
            path: path.to_owned(),
            header: header.to_vec(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(header: &[&str], name: &str) -> Option<usize> {
        let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
        find_column(&header, name, Path::new("crm.csv")).ok()
    }

    #[test]
    fn accents_case_and_unicode_forms() {
        let decomposed = "Te\u{301}le\u{301}phone"; // NFD, as macOS types it
        assert_eq!(find(&["Email", " Téléphone "], "téléphone"), Some(1));
        assert_eq!(find(&["Email", decomposed], "TÉLÉPHONE"), Some(1));
        assert_eq!(find(&["Email", "Téléphone"], decomposed), Some(1));
        assert_eq!(find(&["E-mail", "EMAIL"], "Email"), Some(1));
        assert_eq!(find(&["email", "Email"], "Email"), Some(1), "exact first");
        assert_eq!(find(&["Telephone"], "téléphone"), None, "accents matter");
    }
}
