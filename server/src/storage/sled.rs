//! The sled backend: one named tree per index, inverse trees for reverse
//! look-ups, sled transactions for writes that touch several trees. The only
//! file in the crate that imports sled. Every call here blocks: callers run
//! them off the async executor.

use super::*;
use ::sled::transaction::{ConflictableTransactionError, TransactionError};
use ::sled::{Batch, Db, Transactional, Tree};
use sha2::{Digest as _, Sha256};
use std::path::Path;

/// A sled database with one tree per index.
pub struct SledStore {
    db: Db,
    meta: Tree,
    principals: Tree,
    keys: Tree,
    key_hash: Tree,
    imports: Tree,
    import_batches: Tree,
    g_pid: Tree,
    g_pno: Tree,
    g_point: Tree,
    g_cookie: Tree,
    g_supp: Tree,
    cache_runs: Tree,
    jobs: Tree,
    job_pages: Tree,
    job_done: Tree,
    job_uploads: Tree,
    audiences: Tree,
    aud_mem: Tree,
    optouts: Tree,
    audit: Tree,
    budget: Tree,
}

fn be(e: ::sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn tx_err(e: TransactionError<()>) -> StoreError {
    match e {
        TransactionError::Storage(e) => be(e),
        TransactionError::Abort(()) => StoreError::Backend("transaction aborted".into()),
    }
}

fn json<T: Serialize>(v: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| StoreError::Backend(e.to_string()))
}

fn from_json<T: for<'de> Deserialize<'de>>(tree: &'static str, bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(|_| StoreError::Corrupt(tree))
}

fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

fn u64_of(tree: &'static str, bytes: &[u8]) -> StoreResult<u64> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt(tree))?;
    Ok(u64::from_be_bytes(arr))
}

fn point_of(tree: &'static str, bytes: &[u8]) -> StoreResult<PointBytes> {
    let arr: [u8; 32] = bytes.try_into().map_err(|_| StoreError::Corrupt(tree))?;
    Ok(PointBytes(arr))
}

fn dest_prefix(version: u64, destination: &str) -> Vec<u8> {
    let d = destination.as_bytes();
    let len = [d.len().min(255) as u8];
    key(&[&version.to_be_bytes(), &len, &d[..d.len().min(255)]])
}

fn member_prefix(id: &str, person: Option<&str>) -> Vec<u8> {
    let mut k = key(&[id.as_bytes(), &[0]]);
    if let Some(p) = person {
        let p = &p.as_bytes()[..p.len().min(255)];
        k.push(p.len() as u8);
        k.extend_from_slice(p);
    }
    k
}

/// sled's page cache. sled's resident memory is a multiple of this (its
/// node representation and write buffers come on top), and the server's
/// whole budget is 1 GiB at ten million graph identifiers.
const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;

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
        // The per-point cache of earlier builds; the cache is rebuilt on demand.
        db.drop_tree("cache_fwd").map_err(be)?;
        let t = |name: &str| db.open_tree(name).map_err(be);
        Ok(Self {
            meta: t("meta")?,
            principals: t("principals")?,
            keys: t("keys")?,
            key_hash: t("key_hash")?,
            imports: t("imports")?,
            import_batches: t("import_batches")?,
            g_pid: t("graph_person_by_id")?,
            g_pno: t("graph_person_by_no")?,
            g_point: t("graph_point")?,
            g_cookie: t("graph_cookie")?,
            g_supp: t("graph_suppressed")?,
            cache_runs: t("cache_runs")?,
            jobs: t("jobs")?,
            job_pages: t("job_pages")?,
            job_done: t("job_pages_done")?,
            job_uploads: t("job_uploads")?,
            audiences: t("audiences")?,
            aud_mem: t("audience_members")?,
            optouts: t("optouts")?,
            audit: t("audit")?,
            budget: t("budget")?,
            db,
        })
    }

    fn all<T: for<'de> Deserialize<'de>>(tree: &Tree, name: &'static str) -> StoreResult<Vec<T>> {
        tree.iter()
            .values()
            .map(|v| v.map_err(be).and_then(|v| from_json(name, &v)))
            .collect()
    }

    fn delete_prefix(tree: &Tree, prefix: &[u8]) -> StoreResult<usize> {
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
                keys.insert(k.key_id.as_bytes(), value.clone())?;
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
    fn person_no(&self, version: u64, person: &str) -> StoreResult<Option<u64>> {
        let k = key(&[&version.to_be_bytes(), person.as_bytes()]);
        self.g_pid
            .get(k)
            .map_err(be)?
            .map(|v| u64_of("graph_person_by_id", &v))
            .transpose()
    }
    fn person_id(&self, version: u64, person_no: u64) -> StoreResult<Option<String>> {
        let k = key(&[&version.to_be_bytes(), &person_no.to_be_bytes()]);
        self.g_pno
            .get(k)
            .map_err(be)?
            .map(|v| {
                String::from_utf8(v.to_vec()).map_err(|_| StoreError::Corrupt("graph_person_by_no"))
            })
            .transpose()
    }
    fn put_persons(&self, version: u64, persons: &[(String, u64)]) -> StoreResult<()> {
        let v = version.to_be_bytes();
        let (mut by_id, mut by_no) = (Batch::default(), Batch::default());
        for (person, n) in persons {
            by_id.insert(key(&[&v, person.as_bytes()]), &n.to_be_bytes());
            by_no.insert(key(&[&v, &n.to_be_bytes()]), person.as_bytes());
        }
        // Numbers first: a crash in between leaves an unreachable number, never a dangling ID.
        self.g_pno.apply_batch(by_no).map_err(be)?;
        self.g_pid.apply_batch(by_id).map_err(be)?;
        Ok(())
    }
    fn put_points(
        &self,
        version: u64,
        rows: &[(MatchKind, PointBytes, u64)],
    ) -> StoreResult<Vec<bool>> {
        let v = version.to_be_bytes();
        let mut points = Batch::default();
        let mut fresh = Vec::with_capacity(rows.len());
        let mut seen = std::collections::HashSet::new();
        for (kind, point, person) in rows {
            let k = key(&[&v, &[kind.to_byte()], &point.0]);
            let new = !self.g_point.contains_key(&k).map_err(be)? && seen.insert(k.clone());
            fresh.push(new);
            points.insert(k, &person.to_be_bytes());
        }
        self.g_point.apply_batch(points).map_err(be)?;
        Ok(fresh)
    }
    fn point_owner(
        &self,
        version: u64,
        kind: MatchKind,
        point: &PointBytes,
    ) -> StoreResult<Option<u64>> {
        let k = key(&[&version.to_be_bytes(), &[kind.to_byte()], &point.0]);
        self.g_point
            .get(k)
            .map_err(be)?
            .map(|v| u64_of("graph_point", &v))
            .transpose()
    }
    fn points_after(
        &self,
        version: u64,
        kind: MatchKind,
        after: Option<&PointBytes>,
        limit: usize,
    ) -> StoreResult<Vec<(PointBytes, u64)>> {
        let prefix = key(&[&version.to_be_bytes(), &[kind.to_byte()]]);
        let mut start = prefix.clone();
        if let Some(p) = after {
            start.extend_from_slice(&p.0);
            start.push(0);
        }
        let mut out = Vec::with_capacity(limit.min(65_536));
        for item in self.g_point.range(start..) {
            let (k, v) = item.map_err(be)?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            out.push((
                point_of("graph_point", &k[prefix.len()..])?,
                u64_of("graph_point", &v)?,
            ));
        }
        Ok(out)
    }
    fn put_cookie(
        &self,
        version: u64,
        destination: &str,
        person_no: u64,
        cookie: &SealedCookie,
    ) -> StoreResult<bool> {
        let k = key(&[
            &dest_prefix(version, destination),
            &person_no.to_be_bytes(),
            &cookie.tag,
        ]);
        if self.g_cookie.contains_key(&k).map_err(be)? {
            return Ok(false);
        }
        self.g_cookie
            .insert(k, cookie.sealed.as_slice())
            .map_err(be)?;
        Ok(true)
    }
    fn put_cookies(
        &self,
        version: u64,
        rows: &[(&str, u64, SealedCookie)],
    ) -> StoreResult<Vec<bool>> {
        let mut batch = Batch::default();
        let mut fresh = Vec::with_capacity(rows.len());
        let mut seen = std::collections::HashSet::new();
        for (destination, person_no, cookie) in rows {
            let k = key(&[
                &dest_prefix(version, destination),
                &person_no.to_be_bytes(),
                &cookie.tag,
            ]);
            let new = !self.g_cookie.contains_key(&k).map_err(be)? && seen.insert(k.clone());
            if new {
                batch.insert(k, cookie.sealed.as_slice());
            }
            fresh.push(new);
        }
        self.g_cookie.apply_batch(batch).map_err(be)?;
        Ok(fresh)
    }
    fn cookies(
        &self,
        version: u64,
        destination: &str,
        person_no: u64,
    ) -> StoreResult<Vec<SealedCookie>> {
        let prefix = key(&[&dest_prefix(version, destination), &person_no.to_be_bytes()]);
        self.g_cookie
            .scan_prefix(&prefix)
            .map(|item| {
                let (k, v) = item.map_err(be)?;
                let tag: [u8; 16] = k[prefix.len()..]
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("graph_cookie"))?;
                Ok(SealedCookie {
                    tag,
                    sealed: v.to_vec(),
                })
            })
            .collect()
    }
    fn has_destination(&self, version: u64, destination: &str) -> StoreResult<bool> {
        Ok(self
            .g_cookie
            .scan_prefix(dest_prefix(version, destination))
            .next()
            .is_some())
    }
    fn suppress(&self, version: u64, person_no: u64) -> StoreResult<bool> {
        let k = key(&[&version.to_be_bytes(), &person_no.to_be_bytes()]);
        Ok(self.g_supp.insert(k, &[]).map_err(be)?.is_none())
    }
    fn is_suppressed(&self, version: u64, person_no: u64) -> StoreResult<bool> {
        let k = key(&[&version.to_be_bytes(), &person_no.to_be_bytes()]);
        self.g_supp.contains_key(k).map_err(be)
    }
    fn erase_person(&self, version: u64, person_no: u64) -> StoreResult<ErasedCounts> {
        let mut counts = ErasedCounts::default();
        let v = version.to_be_bytes();
        let pno = person_no.to_be_bytes();
        let rev_prefix = key(&[&v, &pno]);
        // No per-person index of points (it would double every import write):
        // erasure, which is rare, scans the version's points instead.
        let mut point_keys = Vec::new();
        for item in self.g_point.scan_prefix(v) {
            let (k, owner) = item.map_err(be)?;
            if owner.as_ref() == pno.as_slice() {
                if let Some(kind) = k.get(8).and_then(|b| MatchKind::from_byte(*b)) {
                    *counts
                        .identifiers
                        .entry(kind.as_str().to_string())
                        .or_default() += 1;
                }
                point_keys.push(k.to_vec());
            }
        }
        let mut cookie_keys = Vec::new();
        for k in self.g_cookie.scan_prefix(v).keys() {
            let k = k.map_err(be)?;
            let dlen = usize::from(*k.get(8).unwrap_or(&0));
            if k.get(9 + dlen..17 + dlen) == Some(&pno[..]) {
                let dest = String::from_utf8_lossy(&k[9..9 + dlen]).into_owned();
                *counts.cookies.entry(dest).or_default() += 1;
                cookie_keys.push(k.to_vec());
            }
        }
        let id = self.person_id(version, person_no)?;
        let id_key = id.map(|p| key(&[&v, p.as_bytes()]));
        (&self.g_point, &self.g_cookie, &self.g_pid, &self.g_pno)
            .transaction(|(points, cookies, pid, pnos)| {
                for k in &point_keys {
                    points.remove(k.as_slice())?;
                }
                for k in &cookie_keys {
                    cookies.remove(k.as_slice())?;
                }
                if let Some(k) = &id_key {
                    pid.remove(k.as_slice())?;
                }
                pnos.remove(rev_prefix.as_slice())?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(tx_err)?;
        counts.person = id_key.is_some();
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
            &self.g_pid,
            &self.g_pno,
            &self.g_point,
            &self.g_cookie,
            &self.g_supp,
        ] {
            Self::delete_prefix(tree, &v)?;
        }
        Ok(())
    }
}

impl CacheRepo for SledStore {
    fn cache_contains(&self, ns: &[u8; 16], bpy: &PointBytes) -> StoreResult<bool> {
        // Runs starting at or before `bpy` may hold it (rare call: a scan).
        let end = key(&[ns, &bpy.0, &[0xff; 8]]);
        for item in self.cache_runs.range(ns.to_vec()..=end) {
            let (_, v) = item.map_err(be)?;
            let n = v.len() / 64;
            let found = binary_search_run(&v, n, &bpy.0);
            if found {
                return Ok(true);
            }
        }
        Ok(false)
    }
    fn cache_put(&self, ns: &[u8; 16], pairs: &[(PointBytes, PointBytes)]) -> StoreResult<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        let mut sorted = pairs.to_vec();
        sorted.sort_unstable_by_key(|p| p.0 .0);
        sorted.dedup_by(|a, b| a.0 == b.0);
        let mut value = Vec::with_capacity(sorted.len() * 64);
        for (bpy, abpy) in &sorted {
            value.extend_from_slice(&bpy.0);
            value.extend_from_slice(&abpy.0);
        }
        // One value per run, keyed by its first point and its content, so a
        // re-sent page overwrites itself and a different run is kept beside.
        let tag = Sha256::digest(&value);
        let k = key(&[ns, &sorted[0].0 .0, &tag[..8]]);
        self.cache_runs.insert(k, value).map_err(be)?;
        Ok(())
    }
    fn cache_runs_after(
        &self,
        ns: &[u8; 16],
        after: Option<&[u8]>,
        limit: usize,
    ) -> StoreResult<Vec<CacheRun>> {
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
            if k.len() != ns.len() + 40 || v.len() % 64 != 0 {
                return Err(StoreError::Corrupt("cache_runs"));
            }
            let pairs = v
                .chunks_exact(64)
                .map(|c| {
                    Ok((
                        point_of("cache_runs", &c[..32])?,
                        point_of("cache_runs", &c[32..])?,
                    ))
                })
                .collect::<StoreResult<Vec<_>>>()?;
            out.push((k[ns.len()..].to_vec(), pairs));
        }
        Ok(out)
    }
}

/// Is `p` among the `n` sorted 64-byte `(b·P(y), a·b·P(y))` pairs of `run`?
fn binary_search_run(run: &[u8], n: usize, p: &[u8; 32]) -> bool {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        match run[mid * 64..mid * 64 + 32].cmp(&p[..]) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return true,
        }
    }
    false
}

fn page_key(job: &str, kind: MatchKind, page_no: u32) -> Vec<u8> {
    key(&[job.as_bytes(), &[0, kind.to_byte()], &page_no.to_be_bytes()])
}

impl JobRepo for SledStore {
    fn put_job(&self, job: &Job) -> StoreResult<()> {
        self.jobs
            .insert(job.id.as_bytes(), json(job)?)
            .map_err(be)?;
        Ok(())
    }
    fn job(&self, id: &str) -> StoreResult<Option<Job>> {
        self.jobs
            .get(id)
            .map_err(be)?
            .map(|v| from_json("jobs", &v))
            .transpose()
    }
    fn jobs(&self) -> StoreResult<Vec<Job>> {
        Self::all(&self.jobs, "jobs")
    }
    fn put_pass_page(
        &self,
        job: &str,
        kind: MatchKind,
        page_no: u32,
        points: &[u8],
    ) -> StoreResult<()> {
        self.job_pages
            .insert(page_key(job, kind, page_no), points)
            .map_err(be)?;
        Ok(())
    }
    fn pass_page(&self, job: &str, kind: MatchKind, page_no: u32) -> StoreResult<Option<Vec<u8>>> {
        Ok(self
            .job_pages
            .get(page_key(job, kind, page_no))
            .map_err(be)?
            .map(|v| v.to_vec()))
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
        let upload = key(&[&hash, frame]);
        let record = json(job)?;
        (&self.job_uploads, &self.jobs)
            .transaction(|(uploads, jobs)| {
                uploads.insert(k.as_slice(), upload.as_slice())?;
                jobs.insert(job.id.as_bytes(), record.as_slice())?;
                Ok::<_, ConflictableTransactionError<()>>(())
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
            Some(v) => Ok(Some(
                v.get(32..)
                    .ok_or(StoreError::Corrupt("job_uploads"))?
                    .to_vec(),
            )),
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

impl AudienceRepo for SledStore {
    fn create_audience(
        &self,
        a: &Audience,
        members: &[(String, Vec<SealedCookie>)],
    ) -> StoreResult<()> {
        let value = json(a)?;
        let mut batch = Batch::default();
        for (person, cookies) in members {
            let prefix = member_prefix(&a.id, Some(person));
            for c in cookies {
                batch.insert(key(&[&prefix, &c.tag]), c.sealed.as_slice());
            }
        }
        (&self.audiences, &self.aud_mem)
            .transaction(|(auds, mem)| {
                mem.apply_batch(&batch)?;
                auds.insert(a.id.as_bytes(), value.clone())?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(tx_err)
    }
    fn put_audience(&self, a: &Audience) -> StoreResult<()> {
        self.audiences
            .insert(a.id.as_bytes(), json(a)?)
            .map_err(be)?;
        Ok(())
    }
    fn audience(&self, id: &str) -> StoreResult<Option<Audience>> {
        self.audiences
            .get(id)
            .map_err(be)?
            .map(|v| from_json("audiences", &v))
            .transpose()
    }
    fn audiences(&self) -> StoreResult<Vec<Audience>> {
        Self::all(&self.audiences, "audiences")
    }
    fn audience_persons(&self, id: &str) -> StoreResult<Vec<String>> {
        let prefix = member_prefix(id, None);
        let mut out: Vec<String> = Vec::new();
        for k in self.aud_mem.scan_prefix(&prefix).keys() {
            let k = k.map_err(be)?;
            let rest = &k[prefix.len()..];
            let len = usize::from(
                *rest
                    .first()
                    .ok_or(StoreError::Corrupt("audience_members"))?,
            );
            let p = rest
                .get(1..1 + len)
                .ok_or(StoreError::Corrupt("audience_members"))?;
            let p = String::from_utf8(p.to_vec())
                .map_err(|_| StoreError::Corrupt("audience_members"))?;
            if out.last() != Some(&p) {
                out.push(p);
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
        let prefix = member_prefix(id, None);
        let mut start = prefix.clone();
        if let Some(a) = after {
            start.extend_from_slice(a);
            start.push(0);
        }
        let mut out = Vec::new();
        for item in self.aud_mem.range(start..) {
            let (k, v) = item.map_err(be)?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            out.push((k[prefix.len()..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }
    fn remove_member(&self, id: &str, person: &str) -> StoreResult<bool> {
        Ok(Self::delete_prefix(&self.aud_mem, &member_prefix(id, Some(person)))? > 0)
    }
    fn delete_members(&self, id: &str) -> StoreResult<()> {
        Self::delete_prefix(&self.aud_mem, &member_prefix(id, None))?;
        Ok(())
    }
    fn delete_audience(&self, id: &str) -> StoreResult<()> {
        Self::delete_prefix(&self.aud_mem, &member_prefix(id, None))?;
        self.audiences.remove(id).map_err(be)?;
        Ok(())
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

impl BudgetRepo for SledStore {
    fn record_spend(
        &self,
        advertiser: &str,
        unix: u64,
        job: &str,
        epsilon: f64,
    ) -> StoreResult<()> {
        let k = key(&[
            advertiser.as_bytes(),
            &[0],
            &unix.to_be_bytes(),
            job.as_bytes(),
        ]);
        self.budget.insert(k, &epsilon.to_be_bytes()).map_err(be)?;
        Ok(())
    }
    fn spent_since(&self, advertiser: &str, since_unix: u64) -> StoreResult<f64> {
        let prefix = key(&[advertiser.as_bytes(), &[0]]);
        let start = key(&[&prefix, &since_unix.to_be_bytes()]);
        let mut total = 0.0;
        for item in self.budget.range(start..) {
            let (k, v) = item.map_err(be)?;
            if !k.starts_with(&prefix) {
                break;
            }
            let arr: [u8; 8] = v
                .as_ref()
                .try_into()
                .map_err(|_| StoreError::Corrupt("budget"))?;
            total += f64::from_be_bytes(arr);
        }
        Ok(total)
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
        let tree = self.db.open_tree(tree).map_err(be)?;
        for kv in tree.iter() {
            let (k, v) = kv.map_err(be)?;
            visit(&k, &v)?;
        }
        Ok(())
    }

    fn import_entries(&self, tree: &[u8], entries: &[(Vec<u8>, Vec<u8>)]) -> StoreResult<()> {
        let tree = self.db.open_tree(tree).map_err(be)?;
        let mut batch = Batch::default();
        for (k, v) in entries {
            batch.insert(k.as_slice(), v.as_slice());
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
