//! Which column is what, resolved against the header, and one row
//! classified: consent, segments, each identifier normalised and hashed.

use crate::error::ClientError;
use crate::input::csv::{parse_consent, split_segments};
use crate::input::{Record, RowSource};
use onboard_protocol::wire::{MAX_IDS_PER_RECORD, MAX_LABEL_BYTES, MAX_SEGMENTS_PER_RECORD};
use onboard_protocol::{normalize, Digest, IdKind, MatchKind, Region};
use sha2::{Digest as _, Sha256};
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use super::MatchOptions;

/// Which column is what, resolved against the header.
pub(super) struct Plan {
    ids: Vec<(usize, IdKind)>,
    segment: usize,
    consent: Option<usize>,
    region: Region,
}

impl Plan {
    pub(super) fn resolve(reader: &RowSource, opts: &MatchOptions) -> Result<Self, ClientError> {
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

    /// Classify one record into a recycled `row`, reusing its buffers.
    pub(super) fn classify_into(&self, row: &mut Row, line: u64, record: &Record) {
        row.line = line;
        row.state = match self.consent {
            None => RowState::Ok,
            Some(c) => match record.text(c).ok().and_then(parse_consent) {
                Some(true) => RowState::Ok,
                Some(false) => RowState::NoConsent,
                None => RowState::BadConsent,
            },
        };
        let segs = record
            .text(self.segment)
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
            match record.identifier(index) {
                Ok(cell) if cell.trim().is_empty() => row.empty_cols.push(col_no),
                Ok(cell) => match normalize(kind, cell, self.region) {
                    Ok(n) => {
                        if !row.ids.iter().any(|&(k, d)| k == n.kind && d == n.digest) {
                            row.ids.push((n.kind, n.digest));
                        }
                        row.valid_cols.push(col_no);
                    }
                    Err(e) => row.invalid.push((col_no, e.code())),
                },
                Err(e) => row.invalid.push((col_no, e.code())),
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
pub(super) enum RowState {
    #[default]
    Ok,
    NoConsent,
    BadConsent,
}

#[derive(Default)]
pub(super) struct Row {
    pub(super) line: u64,
    pub(super) state: RowState,
    pub(super) segments: Vec<String>,
    pub(super) segments_bad: bool,
    pub(super) ids: Vec<(MatchKind, Digest)>,
    pub(super) valid_cols: Vec<usize>,
    pub(super) empty_cols: Vec<usize>,
    /// (column, reason code) of the invalid identifiers.
    pub(super) invalid: Vec<(usize, &'static str)>,
}

impl Row {
    pub(super) fn uploadable(&self) -> bool {
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
    pub(super) fn fingerprint(&self) -> Fingerprint {
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
pub(super) struct Fingerprint([u8; 16]);

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
pub(super) struct FingerprintHasher(u64);

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

pub(super) type FingerprintSet = HashSet<Fingerprint, BuildHasherDefault<FingerprintHasher>>;
