//! Binary wire formats. Every frame starts with four magic bytes and a
//! version byte; counts are length-prefixed big-endian integers with hard
//! limits. Decoders check everything and return [`WireError`], never panic.
//!
//! | frame | sender → receiver | layout |
//! |---|---|---|
//! | [`RecordBatch`] `OBRB` | advertiser → server | `batch_no u32`, `labels u16 × (len u8, utf8)`, `records u32 × (segs u8 × u16, ids u8 × (kind u8, point 32))` |
//! | [`PointPage`] `OBPP` | server ↔ advertiser | `kind u8`, `page_no u32`, `count u32 × point 32` |
//! | [`DigestBatch`] `OBDB` | operator → server | `batch_no u32`, `count u32 × (person len u8 + utf8, kind u8, digest 32)` |

use crate::curve::PointBytes;
use crate::digest::Digest;
use crate::error::WireError;
use crate::normalize::MatchKind;

/// The wire version this build writes and reads.
pub const WIRE_VERSION: u8 = 1;
/// Magic of [`RecordBatch`].
pub const RECORD_BATCH_MAGIC: [u8; 4] = *b"OBRB";
/// Magic of [`PointPage`].
pub const POINT_PAGE_MAGIC: [u8; 4] = *b"OBPP";
/// Magic of [`DigestBatch`].
pub const DIGEST_BATCH_MAGIC: [u8; 4] = *b"OBDB";

/// Most records in one batch.
pub const MAX_RECORDS_PER_BATCH: usize = 65_536;
/// Most distinct segment labels in one batch.
pub const MAX_LABELS: usize = 1_024;
/// Longest segment label, in bytes.
pub const MAX_LABEL_BYTES: usize = 255;
/// Most segments one record may belong to.
pub const MAX_SEGMENTS_PER_RECORD: usize = 64;
/// Most identifiers one record may carry.
pub const MAX_IDS_PER_RECORD: usize = 16;
/// Most points in one page.
pub const MAX_POINTS_PER_PAGE: usize = 65_536;
/// Most entries in one digest batch.
pub const MAX_DIGESTS_PER_BATCH: usize = 65_536;
/// Longest person ID, in bytes.
pub const MAX_PERSON_ID_BYTES: usize = 255;

/// A batch of CRM records: segment labels plus blinded identifiers `a·P(x)`.
/// Stored flat (no allocation per record or per point).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordBatch {
    /// Sequence number within the job, from 0.
    pub batch_no: u32,
    /// The batch's label table; records refer to labels by index.
    pub labels: Vec<String>,
    /// Per record, the end offsets into `segment_refs` and `ids`.
    record_ends: Vec<(u32, u32)>,
    segment_refs: Vec<u16>,
    id_kinds: Vec<MatchKind>,
    id_points: Vec<PointBytes>,
}

/// One record of a [`RecordBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Indices into the batch's labels.
    pub segments: &'a [u16],
    /// Kinds of the identifiers, parallel to `points`.
    pub kinds: &'a [MatchKind],
    /// Blinded identifiers.
    pub points: &'a [PointBytes],
}

impl RecordBatch {
    /// An empty batch with its label table.
    pub fn new(batch_no: u32, labels: Vec<String>) -> Result<Self, WireError> {
        check_count("labels", labels.len(), MAX_LABELS)?;
        for (index, label) in labels.iter().enumerate() {
            check_text("label", index, label, MAX_LABEL_BYTES, false)?;
        }
        Ok(Self {
            batch_no,
            labels,
            ..Self::default()
        })
    }

    /// Append a record. Fails on empty or over-long lists and bad label indices.
    pub fn push(
        &mut self,
        segments: &[u16],
        ids: impl IntoIterator<Item = (MatchKind, PointBytes)>,
    ) -> Result<(), WireError> {
        let record = self.record_ends.len();
        check_count("records", record + 1, MAX_RECORDS_PER_BATCH)?;
        check_count(
            "segments of a record",
            segments.len(),
            MAX_SEGMENTS_PER_RECORD,
        )?;
        if segments.is_empty() {
            return Err(WireError::Empty {
                field: "segments of a record",
            });
        }
        if let Some(&bad) = segments
            .iter()
            .find(|&&s| usize::from(s) >= self.labels.len())
        {
            return Err(WireError::BadSegmentIndex {
                record,
                index: bad.into(),
            });
        }
        let before = self.id_points.len();
        for (kind, point) in ids {
            self.id_kinds.push(kind);
            self.id_points.push(point);
        }
        let added = self.id_points.len() - before;
        let bad_count = if added == 0 {
            Some(WireError::Empty {
                field: "identifiers of a record",
            })
        } else if added > MAX_IDS_PER_RECORD {
            Some(WireError::TooMany {
                field: "identifiers of a record",
                max: MAX_IDS_PER_RECORD,
                actual: added,
            })
        } else {
            None
        };
        if let Some(err) = bad_count {
            self.id_kinds.truncate(before);
            self.id_points.truncate(before);
            return Err(err);
        }
        self.segment_refs.extend_from_slice(segments);
        self.record_ends
            .push((self.segment_refs.len() as u32, self.id_points.len() as u32));
        Ok(())
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.record_ends.len()
    }

    /// True when the batch has no record.
    pub fn is_empty(&self) -> bool {
        self.record_ends.is_empty()
    }

    /// Record `i`, or `None` past the end.
    pub fn record(&self, i: usize) -> Option<RecordRef<'_>> {
        let &(seg_end, id_end) = self.record_ends.get(i)?;
        let (seg_start, id_start) = match i {
            0 => (0, 0),
            _ => self.record_ends[i - 1],
        };
        let ids = id_start as usize..id_end as usize;
        Some(RecordRef {
            segments: &self.segment_refs[seg_start as usize..seg_end as usize],
            kinds: &self.id_kinds[ids.clone()],
            points: &self.id_points[ids],
        })
    }

    /// All records in order.
    pub fn records(&self) -> impl Iterator<Item = RecordRef<'_>> {
        (0..self.len()).filter_map(|i| self.record(i))
    }

    /// Every identifier's point, in record order: what the server re-blinds.
    pub fn points(&self) -> &[PointBytes] {
        &self.id_points
    }

    /// Every identifier's kind, parallel to [`RecordBatch::points`].
    pub fn kinds(&self) -> &[MatchKind] {
        &self.id_kinds
    }

    /// For each identifier (parallel to [`RecordBatch::points`]), its record index.
    pub fn record_index_of_ids(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.id_points.len());
        let mut start = 0u32;
        for (record, &(_, end)) in self.record_ends.iter().enumerate() {
            out.extend(std::iter::repeat_n(record as u32, (end - start) as usize));
            start = end;
        }
        out
    }

    /// Encode to bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            16 + self.id_points.len() * 33 + self.segment_refs.len() * 2 + self.len() * 2,
        );
        out.extend_from_slice(&RECORD_BATCH_MAGIC);
        out.push(WIRE_VERSION);
        out.extend_from_slice(&self.batch_no.to_be_bytes());
        out.extend_from_slice(&(self.labels.len() as u16).to_be_bytes());
        for label in &self.labels {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.extend_from_slice(&(self.len() as u32).to_be_bytes());
        for record in self.records() {
            out.push(record.segments.len() as u8);
            for s in record.segments {
                out.extend_from_slice(&s.to_be_bytes());
            }
            out.push(record.points.len() as u8);
            for (kind, point) in record.kinds.iter().zip(record.points) {
                out.push(kind.to_byte());
                out.extend_from_slice(&point.0);
            }
        }
        out
    }

    /// Decode and check structure (points are checked when re-blinded).
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        r.header(RECORD_BATCH_MAGIC, "record batch")?;
        let batch_no = r.u32("batch number")?;
        let label_count = usize::from(r.u16("label count")?);
        check_count("labels", label_count, MAX_LABELS)?;
        let mut labels = Vec::with_capacity(label_count);
        for index in 0..label_count {
            let len = usize::from(r.u8("label length")?);
            labels.push(r.text("label", index, len, false)?);
        }
        let record_count = r.u32("record count")? as usize;
        check_count("records", record_count, MAX_RECORDS_PER_BATCH)?;
        // Each record takes at least 1 + 2 + 1 + 33 bytes: refuse impossible counts early.
        if record_count.saturating_mul(37) > r.remaining() {
            return Err(WireError::Truncated { field: "records" });
        }
        let mut batch = Self::new(batch_no, labels)?;
        let mut segments = Vec::with_capacity(MAX_SEGMENTS_PER_RECORD);
        let mut ids = Vec::with_capacity(MAX_IDS_PER_RECORD);
        for record in 0..record_count {
            segments.clear();
            ids.clear();
            let seg_count = usize::from(r.u8("segment count")?);
            for _ in 0..seg_count {
                segments.push(r.u16("segment index")?);
            }
            let id_count = usize::from(r.u8("identifier count")?);
            check_count("identifiers of a record", id_count, MAX_IDS_PER_RECORD)?;
            for _ in 0..id_count {
                let kind_byte = r.u8("identifier kind")?;
                let kind = MatchKind::from_byte(kind_byte).ok_or(WireError::UnknownKind {
                    record,
                    kind: kind_byte,
                })?;
                ids.push((kind, PointBytes(r.array("point")?)));
            }
            batch.push(&segments, ids.iter().copied())?;
        }
        r.finish()?;
        Ok(batch)
    }
}

/// A page of points of one kind: the server's `b·P(y)` sent for the graph
/// pass, or the advertiser's `a·b·P(y)` returned in the same order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointPage {
    /// Kind of every point on the page.
    pub kind: MatchKind,
    /// Page number within the job's graph pass for that kind.
    pub page_no: u32,
    /// The points.
    pub points: Vec<PointBytes>,
}

impl PointPage {
    /// Encode to bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(14 + self.points.len() * 32);
        out.extend_from_slice(&POINT_PAGE_MAGIC);
        out.push(WIRE_VERSION);
        out.push(self.kind.to_byte());
        out.extend_from_slice(&self.page_no.to_be_bytes());
        out.extend_from_slice(&(self.points.len() as u32).to_be_bytes());
        for p in &self.points {
            out.extend_from_slice(&p.0);
        }
        out
    }

    /// Decode and check structure (points are checked when re-blinded).
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        r.header(POINT_PAGE_MAGIC, "point page")?;
        let kind_byte = r.u8("kind")?;
        let kind = MatchKind::from_byte(kind_byte).ok_or(WireError::UnknownKind {
            record: 0,
            kind: kind_byte,
        })?;
        let page_no = r.u32("page number")?;
        let count = r.u32("point count")? as usize;
        check_count("points", count, MAX_POINTS_PER_PAGE)?;
        if count.saturating_mul(32) > r.remaining() {
            return Err(WireError::Truncated { field: "points" });
        }
        let mut points = Vec::with_capacity(count);
        for _ in 0..count {
            points.push(PointBytes(r.array("point")?));
        }
        r.finish()?;
        Ok(Self {
            kind,
            page_no,
            points,
        })
    }
}

/// One digest of the operator's graph import or opt-out list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestEntry {
    /// The onboarder's person ID (empty in opt-out lists).
    pub person: String,
    /// Kind the digest matches as.
    pub kind: MatchKind,
    /// `SHA-256(normalised identifier)`; never stored by the server.
    pub digest: Digest,
}

/// A batch of digests sent by the operator's tool; the server turns each
/// into `b·P(y)` in memory and stores only that.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DigestBatch {
    /// Sequence number within the import, from 0.
    pub batch_no: u32,
    /// The entries.
    pub entries: Vec<DigestEntry>,
}

impl DigestBatch {
    /// Encode to bytes. Fails on over-long person IDs or too many entries.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        check_count("digests", self.entries.len(), MAX_DIGESTS_PER_BATCH)?;
        let mut out = Vec::with_capacity(13 + self.entries.len() * 48);
        out.extend_from_slice(&DIGEST_BATCH_MAGIC);
        out.push(WIRE_VERSION);
        out.extend_from_slice(&self.batch_no.to_be_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for (index, entry) in self.entries.iter().enumerate() {
            check_text("person ID", index, &entry.person, MAX_PERSON_ID_BYTES, true)?;
            out.push(entry.person.len() as u8);
            out.extend_from_slice(entry.person.as_bytes());
            out.push(entry.kind.to_byte());
            out.extend_from_slice(entry.digest.as_bytes());
        }
        Ok(out)
    }

    /// Decode and check structure.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        r.header(DIGEST_BATCH_MAGIC, "digest batch")?;
        let batch_no = r.u32("batch number")?;
        let count = r.u32("digest count")? as usize;
        check_count("digests", count, MAX_DIGESTS_PER_BATCH)?;
        if count.saturating_mul(34) > r.remaining() {
            return Err(WireError::Truncated { field: "digests" });
        }
        let mut entries = Vec::with_capacity(count);
        for index in 0..count {
            let len = usize::from(r.u8("person ID length")?);
            let person = r.text("person ID", index, len, true)?;
            let kind_byte = r.u8("kind")?;
            let kind = MatchKind::from_byte(kind_byte).ok_or(WireError::UnknownKind {
                record: index,
                kind: kind_byte,
            })?;
            let digest = Digest(r.array("digest")?);
            entries.push(DigestEntry {
                person,
                kind,
                digest,
            });
        }
        r.finish()?;
        Ok(Self { batch_no, entries })
    }
}

fn check_count(field: &'static str, actual: usize, max: usize) -> Result<(), WireError> {
    if actual > max {
        return Err(WireError::TooMany { field, max, actual });
    }
    Ok(())
}

fn check_text(
    field: &'static str,
    index: usize,
    text: &str,
    max: usize,
    allow_empty: bool,
) -> Result<(), WireError> {
    if text.len() > max {
        return Err(WireError::TooMany {
            field,
            max,
            actual: text.len(),
        });
    }
    if (!allow_empty && text.is_empty()) || text.chars().any(char::is_control) {
        return Err(WireError::BadText { field, index });
    }
    Ok(())
}

/// A bounds-checked cursor over a frame.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        if self.remaining() < n {
            return Err(WireError::Truncated { field });
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn text(
        &mut self,
        field: &'static str,
        index: usize,
        len: usize,
        allow_empty: bool,
    ) -> Result<String, WireError> {
        let raw = self.take(len, field)?;
        let text = std::str::from_utf8(raw).map_err(|_| WireError::BadText { field, index })?;
        check_text(field, index, text, usize::MAX, allow_empty)?;
        Ok(text.to_owned())
    }

    fn header(&mut self, magic: [u8; 4], expected: &'static str) -> Result<(), WireError> {
        if self.array::<4>("magic")? != magic {
            return Err(WireError::BadMagic { expected });
        }
        let found = self.u8("version")?;
        if found != WIRE_VERSION {
            return Err(WireError::UnsupportedVersion {
                found,
                supported: WIRE_VERSION,
            });
        }
        Ok(())
    }

    fn finish(&self) -> Result<(), WireError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(WireError::TrailingBytes(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_batch() -> RecordBatch {
        let mut b = RecordBatch::new(7, vec!["Gold".into(), "Silver".into()]).unwrap();
        b.push(&[0], [(MatchKind::Email, PointBytes([1; 32]))])
            .unwrap();
        b.push(
            &[0, 1],
            [
                (MatchKind::Phone, PointBytes([2; 32])),
                (MatchKind::Maid, PointBytes([3; 32])),
            ],
        )
        .unwrap();
        b
    }

    #[test]
    fn record_batch_round_trip_and_accessors() {
        let b = sample_batch();
        let back = RecordBatch::decode(&b.encode()).unwrap();
        assert_eq!(back, b);
        assert_eq!(back.len(), 2);
        assert_eq!(back.record(1).unwrap().segments, &[0, 1]);
        assert_eq!(
            back.record(1).unwrap().kinds,
            &[MatchKind::Phone, MatchKind::Maid]
        );
        assert_eq!(back.record_index_of_ids(), vec![0, 1, 1]);
        assert!(back.record(2).is_none());
    }

    #[test]
    fn record_batch_errors_name_the_problem() {
        let mut b = sample_batch();
        assert_eq!(
            b.push(&[5], [(MatchKind::Email, PointBytes([1; 32]))]),
            Err(WireError::BadSegmentIndex {
                record: 2,
                index: 5
            })
        );
        assert_eq!(
            b.push(&[0], []),
            Err(WireError::Empty {
                field: "identifiers of a record"
            })
        );
        assert_eq!(b.len(), 2, "a refused record leaves the batch as it was");
        let mut bytes = sample_batch().encode();
        bytes[4] = 9;
        assert_eq!(
            RecordBatch::decode(&bytes),
            Err(WireError::UnsupportedVersion {
                found: 9,
                supported: 1
            })
        );
        let bytes = sample_batch().encode();
        assert!(matches!(
            RecordBatch::decode(&bytes[..bytes.len() - 1]),
            Err(WireError::Truncated { .. })
        ));
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(RecordBatch::decode(&long), Err(WireError::TrailingBytes(1)));
        assert_eq!(
            PointPage::decode(&bytes),
            Err(WireError::BadMagic {
                expected: "point page"
            })
        );
    }

    #[test]
    fn page_and_digest_round_trip() {
        let page = PointPage {
            kind: MatchKind::Phone,
            page_no: 3,
            points: vec![PointBytes([9; 32]); 3],
        };
        assert_eq!(PointPage::decode(&page.encode()).unwrap(), page);
        let batch = DigestBatch {
            batch_no: 1,
            entries: vec![DigestEntry {
                person: "p-1".into(),
                kind: MatchKind::Email,
                digest: Digest::of("x@y.z"),
            }],
        };
        assert_eq!(
            DigestBatch::decode(&batch.encode().unwrap()).unwrap(),
            batch
        );
    }
}
