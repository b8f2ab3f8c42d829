//! Key rotations that rewrite stored data, run by one machinery:
//! - the server key: a new scalar `b'` replaces `b`, and every stored value
//!   blinded by `b` is multiplied by `b'·b⁻¹` (no advertiser involved:
//!   `a·b'·P(y) = (b'·b⁻¹)·a·b·P(y)`);
//! - the sealing key (`keys rotate --seal-key`): every sealed value (graph
//!   cookies, audience members, webhook secrets) is opened and sealed again
//!   under a new key. Cookie tags stay (they are on the identity key), so
//!   positions and cursors keep their meaning. While it runs, values are
//!   sealed under the new key and opened under either, so pulls go on.
//!
//! The steps, each resumable after a crash:
//! 1. `b'` is written to `server.key.next` (the new sealing key to
//!    `seal.key.next`; 0600, `O_EXCL`, synced): while that file exists a
//!    rotation is in progress, and a start resumes it.
//! 2. *Draining*: no job or import may start; open ones finish on `b`.
//!    Once none is open the gate closes (*rewriting*): every request that
//!    uses `b` or data blinded by it is refused with
//!    `key-rotation-in-progress`, so no request ever sees data under two keys.
//! 3. The current graph is copied to a new version with its points
//!    transformed (a crash discards the half-written version and redoes it);
//!    opt-outs, tombstones and each advertiser's cache are replaced, each in
//!    one atomic write with its step's mark in the rotation record (for the
//!    sealing key: the graph's cookies are re-sealed in the copy, then each
//!    audience's members and each webhook secret; re-sealing what is sealed
//!    under either key is idempotent, so a resumed step simply redoes it).
//! 4. The new version is committed (one pointer write), the next key file is
//!    renamed over the current one, the old key is dropped (zeroised) and
//!    the gate opens.

use super::{lock, new_id, Services};
use crate::error::ApiError;
use crate::keyfiles::{
    self, KeyFileError, SEAL_KEY_FILE, SEAL_KEY_NEXT_FILE, SEAL_LABEL, SERVER_KEY_FILE,
    SERVER_KEY_NEXT_FILE,
};
use crate::services::seal::Sealer;
use crate::storage::{
    GraphInfo, ImportRecord, PersonKey, RotationKind, RotationRecord, SealedCookie, StoreError,
};
use onboard_protocol::{blind, MatchKind, PointBytes, SecretKey};
use rayon::prelude::*;
use std::sync::{Arc, RwLockReadGuard};
use thiserror::Error;
use zeroize::Zeroizing;

/// Points read, transformed and written per graph batch.
const GRAPH_BATCH: usize = 65_536;

/// A rotation that cannot start or go on.
#[derive(Debug, Error)]
pub enum RotationError {
    /// One is running already.
    #[error("a key rotation is already running (see `keys rotate --status`)")]
    Running,
    /// A key file failed.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// Storage failed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// A service step failed.
    #[error("{0}")]
    Service(#[from] ApiError),
    /// A stored point that must be valid is not.
    #[error("a stored {0} point does not decode")]
    BadPoint(&'static str),
    /// A record of a rotation whose next key is gone.
    #[error("the store records an unfinished key rotation but {0} is missing; restore it (or a backup taken before the rotation)")]
    NextKeyMissing(String),
    /// A stored sealed value that neither sealing key opens.
    #[error("a stored {0} does not open under the sealing key")]
    BadSeal(&'static str),
    /// A key file differs from the one the deployment's store names.
    #[error("{file} of this data dir is not the key the store was last used with (its fingerprint differs): a rotation on another server replaced it; copy {file} (and any pepper.key.old) from that server's data dir, then start again")]
    KeyMismatch {
        /// The file.
        file: &'static str,
    },
    /// A pepper rotation waits for keys still hashed under the old pepper.
    #[error("a pepper rotation is pending ({0} live API keys still hashed under the old pepper): finish it first (`keys rotate --pepper --finish`)")]
    PepperPending(usize),
    /// `--finish` without a pepper rotation.
    #[error("no pepper rotation to finish")]
    NoPepperRotation,
    /// `--finish` while live keys still need the old pepper.
    #[error("{count} live API keys are still hashed under the old pepper ({first}…): each moves on its next successful use; revoke those that will not be used (`onboard admin keys revoke`), then finish")]
    PepperInUse {
        /// How many.
        count: usize,
        /// The first key IDs.
        first: String,
    },
}

/// The new key of a rotation.
enum NextKey {
    /// `b'`.
    Server(SecretKey),
    /// The new sealing key.
    Seal(Zeroizing<[u8; 32]>),
}

impl NextKey {
    fn kind(&self) -> RotationKind {
        match self {
            NextKey::Server(_) => RotationKind::ServerKey,
            NextKey::Seal(_) => RotationKind::SealKey,
        }
    }
}

/// The current and next key files of a rotation kind.
fn key_files(kind: RotationKind) -> (&'static str, &'static str) {
    match kind {
        RotationKind::ServerKey => (SERVER_KEY_FILE, SERVER_KEY_NEXT_FILE),
        RotationKind::SealKey => (SEAL_KEY_FILE, SEAL_KEY_NEXT_FILE),
    }
}

/// How the graph copy transforms what it copies.
enum Rewrite<'a> {
    /// Points multiplied by `b'·b⁻¹`, cookies copied.
    Points(&'a SecretKey),
    /// Points copied, cookies sealed again.
    Seals(&'a Sealer),
}

/// Where the server key stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No rotation: everything goes.
    Steady,
    /// A rotation waits for open jobs and imports; no new ones start.
    Draining,
    /// Stored points are being rewritten: nothing that uses `b` runs.
    Rewriting,
}

/// The key and the rotation phase, behind one lock.
pub struct KeyState {
    key: SecretKey,
    phase: Phase,
}

impl KeyState {
    /// A key with no rotation running.
    pub fn steady(key: SecretKey) -> Self {
        Self {
            key,
            phase: Phase::Steady,
        }
    }

    /// The server key `b`.
    pub fn key(&self) -> &SecretKey {
        &self.key
    }
}

/// What a request is about to do with `b` or its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUse {
    /// Open a job or an import.
    Start,
    /// Go on with an open job or import, or write opt-outs and erasures.
    Continue,
}

/// The rotation's progress, as `keys rotate --status` shows it.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// A rotation thread is running.
    pub running: bool,
    /// One line on what it does or how the last one ended.
    pub line: String,
}

impl Services {
    /// Hold the key for one request's use of it: refused with
    /// `key-rotation-in-progress` when a rotation forbids that use. Held to
    /// the end of the request, so a rotation waits for it. Never take it
    /// twice in one call chain (a waiting rotation would deadlock it).
    pub(crate) fn key_gate(
        &self,
        key_use: KeyUse,
    ) -> Result<RwLockReadGuard<'_, KeyState>, ApiError> {
        let state = self.key_state.read().unwrap_or_else(|p| p.into_inner());
        match (state.phase, key_use) {
            (Phase::Steady, _) | (Phase::Draining, KeyUse::Continue) => Ok(state),
            _ => Err(ApiError::KeyRotation),
        }
    }

    fn set_phase(&self, phase: Phase) {
        self.key_state
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .phase = phase;
    }

    fn set_status(&self, line: impl Into<String>) {
        let line = line.into();
        tracing::info!(status = %line, "key rotation");
        lock(&self.rotation_status).line = line;
    }

    /// `running|idle <line>` for the control socket.
    pub fn rotation_status(&self) -> String {
        let s = lock(&self.rotation_status);
        let state = if s.running { "running" } else { "idle" };
        let line = if s.line.is_empty() {
            "no key rotation since the server started"
        } else {
            &s.line
        };
        format!("{state} {line}")
    }

    /// Start a rotation of `kind`: write the new key to its `.next` file,
    /// close the gate to new work, and rewrite in the background. Returns
    /// at once.
    pub fn start_rotation(self: &Arc<Self>, kind: RotationKind) -> Result<(), RotationError> {
        self.claim_rotation()?;
        let (current, next_file) = key_files(kind);
        let path = self.config.data_dir.join(next_file);
        let (next, text) = match kind {
            RotationKind::ServerKey => {
                let k = SecretKey::generate(&mut rand::rngs::OsRng);
                let text = Zeroizing::new(k.to_file_string().to_string());
                (NextKey::Server(k), text)
            }
            RotationKind::SealKey => {
                let k = keyfiles::random_symmetric();
                let text = keyfiles::symmetric_file_string(SEAL_LABEL, &k);
                (NextKey::Seal(k), text)
            }
        };
        if let Err(e) = keyfiles::write_private(&path, text.as_bytes()) {
            lock(&self.rotation_status).running = false;
            self.set_phase(Phase::Steady);
            return Err(e.into());
        }
        sync_dir(&self.config.data_dir);
        self.audit("system", "keys.rotate.start", current, "ok")?;
        self.spawn_rotation(next);
        Ok(())
    }

    /// The next key of an unfinished rotation, from its `.next` file.
    fn pending_next_key(&self) -> Result<Option<NextKey>, RotationError> {
        let dir = &self.config.data_dir;
        let server = match keyfiles::read_server_key_file(dir, SERVER_KEY_NEXT_FILE) {
            Ok(k) => Some(NextKey::Server(k)),
            Err(KeyFileError::Missing { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let seal = keyfiles::read_symmetric_if_present(dir, SEAL_KEY_NEXT_FILE, SEAL_LABEL)?
            .map(NextKey::Seal);
        match (server, seal) {
            (Some(_), Some(_)) => Err(RotationError::KeyFile(KeyFileError::Format {
                path: dir.join(SEAL_KEY_NEXT_FILE),
                reason: format!(
                    "{SERVER_KEY_NEXT_FILE} exists too: one rotation at a time; \
                     keep the one the store's rotation record names"
                ),
            })),
            (server, seal) => Ok(server.or(seal)),
        }
    }

    /// At start: resume a rotation left unfinished (its `server.key.next`
    /// exists), or forget the record of one that finished its key switch.
    pub fn resume_rotation(self: &Arc<Self>) -> Result<(), RotationError> {
        let dir = &self.config.data_dir;
        let next = self.pending_next_key()?;
        let rec = self.repo.rotation()?;
        match (next, rec) {
            (Some(next), _) => {
                self.claim_rotation()?;
                let (current, _) = key_files(next.kind());
                self.audit("system", "keys.rotate.resume", current, "ok")?;
                self.spawn_rotation(next);
            }
            (None, Some(rec)) if rec.done.contains("switched") => {
                self.repo.put_rotation(None)?;
                let (current, _) = key_files(rec.kind);
                self.audit("system", "keys.rotate.finish", current, "ok")?;
            }
            (None, Some(rec)) => {
                return Err(RotationError::NextKeyMissing(
                    dir.join(key_files(rec.kind).1).display().to_string(),
                ))
            }
            (None, None) => {}
        }
        Ok(())
    }

    fn claim_rotation(&self) -> Result<(), RotationError> {
        let mut status = lock(&self.rotation_status);
        if status.running {
            return Err(RotationError::Running);
        }
        status.running = true;
        status.line = "starting".into();
        drop(status);
        // Synchronously, so no job starts between here and the thread.
        self.set_phase(Phase::Draining);
        Ok(())
    }

    fn spawn_rotation(self: &Arc<Self>, next: NextKey) {
        if let NextKey::Seal(k) = &next {
            // From now on values are sealed under the new key, opened under either.
            let current = self.sealer().current_key();
            self.set_sealer(Sealer::rotating(current, k.clone()));
        }
        let services = self.clone();
        let spawned = std::thread::Builder::new()
            .name("onboard-key-rotation".into())
            .spawn(move || {
                let result = services.rotate(next);
                let mut status = lock(&services.rotation_status);
                status.running = false;
                match result {
                    Ok(()) => status.line = "finished: the new key is in use".into(),
                    Err(e) => {
                        tracing::error!(error = %e, "key rotation failed; restart the server to resume it");
                        status.line = format!("failed: {e}; restart the server to resume it");
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the key rotation thread");
            let mut status = lock(&self.rotation_status);
            status.running = false;
            status.line =
                format!("failed: cannot start its thread: {e}; restart the server to resume it");
        }
    }

    /// The whole rotation, from draining to the key switch.
    fn rotate(&self, next: NextKey) -> Result<(), RotationError> {
        self.drain()?;
        let mut rec = match self.repo.rotation()? {
            Some(rec) => rec,
            None => {
                let rec = RotationRecord {
                    id: new_id("r-"),
                    kind: next.kind(),
                    ..RotationRecord::default()
                };
                self.repo.put_rotation(Some(&rec))?;
                rec
            }
        };
        match &next {
            NextKey::Server(k) => {
                let factor = {
                    let state = self.key_state.read().unwrap_or_else(|p| p.into_inner());
                    SecretKey::rotation_factor(state.key(), k)
                };
                self.rewrite_blinded(&mut rec, &factor)?;
            }
            NextKey::Seal(_) => self.rewrite_sealed(&mut rec)?,
        }
        crate::faults::crash_point!("rotation-rewritten", self.repo);
        if !rec.done.contains("commit") {
            self.commit_rotated_graph(&rec)?;
            rec.done.insert("commit".into());
            self.repo.put_rotation(Some(&rec))?;
        }
        crate::faults::crash_point!("rotation-committed", self.repo);
        self.switch_key(&mut rec, next)?;
        self.repo.put_rotation(None)?;
        self.audit("system", "keys.rotate.finish", &rec.id, "ok")?;
        Ok(())
    }

    /// Server key: the graph, opt-outs, tombstones and caches move to `b'`.
    fn rewrite_blinded(
        &self,
        rec: &mut RotationRecord,
        factor: &SecretKey,
    ) -> Result<(), RotationError> {
        if !rec.done.contains("graph") {
            self.rewrite_graph(rec, &Rewrite::Points(factor))?;
        }
        crate::faults::crash_point!("rotation-graph-written", self.repo);
        if !rec.done.contains("optouts") {
            self.set_status("rewriting opt-outs");
            let points = rotate_all(factor, &self.repo.optouts()?, "opt-out")?;
            rec.done.insert("optouts".into());
            self.repo.replace_optouts(&points, rec)?;
        }
        if !rec.done.contains("tombstones") {
            self.set_status("rewriting erasure tombstones");
            let mut tombstones = self.repo.tombstones()?;
            for (_, points) in &mut tombstones {
                *points = rotate_all(factor, points, "tombstone")?;
            }
            rec.done.insert("tombstones".into());
            self.repo.replace_tombstones(&tombstones, rec)?;
        }
        self.rewrite_caches(rec, factor)
    }

    /// Sealing key: the graph's cookies, every audience's members and every
    /// webhook secret are sealed again under the new key.
    fn rewrite_sealed(&self, rec: &mut RotationRecord) -> Result<(), RotationError> {
        let sealer = self.sealer();
        if !rec.done.contains("graph") {
            self.rewrite_graph(rec, &Rewrite::Seals(&sealer))?;
        }
        crate::faults::crash_point!("rotation-graph-written", self.repo);
        if !rec.done.contains("audiences") {
            self.reseal_audiences(&sealer)?;
            rec.done.insert("audiences".into());
            self.repo.put_rotation(Some(rec))?;
        }
        crate::faults::crash_point!("rotation-audiences-resealed", self.repo);
        if !rec.done.contains("webhooks") {
            self.reseal_webhook_secrets(&sealer)?;
            rec.done.insert("webhooks".into());
            self.repo.put_rotation(Some(rec))?;
        }
        Ok(())
    }

    /// Every audience's members, one audience per atomic switch.
    fn reseal_audiences(&self, sealer: &Sealer) -> Result<(), RotationError> {
        let audiences = self.repo.audiences_expiring_by(u64::MAX)?;
        let reseal = |sealed: &[u8]| sealer.reseal_cookie(sealed);
        let mut cookies = 0u64;
        for (i, a) in audiences.iter().enumerate() {
            self.set_status(format!(
                "re-sealing audience {} of {} ({cookies} cookies so far)",
                i + 1,
                audiences.len()
            ));
            // Serialised with expiry and withdrawal, which rewrite members too.
            let _g = self.exclusive(&self.audience_lock, "audiences")?;
            cookies += self
                .repo
                .reseal_members(&a.id, &reseal)?
                .ok_or(RotationError::BadSeal("audience member"))?;
        }
        tracing::info!(
            audiences = audiences.len(),
            cookies,
            "audience members re-sealed"
        );
        Ok(())
    }

    /// Every destination's webhook signing secrets.
    fn reseal_webhook_secrets(&self, sealer: &Sealer) -> Result<(), RotationError> {
        self.set_status("re-sealing webhook secrets");
        let _g = lock(&self.webhook_lock);
        for p in self.repo.principals()? {
            let Some(mut e) = self.repo.webhook_endpoint(&p.name)? else {
                continue;
            };
            for s in &mut e.secrets {
                s.sealed = sealer
                    .reseal(
                        super::webhooks::SECRET_LABEL,
                        e.destination.as_bytes(),
                        &s.sealed,
                    )
                    .ok_or(RotationError::BadSeal("webhook secret"))?;
            }
            self.repo.put_webhook_endpoint(&e)?;
        }
        Ok(())
    }

    /// Wait until no job or import is open, then close the gate.
    fn drain(&self) -> Result<(), RotationError> {
        loop {
            {
                let mut state = self.key_state.write().unwrap_or_else(|p| p.into_inner());
                let jobs = self
                    .job_counts_by_status()?
                    .get("open")
                    .copied()
                    .unwrap_or(0);
                let imports = self
                    .repo
                    .imports()?
                    .iter()
                    .filter(|r| r.status == "open")
                    .count();
                if jobs == 0 && imports == 0 {
                    state.phase = Phase::Rewriting;
                    return Ok(());
                }
                self.set_status(format!(
                    "waiting for {jobs} open jobs and {imports} open imports to finish (or be abandoned)"
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }

    /// Copy the current graph to a new version under the new key (points
    /// or cookies transformed by `how`), suppressions copied, then sealed.
    fn rewrite_graph(
        &self,
        rec: &mut RotationRecord,
        how: &Rewrite<'_>,
    ) -> Result<(), RotationError> {
        // A version half-written before a crash is discarded and redone.
        if let Some(v) = rec.new_version.take() {
            self.repo.delete_version(v)?;
        }
        let Some(current) = self.repo.current_graph()? else {
            rec.done.insert("graph".into());
            self.repo.put_rotation(Some(rec))?;
            return Ok(());
        };
        let version = self.repo.allocate_version()?;
        rec.new_version = Some(version);
        self.repo.put_rotation(Some(rec))?;
        let total: u64 = current.identifiers.values().sum();
        let mut done = 0u64;
        let mut batch_no = 0u32;
        let mut persons: Vec<PersonKey> = Vec::new();
        let started = std::time::Instant::now();
        for kind in MatchKind::ALL {
            let mut after: Option<PointBytes> = None;
            loop {
                let chunk =
                    self.repo
                        .points_after(current.version, kind, after.as_ref(), GRAPH_BATCH)?;
                let Some(last) = chunk.last() else { break };
                after = Some(last.0);
                let points: Vec<PointBytes> = chunk.iter().map(|(p, _)| *p).collect();
                let rotated = match how {
                    Rewrite::Points(factor) => blind::reblind(factor, &points)
                        .map_err(|_| RotationError::BadPoint("graph"))?,
                    Rewrite::Seals(_) => points,
                };
                persons.extend(chunk.iter().map(|(_, person)| *person));
                let rows = rotated
                    .into_iter()
                    .zip(chunk)
                    .map(|(p, (_, person))| (kind, p, person))
                    .collect::<Vec<_>>();
                done += rows.len() as u64;
                self.repo.put_identifier_run(version, batch_no, rows)?;
                batch_no += 1;
                self.set_status(format!("rewriting the graph: {done} of {total} points"));
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            points = done,
            seconds,
            per_second = (done as f64 / seconds.max(1e-9)) as u64,
            "graph points rotated"
        );
        persons.par_sort_unstable();
        persons.dedup();
        let sealer = match how {
            Rewrite::Points(_) => None,
            Rewrite::Seals(sealer) => Some(*sealer),
        };
        let started = std::time::Instant::now();
        let cookies = self.copy_cookies(&current, version, &persons, sealer)?;
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            cookies,
            seconds,
            per_second = (cookies as f64 / seconds.max(1e-9)) as u64,
            resealed = sealer.is_some(),
            "graph cookies copied"
        );
        for person in self.repo.suppressed_persons(current.version)? {
            self.repo.suppress(version, &person)?;
        }
        self.repo.seal_version(version)?;
        rec.done.insert("graph".into());
        self.repo.put_rotation(Some(rec))?;
        Ok(())
    }

    /// The sealed cookies of `persons` at every destination, copied as they
    /// are (not blinded by `b`), or sealed again by `reseal` (in parallel:
    /// one AEAD open and seal each). Returns how many.
    fn copy_cookies(
        &self,
        current: &GraphInfo,
        version: u64,
        persons: &[PersonKey],
        reseal: Option<&Sealer>,
    ) -> Result<u64, RotationError> {
        let mut batch_no = 0u32;
        let mut total = 0u64;
        for destination in current.cookies.keys() {
            for stretch in persons.chunks(GRAPH_BATCH) {
                let mut rows: Vec<_> = self
                    .repo
                    .cookies_of_sorted(current.version, destination, stretch)?
                    .into_iter()
                    .flat_map(|(person, cookies)| {
                        cookies
                            .into_iter()
                            .map(move |c| (destination.clone(), person, c))
                    })
                    .collect();
                if let Some(sealer) = reseal {
                    rows.par_iter_mut()
                        .try_for_each(|(_, _, c)| reseal_cookie(sealer, c))?;
                }
                if !rows.is_empty() {
                    total += rows.len() as u64;
                    self.repo.put_cookie_run(version, batch_no, rows)?;
                    batch_no += 1;
                    if reseal.is_some() {
                        self.set_status(format!("re-sealing the graph's cookies: {total}"));
                    }
                }
            }
        }
        Ok(total)
    }

    /// Every advertiser's cached pairs, both points transformed; a pair
    /// whose returned point does not decode is dropped (it matches nothing).
    fn rewrite_caches(
        &self,
        rec: &mut RotationRecord,
        factor: &SecretKey,
    ) -> Result<(), RotationError> {
        let namespaces = self.repo.cached_namespaces()?;
        for (i, ns) in namespaces.iter().enumerate() {
            let step = format!("cache:{}", hex::encode(ns));
            if rec.done.contains(&step) {
                continue;
            }
            self.set_status(format!("rewriting cache {} of {}", i + 1, namespaces.len()));
            let mut pairs = Vec::new();
            for run_key in self.repo.cache_run_keys(ns)? {
                pairs.extend(self.repo.cache_run(ns, &run_key)?);
            }
            let (graph, returned): (Vec<PointBytes>, Vec<PointBytes>) = pairs.into_iter().unzip();
            let graph = rotate_all(factor, &graph, "cached graph")?;
            let returned = rotate_valid(factor, &returned);
            let pairs: Vec<_> = graph
                .into_iter()
                .zip(returned)
                .filter_map(|(g, r)| r.map(|r| (g, r)))
                .collect();
            rec.done.insert(step);
            self.repo.replace_cache(ns, pairs, rec)?;
        }
        Ok(())
    }

    /// Make the rewritten version current (idempotent) and drop the old one.
    fn commit_rotated_graph(&self, rec: &RotationRecord) -> Result<(), RotationError> {
        let Some(version) = rec.new_version else {
            return Ok(());
        };
        self.set_status("committing the rewritten graph");
        let _g = lock(&self.import_lock);
        let info = self.repo.seal_version(version)?;
        self.repo.put_import(&ImportRecord {
            id: format!("i-{}", rec.id),
            version,
            status: "committed".into(),
            created: super::rfc3339(super::unix_now()),
            info: info.clone(),
            next_person: 1,
            touched: super::unix_now(),
            skipped_erased: 0,
            importer: "key-rotation".into(),
            committed: Some(super::rfc3339(super::unix_now())),
            ..ImportRecord::default()
        })?;
        if let Some(old) = self.repo.commit_graph(&info)? {
            if old != version {
                self.repo.delete_version(old)?;
            }
        }
        // Kept versions are blinded by `b`, which is going away.
        self.retire_versions_except(version)?;
        Ok(())
    }

    /// Rename the next key file over the current one, then use the new key
    /// and open the gate; the old key is dropped (zeroised) with its holder.
    fn switch_key(&self, rec: &mut RotationRecord, next: NextKey) -> Result<(), RotationError> {
        let dir = &self.config.data_dir;
        rec.done.insert("switched".into());
        self.repo.put_rotation(Some(rec))?;
        let (current, next_file) = key_files(next.kind());
        // Before the rename: a start in between finds the record naming the
        // `.next` file, which it accepts and then renames.
        match &next {
            NextKey::Server(k) => {
                let id = k.fingerprint().to_string();
                self.record_fingerprints(|f| f.server = id)?;
            }
            NextKey::Seal(k) => {
                let id = super::secrets::seal_id(k);
                self.record_fingerprints(|f| f.seal = id)?;
            }
        }
        let from = dir.join(next_file);
        let to = dir.join(current);
        std::fs::rename(&from, &to).map_err(|e| {
            RotationError::KeyFile(KeyFileError::Io {
                path: from.clone(),
                reason: e.to_string(),
            })
        })?;
        sync_dir(dir);
        match next {
            NextKey::Server(next) => {
                self.reload_optout_filter()?;
                let mut state = self.key_state.write().unwrap_or_else(|p| p.into_inner());
                *state = KeyState::steady(next);
            }
            NextKey::Seal(next) => {
                self.set_sealer(Sealer::new(next));
                self.set_phase(Phase::Steady);
            }
        }
        Ok(())
    }
}

/// Seal a graph cookie again under the sealer's newer key.
fn reseal_cookie(sealer: &Sealer, c: &mut SealedCookie) -> Result<(), RotationError> {
    c.sealed = sealer
        .reseal_cookie(&c.sealed)
        .ok_or(RotationError::BadSeal("graph cookie"))?;
    Ok(())
}

/// `factor·X` for each of `points`, all of which must decode.
fn rotate_all(
    factor: &SecretKey,
    points: &[PointBytes],
    what: &'static str,
) -> Result<Vec<PointBytes>, RotationError> {
    blind::reblind(factor, points).map_err(|_| RotationError::BadPoint(what))
}

/// `factor·X` for each of `points` that decodes, `None` for the others.
fn rotate_valid(factor: &SecretKey, points: &[PointBytes]) -> Vec<Option<PointBytes>> {
    let valid: Vec<bool> = points.par_iter().map(|p| p.decode().is_ok()).collect();
    let kept: Vec<PointBytes> = points
        .iter()
        .zip(&valid)
        .filter_map(|(p, ok)| ok.then_some(*p))
        .collect();
    // Every kept point decodes, so this cannot fail; an empty answer if it did.
    let mut rotated = blind::reblind(factor, &kept)
        .unwrap_or_default()
        .into_iter();
    valid
        .into_iter()
        .map(|ok| if ok { rotated.next() } else { None })
        .collect()
}

use keyfiles::sync_dir;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::IdentifierRow;

    fn services_in(dir: &std::path::Path, label: &str) -> Arc<Services> {
        let config = crate::config::Config {
            data_dir: dir.to_path_buf(),
            ..crate::config::Config::default()
        };
        Arc::new(
            Services::new(
                crate::storage::open_sled(dir).unwrap(),
                config,
                crate::keyfiles::ServerSecrets::derive_for_tests(label),
            )
            .unwrap(),
        )
    }

    fn wait_until_idle(services: &Services) {
        for _ in 0..2_000 {
            if !lock(&services.rotation_status).running {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the rotation did not end: {}", services.rotation_status());
    }

    fn open_job() -> crate::storage::Job {
        crate::storage::Job {
            id: "j-open".into(),
            advertiser: "acme".into(),
            destination: "dsp".into(),
            kinds: vec!["email".into()],
            key_fingerprint: "00".repeat(16),
            graph_version: 1,
            status: "open".into(),
            created: String::new(),
            touched: 0,
            batches: 0,
            records: 0,
            pass: Default::default(),
            report: None,
            new_audience: false,
        }
    }

    #[test]
    fn an_open_job_holds_the_rotation_back_and_new_work_is_refused_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let services = services_in(dir.path(), "gate");
        let mut job = open_job();
        services.repo.put_job(&job).unwrap();
        services.start_rotation(RotationKind::ServerKey).unwrap();
        assert!(matches!(
            services.start_rotation(RotationKind::ServerKey),
            Err(RotationError::Running)
        ));
        assert!(matches!(
            services.key_gate(KeyUse::Start),
            Err(ApiError::KeyRotation)
        ));
        // The open job goes on, on the old key.
        let old = services
            .key_gate(KeyUse::Continue)
            .unwrap()
            .key()
            .fingerprint();
        std::thread::sleep(std::time::Duration::from_millis(600));
        assert!(services
            .rotation_status()
            .starts_with("running waiting for 1 open jobs"));
        assert!(dir.path().join(SERVER_KEY_NEXT_FILE).exists());

        job.status = "finished".into();
        services.repo.put_job(&job).unwrap();
        wait_until_idle(&services);
        assert!(services.rotation_status().contains("finished"));
        let new = services
            .key_gate(KeyUse::Start)
            .unwrap()
            .key()
            .fingerprint();
        assert_ne!(old, new);
        assert!(!dir.path().join(SERVER_KEY_NEXT_FILE).exists());
        let on_disk = keyfiles::read_server_key(dir.path()).unwrap();
        assert_eq!(on_disk.fingerprint(), new);
        assert_eq!(services.repo.rotation().unwrap(), None);
    }

    /// A graph of `persons` (cookie `ck-{i:07}` at `dsp` each) committed,
    /// and an audience `a-1` of the first `members` of them.
    fn sealed_graph_and_audience(services: &Services, persons: usize, members: usize) {
        let repo = &services.repo;
        let version = repo.allocate_version().unwrap();
        let sealer = services.sealer();
        let person = |i: usize| -> PersonKey {
            let mut p = [0u8; 16];
            p[..8].copy_from_slice(&(i as u64).to_be_bytes());
            p
        };
        let cookie = |i: usize| {
            sealer
                .sealed_cookie(services.identity_key(), &format!("ck-{i:07}"))
                .unwrap()
        };
        for (batch_no, start) in (0..persons).step_by(GRAPH_BATCH).enumerate() {
            let end = (start + GRAPH_BATCH).min(persons);
            let ids: Vec<IdentifierRow> = (start..end)
                .map(|i| {
                    let mut point = [0u8; 32];
                    point[..8].copy_from_slice(&(i as u64).to_be_bytes());
                    (MatchKind::Email, PointBytes(point), person(i))
                })
                .collect();
            repo.put_identifier_run(version, batch_no as u32, ids)
                .unwrap();
            let cookies = (start..end)
                .map(|i| ("dsp".to_string(), person(i), cookie(i)))
                .collect();
            repo.put_cookie_run(version, batch_no as u32, cookies)
                .unwrap();
        }
        let info = repo.seal_version(version).unwrap();
        repo.commit_graph(&info).unwrap();
        let owned: Vec<(String, Vec<SealedCookie>)> = (0..members)
            .map(|i| (format!("p{i}"), vec![cookie(i)]))
            .collect();
        let borrowed: Vec<(String, &[SealedCookie])> = owned
            .iter()
            .map(|(p, c)| (p.clone(), c.as_slice()))
            .collect();
        repo.create_audience(
            &crate::storage::Audience {
                id: "a-1".into(),
                segment: "Buyers".into(),
                advertiser: "acme".into(),
                destination: "dsp".into(),
                job_id: "j-1".into(),
                size: members as u64,
                created: String::new(),
                expires: String::new(),
                expires_unix: u64::MAX / 2,
                pulled: false,
                version: 1,
                refreshed: None,
                changes_from: None,
                prior: None,
            },
            &borrowed,
        )
        .unwrap();
    }

    /// Every cookie of the current graph at `dsp` and of audience `a-1`.
    fn stored_cookies(services: &Services) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let repo = &services.repo;
        let info = repo.current_graph().unwrap().unwrap();
        let mut persons = Vec::new();
        let mut after = None;
        loop {
            let chunk = repo
                .points_after(info.version, MatchKind::Email, after.as_ref(), 10_000)
                .unwrap();
            let Some(last) = chunk.last() else { break };
            after = Some(last.0);
            persons.extend(chunk.iter().map(|(_, p)| *p));
        }
        persons.sort_unstable();
        let graph = repo
            .cookies_of_sorted(info.version, "dsp", &persons)
            .unwrap()
            .into_iter()
            .flat_map(|(_, cs)| cs.into_iter().map(|c| c.sealed))
            .collect();
        let members = repo
            .members_after("a-1", None, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(_, sealed)| sealed)
            .collect();
        (graph, members)
    }

    fn open_all(key: &[u8; 32], sealed: &[Vec<u8>]) -> Vec<Option<String>> {
        sealed
            .iter()
            .map(|s| crate::services::seal::open(key, s))
            .collect()
    }

    #[test]
    fn a_sealing_key_rotation_reseals_every_cookie_and_leaves_none_under_the_old_key() {
        let dir = tempfile::tempdir().unwrap();
        let services = services_in(dir.path(), "seal");
        sealed_graph_and_audience(&services, 300, 120);
        let admin = crate::services::auth::Caller {
            name: "admin".into(),
            role: crate::storage::Role::Admin,
            key_id: "k-admin".into(),
        };
        services
            .create_principal(&admin, "dsp", crate::storage::Role::Destination, None)
            .unwrap();
        let secret = b"whsec-test-secret-bytes-32-long!";
        let sealed_secret = services
            .sealer()
            .seal_bytes(super::super::webhooks::SECRET_LABEL, b"dsp", secret)
            .unwrap();
        services
            .repo
            .put_webhook_endpoint(&crate::storage::WebhookEndpoint {
                destination: "dsp".into(),
                url: "https://dsp.example/hook".into(),
                mode: crate::storage::WebhookMode::Notify,
                secrets: vec![crate::storage::SealedWebhookSecret {
                    sealed: sealed_secret,
                    created: 0,
                    expires: None,
                }],
                disabled: None,
                created: 0,
            })
            .unwrap();
        let old = services.sealer().current_key();
        let (old_graph, old_members) = stored_cookies(&services);
        let before_graph = open_all(&old, &old_graph);
        let before_members = open_all(&old, &old_members);
        assert_eq!(before_graph.len(), 300);
        assert_eq!(before_members.len(), 120);
        assert!(before_graph
            .iter()
            .chain(&before_members)
            .all(Option::is_some));

        services.start_rotation(RotationKind::SealKey).unwrap();
        wait_until_idle(&services);
        assert!(
            services.rotation_status().contains("finished"),
            "{}",
            services.rotation_status()
        );
        let new = services.sealer().current_key();
        assert_ne!(*new, *old);
        assert!(!dir.path().join(SEAL_KEY_NEXT_FILE).exists());
        assert_eq!(
            *keyfiles::read_symmetric(dir.path(), SEAL_KEY_FILE, SEAL_LABEL).unwrap(),
            *new
        );
        assert_eq!(services.repo.rotation().unwrap(), None);

        // The same cookies, under the new key only; positions (tags) kept.
        let (graph, members) = stored_cookies(&services);
        assert_eq!(open_all(&new, &graph), before_graph);
        assert_eq!(open_all(&new, &members), before_members);
        assert!(open_all(&old, &graph)
            .iter()
            .chain(&open_all(&old, &members))
            .all(Option::is_none));
        let endpoint = services.repo.webhook_endpoint("dsp").unwrap().unwrap();
        assert_eq!(
            crate::services::seal::open_bytes(
                &new,
                super::super::webhooks::SECRET_LABEL,
                b"dsp",
                &endpoint.secrets[0].sealed
            )
            .as_deref(),
            Some(&secret[..])
        );

        // No file of the store holds a cookie sealed under the old key, nor
        // any of the sealed values it held before.
        let sealed_len = graph[0].len();
        for (path, bytes) in files_under(dir.path()) {
            for old_sealed in old_graph.iter().chain(&old_members) {
                assert!(!bytes
                    .windows(old_sealed.len())
                    .any(|w| w == &old_sealed[..]));
            }
            let found = bytes
                .windows(sealed_len)
                .filter(|w| crate::services::seal::open(&old, w).is_some())
                .count();
            assert_eq!(
                found,
                0,
                "{} holds cookies sealed under the old key",
                path.display()
            );
        }
    }

    fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap().flatten() {
                let p = entry.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push((p.clone(), std::fs::read(&p).unwrap()));
                }
            }
        }
        out
    }

    /// Run a rotation to its end; its seconds (for the throughput tests).
    fn timed_rotation(services: &Arc<Services>, kind: RotationKind) -> f64 {
        let started = std::time::Instant::now();
        services.start_rotation(kind).unwrap();
        while lock(&services.rotation_status).running {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let seconds = started.elapsed().as_secs_f64();
        assert!(
            services.rotation_status().contains("finished"),
            "{}",
            services.rotation_status()
        );
        seconds
    }

    /// The sealing-key rotation's throughput on a graph of
    /// `SEAL_BENCH_COOKIES` cookies (1,000,000 unless set), with an
    /// audience of a tenth of them (7 s in release mode on two cores,
    /// about 155,000 cookies/s). Ignored by default; prints cookies per
    /// second, asserts nothing about time.
    #[test]
    #[ignore]
    fn seal_rotation_throughput() {
        let cookies: usize = std::env::var("SEAL_BENCH_COOKIES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        let dir = tempfile::tempdir().unwrap();
        let services = services_in(dir.path(), "seal-bench");
        sealed_graph_and_audience(&services, cookies, cookies / 10);
        let seconds = timed_rotation(&services, RotationKind::SealKey);
        let resealed = cookies + cookies / 10;
        println!(
            "re-sealed {resealed} cookies ({cookies} in the graph, {} in an audience) in {seconds:.1} s: {:.0} cookies/s (whole rotation, {} threads)",
            cookies / 10,
            resealed as f64 / seconds,
            rayon::current_num_threads()
        );
    }

    /// The rotation's throughput on a graph of `ROTATION_BENCH_POINTS`
    /// identifiers (1,000,000 unless set; 32 s in release mode on two
    /// cores, about 31,000 points/s). Ignored by default (minutes);
    /// prints points per second, asserts nothing about time.
    #[test]
    #[ignore]
    fn rotation_throughput() {
        let points: usize = std::env::var("ROTATION_BENCH_POINTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        let dir = tempfile::tempdir().unwrap();
        let services = services_in(dir.path(), "bench");
        let repo = &services.repo;
        let version = repo.allocate_version().unwrap();
        let key = SecretKey::derive_for_tests("bench");
        for (batch_no, start) in (0..points).step_by(GRAPH_BATCH).enumerate() {
            let items: Vec<_> = (start..(start + GRAPH_BATCH).min(points))
                .map(|i| {
                    (
                        MatchKind::Email,
                        onboard_protocol::Digest::of(&format!("p{i}@example.com")),
                    )
                })
                .collect();
            let blinded = blind::hash_and_blind(&key, &items);
            let rows: Vec<IdentifierRow> = blinded
                .into_iter()
                .enumerate()
                .map(|(i, p)| {
                    let mut person = [0u8; 16];
                    person[..8].copy_from_slice(&((start + i) as u64).to_be_bytes());
                    (MatchKind::Email, p, person)
                })
                .collect();
            repo.put_identifier_run(version, batch_no as u32, rows)
                .unwrap();
        }
        let info = repo.seal_version(version).unwrap();
        repo.commit_graph(&info).unwrap();
        let seconds = timed_rotation(&services, RotationKind::ServerKey);
        let after = repo.current_graph().unwrap().unwrap();
        assert_eq!(after.identifiers.get("email"), Some(&(points as u64)));
        println!(
            "rotated {points} graph points in {seconds:.1} s: {:.0} points/s (whole rotation, {} threads)",
            points as f64 / seconds,
            rayon::current_num_threads()
        );
    }
}
