//! The sled backend: one named tree per index, sled transactions for writes
//! that touch several trees, and bulk values (graph chunks, cache runs,
//! graph-pass pages, uploads) in blob files with sled holding pointers (see
//! [`super::blobs`]). With the other `sled_*` files (shared codecs and
//! tree names in `sled_codec`), the only code in the crate that imports sled. Every call here blocks: callers run them off the async
//! executor.

use super::blobs::{BlobRef, Blobs};
pub(crate) use super::sled_codec::blob_dir;
use super::sled_codec::*;
use super::sled_index::{
    audience_keys, ids_under, job_keys, load, put_indexed, remove_indexed, time_of,
};
use super::*;
use ::sled::transaction::{ConflictableTransactionError, TransactionError};
use ::sled::{Batch, Db, Transactional, Tree};
use std::path::Path;

/// A sled database with one tree per index.
pub struct SledStore {
    pub(super) db: Db,
    pub(super) blobs: Blobs,
    pub(super) meta: Tree,
    principals: Tree,
    keys: Tree,
    key_hash: Tree,
    pub(super) imports: Tree,
    pub(super) import_batches: Tree,
    pub(super) g_runs: Tree,
    pub(super) g_chunks: Tree,
    pub(super) g_cookie_chunks: Tree,
    pub(super) g_sealed: Tree,
    pub(super) g_supp: Tree,
    pub(super) cache_runs: Tree,
    cache_done: Tree,
    /// Cache writes and reads hold it shared; an erasure's rewrite of the
    /// cache files holds it exclusively (it deletes the files read from).
    pub(super) cache_lock: std::sync::RwLock<()>,
    pub(super) jobs: Tree,
    pub(super) job_pages: Tree,
    pub(super) job_done: Tree,
    pub(super) job_uploads: Tree,
    pub(super) audiences: Tree,
    pub(super) aud_mem: Tree,
    pub(super) aud_changes: Tree,
    pub(super) job_index: Tree,
    pub(super) audience_index: Tree,
    pub(super) optouts: Tree,
    pub(super) erased_persons: Tree,
    pub(super) erased_points: Tree,
    audit: Tree,
    budget: Tree,
}

fn member_prefix(id: &str) -> Vec<u8> {
    key(&[id.as_bytes(), &[0]])
}

/// sled's page cache. sled's resident memory is a multiple of this (its
/// node representation and write buffers come on top), and the server's
/// whole budget is 1 GiB at ten million graph identifiers.
const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// A tree whose values are (an inline prefix and) a blob pointer.
#[derive(Clone, Copy)]
struct BlobTree {
    name: &'static str,
    /// Bytes kept in sled before the pointer (an upload's content hash).
    inline: usize,
}

impl BlobTree {
    fn of(tree: &[u8]) -> Option<Self> {
        let name = [
            GRAPH_RUNS,
            GRAPH_CHUNKS,
            GRAPH_COOKIE_CHUNKS,
            CACHE_RUNS,
            JOB_PAGES,
            JOB_UPLOADS,
            AUDIENCE_MEMBERS,
        ]
        .into_iter()
        .find(|n| n.as_bytes() == tree)?;
        let inline = if name == JOB_UPLOADS { 32 } else { 0 };
        Some(Self { name, inline })
    }

    /// The blob base owning the value of `k`.
    fn base(&self, k: &[u8]) -> String {
        let version = || {
            u64::from_be_bytes(
                k.get(..8)
                    .and_then(|v| v.try_into().ok())
                    .unwrap_or_default(),
            )
        };
        match self.name {
            GRAPH_RUNS => runs_base(version()),
            CACHE_RUNS => cache_base(&k[..k.len().min(16)]),
            JOB_PAGES | JOB_UPLOADS | AUDIENCE_MEMBERS => {
                let end = k.iter().position(|&b| b == 0).unwrap_or(k.len());
                let owner = String::from_utf8_lossy(&k[..end]);
                if self.name == AUDIENCE_MEMBERS {
                    audience_base(&owner)
                } else {
                    job_base(&owner)
                }
            }
            _ => graph_base(version()),
        }
    }
}

impl SledStore {
    /// Open (creating) the database at `path`.
    pub fn open(path: &Path) -> StoreResult<Self> {
        // sled's default page cache is 1 GiB; the server's whole budget is that.
        let db = ::sled::Config::new()
            .path(path)
            .cache_capacity(SLED_CACHE_BYTES)
            .mode(::sled::Mode::HighThroughput)
            .open()
            .map_err(be)?;
        // After sled has created the directory.
        let blobs = Blobs::open(&blob_dir(path)).map_err(|e| {
            StoreError::Backend(format!("blob directory of {}: {e}", path.display()))
        })?;
        let t = |name: &str| db.open_tree(name).map_err(be);
        let store = Self {
            meta: t("meta")?,
            principals: t("principals")?,
            keys: t("keys")?,
            key_hash: t("key_hash")?,
            imports: t("imports")?,
            import_batches: t("import_batches")?,
            g_runs: t(GRAPH_RUNS)?,
            g_chunks: t(GRAPH_CHUNKS)?,
            g_cookie_chunks: t(GRAPH_COOKIE_CHUNKS)?,
            g_sealed: t("graph_sealed")?,
            g_supp: t("graph_suppressed")?,
            cache_runs: t(CACHE_RUNS)?,
            cache_done: t("cache_complete")?,
            cache_lock: std::sync::RwLock::new(()),
            jobs: t("jobs")?,
            job_pages: t(JOB_PAGES)?,
            job_done: t("job_pages_done")?,
            job_uploads: t(JOB_UPLOADS)?,
            audiences: t("audiences")?,
            aud_mem: t(AUDIENCE_MEMBERS)?,
            aud_changes: t(AUDIENCE_CHANGES)?,
            job_index: t("job_index")?,
            audience_index: t("audience_index")?,
            optouts: t("optouts")?,
            erased_persons: t(ERASED_PERSONS)?,
            erased_points: t(ERASED_POINTS)?,
            audit: t("audit")?,
            budget: t("budget")?,
            db,
            blobs,
        };
        store.rebuild_indexes()?;
        Ok(store)
    }

    pub(super) fn all<T: for<'de> Deserialize<'de>>(
        tree: &Tree,
        name: &'static str,
    ) -> StoreResult<Vec<T>> {
        tree.iter()
            .values()
            .map(|v| v.map_err(be).and_then(|v| from_json(name, &v)))
            .collect()
    }

    /// The value a blob pointer stands for.
    fn blob_value(&self, tree: &'static str, base: &str, pointer: &[u8]) -> StoreResult<Vec<u8>> {
        let r = BlobRef::decode(pointer).ok_or(StoreError::Corrupt(tree))?;
        Ok(self.blobs.read(base, &r)?)
    }

    pub(super) fn delete_prefix(tree: &Tree, prefix: &[u8]) -> StoreResult<usize> {
        let mut batch = Batch::default();
        let mut n = 0;
        for k in tree.scan_prefix(prefix).keys() {
            batch.remove(k.map_err(be)?);
            n += 1;
        }
        tree.apply_batch(batch).map_err(be)?;
        Ok(n)
    }
}

impl MetaRepo for SledStore {
    fn schema_version(&self) -> StoreResult<Option<u32>> {
        match self.meta.get("schema").map_err(be)? {
            None => Ok(None),
            Some(v) => {
                let arr: [u8; 4] = v
                    .as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("meta"))?;
                Ok(Some(u32::from_be_bytes(arr)))
            }
        }
    }
    fn set_schema_version(&self, v: u32) -> StoreResult<()> {
        self.meta.insert("schema", &v.to_be_bytes()).map_err(be)?;
        Ok(())
    }
    fn flush(&self) -> StoreResult<()> {
        self.db.flush().map_err(be)?;
        Ok(())
    }
}

impl PrincipalRepo for SledStore {
    fn create_principal(&self, p: &Principal) -> StoreResult<Result<(), AlreadyExists>> {
        let swapped = self
            .principals
            .compare_and_swap(p.name.as_bytes(), None as Option<&[u8]>, Some(json(p)?))
            .map_err(be)?;
        Ok(swapped.map_err(|_| AlreadyExists))
    }
    fn principal(&self, name: &str) -> StoreResult<Option<Principal>> {
        self.principals
            .get(name)
            .map_err(be)?
            .map(|v| from_json("principals", &v))
            .transpose()
    }
    fn principals(&self) -> StoreResult<Vec<Principal>> {
        Self::all(&self.principals, "principals")
    }
    fn insert_key(&self, k: &ApiKeyRecord) -> StoreResult<()> {
        let value = json(k)?;
        (&self.keys, &self.key_hash)
            .transaction(|(keys, hashes)| {
                // A key re-hashed under a new pepper leaves no entry under its old hash.
                if let Some(old) = keys.insert(k.key_id.as_bytes(), value.clone())? {
                    if let Ok(old) = serde_json::from_slice::<ApiKeyRecord>(&old) {
                        if old.hash != k.hash {
                            hashes.remove(&old.hash[..])?;
                        }
                    }
                }
                hashes.insert(&k.hash[..], k.key_id.as_bytes())?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(tx_err)
    }
    fn key_by_hash(&self, hash: &[u8; 32]) -> StoreResult<Option<ApiKeyRecord>> {
        match self.key_hash.get(hash).map_err(be)? {
            None => Ok(None),
            Some(id) => self
                .keys
                .get(id)
                .map_err(be)?
                .map(|v| from_json("keys", &v))
                .transpose(),
        }
    }
    fn key(&self, key_id: &str) -> StoreResult<Option<ApiKeyRecord>> {
        self.keys
            .get(key_id)
            .map_err(be)?
            .map(|v| from_json("keys", &v))
            .transpose()
    }
    fn keys(&self) -> StoreResult<Vec<ApiKeyRecord>> {
        Self::all(&self.keys, "keys")
    }
}

impl CacheRepo for SledStore {
    fn cache_contains(&self, ns: &[u8; 16], bpy: &PointBytes) -> StoreResult<bool> {
        let _shared = self.cache_shared();
        // Runs starting at or before `bpy` may hold it (rare call: a scan).
        let end = key(&[ns, &bpy.0, &[0xff; 8]]);
        for item in self.cache_runs.range(ns.to_vec()..=end) {
            let (_, v) = item.map_err(be)?;
            let v = self.blob_value(CACHE_RUNS, &cache_base(ns), &v)?;
            let n = v.len() / 64;
            let found = binary_search_run(&v, n, &bpy.0);
            if found {
                return Ok(true);
            }
        }
        Ok(false)
    }
    fn cache_put(&self, ns: &[u8; 16], pairs: &[(PointBytes, PointBytes)]) -> StoreResult<()> {
        let _shared = self.cache_shared();
        let mut sorted = self.without_erased_points(pairs)?;
        if sorted.is_empty() {
            return Ok(());
        }
        sorted.sort_unstable_by_key(|p| p.0 .0);
        sorted.dedup_by(|a, b| a.0 == b.0);
        let mut value = Vec::with_capacity(sorted.len() * 64);
        for (bpy, abpy) in &sorted {
            value.extend_from_slice(&bpy.0);
            value.extend_from_slice(&abpy.0);
        }
        let k = cache_run_key(ns, &value);
        let r = self.blobs.append(&cache_base(ns), 0, &value)?;
        self.cache_runs.insert(k, &r.encode()[..]).map_err(be)?;
        Ok(())
    }
    fn cache_runs_after(
        &self,
        ns: &[u8; 16],
        after: Option<&[u8]>,
        limit: usize,
    ) -> StoreResult<Vec<CacheRun>> {
        let _shared = self.cache_shared();
        let mut start = ns.to_vec();
        if let Some(a) = after {
            start.extend_from_slice(a);
            start.push(0);
        }
        let mut out = Vec::new();
        for item in self.cache_runs.range(start..) {
            let (k, v) = item.map_err(be)?;
            if !k.starts_with(ns) || out.len() >= limit {
                break;
            }
            let v = self.blob_value(CACHE_RUNS, &cache_base(ns), &v)?;
            if k.len() != ns.len() + 40 {
                return Err(StoreError::Corrupt(CACHE_RUNS));
            }
            out.push((k[ns.len()..].to_vec(), decode_pairs(&v)?));
        }
        Ok(out)
    }
    fn cache_run_keys(&self, ns: &[u8; 16]) -> StoreResult<Vec<Vec<u8>>> {
        self.cache_runs
            .scan_prefix(ns)
            .keys()
            .map(|k| Ok(k.map_err(be)?[ns.len()..].to_vec()))
            .collect()
    }
    fn cache_run(
        &self,
        ns: &[u8; 16],
        run_key: &[u8],
    ) -> StoreResult<Vec<(PointBytes, PointBytes)>> {
        let _shared = self.cache_shared();
        let Some(pointer) = self.cache_runs.get(key(&[ns, run_key])).map_err(be)? else {
            return Ok(Vec::new());
        };
        let v = self.blob_value(CACHE_RUNS, &cache_base(ns), &pointer)?;
        decode_pairs(&v)
    }
    fn cache_remove_points(&self, points: &[PointBytes]) -> StoreResult<u64> {
        let _exclusive = self.cache_lock.write().unwrap_or_else(|p| p.into_inner());
        let mut sorted = points.to_vec();
        sorted.sort_unstable_by_key(|p| p.0);
        sorted.dedup();
        let namespaces = self.cache_namespaces()?;
        let mut removed = 0;
        for ns in &namespaces {
            removed += self.rewrite_cache_without(ns, &sorted)?;
        }
        self.remove_orphan_cache_files(&namespaces)?;
        Ok(removed)
    }
    fn set_cache_complete(&self, ns: &[u8; 16], version: u64, kind: MatchKind) -> StoreResult<()> {
        let k = key(&[ns, &version.to_be_bytes(), &[kind.to_byte()]]);
        self.cache_done.insert(k, &[]).map_err(be)?;
        Ok(())
    }
    fn cache_complete(&self, ns: &[u8; 16], version: u64, kind: MatchKind) -> StoreResult<bool> {
        let k = key(&[ns, &version.to_be_bytes(), &[kind.to_byte()]]);
        self.cache_done.contains_key(k).map_err(be)
    }
}

fn page_key(job: &str, kind: MatchKind, page_no: u32) -> Vec<u8> {
    key(&[job.as_bytes(), &[0, kind.to_byte()], &page_no.to_be_bytes()])
}

impl JobRepo for SledStore {
    fn put_job(&self, job: &Job) -> StoreResult<()> {
        let record = json(job)?;
        let keys = job_keys(job);
        (&self.jobs, &self.job_index)
            .transaction(|(jobs, idx)| put_indexed(jobs, idx, &job.id, &record, &keys, job_keys))
            .map_err(tx_err)
    }
    fn job(&self, id: &str) -> StoreResult<Option<Job>> {
        self.jobs
            .get(id)
            .map_err(be)?
            .map(|v| from_json("jobs", &v))
            .transpose()
    }
    fn jobs_of(&self, advertiser: &str) -> StoreResult<Vec<Job>> {
        let prefix = key(&[b"a\0", advertiser.as_bytes(), b"\0"]);
        load(
            &self.jobs,
            "jobs",
            ids_under(&self.job_index, &prefix, 0, |_| false)?,
        )
    }
    fn jobs_touched_before(
        &self,
        status: &str,
        before_unix: u64,
        limit: usize,
    ) -> StoreResult<Vec<Job>> {
        let prefix = key(&[b"s\0", status.as_bytes(), b"\0"]);
        let mut n = 0;
        let ids = ids_under(&self.job_index, &prefix, 8, |rest| {
            n += 1;
            n > limit || time_of(rest) > before_unix
        })?;
        load(&self.jobs, "jobs", ids)
    }
    fn job_counts(&self) -> StoreResult<BTreeMap<String, u64>> {
        let mut counts = BTreeMap::new();
        for k in self.job_index.scan_prefix(b"s\0").keys() {
            let k = k.map_err(be)?;
            let status = k[2..].split(|&b| b == 0).next().unwrap_or_default();
            *counts
                .entry(String::from_utf8_lossy(status).into_owned())
                .or_default() += 1;
        }
        Ok(counts)
    }
    fn delete_job(&self, id: &str) -> StoreResult<()> {
        (&self.jobs, &self.job_index)
            .transaction(|(jobs, idx)| remove_indexed(jobs, idx, id, job_keys))
            .map_err(tx_err)
    }
    fn put_pass_pages(
        &self,
        job: &str,
        kind: MatchKind,
        first_page: u32,
        pages: &[Vec<u8>],
    ) -> StoreResult<()> {
        let base = job_base(job);
        let mut batch = Batch::default();
        for (page_no, page) in (first_page..).zip(pages) {
            let r = self.blobs.append_unsynced(&base, 0, page)?;
            batch.insert(page_key(job, kind, page_no), &r.encode()[..]);
        }
        // One sync for the lot, before any pointer to them exists.
        self.blobs.sync(&base, 0)?;
        self.job_pages.apply_batch(batch).map_err(be)
    }
    fn pass_page(&self, job: &str, kind: MatchKind, page_no: u32) -> StoreResult<Option<Vec<u8>>> {
        self.job_pages
            .get(page_key(job, kind, page_no))
            .map_err(be)?
            .map(|v| self.blob_value(JOB_PAGES, &job_base(job), &v))
            .transpose()
    }
    fn mark_page_done(&self, job: &str, kind: MatchKind, page_no: u32) -> StoreResult<()> {
        self.job_done
            .insert(page_key(job, kind, page_no), &[])
            .map_err(be)?;
        Ok(())
    }
    fn page_done(&self, job: &str, kind: MatchKind, page_no: u32) -> StoreResult<bool> {
        self.job_done
            .contains_key(page_key(job, kind, page_no))
            .map_err(be)
    }
    fn put_upload(
        &self,
        job: &Job,
        batch_no: u32,
        hash: [u8; 32],
        frame: &[u8],
    ) -> StoreResult<()> {
        let k = key(&[job.id.as_bytes(), &[0], &batch_no.to_be_bytes()]);
        let r = self.blobs.append(&job_base(&job.id), 0, frame)?;
        let upload = key(&[&hash, &r.encode()]);
        let record = json(job)?;
        let keys = job_keys(job);
        (&self.job_uploads, &self.jobs, &self.job_index)
            .transaction(|(uploads, jobs, idx)| {
                uploads.insert(k.as_slice(), upload.as_slice())?;
                put_indexed(jobs, idx, &job.id, &record, &keys, job_keys)
            })
            .map_err(tx_err)
    }
    fn upload_hash(&self, job: &str, batch_no: u32) -> StoreResult<Option<[u8; 32]>> {
        let k = key(&[job.as_bytes(), &[0], &batch_no.to_be_bytes()]);
        match self.job_uploads.get(k).map_err(be)? {
            None => Ok(None),
            Some(v) => Ok(Some(
                point_of(
                    "job_uploads",
                    v.get(..32).ok_or(StoreError::Corrupt("job_uploads"))?,
                )?
                .0,
            )),
        }
    }
    fn upload(&self, job: &str, batch_no: u32) -> StoreResult<Option<Vec<u8>>> {
        let k = key(&[job.as_bytes(), &[0], &batch_no.to_be_bytes()]);
        match self.job_uploads.get(k).map_err(be)? {
            None => Ok(None),
            Some(v) => Ok(Some(self.blob_value(
                JOB_UPLOADS,
                &job_base(job),
                v.get(32..).ok_or(StoreError::Corrupt(JOB_UPLOADS))?,
            )?)),
        }
    }
    fn upload_numbers(&self, job: &str) -> StoreResult<Vec<u32>> {
        let prefix = key(&[job.as_bytes(), &[0]]);
        self.job_uploads
            .scan_prefix(&prefix)
            .keys()
            .map(|k| {
                let k = k.map_err(be)?;
                let arr: [u8; 4] = k[prefix.len()..]
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("job_uploads"))?;
                Ok(u32::from_be_bytes(arr))
            })
            .collect()
    }
    fn delete_job_data(&self, job: &str) -> StoreResult<()> {
        let prefix = key(&[job.as_bytes(), &[0]]);
        for tree in [&self.job_uploads, &self.job_pages, &self.job_done] {
            Self::delete_prefix(tree, &prefix)?;
        }
        // Pointers first: a crash in between leaves a file without pointers.
        self.db.flush().map_err(be)?;
        self.blobs.remove(&job_base(job))?;
        Ok(())
    }
    fn job_data_count(&self, job: &str) -> StoreResult<usize> {
        let prefix = key(&[job.as_bytes(), &[0]]);
        Ok([&self.job_uploads, &self.job_pages, &self.job_done]
            .iter()
            .map(|t| t.scan_prefix(&prefix).count())
            .sum())
    }
}

/// Member cookies per audience chunk.
const MEMBER_CHUNK: usize = 4096;

/// One member record of an audience chunk: its sort key
/// (`len | person | tag`, also the pull position) and sealed cookie.
fn member_records(chunk: &[u8]) -> StoreResult<Vec<(&[u8], &[u8])>> {
    let corrupt = || StoreError::Corrupt(AUDIENCE_MEMBERS);
    let mut out = Vec::new();
    let mut rest = chunk;
    while let Some(&plen) = rest.first() {
        let key_len = 1 + usize::from(plen) + 16;
        let len = rest.get(key_len..key_len + 2).ok_or_else(corrupt)?;
        let total = key_len + 2 + usize::from(u16::from_be_bytes([len[0], len[1]]));
        let record = rest.get(..total).ok_or_else(corrupt)?;
        out.push((&record[..key_len], &record[key_len + 2..]));
        rest = &rest[total..];
    }
    Ok(out)
}

/// The person of a member record's key.
fn member_person(key: &[u8]) -> &[u8] {
    &key[1..key.len() - 16]
}

/// An audience chunk: its sled key, file generation and bytes.
type MemberChunk = (Vec<u8>, u32, Vec<u8>);

impl SledStore {
    /// Write sorted member records (key, sealed) as chunks of `id`'s file of
    /// `generation`, synced; returns each chunk's sled key and pointer.
    fn write_member_chunks<'r>(
        &self,
        id: &str,
        generation: u32,
        records: impl Iterator<Item = (&'r [u8], &'r [u8])>,
    ) -> StoreResult<Vec<(Vec<u8>, [u8; BlobRef::LEN])>> {
        let base = audience_base(id);
        let prefix = member_prefix(id);
        let mut chunks = Vec::new();
        let mut buf = Vec::new();
        let mut first: Option<Vec<u8>> = None;
        let mut n = 0;
        let mut flush = |buf: &mut Vec<u8>, first: &mut Option<Vec<u8>>| -> StoreResult<()> {
            if let Some(f) = first.take() {
                let r = self.blobs.append_unsynced(&base, generation, buf)?;
                chunks.push((key(&[&prefix, &f]), r.encode()));
            }
            buf.clear();
            Ok(())
        };
        for (k, sealed) in records {
            if n == MEMBER_CHUNK {
                flush(&mut buf, &mut first)?;
                n = 0;
            }
            let len = u16::try_from(sealed.len())
                .map_err(|_| StoreError::Backend("sealed cookie too long".into()))?;
            first.get_or_insert_with(|| k.to_vec());
            buf.extend_from_slice(k);
            buf.extend_from_slice(&len.to_be_bytes());
            buf.extend_from_slice(sealed);
            n += 1;
        }
        flush(&mut buf, &mut first)?;
        self.blobs.sync(&base, generation)?;
        Ok(chunks)
    }

    /// Write an audience's member records as a new file generation, switch
    /// its chunks to it, then remove the old generation (so no copy of a
    /// dropped or replaced record is left in the audience's files).
    fn rewrite_members(
        &self,
        id: &str,
        chunks: &[MemberChunk],
        records: Vec<(&[u8], &[u8])>,
    ) -> StoreResult<()> {
        let generation = chunks.iter().map(|c| c.1).max().unwrap_or(0);
        let fresh = self.write_member_chunks(id, generation + 1, records.into_iter())?;
        let mut batch = Batch::default();
        for (k, _, _) in chunks {
            if !fresh.iter().any(|(f, _)| f == k) {
                batch.remove(k.as_slice());
            }
        }
        for (k, r) in &fresh {
            batch.insert(k.as_slice(), &r[..]);
        }
        self.aud_mem.apply_batch(batch).map_err(be)?;
        self.db.flush().map_err(be)?;
        self.blobs
            .remove_generation(&audience_base(id), generation)?;
        Ok(())
    }

    /// [`RotationRepo::reseal_members`] on sled.
    pub(super) fn reseal_audience_members(
        &self,
        id: &str,
        reseal: &Reseal<'_>,
    ) -> StoreResult<Option<u64>> {
        // The kept changes of its latest refresh (`op | sealed`) first.
        let mut changes = Batch::default();
        for item in self.aud_changes.scan_prefix(member_prefix(id)) {
            let (k, v) = item.map_err(be)?;
            let Some((op, sealed)) = v.split_first() else {
                return Err(StoreError::Corrupt(AUDIENCE_CHANGES));
            };
            let Some(new) = reseal(sealed) else {
                return Ok(None);
            };
            changes.insert(k, key(&[&[*op], &new]));
        }
        self.aud_changes.apply_batch(changes).map_err(be)?;
        let chunks = self.member_chunks(id)?;
        let mut records = Vec::new();
        for (_, _, chunk) in &chunks {
            records.extend(member_records(chunk)?);
        }
        if records.is_empty() {
            return Ok(Some(0));
        }
        let Some(resealed) = records
            .iter()
            .map(|(k, sealed)| Some((*k, reseal(sealed)?)))
            .collect::<Option<Vec<_>>>()
        else {
            return Ok(None);
        };
        let n = resealed.len() as u64;
        let records = resealed.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        self.rewrite_members(id, &chunks, records)?;
        Ok(Some(n))
    }

    /// Every chunk of an audience, in order.
    fn member_chunks(&self, id: &str) -> StoreResult<Vec<MemberChunk>> {
        let base = audience_base(id);
        self.aud_mem
            .scan_prefix(member_prefix(id))
            .map(|item| {
                let (k, v) = item.map_err(be)?;
                let r = BlobRef::decode(&v).ok_or(StoreError::Corrupt(AUDIENCE_MEMBERS))?;
                Ok((k.to_vec(), r.generation, self.blobs.read(&base, &r)?))
            })
            .collect()
    }
}

impl AudienceRepo for SledStore {
    fn create_audience(
        &self,
        a: &Audience,
        members: &[(String, &[SealedCookie])],
    ) -> StoreResult<()> {
        let value = json(a)?;
        let mut records: Vec<(Vec<u8>, &[u8])> = members
            .iter()
            .flat_map(|(person, cookies)| {
                cookies
                    .iter()
                    .map(move |c| (member_position(person, &c.tag), c.sealed.as_slice()))
            })
            .collect();
        records.sort_unstable_by(|x, y| x.0.cmp(&y.0));
        records.dedup_by(|x, y| x.0 == y.0);
        let mut chunks = Batch::default();
        for (k, r) in
            self.write_member_chunks(&a.id, 0, records.iter().map(|(k, s)| (k.as_slice(), *s)))?
        {
            chunks.insert(k, &r[..]);
        }
        let keys = audience_keys(a);
        (&self.audiences, &self.aud_mem, &self.audience_index)
            .transaction(|(auds, mem, idx)| {
                mem.apply_batch(&chunks)?;
                put_indexed(auds, idx, &a.id, &value, &keys, audience_keys)
            })
            .map_err(tx_err)
    }
    fn put_audience(&self, a: &Audience) -> StoreResult<()> {
        let value = json(a)?;
        let keys = audience_keys(a);
        (&self.audiences, &self.audience_index)
            .transaction(|(auds, idx)| put_indexed(auds, idx, &a.id, &value, &keys, audience_keys))
            .map_err(tx_err)
    }
    fn audience(&self, id: &str) -> StoreResult<Option<Audience>> {
        self.audiences
            .get(id)
            .map_err(be)?
            .map(|v| from_json("audiences", &v))
            .transpose()
    }
    fn audiences_for_destination(&self, destination: &str) -> StoreResult<Vec<Audience>> {
        let prefix = key(&[b"d\0", destination.as_bytes(), b"\0"]);
        let ids = ids_under(&self.audience_index, &prefix, 0, |_| false)?;
        load(&self.audiences, "audiences", ids)
    }
    fn audiences_of(&self, advertiser: &str, destination: &str) -> StoreResult<Vec<Audience>> {
        let prefix = key(&[
            b"p\0",
            advertiser.as_bytes(),
            b"\0",
            destination.as_bytes(),
            b"\0",
        ]);
        let ids = ids_under(&self.audience_index, &prefix, 0, |_| false)?;
        load(&self.audiences, "audiences", ids)
    }
    fn unpulled_audiences(&self) -> StoreResult<Vec<Audience>> {
        let ids = ids_under(&self.audience_index, b"u\0", 0, |_| false)?;
        load(&self.audiences, "audiences", ids)
    }
    fn audiences_expiring_by(&self, unix: u64) -> StoreResult<Vec<Audience>> {
        let ids = ids_under(&self.audience_index, b"e\0", 8, |rest| time_of(rest) > unix)?;
        load(&self.audiences, "audiences", ids)
    }
    fn live_audience_count(&self, now: u64) -> StoreResult<u64> {
        let start = key(&[b"e\0", &now.saturating_add(1).to_be_bytes()]);
        let mut n = 0;
        for k in self.audience_index.range(start..b"e\x01".to_vec()).keys() {
            k.map_err(be)?;
            n += 1;
        }
        Ok(n)
    }
    fn audience_persons(&self, id: &str) -> StoreResult<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        for (_, _, chunk) in self.member_chunks(id)? {
            for (k, _) in member_records(&chunk)? {
                let p = String::from_utf8_lossy(member_person(k));
                if out.last().map(String::as_str) != Some(&p) {
                    out.push(p.into_owned());
                }
            }
        }
        Ok(out)
    }
    fn members_after(
        &self,
        id: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let prefix = member_prefix(id);
        // Positions are record keys, stable when other members are removed.
        let start = match after {
            None => prefix.clone(),
            Some(a) => match self
                .aud_mem
                .range(prefix.clone()..=key(&[&prefix, a]))
                .next_back()
            {
                Some(item) => item.map_err(be)?.0.to_vec(),
                None => prefix.clone(),
            },
        };
        let base = audience_base(id);
        let mut out = Vec::new();
        for item in self.aud_mem.range(start..) {
            let (k, v) = item.map_err(be)?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            let r = BlobRef::decode(&v).ok_or(StoreError::Corrupt(AUDIENCE_MEMBERS))?;
            let chunk = self.blobs.read(&base, &r)?;
            for (pos, sealed) in member_records(&chunk)? {
                if after.is_some_and(|a| pos <= a) {
                    continue;
                }
                if out.len() >= limit {
                    break;
                }
                out.push((pos.to_vec(), sealed.to_vec()));
            }
        }
        Ok(out)
    }
    fn remove_member(&self, id: &str, person: &str) -> StoreResult<usize> {
        let keeps_changes = self.audience(id)?.is_some_and(|a| a.changes_from.is_some());
        let chunks = self.member_chunks(id)?;
        let mut records = Vec::new();
        for (_, _, chunk) in &chunks {
            records.extend(member_records(chunk)?);
        }
        let (gone, records): (Vec<_>, Vec<_>) = records
            .into_iter()
            .partition(|(k, _)| member_person(k) == person.as_bytes());
        // The kept changes: the person's positions are one range. Its
        // additions go; its members that the latest refresh did not add
        // become removals (the destination may hold them from the version
        // before); its removals stay.
        let prefix = member_prefix(id);
        let low = key(&[&prefix, &member_position(person, &[0; 16])]);
        let high = key(&[&prefix, &member_position(person, &[0xff; 16])]);
        let mut changes = Batch::default();
        let mut added = Vec::new();
        for item in self.aud_changes.range(low..=high) {
            let (k, v) = item.map_err(be)?;
            if v.first().copied() == Some(ChangeOp::Add.code()) {
                changes.remove(k.clone());
                added.push(k);
            }
        }
        if keeps_changes {
            for (pos, sealed) in &gone {
                let k = key(&[&prefix, pos]);
                if !added.iter().any(|a| a.as_ref() == k.as_slice()) {
                    changes.insert(k, key(&[&[ChangeOp::Remove.code()], sealed]));
                }
            }
        }
        // A new file generation without the person, then the old one goes.
        let generation = chunks.iter().map(|c| c.1).max().unwrap_or(0);
        let mut members = Batch::default();
        if !gone.is_empty() {
            let fresh = self.write_member_chunks(id, generation + 1, records.into_iter())?;
            for (k, _, _) in &chunks {
                if !fresh.iter().any(|(f, _)| f == k) {
                    members.remove(k.as_slice());
                }
            }
            for (k, r) in &fresh {
                members.insert(k.as_slice(), &r[..]);
            }
        }
        (&self.aud_mem, &self.aud_changes)
            .transaction(|(mem, ch)| {
                mem.apply_batch(&members)?;
                ch.apply_batch(&changes)?;
                Ok(())
            })
            .map_err(tx_err)?;
        if gone.is_empty() {
            return Ok(0);
        }
        self.db.flush().map_err(be)?;
        self.blobs
            .remove_generation(&audience_base(id), generation)?;
        Ok(gone.len())
    }
    fn delete_members(&self, id: &str) -> StoreResult<()> {
        Self::delete_prefix(&self.aud_changes, &member_prefix(id))?;
        Self::delete_prefix(&self.aud_mem, &member_prefix(id))?;
        self.db.flush().map_err(be)?;
        self.blobs.remove(&audience_base(id))?;
        Ok(())
    }
    fn delete_audience(&self, id: &str) -> StoreResult<()> {
        self.delete_members(id)?;
        (&self.audiences, &self.audience_index)
            .transaction(|(auds, idx)| remove_indexed(auds, idx, id, audience_keys))
            .map_err(tx_err)
    }
    fn refresh_audience(
        &self,
        a: &Audience,
        members: &[(Vec<u8>, Vec<u8>)],
        changes: &[MemberChange],
    ) -> StoreResult<()> {
        let prefix = member_prefix(&a.id);
        // The new members in a new file generation; pointers switch below.
        let old_chunks = self.member_chunks(&a.id)?;
        let generation = old_chunks.iter().map(|c| c.1).max().unwrap_or(0);
        let fresh = self.write_member_chunks(
            &a.id,
            generation + 1,
            members.iter().map(|(k, s)| (k.as_slice(), s.as_slice())),
        )?;
        let mut chunks = Batch::default();
        for (k, _, _) in &old_chunks {
            chunks.remove(k.as_slice());
        }
        for (k, r) in &fresh {
            chunks.insert(k.as_slice(), &r[..]);
        }
        let mut kept = Batch::default();
        for k in self.aud_changes.scan_prefix(&prefix).keys() {
            kept.remove(k.map_err(be)?);
        }
        for c in changes {
            kept.insert(key(&[&prefix, &c.pos]), key(&[&[c.op.code()], &c.sealed]));
        }
        let value = json(a)?;
        let keys = audience_keys(a);
        (
            &self.audiences,
            &self.audience_index,
            &self.aud_mem,
            &self.aud_changes,
        )
            .transaction(|(auds, idx, mem, ch)| {
                mem.apply_batch(&chunks)?;
                ch.apply_batch(&kept)?;
                put_indexed(auds, idx, &a.id, &value, &keys, audience_keys)
            })
            .map_err(tx_err)?;
        // Pointers first: a crash in between leaves a file without pointers.
        self.db.flush().map_err(be)?;
        self.blobs
            .remove_generations_except(&audience_base(&a.id), &[generation + 1])?;
        Ok(())
    }
    fn changes_after(
        &self,
        id: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> StoreResult<Vec<MemberChange>> {
        let prefix = member_prefix(id);
        let start = match after {
            Some(a) => std::ops::Bound::Excluded(key(&[&prefix, a])),
            None => std::ops::Bound::Included(prefix.clone()),
        };
        let mut out = Vec::new();
        for item in self
            .aud_changes
            .range((start, std::ops::Bound::Unbounded))
            .take(limit)
        {
            let (k, v) = item.map_err(be)?;
            let Some(pos) = k.strip_prefix(prefix.as_slice()) else {
                break;
            };
            let corrupt = || StoreError::Corrupt(AUDIENCE_CHANGES);
            let (&op, sealed) = v.split_first().ok_or_else(corrupt)?;
            out.push(MemberChange {
                pos: pos.to_vec(),
                op: ChangeOp::of_code(op).ok_or_else(corrupt)?,
                sealed: sealed.to_vec(),
            });
        }
        Ok(out)
    }
}

impl OptoutRepo for SledStore {
    fn add_optouts(&self, points: &[PointBytes]) -> StoreResult<usize> {
        let mut n = 0;
        for p in points {
            if self.optouts.insert(p.0, &[]).map_err(be)?.is_none() {
                n += 1;
            }
        }
        Ok(n)
    }
    fn is_opted_out(&self, point: &PointBytes) -> StoreResult<bool> {
        self.optouts.contains_key(point.0).map_err(be)
    }
    fn optouts(&self) -> StoreResult<Vec<PointBytes>> {
        self.optouts
            .iter()
            .keys()
            .map(|k| point_of("optouts", &k.map_err(be)?))
            .collect()
    }
}

impl AuditRepo for SledStore {
    fn last_audit(&self) -> StoreResult<Option<AuditEntry>> {
        match self.audit.last().map_err(be)? {
            None => Ok(None),
            Some((_, v)) => Ok(Some(from_json("audit", &v)?)),
        }
    }
    fn put_audit(&self, e: &AuditEntry) -> StoreResult<()> {
        self.audit
            .insert(e.seq.to_be_bytes(), json(e)?)
            .map_err(be)?;
        Ok(())
    }
    fn audit_after(&self, after: u64, limit: usize) -> StoreResult<Vec<AuditEntry>> {
        let start = after.saturating_add(1).to_be_bytes();
        self.audit
            .range(start..)
            .values()
            .take(limit)
            .map(|v| from_json("audit", &v.map_err(be)?))
            .collect()
    }
}

/// One advertiser's budget charges, a single record so that checking and
/// charging is one transaction on one key.
#[derive(Debug, Default, Serialize, Deserialize)]
struct BudgetLedger {
    charges: Vec<LedgerCharge>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LedgerCharge {
    unix: u64,
    job: String,
    micro: u64,
}

impl BudgetLedger {
    fn spent_since(&self, window_start: u64) -> u64 {
        self.charges
            .iter()
            .filter(|c| c.unix >= window_start)
            .fold(0u64, |sum, c| sum.saturating_add(c.micro))
    }

    /// The check and the charge of [`BudgetRepo::try_spend`], on the record.
    fn charge(
        &mut self,
        job: &str,
        now: u64,
        window_start: u64,
        cost_micro: u64,
        budget_micro: u64,
    ) -> Result<BudgetCharge, BudgetExhausted> {
        let horizon = now.saturating_sub(BUDGET_HISTORY_SECS);
        self.charges.retain(|c| c.unix >= horizon);
        let spent = self.spent_since(window_start);
        if let Some(earlier) = self.charges.iter().find(|c| c.job == job) {
            return Ok(BudgetCharge {
                charged_micro: earlier.micro,
                spent_micro: spent,
            });
        }
        let after = spent.saturating_add(cost_micro);
        if after > budget_micro {
            return Err(BudgetExhausted { spent_micro: spent });
        }
        self.charges.push(LedgerCharge {
            unix: now,
            job: job.to_string(),
            micro: cost_micro,
        });
        Ok(BudgetCharge {
            charged_micro: cost_micro,
            spent_micro: after,
        })
    }
}

/// The ledger's key: 0xFF, which starts no UTF-8 text, so no key of the
/// older per-spend layout (`advertiser \0 unix job`) collides with it.
fn ledger_key(advertiser: &str) -> Vec<u8> {
    key(&[&[0xFF], advertiser.as_bytes()])
}

impl SledStore {
    /// Spends written by earlier builds (`advertiser \0 unix job` → ε as an
    /// `f64`), converted to micro-ε (rounded to the nearest), with their keys.
    fn legacy_charges(&self, advertiser: &str) -> StoreResult<Vec<(Vec<u8>, LedgerCharge)>> {
        let corrupt = || StoreError::Corrupt("budget");
        let prefix = key(&[advertiser.as_bytes(), &[0]]);
        let mut out = Vec::new();
        for item in self.budget.scan_prefix(&prefix) {
            let (k, v) = item.map_err(be)?;
            let rest = k.get(prefix.len()..).ok_or_else(corrupt)?;
            let (unix, job) = rest.split_at_checked(8).ok_or_else(corrupt)?;
            let job = String::from_utf8(job.to_vec()).map_err(|_| corrupt())?;
            let bytes: [u8; 8] = v.as_ref().try_into().map_err(|_| corrupt())?;
            let epsilon = f64::from_be_bytes(bytes);
            if !(epsilon.is_finite() && epsilon >= 0.0) {
                return Err(corrupt());
            }
            let charge = LedgerCharge {
                unix: u64_of("budget", unix)?,
                job,
                micro: (epsilon * MICRO_PER_EPSILON_F64).round() as u64,
            };
            out.push((k.to_vec(), charge));
        }
        Ok(out)
    }
}

const MICRO_PER_EPSILON_F64: f64 = 1_000_000.0;

impl BudgetRepo for SledStore {
    fn try_spend(
        &self,
        advertiser: &str,
        job: &str,
        now: u64,
        window_start: u64,
        cost_micro: u64,
        budget_micro: u64,
    ) -> StoreResult<Result<BudgetCharge, BudgetExhausted>> {
        let ledger_key = ledger_key(advertiser);
        // Spends of earlier builds move into the ledger when it is first
        // written (in the transaction below, which also deletes them).
        let legacy = if self.budget.contains_key(&ledger_key).map_err(be)? {
            Vec::new()
        } else {
            self.legacy_charges(advertiser)?
        };
        self.budget
            .transaction(|tx| {
                let mut ledger: BudgetLedger = match tx.get(&ledger_key)? {
                    Some(bytes) => {
                        from_json("budget", &bytes).map_err(ConflictableTransactionError::Abort)?
                    }
                    None => {
                        for (old_key, _) in &legacy {
                            tx.remove(old_key.as_slice())?;
                        }
                        BudgetLedger {
                            charges: legacy.iter().map(|(_, c)| c.clone()).collect(),
                        }
                    }
                };
                let outcome = ledger.charge(job, now, window_start, cost_micro, budget_micro);
                let bytes = json(&ledger).map_err(ConflictableTransactionError::Abort)?;
                tx.insert(ledger_key.as_slice(), bytes)?;
                Ok(outcome)
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => be(e),
                TransactionError::Abort(e) => e,
            })
    }

    fn budget_spent(&self, advertiser: &str, window_start: u64) -> StoreResult<u64> {
        let ledger = match self.budget.get(ledger_key(advertiser)).map_err(be)? {
            Some(bytes) => from_json("budget", &bytes)?,
            None => BudgetLedger {
                charges: self
                    .legacy_charges(advertiser)?
                    .into_iter()
                    .map(|(_, c)| c)
                    .collect(),
            },
        };
        Ok(ledger.spent_since(window_start))
    }
}

/// One process owns a sled store (its file lock), so the services'
/// in-process mutexes already serialise everything: store locks are free.
impl LockRepo for SledStore {
    fn lock(&self, _name: &str) -> StoreResult<HeldLock> {
        Ok(HeldLock::local())
    }
    fn try_lock(&self, _name: &str) -> StoreResult<Option<HeldLock>> {
        Ok(Some(HeldLock::local()))
    }
}

impl SledStore {
    /// Open like [`SledStore::open`], but `Ok(None)` when another handle or
    /// process holds the database's lock (a running server).
    pub fn open_unless_locked(path: &Path) -> StoreResult<Option<Self>> {
        match Self::open(path) {
            Ok(s) => Ok(Some(s)),
            Err(StoreError::Backend(m)) if m.contains("could not acquire lock") => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl ExportRepo for SledStore {
    fn tree_names(&self) -> StoreResult<Vec<Vec<u8>>> {
        let mut names: Vec<Vec<u8>> = self
            .db
            .tree_names()
            .into_iter()
            .map(|n| n.to_vec())
            .collect();
        names.sort();
        Ok(names)
    }

    fn export_tree(&self, tree: &[u8], visit: &mut EntryVisitor<'_>) -> StoreResult<()> {
        let blob_tree = BlobTree::of(tree);
        let tree = self.db.open_tree(tree).map_err(be)?;
        for kv in tree.iter() {
            let (k, v) = kv.map_err(be)?;
            match blob_tree {
                // Backups carry values, not pointers into this store's files.
                Some(bt) => {
                    let (inline, pointer) = v.split_at(bt.inline.min(v.len()));
                    let r = BlobRef::decode(pointer).ok_or(StoreError::Corrupt(bt.name))?;
                    let bytes = self.blobs.read(&bt.base(&k), &r)?;
                    visit(&k, &key(&[inline, &bytes]))?;
                }
                None => visit(&k, &v)?,
            }
        }
        Ok(())
    }

    fn import_entries(&self, tree: &[u8], entries: &[(Vec<u8>, Vec<u8>)]) -> StoreResult<()> {
        let blob_tree = BlobTree::of(tree);
        let tree = self.db.open_tree(tree).map_err(be)?;
        let mut batch = Batch::default();
        let mut bases = std::collections::BTreeSet::new();
        for (k, v) in entries {
            match blob_tree {
                Some(bt) => {
                    let (inline, bytes) = v.split_at(bt.inline.min(v.len()));
                    let base = bt.base(k);
                    let r = self.blobs.append_unsynced(&base, 0, bytes)?;
                    batch.insert(k.as_slice(), key(&[inline, &r.encode()]));
                    bases.insert(base);
                }
                None => batch.insert(k.as_slice(), v.as_slice()),
            }
        }
        for base in &bases {
            self.blobs.sync(base, 0)?;
        }
        tree.apply_batch(batch).map_err(be)
    }

    fn has_data(&self) -> StoreResult<bool> {
        for name in self.db.tree_names() {
            if name.as_ref() == b"meta" {
                continue;
            }
            let tree = self.db.open_tree(&name).map_err(be)?;
            if !tree.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audience(id: &str) -> Audience {
        Audience {
            id: id.into(),
            segment: "Gold".into(),
            advertiser: "acme".into(),
            destination: "dsp".into(),
            job_id: "j-1".into(),
            size: 0,
            created: String::new(),
            expires: String::new(),
            expires_unix: 0,
            pulled: false,
            version: 1,
            refreshed: None,
            changes_from: None,
            prior: None,
        }
    }

    #[test]
    fn reseal_covers_the_kept_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("db")).unwrap();
        crate::storage::audience_checks::reseal_covers_the_kept_changes(&store, audience("a-s"));
    }

    #[test]
    fn refresh_replaces_members_and_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("db")).unwrap();
        crate::storage::audience_checks::refresh_replaces_members_and_changes(
            &store,
            audience("a-r"),
        );
        let blobs = blob_dir(&dir.path().join("db"));
        assert_eq!(
            std::fs::read_dir(&blobs).unwrap().count(),
            0,
            "no file left"
        );
    }

    #[test]
    fn audience_members_page_stably_through_removals() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("db")).unwrap();
        // Two cookies per person, enough to span several chunks.
        let members: Vec<(String, Vec<SealedCookie>)> = (0..3000u32)
            .map(|i| {
                let cookies = (0..2u8)
                    .map(|c| SealedCookie {
                        tag: [c; 16],
                        sealed: format!("cookie-{i:05}-{c}").into_bytes(),
                    })
                    .collect();
                (format!("person{i:05}"), cookies)
            })
            .collect();
        let borrowed: Vec<(String, &[SealedCookie])> = members
            .iter()
            .map(|(p, c)| (p.clone(), c.as_slice()))
            .collect();
        store.create_audience(&audience("a-1"), &borrowed).unwrap();
        assert!(store.aud_mem.len() > 1, "several chunks");
        assert_eq!(store.audience_persons("a-1").unwrap().len(), 3000);
        let first = store.members_after("a-1", None, 1000).unwrap();
        assert_eq!(first.len(), 1000);
        assert_eq!(first[0].1, b"cookie-00000-0");
        // Remove a person already paged and one ahead: the cursor still holds.
        assert_eq!(store.remove_member("a-1", "person00010").unwrap(), 2);
        assert_eq!(store.remove_member("a-1", "person02999").unwrap(), 2);
        assert_eq!(store.remove_member("a-1", "person02999").unwrap(), 0);
        let mut all: Vec<Vec<u8>> = first.iter().map(|m| m.1.clone()).collect();
        let mut after = first.last().map(|m| m.0.clone());
        loop {
            let page = store.members_after("a-1", after.as_deref(), 1000).unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.0.clone());
            all.extend(page.into_iter().map(|m| m.1));
        }
        assert_eq!(all.len(), 6000 - 2, "each remaining cookie once");
        assert_eq!(all[999], b"cookie-00499-1");
        assert_eq!(all.last().unwrap(), b"cookie-02998-1");
        let blobs = blob_dir(&dir.path().join("db"));
        let names: Vec<String> = std::fs::read_dir(&blobs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["aud-a-1.2".to_string()]);
        let bytes = std::fs::read(blobs.join("aud-a-1.2")).unwrap();
        assert!(!bytes.windows(11).any(|w| w == b"person02999"));

        // Re-sealed (sealing-key rotation): positions kept, values replaced,
        // the old file generation gone; a refused value changes nothing.
        let before = store.members_after("a-1", None, usize::MAX).unwrap();
        assert_eq!(store.reseal_members("a-1", &|_| None).unwrap(), None);
        let upper = |v: &[u8]| Some(v.to_ascii_uppercase());
        assert_eq!(
            store.reseal_members("a-1", &upper).unwrap(),
            Some(before.len() as u64)
        );
        let after_reseal = store.members_after("a-1", None, usize::MAX).unwrap();
        assert_eq!(after_reseal.len(), before.len());
        for ((p0, v0), (p1, v1)) in before.iter().zip(&after_reseal) {
            assert_eq!((p0, &v0.to_ascii_uppercase()), (p1, v1));
        }
        let names: Vec<String> = std::fs::read_dir(&blobs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["aud-a-1.3".to_string()]);
        let bytes = std::fs::read(blobs.join("aud-a-1.3")).unwrap();
        assert!(!bytes.windows(12).any(|w| w == b"cookie-00001"));
        store.delete_audience("a-1").unwrap();
        assert_eq!(std::fs::read_dir(&blobs).unwrap().count(), 0);
        assert!(store.audience("a-1").unwrap().is_none());
    }
}
