//! The graph on the sled backend. An import stages each batch as a sorted
//! run in a blob file; sealing merges the runs (a k-way merge, streamed, so
//! memory does not grow with the graph) into chunks of at most
//! [`CHUNK_RECORDS`] records, each a blob with a sled pointer keyed by its
//! first record:
//! - points: `version | kind | first b·P(y)` → chunk of `b·P(y) | person`
//!   (48-byte records, sorted);
//! - cookies: `version | len | destination | first person` → chunk of
//!   `person | tag | len:u16 | sealed` (sorted; a person never spans two chunks).
//!
//! Look-ups find the chunk with the greatest key at or below the probe; the
//! ordered variants walk chunk pointers alongside sorted probes and read each
//! chunk at most once.

use super::blobs::{BlobRef, BlobStream};
use super::sled::SledStore;
use super::sled_codec::{
    be, from_json, graph_base, json, key, point_of, runs_base, tx_err, u64_of, GRAPH_CHUNKS,
    GRAPH_COOKIE_CHUNKS, GRAPH_RUNS,
};
use super::*;
use crate::uniform::UniformSet;
use ::sled::transaction::ConflictableTransactionError;
use ::sled::{Batch, Transactional, Tree};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A delta's removed persons, probed once per row of its base: keyed HMAC
/// outputs, so the uniform-key set (no SipHash per probe).
type PersonSet = UniformSet<PersonKey>;

/// Records per chunk (a point chunk is 96 KiB).
const CHUNK_RECORDS: usize = 2048;
/// Bytes read at a time from each run while merging.
const MERGE_WINDOW: usize = 64 * 1024;
/// `kind | point | person`.
const RUN_RECORD: usize = 1 + 32 + 16;
/// `point | person`.
const POINT_RECORD: usize = 32 + 16;

fn chunk_prefix(version: u64, kind: MatchKind) -> Vec<u8> {
    key(&[&version.to_be_bytes(), &[kind.to_byte()]])
}

fn dest_bytes(destination: &str) -> &[u8] {
    let d = destination.as_bytes();
    &d[..d.len().min(255)]
}

fn cookie_prefix(version: u64, destination: &str) -> Vec<u8> {
    let d = dest_bytes(destination);
    key(&[&version.to_be_bytes(), &[d.len() as u8], d])
}

fn ptr(tree: &'static str, bytes: &[u8]) -> StoreResult<BlobRef> {
    BlobRef::decode(bytes).ok_or(StoreError::Corrupt(tree))
}

fn person_of(bytes: &[u8]) -> StoreResult<PersonKey> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(GRAPH_CHUNKS))
}

/// One parsed cookie record of a chunk.
struct CookieRecord<'a> {
    person: PersonKey,
    tag: [u8; 16],
    sealed: &'a [u8],
    /// The record's encoded bytes.
    raw: &'a [u8],
}

/// Parse a cookie chunk (`person | tag | len | sealed` records).
fn cookie_records(chunk: &[u8]) -> StoreResult<Vec<CookieRecord<'_>>> {
    let corrupt = || StoreError::Corrupt(GRAPH_COOKIE_CHUNKS);
    let mut out = Vec::new();
    let mut rest = chunk;
    while !rest.is_empty() {
        let head = rest.get(..34).ok_or_else(corrupt)?;
        let len = usize::from(u16::from_be_bytes([head[32], head[33]]));
        let raw = rest.get(..34 + len).ok_or_else(corrupt)?;
        out.push(CookieRecord {
            person: person_of(&raw[..16])?,
            tag: raw[16..32].try_into().map_err(|_| corrupt())?,
            sealed: &raw[34..],
            raw,
        });
        rest = &rest[34 + len..];
    }
    Ok(out)
}

/// Writes sorted records as chunks of one version's blob file, collecting
/// their pointers in a batch applied by the caller.
struct ChunkWriter<'a> {
    store: &'a SledStore,
    base: String,
    generation: u32,
    batch: Batch,
    prefix: Vec<u8>,
    first: Vec<u8>,
    buf: Vec<u8>,
    records: usize,
}

impl<'a> ChunkWriter<'a> {
    fn new(store: &'a SledStore, version: u64, generation: u32) -> Self {
        Self {
            store,
            base: graph_base(version),
            generation,
            batch: Batch::default(),
            prefix: Vec::new(),
            first: Vec::new(),
            buf: Vec::new(),
            records: 0,
        }
    }

    /// Add a record under `prefix`, keyed by `first` if it opens a chunk; a
    /// full chunk is closed only where `may_split` allows.
    fn push(
        &mut self,
        prefix: &[u8],
        first: &[u8],
        record: &[u8],
        may_split: bool,
    ) -> StoreResult<()> {
        if prefix != self.prefix.as_slice() || (self.records >= CHUNK_RECORDS && may_split) {
            self.close()?;
        }
        if self.records == 0 {
            self.prefix = prefix.to_vec();
            self.first = first.to_vec();
        }
        self.buf.extend_from_slice(record);
        self.records += 1;
        Ok(())
    }

    fn close(&mut self) -> StoreResult<()> {
        if self.records > 0 {
            let r = self
                .store
                .blobs
                .append_unsynced(&self.base, self.generation, &self.buf)?;
            self.batch
                .insert(key(&[&self.prefix, &self.first]), &r.encode()[..]);
        }
        self.buf.clear();
        self.records = 0;
        Ok(())
    }

    /// Close the last chunk and sync the file; the batch is ready to apply.
    fn finish(mut self) -> StoreResult<Batch> {
        self.close()?;
        self.store.blobs.sync(&self.base, self.generation)?;
        Ok(self.batch)
    }
}

/// One input of a seal's merge: a staged run, or a delta's base version.
enum Source<'a> {
    Run(BlobStream),
    Base(Box<BaseStream<'a>>),
}

impl Source<'_> {
    fn fill(&mut self, n: usize) -> StoreResult<bool> {
        match self {
            Self::Run(s) => Ok(s.fill(n)?),
            Self::Base(b) => b.fill(n),
        }
    }
    fn peek(&self) -> &[u8] {
        match self {
            Self::Run(s) => s.peek(),
            Self::Base(b) => &b.buf[b.pos..],
        }
    }
    fn advance(&mut self, n: usize) {
        match self {
            Self::Run(s) => s.advance(n),
            Self::Base(b) => b.pos = (b.pos + n).min(b.buf.len()),
        }
    }
}

/// A sealed version's point or cookie chunks read in key order and
/// re-encoded as run records, without the rows of removed persons: a
/// delta's base enters the merge like one more (already sorted) run, so
/// unchanged rows are copied with no curve work and no sort.
struct BaseStream<'a> {
    store: &'a SledStore,
    version: u64,
    /// `b'i'` (point chunks) or `b'c'` (cookie chunks).
    part: u8,
    chunks: ::sled::Iter,
    removed: &'a PersonSet,
    buf: Vec<u8>,
    pos: usize,
    /// Rows left out because their person is removed.
    dropped: u64,
}

impl<'a> BaseStream<'a> {
    fn new(store: &'a SledStore, version: u64, part: u8, removed: &'a PersonSet) -> Self {
        let tree = if part == b'i' {
            &store.g_chunks
        } else {
            &store.g_cookie_chunks
        };
        Self {
            store,
            version,
            part,
            chunks: tree.scan_prefix(version.to_be_bytes()),
            removed,
            buf: Vec::new(),
            pos: 0,
            dropped: 0,
        }
    }

    fn fill(&mut self, n: usize) -> StoreResult<bool> {
        while self.buf.len() - self.pos < n {
            let Some(item) = self.chunks.next() else {
                return if self.buf.len() == self.pos {
                    Ok(false)
                } else {
                    Err(StoreError::Corrupt(GRAPH_CHUNKS))
                };
            };
            let (k, value) = item.map_err(be)?;
            self.buf.drain(..self.pos);
            self.pos = 0;
            if self.part == b'i' {
                let chunk = self.store.read_chunk(GRAPH_CHUNKS, self.version, &value)?;
                let kind = *k.get(8).ok_or(StoreError::Corrupt(GRAPH_CHUNKS))?;
                for record in chunk.chunks_exact(POINT_RECORD) {
                    if self.removed.contains(&record[32..]) {
                        self.dropped += 1;
                        continue;
                    }
                    self.buf.push(kind);
                    self.buf.extend_from_slice(record);
                }
            } else {
                let chunk = self
                    .store
                    .read_chunk(GRAPH_COOKIE_CHUNKS, self.version, &value)?;
                // The key is `version | len | destination | first person`.
                let dest = k
                    .get(8..k.len().saturating_sub(16))
                    .ok_or(StoreError::Corrupt(GRAPH_COOKIE_CHUNKS))?;
                for r in cookie_records(&chunk)? {
                    if self.removed.contains(&r.person) {
                        self.dropped += 1;
                        continue;
                    }
                    self.buf.extend_from_slice(dest);
                    self.buf.extend_from_slice(r.raw);
                }
            }
        }
        Ok(true)
    }
}

/// The destination a cookie merge is writing: its name, chunk prefix and
/// rows so far.
struct DestinationRun {
    name: Vec<u8>,
    prefix: Vec<u8>,
    rows: u64,
}

impl DestinationRun {
    /// Add the rows to the destination's count.
    fn count_into(self, info: &mut GraphInfo) {
        *info
            .cookies
            .entry(String::from_utf8_lossy(&self.name).into_owned())
            .or_default() += self.rows;
    }
}

/// How many distinct persons two lists name together. Each is sorted on all
/// cores (as integers) and deduplicated, then both are walked side by side:
/// a hash set's random inserts, one per record, made the seal's serial tail.
fn distinct_persons(mut a: Vec<PersonKey>, mut b: Vec<PersonKey>) -> u64 {
    use rayon::prelude::*;
    let int = |p: &PersonKey| u128::from_be_bytes(*p);
    for list in [&mut a, &mut b] {
        list.par_sort_unstable_by_key(int);
        list.dedup();
    }
    let (mut i, mut j, mut both) = (0, 0, 0u64);
    while i < a.len() && j < b.len() {
        match int(&a[i]).cmp(&int(&b[j])) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                both += 1;
                i += 1;
                j += 1;
            }
        }
    }
    (a.len() + b.len()) as u64 - both
}

/// The rows dropped from a delta's base, once its merge is done.
fn base_dropped(sources: &[Source<'_>]) -> u64 {
    match sources.first() {
        Some(Source::Base(b)) => b.dropped,
        _ => 0,
    }
}

impl SledStore {
    fn read_chunk(&self, tree: &'static str, version: u64, value: &[u8]) -> StoreResult<Vec<u8>> {
        Ok(self.blobs.read(&graph_base(version), &ptr(tree, value)?)?)
    }

    /// The chunk whose key is the greatest at or below `prefix | probe`.
    fn chunk_at(
        &self,
        tree: &Tree,
        name: &'static str,
        version: u64,
        prefix: &[u8],
        probe: &[u8],
    ) -> StoreResult<Option<(Vec<u8>, Vec<u8>)>> {
        let upper = key(&[prefix, probe]);
        match tree.range(prefix.to_vec()..=upper).next_back() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item.map_err(be)?;
                Ok(Some((k.to_vec(), self.read_chunk(name, version, &v)?)))
            }
        }
    }

    /// The merge's inputs for one part: a delta's base first (so it wins
    /// ties), then the version's staged runs in batch order.
    fn merge_sources<'a>(
        &'a self,
        version: u64,
        part: u8,
        base: Option<(u64, &'a PersonSet)>,
    ) -> StoreResult<Vec<Source<'a>>> {
        let mut sources: Vec<Source<'a>> = base
            .map(|(b, removed)| Source::Base(Box::new(BaseStream::new(self, b, part, removed))))
            .into_iter()
            .collect();
        let prefix = key(&[&version.to_be_bytes(), &[part]]);
        let runs = runs_base(version);
        for v in self.g_runs.scan_prefix(prefix).values() {
            let r = ptr(GRAPH_RUNS, &v.map_err(be)?)?;
            sources.push(Source::Run(self.blobs.stream(&runs, &r, MERGE_WINDOW)?));
        }
        Ok(sources)
    }

    /// The persons a delta's staged removal runs name.
    fn staged_removals(&self, version: u64) -> StoreResult<PersonSet> {
        let base = runs_base(version);
        let mut out = PersonSet::default();
        for v in self
            .g_runs
            .scan_prefix(key(&[&version.to_be_bytes(), b"r"]))
            .values()
        {
            let run = self.blobs.read(&base, &ptr(GRAPH_RUNS, &v.map_err(be)?)?)?;
            for p in run.chunks_exact(16) {
                out.insert(person_of(p)?);
            }
        }
        Ok(out)
    }

    fn seal_points(
        &self,
        version: u64,
        base: Option<(u64, &PersonSet)>,
        info: &mut GraphInfo,
        persons: &mut Vec<PersonKey>,
    ) -> StoreResult<Batch> {
        let mut streams = self.merge_sources(version, b'i', base)?;
        let first_run = usize::from(base.is_some());
        // One person per staged record at most: reserved whole, the list
        // never doubles (a delta's base adds what it adds).
        let staged: u64 = streams
            .iter()
            .map(|s| match s {
                Source::Run(r) => r.blob_len() / RUN_RECORD as u64,
                Source::Base(_) => 0,
            })
            .sum();
        persons.reserve_exact(usize::try_from(staged).unwrap_or(0));
        // Ties go to the earlier run: the first import of a point wins.
        let mut heap = BinaryHeap::new();
        for (i, s) in streams.iter_mut().enumerate() {
            if s.fill(RUN_RECORD)? {
                heap.push(Reverse((run_key(s.peek()), i)));
            }
        }
        let mut out = ChunkWriter::new(self, version, 0);
        let mut last: Option<RunKey> = None;
        // Records come sorted by kind: the chunk prefix changes with it, and
        // the counts get their names once, at the end (nothing allocated
        // per record).
        let mut prefix: Option<(u8, Vec<u8>)> = None;
        let mut per_kind = [0u64; 256];
        while let Some(Reverse((k, i))) = heap.pop() {
            let mut record = [0u8; RUN_RECORD];
            record.copy_from_slice(&streams[i].peek()[..RUN_RECORD]);
            streams[i].advance(RUN_RECORD);
            if streams[i].fill(RUN_RECORD)? {
                heap.push(Reverse((run_key(streams[i].peek()), i)));
            }
            if last == Some(k) {
                continue;
            }
            last = Some(k);
            if i >= first_run {
                info.added += 1;
            }
            let kind_byte = record[0];
            let prefix = match &mut prefix {
                Some((byte, p)) if *byte == kind_byte => p,
                slot => {
                    let kind =
                        MatchKind::from_byte(kind_byte).ok_or(StoreError::Corrupt(GRAPH_RUNS))?;
                    &slot.insert((kind_byte, chunk_prefix(version, kind))).1
                }
            };
            per_kind[usize::from(kind_byte)] += 1;
            persons.push(person_of(&record[33..])?);
            out.push(prefix, &record[1..33], &record[1..], true)?;
        }
        for (byte, &n) in (0..=u8::MAX).zip(&per_kind) {
            if let Some(kind) = MatchKind::from_byte(byte).filter(|_| n > 0) {
                *info.identifiers.entry(kind.as_str().into()).or_default() += n;
            }
        }
        info.removed += base_dropped(&streams);
        out.finish()
    }

    /// Merge the cookie runs; `persons` gets each person once per destination.
    fn seal_cookies(
        &self,
        version: u64,
        base: Option<(u64, &PersonSet)>,
        info: &mut GraphInfo,
        persons: &mut Vec<PersonKey>,
    ) -> StoreResult<Batch> {
        let mut streams = self.merge_sources(version, b'c', base)?;
        let first_run = usize::from(base.is_some());
        let mut heap = BinaryHeap::new();
        for (i, s) in streams.iter_mut().enumerate() {
            if let Some(k) = next_cookie_key(s)? {
                heap.push(Reverse((k, i)));
            }
        }
        let mut out = ChunkWriter::new(self, version, 0);
        let mut last: Option<Vec<u8>> = None;
        // Records come sorted by destination: its chunk prefix and its
        // count change with it (nothing allocated per record for them).
        let mut dest: Option<DestinationRun> = None;
        let mut last_person: Option<PersonKey> = None;
        while let Some(Reverse((k, i))) = heap.pop() {
            // k = len | destination | person | tag; the record follows with len | sealed.
            let dlen = usize::from(k[0]);
            let total = k.len() + 2 + sealed_len(streams[i].peek(), k.len())?;
            if last.as_ref() != Some(&k) {
                if i >= first_run {
                    info.added += 1;
                }
                let destination = &k[1..1 + dlen];
                let person = person_of(&k[1 + dlen..17 + dlen])?;
                if persons.last() != Some(&person) {
                    persons.push(person);
                }
                let run = match &mut dest {
                    Some(run) if run.name == destination => run,
                    slot => {
                        if let Some(done) = slot.take() {
                            done.count_into(info);
                        }
                        last_person = None;
                        slot.insert(DestinationRun {
                            name: destination.to_vec(),
                            prefix: key(&[&version.to_be_bytes(), &k[..1 + dlen]]),
                            rows: 0,
                        })
                    }
                };
                run.rows += 1;
                let may_split = last_person != Some(person);
                let record = &streams[i].peek()[1 + dlen..total];
                out.push(&run.prefix, &person, record, may_split)?;
                last_person = Some(person);
            }
            streams[i].advance(total);
            if let Some(next) = next_cookie_key(&mut streams[i])? {
                heap.push(Reverse((next, i)));
            }
            last = Some(k);
        }
        if let Some(done) = dest {
            done.count_into(info);
        }
        info.removed += base_dropped(&streams);
        out.finish()
    }

    /// Merge a version's staged runs, and a delta's base, into its chunks.
    fn seal(&self, version: u64, base: Option<u64>) -> StoreResult<GraphInfo> {
        let v = version.to_be_bytes();
        if let Some(info) = self.g_sealed.get(v).map_err(be)? {
            return from_json("graph_sealed", &info);
        }
        // Chunks of an interrupted seal have no pointers: start the file again.
        self.blobs.remove(&graph_base(version))?;
        let mut info = GraphInfo {
            version,
            ..GraphInfo::default()
        };
        let removed = self.staged_removals(version)?;
        let base = base.map(|b| (b, &removed));
        let mut persons = Vec::new();
        // Points and cookies are merged side by side, one core each (the
        // blob file takes appends from both).
        let (points, cookies) = std::thread::scope(|s| {
            let cookies = s.spawn(|| {
                let mut counts = GraphInfo::default();
                let mut owners = Vec::new();
                self.seal_cookies(version, base, &mut counts, &mut owners)
                    .map(|batch| (batch, counts, owners))
            });
            let points = self.seal_points(version, base, &mut info, &mut persons);
            let cookies = cookies
                .join()
                .unwrap_or_else(|_| Err(StoreError::Backend("the cookie seal panicked".into())));
            (points, cookies)
        });
        let points = points?;
        let (cookies, counts, owners) = cookies?;
        info.cookies = counts.cookies;
        info.added += counts.added;
        info.removed += counts.removed;
        info.persons = distinct_persons(persons, owners);
        let sealed = json(&info)?;
        (&self.g_chunks, &self.g_cookie_chunks, &self.g_sealed)
            .transaction(|(p, c, s)| {
                p.apply_batch(&points)?;
                c.apply_batch(&cookies)?;
                s.insert(&v[..], sealed.as_slice())?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(tx_err)?;
        self.db.flush().map_err(be)?;
        Self::delete_prefix(&self.g_runs, &v)?;
        self.blobs.remove(&runs_base(version))?;
        Ok(info)
    }

    /// Copy a version's chunks to the next generation without `person`.
    fn rewrite_without(
        &self,
        version: u64,
        person: &PersonKey,
        counts: &mut ErasedCounts,
    ) -> StoreResult<()> {
        let v = version.to_be_bytes();
        let Some(generation) = self.generation_of(version)? else {
            return Ok(());
        };
        let next = generation + 1;
        self.blobs.remove_generation(&graph_base(version), next)?;
        let mut points = ChunkWriter::new(self, version, next);
        let mut old_points = Batch::default();
        for item in self.g_chunks.scan_prefix(v) {
            let (k, value) = item.map_err(be)?;
            old_points.remove(k.clone());
            let chunk = self.read_chunk(GRAPH_CHUNKS, version, &value)?;
            let kind = k
                .get(8)
                .and_then(|b| MatchKind::from_byte(*b))
                .ok_or(StoreError::Corrupt(GRAPH_CHUNKS))?;
            for record in chunk.chunks_exact(POINT_RECORD) {
                if &record[32..] == person {
                    *counts.identifiers.entry(kind.as_str().into()).or_default() += 1;
                    continue;
                }
                points.push(&k[..9], &record[..32], record, true)?;
            }
            points.close()?;
        }
        let mut cookies = ChunkWriter::new(self, version, next);
        let mut old_cookies = Batch::default();
        for item in self.g_cookie_chunks.scan_prefix(v) {
            let (k, value) = item.map_err(be)?;
            old_cookies.remove(k.clone());
            let prefix = &k[..k.len() - 16];
            let destination = String::from_utf8_lossy(&prefix[9..]).into_owned();
            let chunk = self.read_chunk(GRAPH_COOKIE_CHUNKS, version, &value)?;
            for r in cookie_records(&chunk)? {
                if &r.person == person {
                    *counts.cookies.entry(destination.clone()).or_default() += 1;
                    continue;
                }
                cookies.push(prefix, &r.person, r.raw, false)?;
            }
            cookies.close()?;
        }
        let (new_points, new_cookies) = (points.finish()?, cookies.finish()?);
        (&self.g_chunks, &self.g_cookie_chunks)
            .transaction(|(p, c)| {
                p.apply_batch(&old_points)?;
                p.apply_batch(&new_points)?;
                c.apply_batch(&old_cookies)?;
                c.apply_batch(&new_cookies)?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(tx_err)?;
        self.db.flush().map_err(be)?;
        self.blobs
            .remove_generation(&graph_base(version), generation)?;
        Ok(())
    }

    /// Does any point or cookie chunk of the version hold `person`?
    fn holds_person(&self, version: u64, person: &PersonKey) -> StoreResult<bool> {
        let v = version.to_be_bytes();
        for item in self.g_chunks.scan_prefix(v) {
            let chunk = self.read_chunk(GRAPH_CHUNKS, version, &item.map_err(be)?.1)?;
            if chunk.chunks_exact(POINT_RECORD).any(|r| &r[32..] == person) {
                return Ok(true);
            }
        }
        for item in self.g_cookie_chunks.scan_prefix(v) {
            let chunk = self.read_chunk(GRAPH_COOKIE_CHUNKS, version, &item.map_err(be)?.1)?;
            if cookie_records(&chunk)?.iter().any(|r| &r.person == person) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A version's staged runs: `(key, pointer)` in key order.
    fn staged_runs(&self, version: u64) -> StoreResult<Vec<(::sled::IVec, BlobRef)>> {
        self.g_runs
            .scan_prefix(version.to_be_bytes())
            .map(|item| {
                let (k, v) = item.map_err(be)?;
                Ok((k, ptr(GRAPH_RUNS, &v)?))
            })
            .collect()
    }

    /// Every staged run of a version without `person`'s records: copied to
    /// a new file generation, the pointers switched in one batch, the old
    /// files deleted. Returns whether any record was dropped.
    fn rewrite_runs_without(&self, version: u64, person: &PersonKey) -> StoreResult<bool> {
        let base = runs_base(version);
        let runs = self.staged_runs(version)?;
        let mut holds = false;
        for (k, r) in &runs {
            let run = self.blobs.read(&base, r)?;
            if run_without(run_part(k)?, &run, person)?.len() != run.len() {
                holds = true;
                break;
            }
        }
        if !holds {
            return Ok(false);
        }
        let next = runs
            .iter()
            .map(|(_, r)| r.generation)
            .max()
            .map_or(0, |g| g + 1);
        self.blobs.remove_generation(&base, next)?;
        let mut batch = Batch::default();
        for (k, r) in &runs {
            let run = self.blobs.read(&base, r)?;
            let kept = run_without(run_part(k)?, &run, person)?;
            let pointer = self.blobs.append_unsynced(&base, next, &kept)?;
            batch.insert(k.clone(), &pointer.encode()[..]);
        }
        self.blobs.sync(&base, next)?;
        self.g_runs.apply_batch(batch).map_err(be)?;
        self.db.flush().map_err(be)?;
        self.blobs.remove_generations_except(&base, &[next])?;
        Ok(true)
    }

    /// Delete a version's files that no pointer refers to: old generations
    /// a crash after a rewrite's pointer switch left behind, and the chunks
    /// of a seal interrupted before its pointers were written.
    fn remove_unreferenced_files(&self, version: u64) -> StoreResult<()> {
        let chunks: Vec<u32> = self.generation_of(version)?.into_iter().collect();
        self.blobs
            .remove_generations_except(&graph_base(version), &chunks)?;
        let mut runs: Vec<u32> = self
            .staged_runs(version)?
            .iter()
            .map(|(_, r)| r.generation)
            .collect();
        runs.sort_unstable();
        runs.dedup();
        self.blobs
            .remove_generations_except(&runs_base(version), &runs)?;
        Ok(())
    }

    /// The file generation a version's chunks are in (all share one).
    fn generation_of(&self, version: u64) -> StoreResult<Option<u32>> {
        let v = version.to_be_bytes();
        for (tree, name) in [
            (&self.g_chunks, GRAPH_CHUNKS),
            (&self.g_cookie_chunks, GRAPH_COOKIE_CHUNKS),
        ] {
            if let Some(item) = tree.scan_prefix(v).next() {
                let (_, value) = item.map_err(be)?;
                return Ok(Some(ptr(name, &value)?.generation));
            }
        }
        Ok(None)
    }
}

/// Heap key of a run record: `kind | point`.
/// A point run record's sort key, `kind | b·P(y)` read as integers: the
/// same order as its bytes, compared in a few instructions (not a `memcmp`
/// call) at each of the merge heap's comparisons.
type RunKey = (u8, u128, u128);

fn run_key(record: &[u8]) -> RunKey {
    sort_key(record[0], &record[1..33])
}

/// The [`RunKey`] of a kind byte and a 32-byte point.
fn sort_key(kind: u8, point: &[u8]) -> RunKey {
    let mut high = [0u8; 16];
    let mut low = [0u8; 16];
    high.copy_from_slice(&point[..16]);
    low.copy_from_slice(&point[16..32]);
    (kind, u128::from_be_bytes(high), u128::from_be_bytes(low))
}

/// Length of the sealed bytes of the cookie record at the front of `buf`,
/// whose key part is `key_len` bytes.
fn sealed_len(buf: &[u8], key_len: usize) -> StoreResult<usize> {
    buf.get(key_len..key_len + 2)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        .ok_or(StoreError::Corrupt(GRAPH_RUNS))
}

/// Buffer the next cookie run record whole and return its key
/// (`len | destination | person | tag`), or `None` at the run's end.
fn next_cookie_key(s: &mut Source<'_>) -> StoreResult<Option<Vec<u8>>> {
    if !s.fill(1)? {
        return Ok(None);
    }
    let key_len = 1 + usize::from(s.peek()[0]) + 32;
    if !s.fill(key_len + 2)? {
        return Err(StoreError::Corrupt(GRAPH_RUNS));
    }
    let total = key_len + 2 + sealed_len(s.peek(), key_len)?;
    if !s.fill(total)? {
        return Err(StoreError::Corrupt(GRAPH_RUNS));
    }
    Ok(Some(s.peek()[..key_len].to_vec()))
}

/// The part (`i` or `c`) of a staged run's key (`version | part | batch`).
fn run_part(k: &[u8]) -> StoreResult<u8> {
    k.get(8).copied().ok_or(StoreError::Corrupt(GRAPH_RUNS))
}

/// A staged run's bytes without `person`'s records.
fn run_without(part: u8, run: &[u8], person: &PersonKey) -> StoreResult<Vec<u8>> {
    let corrupt = || StoreError::Corrupt(GRAPH_RUNS);
    let mut kept = Vec::with_capacity(run.len());
    if part == b'i' {
        if !run.len().is_multiple_of(RUN_RECORD) {
            return Err(corrupt());
        }
        for record in run.chunks_exact(RUN_RECORD) {
            if &record[33..] != person {
                kept.extend_from_slice(record);
            }
        }
        return Ok(kept);
    }
    if part == b'r' {
        if !run.len().is_multiple_of(16) {
            return Err(corrupt());
        }
        for p in run.chunks_exact(16) {
            if p != person {
                kept.extend_from_slice(p);
            }
        }
        return Ok(kept);
    }
    // Cookie records: len | destination | person | tag | len:u16 | sealed.
    let mut rest = run;
    while let Some(&dlen) = rest.first() {
        let key_len = 1 + usize::from(dlen) + 32;
        let total = key_len + 2 + sealed_len(rest, key_len)?;
        let record = rest.get(..total).ok_or_else(corrupt)?;
        let owner = &record[1 + usize::from(dlen)..17 + usize::from(dlen)];
        if owner != person {
            kept.extend_from_slice(record);
        }
        rest = &rest[total..];
    }
    Ok(kept)
}

fn run_key_of(version: u64, part: u8, batch_no: u32) -> Vec<u8> {
    key(&[&version.to_be_bytes(), &[part], &batch_no.to_be_bytes()])
}

/// Binary search of 48-byte point records.
fn find_point(chunk: &[u8], point: &PointBytes) -> Option<PersonKey> {
    let n = chunk.len() / POINT_RECORD;
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        let rec = &chunk[mid * POINT_RECORD..(mid + 1) * POINT_RECORD];
        match rec[..32].cmp(&point.0[..]) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return rec[32..].try_into().ok(),
        }
    }
    None
}

impl GraphRepo for SledStore {
    fn current_graph(&self) -> StoreResult<Option<GraphInfo>> {
        self.meta
            .get("graph")
            .map_err(be)?
            .map(|v| from_json("meta", &v))
            .transpose()
    }
    fn allocate_version(&self) -> StoreResult<u64> {
        let next = self
            .meta
            .update_and_fetch("version_counter", |old| {
                let n = old
                    .and_then(|o| <[u8; 8]>::try_from(o).ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                Some((n + 1).to_be_bytes().to_vec())
            })
            .map_err(be)?
            .ok_or(StoreError::Corrupt("meta"))?;
        u64_of("meta", &next)
    }
    fn put_import(&self, rec: &ImportRecord) -> StoreResult<()> {
        self.imports
            .insert(rec.id.as_bytes(), json(rec)?)
            .map_err(be)?;
        Ok(())
    }
    fn import(&self, id: &str) -> StoreResult<Option<ImportRecord>> {
        self.imports
            .get(id)
            .map_err(be)?
            .map(|v| from_json("imports", &v))
            .transpose()
    }
    fn imports(&self) -> StoreResult<Vec<ImportRecord>> {
        Self::all(&self.imports, "imports")
    }
    fn import_batch_hash(
        &self,
        import: &str,
        part: u8,
        batch_no: u32,
    ) -> StoreResult<Option<[u8; 32]>> {
        let k = key(&[import.as_bytes(), &[0, part], &batch_no.to_be_bytes()]);
        match self.import_batches.get(k).map_err(be)? {
            None => Ok(None),
            Some(v) => Ok(Some(point_of("import_batches", &v)?.0)),
        }
    }
    fn set_import_batch_hash(
        &self,
        import: &str,
        part: u8,
        batch_no: u32,
        hash: [u8; 32],
    ) -> StoreResult<()> {
        let k = key(&[import.as_bytes(), &[0, part], &batch_no.to_be_bytes()]);
        self.import_batches.insert(k, &hash[..]).map_err(be)?;
        Ok(())
    }
    fn put_identifier_run(
        &self,
        version: u64,
        batch_no: u32,
        mut rows: Vec<IdentifierRow>,
    ) -> StoreResult<()> {
        rows.sort_unstable_by_key(|r| sort_key(r.0.to_byte(), &r.1 .0));
        let mut bytes = Vec::with_capacity(rows.len() * RUN_RECORD);
        for (kind, point, person) in &rows {
            bytes.push(kind.to_byte());
            bytes.extend_from_slice(&point.0);
            bytes.extend_from_slice(person);
        }
        let r = self.blobs.append(&runs_base(version), 0, &bytes)?;
        self.g_runs
            .insert(run_key_of(version, b'i', batch_no), &r.encode()[..])
            .map_err(be)?;
        Ok(())
    }
    fn put_cookie_run(&self, version: u64, batch_no: u32, rows: Vec<CookieRow>) -> StoreResult<()> {
        let mut records: Vec<Vec<u8>> = rows
            .iter()
            .map(|(destination, person, cookie)| {
                let d = dest_bytes(destination);
                let len = u16::try_from(cookie.sealed.len())
                    .map_err(|_| StoreError::Backend("sealed cookie too long".into()))?;
                Ok(key(&[
                    &[d.len() as u8],
                    d,
                    person,
                    &cookie.tag,
                    &len.to_be_bytes(),
                    &cookie.sealed,
                ]))
            })
            .collect::<StoreResult<_>>()?;
        // Sorting whole records sorts by destination, person, tag.
        records.sort_unstable();
        let r = self
            .blobs
            .append(&runs_base(version), 0, &records.concat())?;
        self.g_runs
            .insert(run_key_of(version, b'c', batch_no), &r.encode()[..])
            .map_err(be)?;
        Ok(())
    }
    fn put_removal_run(
        &self,
        version: u64,
        batch_no: u32,
        mut persons: Vec<PersonKey>,
    ) -> StoreResult<()> {
        persons.sort_unstable();
        let r = self
            .blobs
            .append(&runs_base(version), 0, &persons.concat())?;
        self.g_runs
            .insert(run_key_of(version, b'r', batch_no), &r.encode()[..])
            .map_err(be)?;
        Ok(())
    }
    fn seal_version(&self, version: u64) -> StoreResult<GraphInfo> {
        self.seal(version, None)
    }
    fn seal_delta(&self, version: u64, base: u64) -> StoreResult<GraphInfo> {
        self.seal(version, Some(base))
    }
    fn point_owner(
        &self,
        version: u64,
        kind: MatchKind,
        point: &PointBytes,
    ) -> StoreResult<Option<PersonKey>> {
        let prefix = chunk_prefix(version, kind);
        Ok(self
            .chunk_at(&self.g_chunks, GRAPH_CHUNKS, version, &prefix, &point.0)?
            .and_then(|(_, chunk)| find_point(&chunk, point)))
    }
    fn points_after(
        &self,
        version: u64,
        kind: MatchKind,
        after: Option<&PointBytes>,
        limit: usize,
    ) -> StoreResult<Vec<(PointBytes, PersonKey)>> {
        let prefix = chunk_prefix(version, kind);
        let start = match after {
            None => prefix.clone(),
            Some(p) => {
                let upper = key(&[&prefix, &p.0]);
                match self.g_chunks.range(prefix.clone()..=upper).next_back() {
                    Some(item) => item.map_err(be)?.0.to_vec(),
                    None => prefix.clone(),
                }
            }
        };
        let mut out = Vec::with_capacity(limit.min(65_536));
        for item in self.g_chunks.range(start..) {
            let (k, value) = item.map_err(be)?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            let chunk = self.read_chunk(GRAPH_CHUNKS, version, &value)?;
            for record in chunk.chunks_exact(POINT_RECORD) {
                let p = point_of(GRAPH_CHUNKS, &record[..32])?;
                if after.is_some_and(|a| p.0 <= a.0) {
                    continue;
                }
                if out.len() >= limit {
                    break;
                }
                out.push((p, person_of(&record[32..])?));
            }
        }
        Ok(out)
    }
    fn owners_of_sorted(
        &self,
        version: u64,
        kind: MatchKind,
        points: &[PointBytes],
    ) -> StoreResult<Vec<Option<PersonKey>>> {
        let prefix = chunk_prefix(version, kind);
        let mut chunks = self.g_chunks.scan_prefix(&prefix).peekable();
        // The chunk pointer covering the current probe, and its bytes once read.
        let mut covering: Option<::sled::IVec> = None;
        let mut bytes: Option<Vec<u8>> = None;
        let mut out = Vec::with_capacity(points.len());
        for p in points {
            while let Some(Ok((k, _))) = chunks.peek() {
                if k[prefix.len()..] > p.0[..] {
                    break;
                }
                if let Some(item) = chunks.next() {
                    covering = Some(item.map_err(be)?.1);
                    bytes = None;
                }
            }
            if let Some(Err(_)) = chunks.peek() {
                if let Some(Err(e)) = chunks.next() {
                    return Err(be(e));
                }
            }
            let Some(value) = &covering else {
                out.push(None);
                continue;
            };
            if bytes.is_none() {
                bytes = Some(self.read_chunk(GRAPH_CHUNKS, version, value)?);
            }
            out.push(bytes.as_deref().and_then(|c| find_point(c, p)));
        }
        Ok(out)
    }
    fn cookies_of_sorted(
        &self,
        version: u64,
        destination: &str,
        persons: &[PersonKey],
    ) -> StoreResult<Vec<(PersonKey, Vec<SealedCookie>)>> {
        let prefix = cookie_prefix(version, destination);
        let mut out = Vec::new();
        let mut chunks = self.g_cookie_chunks.scan_prefix(&prefix).peekable();
        let mut covering: Option<::sled::IVec> = None;
        let mut rest = persons;
        // One group of persons per covering chunk: the chunk is read and
        // parsed once, and only the cookies of persons asked for are copied.
        while let Some(first) = rest.first() {
            // The covering chunk is the last one starting at or below `first`.
            while let Some(item) = chunks.next_if(|item| {
                item.as_ref()
                    .map_or(true, |(k, _)| k[prefix.len()..] <= first[..])
            }) {
                covering = Some(item.map_err(be)?.1);
            }
            // It covers every person below the next chunk's first key (at
            // least `first`, since that key is above it).
            let covered = match chunks.peek() {
                Some(Ok((next, _))) => rest.partition_point(|p| p[..] < next[prefix.len()..]),
                _ => rest.len(),
            };
            let (group, after) = rest.split_at(covered);
            rest = after;
            let Some(value) = &covering else { continue };
            let bytes = self.read_chunk(GRAPH_COOKIE_CHUNKS, version, value)?;
            let records = cookie_records(&bytes)?;
            for person in group {
                let start = records.partition_point(|r| r.person < *person);
                let cookies: Vec<SealedCookie> = records[start..]
                    .iter()
                    .take_while(|r| r.person == *person)
                    .map(|r| SealedCookie {
                        tag: r.tag,
                        sealed: r.sealed.to_vec(),
                    })
                    .collect();
                if !cookies.is_empty() {
                    out.push((*person, cookies));
                }
            }
        }
        Ok(out)
    }
    fn has_destination(&self, version: u64, destination: &str) -> StoreResult<bool> {
        Ok(self
            .g_cookie_chunks
            .scan_prefix(cookie_prefix(version, destination))
            .next()
            .is_some())
    }
    fn suppress(&self, version: u64, person: &PersonKey) -> StoreResult<bool> {
        let k = key(&[&version.to_be_bytes(), person]);
        Ok(self.g_supp.insert(k, &[]).map_err(be)?.is_none())
    }
    fn suppressed_persons(&self, version: u64) -> StoreResult<Vec<PersonKey>> {
        self.g_supp
            .scan_prefix(version.to_be_bytes())
            .keys()
            .map(|k| {
                let k = k.map_err(be)?;
                k.get(8..)
                    .and_then(|p| PersonKey::try_from(p).ok())
                    .ok_or(StoreError::Corrupt("graph_suppressed"))
            })
            .collect()
    }
    fn person_points(&self, version: u64, person: &PersonKey) -> StoreResult<Vec<PointBytes>> {
        let mut out = Vec::new();
        for item in self.g_chunks.scan_prefix(version.to_be_bytes()) {
            let chunk = self.read_chunk(GRAPH_CHUNKS, version, &item.map_err(be)?.1)?;
            for record in chunk.chunks_exact(POINT_RECORD) {
                if &record[32..] == person {
                    out.push(point_of(GRAPH_CHUNKS, &record[..32])?);
                }
            }
        }
        let base = runs_base(version);
        for (k, r) in self.staged_runs(version)? {
            if run_part(&k)? != b'i' {
                continue;
            }
            let run = self.blobs.read(&base, &r)?;
            for record in run.chunks_exact(RUN_RECORD) {
                if &record[33..] == person {
                    out.push(point_of(GRAPH_RUNS, &record[1..33])?);
                }
            }
        }
        Ok(out)
    }
    fn erase_person(&self, version: u64, person: &PersonKey) -> StoreResult<ErasedCounts> {
        let mut counts = ErasedCounts::default();
        // Reading is cheaper than rewriting: rewrite only a person that is there.
        if self.holds_person(version, person)? {
            self.rewrite_without(version, person, &mut counts)?;
        }
        // A version still importing: its staged batches.
        self.rewrite_runs_without(version, person)?;
        self.remove_unreferenced_files(version)?;
        counts.person = !counts.identifiers.is_empty() || !counts.cookies.is_empty();
        Ok(counts)
    }
    fn commit_graph(&self, info: &GraphInfo) -> StoreResult<Option<u64>> {
        let old = self.meta.insert("graph", json(info)?).map_err(be)?;
        self.db.flush().map_err(be)?;
        old.map(|v| from_json::<GraphInfo>("meta", &v).map(|g| g.version))
            .transpose()
    }
    fn delete_version(&self, version: u64) -> StoreResult<()> {
        let v = version.to_be_bytes();
        for tree in [
            &self.g_runs,
            &self.g_chunks,
            &self.g_cookie_chunks,
            &self.g_supp,
        ] {
            Self::delete_prefix(tree, &v)?;
        }
        self.g_sealed.remove(v).map_err(be)?;
        self.db.flush().map_err(be)?;
        self.blobs.remove(&graph_base(version))?;
        self.blobs.remove(&runs_base(version))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sled::blob_dir;

    proptest::proptest! {
        /// The seal's person count is the size of the lists' union.
        #[test]
        fn distinct_persons_counts_the_union(
            a in proptest::collection::vec(0u8..40, 0..200),
            b in proptest::collection::vec(0u8..40, 0..200),
        ) {
            let keys = |l: &[u8]| l.iter().map(|&i| [i; 16]).collect::<Vec<PersonKey>>();
            let union: std::collections::BTreeSet<u8> = a.iter().chain(&b).copied().collect();
            proptest::prop_assert_eq!(
                distinct_persons(keys(&a), keys(&b)),
                union.len() as u64
            );
        }

        /// The merge's integer keys order records as their bytes do.
        #[test]
        fn run_keys_order_like_bytes(
            a in proptest::collection::vec(proptest::num::u8::ANY, RUN_RECORD),
            b in proptest::collection::vec(proptest::num::u8::ANY, RUN_RECORD),
            same_prefix in 0usize..33,
        ) {
            let mut b = b;
            b[..same_prefix].copy_from_slice(&a[..same_prefix]);
            proptest::prop_assert_eq!(run_key(&a).cmp(&run_key(&b)), a[..33].cmp(&b[..33]));
        }
    }

    fn point(i: u32) -> PointBytes {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&i.to_be_bytes());
        PointBytes(b)
    }

    fn person(i: u32) -> PersonKey {
        let mut p = [0u8; 16];
        p[12..].copy_from_slice(&i.to_be_bytes());
        p
    }

    fn cookie(i: u32) -> SealedCookie {
        SealedCookie {
            tag: person(i),
            sealed: format!("sealed-{i:08}").into_bytes(),
        }
    }

    #[test]
    fn runs_merge_into_chunks_that_answer_look_ups() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("db")).unwrap();
        let n = 3 * CHUNK_RECORDS as u32 + 17;
        // Two runs interleaving, the second repeating some points for other persons.
        let run = |from: u32, step: usize, owner_offset: u32| -> Vec<IdentifierRow> {
            (from..n)
                .step_by(step)
                .map(|i| (MatchKind::Email, point(i), person(i / 2 + owner_offset)))
                .collect()
        };
        store.put_identifier_run(7, 0, run(0, 2, 0)).unwrap();
        store.put_identifier_run(7, 1, run(1, 2, 0)).unwrap();
        store
            .put_identifier_run(7, 2, run(0, 3, 1_000_000))
            .unwrap();
        store
            .put_identifier_run(7, 3, vec![(MatchKind::Phone, point(5), person(2))])
            .unwrap();
        let cookies: Vec<CookieRow> = (0..n / 2)
            .flat_map(|i| {
                let d = if i % 3 == 0 { "dsp-b" } else { "dsp-a" };
                [
                    (d.to_string(), person(i), cookie(i)),
                    (d.to_string(), person(i), cookie(i + n)),
                ]
            })
            .collect();
        store.put_cookie_run(7, 0, cookies.clone()).unwrap();
        store.put_cookie_run(7, 1, cookies[..10].to_vec()).unwrap();
        let info = store.seal_version(7).unwrap();
        assert_eq!(info.identifiers["email"], u64::from(n));
        assert_eq!(info.identifiers["phone"], 1);
        assert_eq!(info.persons, u64::from(n.div_ceil(2)));
        assert_eq!(info.cookies.values().sum::<u64>(), u64::from(n / 2) * 2);
        assert_eq!(
            store.seal_version(7).unwrap(),
            info,
            "sealing twice recounts"
        );
        assert_eq!(store.g_runs.len(), 0, "runs are dropped once merged");

        // The first run of a point wins.
        for i in [0, 1, 6, 2048, n - 1] {
            assert_eq!(
                store.point_owner(7, MatchKind::Email, &point(i)).unwrap(),
                Some(person(i / 2)),
                "{i}"
            );
        }
        assert_eq!(
            store.point_owner(7, MatchKind::Email, &point(n)).unwrap(),
            None
        );
        assert_eq!(
            store.point_owner(7, MatchKind::Maid, &point(1)).unwrap(),
            None
        );
        let all = store
            .points_after(7, MatchKind::Email, None, usize::MAX)
            .unwrap();
        assert_eq!(all.len(), n as usize);
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
        let tail = store
            .points_after(7, MatchKind::Email, Some(&point(2047)), 5)
            .unwrap();
        assert_eq!(
            tail.iter().map(|t| t.0).collect::<Vec<_>>(),
            (2048..2053).map(point).collect::<Vec<_>>()
        );

        let probes: Vec<PointBytes> = [3, 4, 2500, 6000, n + 5].into_iter().map(point).collect();
        let owners = store
            .owners_of_sorted(7, MatchKind::Email, &probes)
            .unwrap();
        assert_eq!(
            owners,
            vec![
                Some(person(1)),
                Some(person(2)),
                Some(person(1250)),
                Some(person(3000)),
                None
            ]
        );
        let who: Vec<PersonKey> = [1, 3, 4, 3000, n].into_iter().map(person).collect();
        let found = store.cookies_of_sorted(7, "dsp-a", &who).unwrap();
        assert_eq!(
            found.iter().map(|f| f.0).collect::<Vec<_>>(),
            vec![person(1), person(4)]
        );
        assert_eq!(found[0].1.len(), 2);
        assert_eq!(found[0].1[0].sealed, b"sealed-00000001");
        // Everyone at once, across chunk edges: exactly the dsp-a persons,
        // each with both cookies.
        let everyone: Vec<PersonKey> = (0..n / 2 + 3).map(person).collect();
        let found = store.cookies_of_sorted(7, "dsp-a", &everyone).unwrap();
        let expected: Vec<PersonKey> = (0..n / 2).filter(|i| i % 3 != 0).map(person).collect();
        assert!(
            expected.len() > CHUNK_RECORDS,
            "two records each: more than two chunks"
        );
        assert_eq!(found.iter().map(|f| f.0).collect::<Vec<_>>(), expected);
        for (p, cookies) in &found {
            let i = u32::from_be_bytes(p[12..].try_into().unwrap());
            let mut sealed: Vec<&[u8]> = cookies.iter().map(|c| c.sealed.as_slice()).collect();
            sealed.sort_unstable();
            assert_eq!(sealed, [&cookie(i).sealed[..], &cookie(i + n).sealed[..]]);
        }
        assert!(store.has_destination(7, "dsp-b").unwrap());
        assert!(!store.has_destination(7, "dsp-c").unwrap());

        // Erasure rewrites the files without the person.
        let erased = store.erase_person(7, &person(4)).unwrap();
        assert!(erased.person);
        assert_eq!(erased.identifiers["email"], 2);
        assert_eq!(erased.cookies["dsp-a"], 2);
        assert_eq!(
            store.point_owner(7, MatchKind::Email, &point(8)).unwrap(),
            None
        );
        assert_eq!(
            store.point_owner(7, MatchKind::Email, &point(10)).unwrap(),
            Some(person(5))
        );
        assert!(store
            .cookies_of_sorted(7, "dsp-a", &[person(4)])
            .unwrap()
            .is_empty());
        let files: Vec<String> = std::fs::read_dir(blob_dir(&dir.path().join("db")))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(files, vec!["graph-7.1".to_string()]);
        let bytes = std::fs::read(blob_dir(&dir.path().join("db")).join("graph-7.1")).unwrap();
        assert!(!bytes.windows(15).any(|w| w == b"sealed-00000004"));
        let erased_record = [&point(8).0[..], &person(4)[..]].concat();
        assert!(!bytes.windows(48).any(|w| w == erased_record.as_slice()));
        assert!(bytes.windows(15).any(|w| w == b"sealed-00000005"));

        store.delete_version(7).unwrap();
        assert!(store
            .points_after(7, MatchKind::Email, None, 10)
            .unwrap()
            .is_empty());
        assert_eq!(
            std::fs::read_dir(blob_dir(&dir.path().join("db")))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn a_delta_copies_its_base_without_removed_persons_and_the_base_wins_ties() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("db")).unwrap();
        let n = 2 * CHUNK_RECORDS as u32 + 5;
        // Base: point i owned by person i / 2, one dsp cookie per person.
        let rows: Vec<IdentifierRow> = (0..n)
            .map(|i| (MatchKind::Email, point(i), person(i / 2)))
            .collect();
        store.put_identifier_run(1, 0, rows).unwrap();
        let cookies: Vec<CookieRow> = (0..n / 2 + 1)
            .map(|i| ("dsp".to_string(), person(i), cookie(i)))
            .collect();
        store.put_cookie_run(1, 0, cookies).unwrap();
        let base = store.seal_version(1).unwrap();
        assert_eq!(base.added, u64::from(n) + u64::from(n / 2 + 1));

        // The delta removes persons 1 and 7, adds two points (one already
        // in the base under another owner), and re-adds person 7 elsewhere.
        store.put_removal_run(2, 0, vec![person(1)]).unwrap();
        store.put_removal_run(2, 1, vec![person(7)]).unwrap();
        store
            .put_identifier_run(
                2,
                0,
                vec![
                    (MatchKind::Email, point(n + 1), person(7)),
                    (MatchKind::Email, point(4), person(9_999)),
                    (MatchKind::Phone, point(3), person(9_998)),
                ],
            )
            .unwrap();
        store
            .put_cookie_run(
                2,
                0,
                vec![("dsp2".to_string(), person(9_998), cookie(9_998))],
            )
            .unwrap();
        let info = store.seal_delta(2, 1).unwrap();
        assert_eq!(store.seal_delta(2, 1).unwrap(), info, "idempotent");
        assert_eq!(info.removed, 4 + 2, "two points and one cookie each");
        assert_eq!(
            info.added, 3,
            "two new points and a cookie; point 4 stays the base's"
        );
        assert_eq!(info.identifiers["email"], u64::from(n) - 4 + 1);
        assert_eq!(info.identifiers["phone"], 1);
        assert_eq!(info.cookies["dsp"], u64::from(n / 2 + 1) - 2);
        assert_eq!(info.persons, base.persons - 1 + 1);
        let owner = |v, k, i| store.point_owner(v, k, &point(i)).unwrap();
        assert_eq!(owner(2, MatchKind::Email, 2), None, "removed");
        assert_eq!(owner(2, MatchKind::Email, 14), None, "removed");
        assert_eq!(
            owner(2, MatchKind::Email, n + 1),
            Some(person(7)),
            "re-added"
        );
        assert_eq!(
            owner(2, MatchKind::Email, 4),
            Some(person(2)),
            "the base wins"
        );
        assert_eq!(owner(2, MatchKind::Phone, 3), Some(person(9_998)));
        assert_eq!(owner(2, MatchKind::Email, n - 1), Some(person((n - 1) / 2)));
        let all = store
            .points_after(2, MatchKind::Email, None, usize::MAX)
            .unwrap();
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(store
            .cookies_of_sorted(2, "dsp", &[person(1), person(7)])
            .unwrap()
            .is_empty());
        assert_eq!(
            store
                .cookies_of_sorted(2, "dsp", &[person(8)])
                .unwrap()
                .len(),
            1
        );
        // The base is untouched.
        assert_eq!(owner(1, MatchKind::Email, 2), Some(person(1)));
        assert_eq!(store.seal_version(1).unwrap(), base);
    }

    #[test]
    fn erasure_rewrites_the_staged_batches_of_an_open_import() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let store = SledStore::open(&db).unwrap();
        let rows = |owner: u32, from: u32| -> Vec<IdentifierRow> {
            (from..from + 3)
                .map(|i| (MatchKind::Email, point(i), person(owner)))
                .collect()
        };
        store.put_identifier_run(3, 0, rows(4, 0)).unwrap();
        store
            .put_identifier_run(3, 1, [rows(5, 10), rows(4, 20)].concat())
            .unwrap();
        let cookies = vec![
            ("dsp".to_string(), person(4), cookie(4)),
            ("dsp".to_string(), person(5), cookie(5)),
        ];
        store.put_cookie_run(3, 0, cookies).unwrap();
        // The chunks of a seal interrupted before its pointers.
        store
            .blobs
            .append(&graph_base(3), 0, &[&point(0).0[..], &person(4)].concat())
            .unwrap();
        let mut points = store.person_points(3, &person(4)).unwrap();
        points.sort_unstable();
        assert_eq!(points, [0, 1, 2, 20, 21, 22].map(point));

        store.erase_person(3, &person(4)).unwrap();

        assert!(store.person_points(3, &person(4)).unwrap().is_empty());
        let names: Vec<String> = std::fs::read_dir(blob_dir(&db))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [runs_base(3) + ".1"]);
        let bytes = std::fs::read(blob_dir(&db).join(&names[0])).unwrap();
        assert!(!bytes.windows(16).any(|w| w == person(4)));
        assert!(!bytes.windows(15).any(|w| w == b"sealed-00000004"));
        assert!(bytes.windows(15).any(|w| w == b"sealed-00000005"));
        // The import goes on and seals without the person.
        store.put_identifier_run(3, 2, rows(6, 30)).unwrap();
        let info = store.seal_version(3).unwrap();
        assert_eq!((info.persons, info.identifiers["email"]), (2, 6));
        assert_eq!(
            store.point_owner(3, MatchKind::Email, &point(0)).unwrap(),
            None
        );
        assert_eq!(
            store.point_owner(3, MatchKind::Email, &point(31)).unwrap(),
            Some(person(6))
        );
        assert!(store
            .cookies_of_sorted(3, "dsp", &[person(4)])
            .unwrap()
            .is_empty());
    }
}
