//! Graph imports (digests in, `b·P(y)` stored, digests dropped), commits that
//! switch the current version with one pointer write, opt-outs and erasure.
//!
//! Erasure lasts: it leaves a keyed tombstone (the person's pseudonym and its
//! `b·P(y)`, like opt-outs never a digest), written before anything is
//! removed, and imports drop the rows of tombstoned persons and points until
//! the operator lifts the tombstone.

use super::{lock, new_id, rfc3339, unix_now, Services};
use crate::error::ApiError;
use crate::services::auth::{Caller, LabelledHmac};
use crate::services::rotation::KeyUse;
use crate::services::seal;
use crate::storage::{GraphInfo, IdentifierRow, ImportMode, ImportRecord, PersonKey, SealedCookie};
use onboard_protocol::wire::DigestBatch;
use onboard_protocol::PointBytes;
use onboard_protocol::{blind, MatchKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::Ordering;

/// One cookie row of a cookies batch.
#[derive(Debug, Deserialize)]
pub struct CookieRow {
    /// Person ID.
    pub person: String,
    /// Destination name.
    pub destination: String,
    /// The destination's cookie or device ID.
    pub cookie: String,
}

/// Most cookie rows per batch.
pub const MAX_COOKIES_PER_BATCH: usize = 65_536;

fn sealed_cookie(sealer: &seal::CookieSealer, cookie: &str) -> Result<SealedCookie, ApiError> {
    sealer
        .seal(cookie)
        .ok_or(ApiError::Internal("cookie encryption failed".into()))
}

/// Label of the person pseudonyms.
const PERSON_KEY_LABEL: &[u8] = b"person-key";

/// The pseudonym of `person` under a batch's keyed HMAC.
fn person_key_with(keyed: &LabelledHmac, person: &str) -> PersonKey {
    let full = keyed.of(person.as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&full[..16]);
    key
}

/// Opted-out points looked up in a version per store call.
const OPTOUTS_PER_LOOKUP: usize = 8192;

/// Most person IDs per removals batch.
pub const MAX_REMOVALS_PER_BATCH: usize = 65_536;

/// How many batches of each part an import's client sent.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct ImportBatches {
    /// Identifier batches.
    pub identifiers: u32,
    /// Cookie batches.
    pub cookies: u32,
    /// Removal batches (deltas).
    pub removals: u32,
}

/// One kept graph version, as `graph versions` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct VersionView {
    /// Version number.
    pub version: u64,
    /// Is it the one matches use?
    pub current: bool,
    /// Full or delta.
    pub mode: ImportMode,
    /// A delta's base version.
    pub base: Option<u64>,
    /// Who imported it.
    pub importer: String,
    /// Import opened (RFC 3339).
    pub created: String,
    /// Import committed (RFC 3339).
    pub committed: Option<String>,
    /// Persons.
    pub persons: u64,
    /// Identifiers per kind.
    pub identifiers: BTreeMap<String, u64>,
    /// Cookies per destination.
    pub cookies: BTreeMap<String, u64>,
    /// Rows (identifiers and cookies) the import brought in.
    pub added: u64,
    /// Rows of the base version a delta removed.
    pub removed: u64,
}

/// Import statuses whose version holds sealed data that may be (or was) current.
const SEALED: [&str; 2] = ["sealed", "committed"];

impl Services {
    /// Open an import session writing a new, not yet current, version: from
    /// scratch, or (a delta) from the current version plus changes.
    pub fn create_import(&self, actor: &Caller, mode: ImportMode) -> Result<String, ApiError> {
        let _key = self.key_gate(KeyUse::Start)?;
        let base = match mode {
            ImportMode::Full => None,
            ImportMode::Delta => Some(
                self.repo
                    .current_graph()?
                    .ok_or_else(|| {
                        ApiError::Conflict(
                            "a delta needs a current graph version to start from".into(),
                        )
                    })?
                    .version,
            ),
        };
        let version = self.repo.allocate_version()?;
        let rec = ImportRecord {
            id: new_id("i-"),
            version,
            status: "open".into(),
            created: rfc3339(unix_now()),
            info: GraphInfo {
                version,
                ..GraphInfo::default()
            },
            next_person: 1,
            touched: unix_now(),
            skipped_erased: 0,
            mode,
            base,
            importer: actor.name.clone(),
            committed: None,
        };
        self.repo.put_import(&rec)?;
        self.audit(
            &actor.name,
            "graph.import.create",
            &format!("{} {}", rec.id, mode.as_str()),
            "ok",
        )?;
        Ok(rec.id)
    }

    /// Apply a removals batch of a delta: persons whose rows of the base
    /// version the new version leaves out (its own added rows stay).
    pub fn import_removals(
        &self,
        id: &str,
        batch_no: u32,
        body: &[u8],
        persons: &[String],
    ) -> Result<usize, ApiError> {
        if persons.len() > MAX_REMOVALS_PER_BATCH {
            return Err(ApiError::BadRequest(format!(
                "persons: more than {MAX_REMOVALS_PER_BATCH} per batch"
            )));
        }
        if let Some(i) = persons
            .iter()
            .position(|p| p.is_empty() || p.len() > 255 || p.chars().any(char::is_control))
        {
            return Err(ApiError::BadRequest(format!(
                "persons[{i}]: 1 to 255 printable bytes"
            )));
        }
        let hash: [u8; 32] = Sha256::digest(body).into();
        let keyed = self.person_keys();
        let keys: Vec<PersonKey> = persons.iter().map(|p| person_key_with(&keyed, p)).collect();
        let _key = self.key_gate(KeyUse::Continue)?;
        let _g = self.exclusive(&self.import_lock, "graph-imports")?;
        let mut rec = self.open_import(id)?;
        if rec.mode != ImportMode::Delta {
            return Err(ApiError::Conflict(format!(
                "import {id} is a full import: only a delta removes persons"
            )));
        }
        if self.seen_batch(id, b'r', batch_no, &hash)? {
            return Ok(persons.len());
        }
        self.repo.put_removal_run(rec.version, batch_no, keys)?;
        rec.touched = unix_now();
        self.repo.put_import(&rec)?;
        self.repo.set_import_batch_hash(id, b'r', batch_no, hash)?;
        Ok(persons.len())
    }

    fn open_import(&self, id: &str) -> Result<ImportRecord, ApiError> {
        let rec = self.repo.import(id)?.ok_or(ApiError::NotFound("import"))?;
        if rec.status != "open" {
            return Err(ApiError::Conflict(format!("import {id} is {}", rec.status)));
        }
        Ok(rec)
    }

    /// Idempotency by content hash: `Ok(true)` if this exact batch was applied.
    fn seen_batch(
        &self,
        id: &str,
        part: u8,
        batch_no: u32,
        hash: &[u8; 32],
    ) -> Result<bool, ApiError> {
        match self.repo.import_batch_hash(id, part, batch_no)? {
            None => Ok(false),
            Some(h) if &h == hash => Ok(true),
            Some(_) => Err(ApiError::Conflict(format!(
                "batch {batch_no} was already sent with different content"
            ))),
        }
    }

    /// The storage key of a person ID: a keyed pseudonym, the same in every
    /// graph version, so the ID itself is never stored.
    pub(crate) fn person_key(&self, person: &str) -> PersonKey {
        person_key_with(&self.person_keys(), person)
    }

    /// The keyed HMAC of [`Self::person_key`], for a batch of persons.
    fn person_keys(&self) -> LabelledHmac {
        LabelledHmac::new(self.identity_key(), PERSON_KEY_LABEL)
    }

    /// How an audience names a member: the hex of its person key.
    pub(crate) fn member_name(person: &PersonKey) -> String {
        hex::encode(person)
    }

    /// Apply an identifiers batch: compute `b·P(y)`, store it, drop the digests.
    pub fn import_identifiers(
        &self,
        id: &str,
        path_batch: u32,
        body: &[u8],
    ) -> Result<usize, ApiError> {
        let batch = DigestBatch::decode(body)
            .map_err(|e| ApiError::BadFrame(format!("batch {path_batch}: {e}")))?;
        if batch.batch_no != path_batch {
            return Err(ApiError::BadFrame(format!(
                "batch {path_batch}: the frame says batch_no {}",
                batch.batch_no
            )));
        }
        if let Some(i) = batch.entries.iter().position(|e| e.person.is_empty()) {
            return Err(ApiError::BadFrame(format!(
                "batch {path_batch}: entry {i}: person ID is empty"
            )));
        }
        let hash: [u8; 32] = Sha256::digest(body).into();
        let items: Vec<(MatchKind, onboard_protocol::Digest)> =
            batch.entries.iter().map(|e| (e.kind, e.digest)).collect();
        let key = self.key_gate(KeyUse::Continue)?;
        let points = blind::hash_and_blind(key.key(), &items);
        drop(items);
        let keyed = self.person_keys();
        let rows: Vec<IdentifierRow> = {
            use rayon::prelude::*;
            batch
                .entries
                .par_iter()
                .zip(&points)
                .map(|(e, p)| (e.kind, *p, person_key_with(&keyed, &e.person)))
                .collect()
        };
        let _g = self.exclusive(&self.import_lock, "graph-imports")?;
        let mut rec = self.open_import(id)?;
        if self.seen_batch(id, b'i', path_batch, &hash)? {
            return Ok(batch.entries.len());
        }
        // Under the import lock: an erasure cannot slip between check and write.
        let rows = self.without_erased_identifiers(rows)?;
        rec.skipped_erased += (points.len() - rows.len()) as u64;
        let stored = rows.len();
        let stored_points: Vec<PointBytes> = rows.iter().map(|r| r.1).collect();
        for ((_, _, person), opted_out) in rows.iter().zip(self.opted_out_each(&stored_points)?) {
            if opted_out {
                self.repo.suppress(rec.version, person)?;
            }
        }
        self.repo
            .put_identifier_run(rec.version, path_batch, rows)?;
        rec.touched = unix_now();
        self.repo.put_import(&rec)?;
        self.repo
            .set_import_batch_hash(id, b'i', path_batch, hash)?;
        self.identifiers_imported
            .fetch_add(stored as u64, Ordering::Relaxed);
        Ok(points.len())
    }

    /// Apply a cookies batch.
    pub fn import_cookies(
        &self,
        id: &str,
        batch_no: u32,
        body: &[u8],
        rows: &[CookieRow],
    ) -> Result<usize, ApiError> {
        if rows.len() > MAX_COOKIES_PER_BATCH {
            return Err(ApiError::BadRequest(format!(
                "cookies: more than {MAX_COOKIES_PER_BATCH} rows"
            )));
        }
        for (i, r) in rows.iter().enumerate() {
            if r.person.is_empty() || r.person.len() > 255 {
                return Err(ApiError::BadRequest(format!(
                    "cookies[{i}].person: 1 to 255 bytes"
                )));
            }
            if !crate::services::auth::valid_name(&r.destination) {
                return Err(ApiError::BadRequest(format!(
                    "cookies[{i}].destination: not a valid principal name"
                )));
            }
            if r.cookie.is_empty() || r.cookie.len() > 512 || r.cookie.chars().any(char::is_control)
            {
                return Err(ApiError::BadRequest(format!(
                    "cookies[{i}].cookie: 1 to 512 printable bytes"
                )));
            }
        }
        let hash: [u8; 32] = Sha256::digest(body).into();
        let rows_len = rows.len();
        // Sealed on all cores before the import lock, so that a cookies
        // batch's encryption runs beside an identifiers batch's curve work.
        let sealer = self.sealer().cookie_sealer(self.identity_key());
        let keyed = self.person_keys();
        let sealed = {
            use rayon::prelude::*;
            rows.par_iter()
                .map(|r| {
                    Ok((
                        r.destination.clone(),
                        person_key_with(&keyed, &r.person),
                        sealed_cookie(&sealer, &r.cookie)?,
                    ))
                })
                .collect::<Result<Vec<_>, ApiError>>()?
        };
        let _key = self.key_gate(KeyUse::Continue)?;
        let _g = self.exclusive(&self.import_lock, "graph-imports")?;
        let mut rec = self.open_import(id)?;
        if self.seen_batch(id, b'c', batch_no, &hash)? {
            return Ok(rows_len);
        }
        let sealed = self.without_erased_cookies(sealed)?;
        rec.skipped_erased += (rows_len - sealed.len()) as u64;
        self.repo.put_cookie_run(rec.version, batch_no, sealed)?;
        rec.touched = unix_now();
        self.repo.put_import(&rec)?;
        self.repo.set_import_batch_hash(id, b'c', batch_no, hash)?;
        Ok(rows_len)
    }

    /// Identifier rows whose person and point are both free of tombstones.
    fn without_erased_identifiers(
        &self,
        rows: Vec<IdentifierRow>,
    ) -> Result<Vec<IdentifierRow>, ApiError> {
        // One batched check per kind of tombstone, not one call per row.
        let erased_persons = self.erased_among(rows.iter().map(|r| r.2))?;
        let points: Vec<PointBytes> = rows.iter().map(|r| r.1).collect();
        let erased_points = self.repo.erased_points_among(&points)?;
        Ok(rows
            .into_iter()
            .zip(erased_points)
            .filter(|(row, point_erased)| !point_erased && !erased_persons.contains(&row.2))
            .map(|(row, _)| row)
            .collect())
    }

    /// Sealed cookie rows whose person is not tombstoned.
    fn without_erased_cookies(
        &self,
        rows: Vec<crate::storage::CookieRow>,
    ) -> Result<Vec<crate::storage::CookieRow>, ApiError> {
        let erased = self.erased_among(rows.iter().map(|r| r.1))?;
        Ok(rows
            .into_iter()
            .filter(|r| !erased.contains(&r.1))
            .collect())
    }

    /// The tombstoned ones among `persons` (each asked once, in one call).
    fn erased_among(
        &self,
        persons: impl Iterator<Item = PersonKey>,
    ) -> Result<HashSet<PersonKey>, ApiError> {
        let distinct: Vec<PersonKey> = persons.collect::<BTreeSet<_>>().into_iter().collect();
        let erased = self.repo.erased_persons_among(&distinct)?;
        Ok(distinct
            .into_iter()
            .zip(erased)
            .filter_map(|(p, e)| e.then_some(p))
            .collect())
    }

    /// Rows of an import dropped so far because their person or identifier
    /// is erased.
    pub fn import_skipped_erased(&self, id: &str) -> Result<u64, ApiError> {
        let rec = self.repo.import(id)?.ok_or(ApiError::NotFound("import"))?;
        Ok(rec.skipped_erased)
    }

    /// Check every batch arrived, seal the version (a delta from its base),
    /// switch the current version, keep the newest `graph_versions_kept`.
    pub fn commit_import(
        &self,
        actor: &Caller,
        id: &str,
        batches: ImportBatches,
    ) -> Result<GraphInfo, ApiError> {
        let _key = self.key_gate(KeyUse::Continue)?;
        let _g = self.exclusive(&self.import_lock, "graph-imports")?;
        let mut rec = self.open_import(id)?;
        if rec.mode == ImportMode::Full && batches.removals > 0 {
            return Err(ApiError::BadRequest(
                "removal_batches: only a delta removes persons".into(),
            ));
        }
        for (part, n, what) in [
            (b'i', batches.identifiers, "identifiers"),
            (b'c', batches.cookies, "cookies"),
            (b'r', batches.removals, "removals"),
        ] {
            let missing: Vec<String> = (0..n)
                .filter_map(|b| match self.repo.import_batch_hash(id, part, b) {
                    Ok(Some(_)) => None,
                    _ => Some(b.to_string()),
                })
                .take(10)
                .collect();
            if !missing.is_empty() {
                return Err(ApiError::Incomplete(format!(
                    "{what} batches missing: {}",
                    missing.join(", ")
                )));
            }
        }
        // Merge the staged batches (and a delta's base) into the version's
        // tables, and count them.
        rec.info = match rec.base {
            None => self.repo.seal_version(rec.version)?,
            Some(base) => {
                let current = self.repo.current_graph()?.map(|g| g.version);
                if current != Some(base) {
                    return Err(ApiError::Conflict(format!(
                        "the current graph version changed since this delta started from version {base}: start the delta again"
                    )));
                }
                self.repo.seal_delta(rec.version, base)?
            }
        };
        self.apply_optouts(rec.version)?;
        rec.status = "sealed".into();
        self.repo.put_import(&rec)?;
        // Crash test: sealed, not yet current.
        crate::faults::crash_point!("import-commit-sealed", self.repo);
        self.repo.commit_graph(&rec.info)?;
        rec.status = "committed".into();
        rec.committed = Some(rfc3339(unix_now()));
        self.repo.put_import(&rec)?;
        // Crash test: current, the versions beyond those kept not yet deleted.
        crate::faults::crash_point!("import-commit-switched", self.repo);
        self.retire_versions(rec.version)?;
        self.audit(
            &actor.name,
            "graph.import.commit",
            &format!("{id} {} version {}", rec.mode.as_str(), rec.version),
            "ok",
        )?;
        tracing::info!(
            version = rec.info.version,
            mode = rec.mode.as_str(),
            persons = rec.info.persons,
            added = rec.info.added,
            removed = rec.info.removed,
            "graph version committed"
        );
        Ok(rec.info)
    }

    /// Suppress, in `version`, the owners of every opted-out point: the
    /// opt-outs recorded while the version was built or since it was current.
    fn apply_optouts(&self, version: u64) -> Result<(), ApiError> {
        let mut points = self.repo.optouts()?;
        points.sort_unstable();
        points.dedup();
        // Ordered look-ups: each chunk of the version is read once per kind.
        for kind in MatchKind::ALL {
            for stretch in points.chunks(OPTOUTS_PER_LOOKUP) {
                let owners = self.repo.owners_of_sorted(version, kind, stretch)?;
                for person in owners.into_iter().flatten() {
                    self.repo.suppress(version, &person)?;
                }
            }
        }
        Ok(())
    }

    /// The kept graph versions, newest first.
    pub fn graph_versions(&self) -> Result<Vec<VersionView>, ApiError> {
        let current = self.repo.current_graph()?.map(|g| g.version);
        let mut out: Vec<VersionView> = self
            .repo
            .imports()?
            .into_iter()
            .filter(|r| r.status == "committed" || Some(r.version) == current)
            .map(|r| VersionView {
                version: r.version,
                current: Some(r.version) == current,
                mode: r.mode,
                base: r.base,
                importer: r.importer,
                created: r.created,
                committed: r.committed,
                persons: r.info.persons,
                identifiers: r.info.identifiers,
                cookies: r.info.cookies,
                added: r.info.added,
                removed: r.info.removed,
            })
            .collect();
        out.sort_by_key(|v| std::cmp::Reverse(v.version));
        Ok(out)
    }

    /// Make a kept version current again (a rollback, or forward again);
    /// opt-outs recorded since it was current apply to it, and erasures
    /// already removed their persons from every kept version.
    pub fn activate_version(&self, actor: &Caller, version: u64) -> Result<GraphInfo, ApiError> {
        let _key = self.key_gate(KeyUse::Continue)?;
        let _g = self.exclusive(&self.import_lock, "graph-imports")?;
        let rec = self
            .repo
            .imports()?
            .into_iter()
            .find(|r| r.version == version && r.status == "committed")
            .ok_or(ApiError::NotFound("kept graph version"))?;
        self.apply_optouts(version)?;
        let old = self.repo.commit_graph(&rec.info)?;
        self.audit(
            &actor.name,
            "graph.activate",
            &format!(
                "version {version} (was {})",
                old.map_or("none".into(), |v| v.to_string())
            ),
            "ok",
        )?;
        tracing::info!(version, "graph version activated");
        Ok(rec.info)
    }

    /// Delete committed versions beyond the newest `graph_versions_kept`
    /// (the current one always kept). Callers hold the import lock.
    fn retire_versions(&self, current: u64) -> Result<usize, ApiError> {
        let mut committed: Vec<ImportRecord> = self
            .repo
            .imports()?
            .into_iter()
            .filter(|r| r.status == "committed" && r.version != current)
            .collect();
        committed.sort_by_key(|r| std::cmp::Reverse(r.version));
        let others_kept = self.config.graph_versions_kept.saturating_sub(1);
        let mut n = 0;
        for rec in committed.into_iter().skip(others_kept) {
            self.retire(rec, "graph.version.delete")?;
            n += 1;
        }
        Ok(n)
    }

    /// Delete every version but `keep` (after a key rotation, older
    /// versions are blinded by a key that is gone). Callers hold the import lock.
    pub(crate) fn retire_versions_except(&self, keep: u64) -> Result<(), ApiError> {
        for rec in self.repo.imports()? {
            if SEALED.contains(&rec.status.as_str()) && rec.version != keep {
                self.retire(rec, "graph.version.delete")?;
            }
        }
        Ok(())
    }

    fn retire(&self, mut rec: ImportRecord, action: &str) -> Result<(), ApiError> {
        self.repo.delete_version(rec.version)?;
        rec.status = "retired".into();
        self.repo.put_import(&rec)?;
        self.audit("system", action, &rec.id, "ok")?;
        Ok(())
    }

    /// Delete the data of graph versions no longer needed: imports
    /// abandoned longer than the job abandonment setting, versions sealed
    /// but never made current (a crash before the switch), and committed
    /// versions beyond those kept (normally deleted at commit; this
    /// finishes the work if the server stopped half-way). Returns versions
    /// deleted.
    pub fn cleanup_graph_versions(&self) -> Result<usize, ApiError> {
        let _g = self.exclusive(&self.import_lock, "graph-imports")?;
        let current = self.repo.current_graph()?.map(|g| g.version);
        let ttl = self.config.abandoned_job_ttl.as_secs();
        let now = unix_now();
        let mut n = 0;
        for mut rec in self.repo.imports()? {
            match rec.status.as_str() {
                "open" if rec.touched.saturating_add(ttl) <= now => {
                    self.retire(rec, "graph.import.abandon")?;
                    n += 1;
                }
                // Switched, the record not yet marked: it is committed.
                "sealed" if Some(rec.version) == current => {
                    rec.status = "committed".into();
                    rec.committed = Some(rfc3339(now));
                    self.repo.put_import(&rec)?;
                }
                "sealed" => {
                    self.retire(rec, "graph.import.abandon")?;
                    n += 1;
                }
                _ => {}
            }
        }
        if let Some(current) = current {
            n += self.retire_versions(current)?;
        }
        Ok(n)
    }

    /// The admin statistics.
    pub fn stats(&self) -> Result<serde_json::Value, ApiError> {
        let g = self.repo.current_graph()?.unwrap_or_default();
        let mut roles = BTreeMap::from([("admin", 0u64), ("advertiser", 0), ("destination", 0)]);
        for p in self.repo.principals()? {
            *roles.entry(p.role.as_str()).or_default() += 1;
        }
        let jobs = self.job_counts_by_status()?;
        let audiences = self.repo.live_audience_count(unix_now())?;
        let mut identifiers = BTreeMap::new();
        for k in MatchKind::ALL {
            identifiers.insert(
                k.as_str().to_string(),
                g.identifiers.get(k.as_str()).copied().unwrap_or(0),
            );
        }
        Ok(serde_json::json!({
            "graph_version": g.version,
            "persons": g.persons,
            "identifiers": identifiers,
            "cookies": g.cookies,
            "principals": roles,
            "jobs": jobs,
            "audiences": audiences,
            "optouts": self.repo.optouts()?.len(),
            "erasures": self.repo.erasure_count()?,
        }))
    }

    /// Record opt-outs and suppress their owners now and in later matches.
    pub fn optout(&self, actor: &Caller, body: &[u8]) -> Result<(usize, usize), ApiError> {
        let batch = DigestBatch::decode(body)
            .map_err(|e| ApiError::BadFrame(format!("opt-out batch: {e}")))?;
        if let Some(i) = batch.entries.iter().position(|e| !e.person.is_empty()) {
            return Err(ApiError::BadFrame(format!(
                "opt-out batch: entry {i}: person ID must be empty"
            )));
        }
        let items: Vec<_> = batch.entries.iter().map(|e| (e.kind, e.digest)).collect();
        let key = self.key_gate(KeyUse::Continue)?;
        let points = blind::hash_and_blind(key.key(), &items);
        drop(items);
        self.repo.add_optouts(&points)?;
        {
            let mut bloom = lock(&self.optout_bloom);
            for p in &points {
                bloom.set(&p.0);
            }
        }
        let mut suppressed = 0;
        // Under the import lock: a commit or activation either sees these
        // opt-outs or runs before this suppresses in its new current version.
        let _g = self.exclusive(&self.import_lock, "graph-imports")?;
        if let Some(g) = self.repo.current_graph()? {
            for (entry, p) in batch.entries.iter().zip(&points) {
                if let Some(person) = self.repo.point_owner(g.version, entry.kind, p)? {
                    if self.repo.suppress(g.version, &person)? {
                        suppressed += 1;
                        self.remove_from_unpulled(&Self::member_name(&person))?;
                    }
                }
            }
        }
        self.audit(
            &actor.name,
            "optout",
            &format!("{} identifiers", points.len()),
            "ok",
        )?;
        Ok((points.len(), suppressed))
    }

    /// Erase a person for good: tombstone it (durable, first), remove it
    /// from every graph version holding data and from every advertiser's
    /// cache, then from unpulled audiences. Retried after a crash, it
    /// finishes the job.
    pub fn erase(&self, actor: &Caller, person: &str) -> Result<usize, ApiError> {
        let key = self.person_key(Self::valid_person(person)?);
        let _key = self.key_gate(KeyUse::Continue)?;
        let points = {
            let _g = self.exclusive(&self.import_lock, "graph-imports")?;
            let versions = self.versions_with_data()?;
            let mut found = BTreeSet::new();
            for v in &versions {
                found.extend(self.repo.person_points(*v, &key)?.into_iter().map(|p| p.0));
            }
            let found: Vec<PointBytes> = found.into_iter().map(PointBytes).collect();
            // The tombstone first: a crash from here on still keeps the
            // person out of later imports, and a retry finds its points.
            let points = self.repo.add_erasure(&key, &found)?;
            for v in versions {
                self.erase_from_version(v, &key)?;
            }
            points
        };
        self.repo.cache_remove_points(&points)?;
        let updated = self.remove_from_unpulled(&Self::member_name(&key))?;
        self.audit(&actor.name, "erase", &self.person_pseudonym(person), "ok")?;
        Ok(updated)
    }

    /// Lift a person's tombstone, so later imports may bring it back;
    /// 404 if the person has none.
    pub fn lift_erasure(&self, actor: &Caller, person: &str) -> Result<(), ApiError> {
        let key = self.person_key(Self::valid_person(person)?);
        let _key = self.key_gate(KeyUse::Continue)?;
        let lifted = {
            let _g = self.exclusive(&self.import_lock, "graph-imports")?;
            self.repo.lift_erasure(&key)?
        };
        if !lifted {
            return Err(ApiError::NotFound("erasure"));
        }
        self.audit(
            &actor.name,
            "erase.lift",
            &self.person_pseudonym(person),
            "ok",
        )?;
        Ok(())
    }

    fn valid_person(person: &str) -> Result<&str, ApiError> {
        if person.is_empty() || person.len() > 255 {
            return Err(ApiError::BadRequest("person: 1 to 255 bytes".into()));
        }
        Ok(person)
    }

    /// Every graph version holding data: the current one, committed ones
    /// not yet deleted, and imports still open (their staged batches).
    fn versions_with_data(&self) -> Result<Vec<u64>, ApiError> {
        let mut versions: BTreeSet<u64> = self
            .repo
            .imports()?
            .iter()
            .filter(|r| r.status == "open" || SEALED.contains(&r.status.as_str()))
            .map(|r| r.version)
            .collect();
        versions.extend(self.repo.current_graph()?.map(|g| g.version));
        Ok(versions.into_iter().collect())
    }

    /// Remove a person from one version (under the import lock); the
    /// current version's counts follow.
    fn erase_from_version(&self, version: u64, key: &PersonKey) -> Result<(), ApiError> {
        // Suppressed first: a crash during the rewrite still keeps the
        // person out of every match.
        self.repo.suppress(version, key)?;
        let erased = self.repo.erase_person(version, key)?;
        if !erased.person {
            return Ok(());
        }
        // The kept version's history record, then the current pointer.
        for mut rec in self.repo.imports()? {
            if rec.version == version && SEALED.contains(&rec.status.as_str()) {
                subtract(&mut rec.info, &erased);
                self.repo.put_import(&rec)?;
            }
        }
        let Some(mut g) = self.repo.current_graph()? else {
            return Ok(());
        };
        if g.version != version {
            return Ok(());
        }
        subtract(&mut g, &erased);
        // Same version: only the counts change.
        self.repo.commit_graph(&g)?;
        Ok(())
    }
}

/// A version's counts without an erased person's rows.
fn subtract(g: &mut GraphInfo, erased: &crate::storage::ErasedCounts) {
    g.persons = g.persons.saturating_sub(1);
    for (kind, n) in &erased.identifiers {
        let c = g.identifiers.entry(kind.clone()).or_default();
        *c = c.saturating_sub(*n);
    }
    for (dest, n) in &erased.cookies {
        let c = g.cookies.entry(dest.clone()).or_default();
        *c = c.saturating_sub(*n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{sled::blob_dir, Role};
    use onboard_protocol::wire::DigestEntry;
    use onboard_protocol::{Digest, SecretKey};

    fn services(dir: &std::path::Path) -> Services {
        // One version kept: a commit deletes the one it replaces.
        let config = crate::config::Config {
            graph_versions_kept: 1,
            ..crate::config::Config::default()
        };
        Services::new(
            crate::storage::open_sled(dir).unwrap(),
            config,
            crate::keyfiles::ServerSecrets::derive_for_tests("erase"),
        )
        .unwrap()
    }

    fn admin() -> Caller {
        Caller {
            name: "ops".into(),
            role: Role::Admin,
            key_id: "k-1".into(),
        }
    }

    fn email(i: u32) -> Digest {
        Digest::of(&format!("person{i}@example.com"))
    }

    /// `(person, email number)` rows as one identifiers batch.
    fn batch(rows: &[(&str, u32)]) -> Vec<u8> {
        DigestBatch {
            batch_no: 0,
            entries: rows
                .iter()
                .map(|(person, i)| DigestEntry {
                    person: (*person).into(),
                    kind: MatchKind::Email,
                    digest: email(*i),
                })
                .collect(),
        }
        .encode()
        .unwrap()
    }

    fn cookie(person: &str) -> CookieRow {
        CookieRow {
            person: person.into(),
            destination: "dsp".into(),
            cookie: format!("ck-{person}"),
        }
    }

    /// Import `rows` (and one cookie per person); commit unless `open`.
    fn import(s: &Services, rows: &[(&str, u32)], open: bool) -> (String, u64) {
        let id = s.create_import(&admin(), ImportMode::Full).unwrap();
        s.import_identifiers(&id, 0, &batch(rows)).unwrap();
        let cookies: Vec<CookieRow> = rows.iter().map(|(p, _)| cookie(p)).collect();
        let body = format!("cookies of {rows:?}");
        s.import_cookies(&id, 0, body.as_bytes(), &cookies).unwrap();
        if !open {
            s.commit_import(
                &admin(),
                &id,
                ImportBatches {
                    identifiers: 1,
                    cookies: 1,
                    removals: 0,
                },
            )
            .unwrap();
        }
        let version = s.repo.import(&id).unwrap().unwrap().version;
        (id, version)
    }

    fn bpy(s: &Services, i: u32) -> PointBytes {
        blind::hash_and_blind(
            s.key_gate(KeyUse::Continue).unwrap().key(),
            &[(MatchKind::Email, email(i))],
        )[0]
    }

    fn blob_files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
        let blobs = blob_dir(&crate::storage::db_dir(dir));
        std::fs::read_dir(blobs)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                (name, std::fs::read(e.path()).unwrap())
            })
            .collect()
    }

    fn holds(bytes: &[u8], needle: &[u8]) -> bool {
        bytes.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn erasure_leaves_no_point_in_any_version_or_cache_file_and_lasts_until_lifted() {
        let dir = tempfile::tempdir().unwrap();
        let s = services(dir.path());
        let p42 = s.person_key("p42");
        let (kept_id, kept) = import(&s, &[("p41", 41), ("p42", 42)], false);
        let (_, current) = import(&s, &[("p41", 41), ("p42", 42), ("p43", 43)], false);
        // The second commit deleted the first version; rebuild it as a crash
        // between commit and deletion leaves it (kept), p42 with email 142.
        let rows = vec![
            (MatchKind::Email, bpy(&s, 142), p42),
            (MatchKind::Email, bpy(&s, 41), s.person_key("p41")),
        ];
        s.repo.put_identifier_run(kept, 0, rows).unwrap();
        let sealed = s
            .sealer()
            .sealed_cookie(s.identity_key(), "ck-p42")
            .unwrap();
        s.repo
            .put_cookie_run(kept, 0, vec![("dsp".into(), p42, sealed)])
            .unwrap();
        assert_eq!(s.repo.seal_version(kept).unwrap().persons, 2);
        let mut rec = s.repo.import(&kept_id).unwrap().unwrap();
        rec.status = "committed".into();
        s.repo.put_import(&rec).unwrap();
        assert_eq!(s.repo.person_points(kept, &p42).unwrap().len(), 1);
        // An import still open, its batch staged, p42 in it.
        let (_, open) = import(&s, &[("p42", 42), ("p44", 44)], true);
        // Two advertisers' caches hold p42's pairs beside others'.
        let adv = SecretKey::derive_for_tests("advertiser");
        let pairs = |ids: &[u32]| -> Vec<(PointBytes, PointBytes)> {
            let b: Vec<PointBytes> = ids.iter().map(|&i| bpy(&s, i)).collect();
            let ab = blind::reblind(&adv, &b).unwrap();
            b.into_iter().zip(ab).collect()
        };
        for ns in [[1u8; 16], [2u8; 16]] {
            s.repo.cache_put(&ns, &pairs(&[41, 42, 43])).unwrap();
            s.repo.cache_put(&ns, &pairs(&[142, 44])).unwrap();
        }
        let p42_bytes: Vec<Vec<u8>> = pairs(&[42, 142])
            .iter()
            .flat_map(|(b, ab)| [b.0.to_vec(), ab.0.to_vec()])
            .collect();
        let p41_bytes = pairs(&[41])[0].1 .0.to_vec();
        let before = s.repo.current_graph().unwrap().unwrap();

        s.erase(&admin(), "p42").unwrap();

        for v in [kept, current, open] {
            assert!(
                s.repo.person_points(v, &p42).unwrap().is_empty(),
                "version {v}"
            );
        }
        assert_eq!(
            s.repo.person_points(kept, &s.person_key("p41")).unwrap(),
            vec![bpy(&s, 41)],
            "others stay"
        );
        let after = s.repo.current_graph().unwrap().unwrap();
        assert_eq!(after.persons + 1, before.persons);
        let files = blob_files(dir.path());
        assert!(files.iter().any(|(n, _)| n.starts_with("cache-")));
        assert!(
            files.iter().any(|(_, b)| holds(b, &p41_bytes)),
            "the scan reads the cache files"
        );
        for (name, bytes) in &files {
            for needle in &p42_bytes {
                assert!(!holds(bytes, needle), "{name} still holds a point of p42");
            }
            assert!(!holds(bytes, &p42), "{name} still holds p42's records");
        }
        for ns in [[1u8; 16], [2u8; 16]] {
            assert!(!s.repo.cache_contains(&ns, &bpy(&s, 42)).unwrap());
            assert!(s.repo.cache_contains(&ns, &bpy(&s, 43)).unwrap());
        }
        // A page returned after the erasure does not cache p42 again.
        s.repo.cache_put(&[1u8; 16], &pairs(&[42, 45])).unwrap();
        assert!(!s.repo.cache_contains(&[1u8; 16], &bpy(&s, 42)).unwrap());
        assert!(s.repo.cache_contains(&[1u8; 16], &bpy(&s, 45)).unwrap());
        assert_eq!(s.stats().unwrap()["erasures"], 1);

        // A retry (after a crash) finds nothing more to do and fails nothing.
        s.erase(&admin(), "p42").unwrap();
        assert_eq!(s.repo.current_graph().unwrap().unwrap(), after);

        // Later imports skip p42, and its email under another person ID.
        let (id, v) = import(&s, &[("p42", 42), ("p42-new", 42), ("p46", 46)], false);
        assert_eq!(
            s.import_skipped_erased(&id).unwrap(),
            3,
            "two identifiers, one cookie"
        );
        assert!(s.repo.person_points(v, &p42).unwrap().is_empty());
        assert!(s
            .repo
            .person_points(v, &s.person_key("p42-new"))
            .unwrap()
            .is_empty());
        assert_eq!(
            s.repo
                .point_owner(v, MatchKind::Email, &bpy(&s, 42))
                .unwrap(),
            None
        );

        // Lifted, the next import brings p42 back.
        s.lift_erasure(&admin(), "p42").unwrap();
        assert!(matches!(
            s.lift_erasure(&admin(), "p42"),
            Err(ApiError::NotFound(_))
        ));
        assert_eq!(s.stats().unwrap()["erasures"], 0);
        let (id, v) = import(&s, &[("p42", 42), ("p46", 46)], false);
        assert_eq!(s.import_skipped_erased(&id).unwrap(), 0);
        assert_eq!(
            s.repo
                .point_owner(v, MatchKind::Email, &bpy(&s, 42))
                .unwrap(),
            Some(p42)
        );
    }
}
