//! Graph imports (digests in, `b·P(y)` stored, digests dropped), commits that
//! switch the current version with one pointer write, opt-outs and erasure.

use super::{lock, new_id, rfc3339, unix_now, Services};
use crate::error::ApiError;
use crate::services::auth::Caller;
use crate::services::seal;
use crate::storage::{GraphInfo, IdentifierRow, ImportRecord, PersonKey, SealedCookie};
use onboard_protocol::wire::DigestBatch;
use onboard_protocol::{blind, MatchKind};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
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

fn sealed_cookie(pepper: &[u8; 32], cookie: &str) -> Result<SealedCookie, ApiError> {
    Ok(SealedCookie {
        tag: seal::cookie_tag(pepper, cookie),
        sealed: seal::seal(pepper, cookie)
            .ok_or(ApiError::Internal("cookie encryption failed".into()))?,
    })
}

impl Services {
    /// Open an import session writing a new, not yet current, version.
    pub fn create_import(&self, actor: &Caller) -> Result<String, ApiError> {
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
        };
        self.repo.put_import(&rec)?;
        self.audit(&actor.name, "graph.import.create", &rec.id, "ok")?;
        Ok(rec.id)
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
        let full = self.hmac(b"person-key", person.as_bytes());
        let mut key = [0u8; 16];
        key.copy_from_slice(&full[..16]);
        key
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
        let points = blind::hash_and_blind(self.key(), &items);
        drop(items);
        let rows: Vec<IdentifierRow> = {
            use rayon::prelude::*;
            batch
                .entries
                .par_iter()
                .zip(&points)
                .map(|(e, p)| (e.kind, *p, self.person_key(&e.person)))
                .collect()
        };
        let _g = lock(&self.import_lock);
        let mut rec = self.open_import(id)?;
        if self.seen_batch(id, b'i', path_batch, &hash)? {
            return Ok(batch.entries.len());
        }
        for (_, point, person) in &rows {
            if self.opted_out(point)? {
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
            .fetch_add(points.len() as u64, Ordering::Relaxed);
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
        let _g = lock(&self.import_lock);
        let mut rec = self.open_import(id)?;
        if self.seen_batch(id, b'c', batch_no, &hash)? {
            return Ok(rows.len());
        }
        let sealed = rows
            .iter()
            .map(|r| {
                Ok((
                    r.destination.clone(),
                    self.person_key(&r.person),
                    sealed_cookie(self.pepper(), &r.cookie)?,
                ))
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        self.repo.put_cookie_run(rec.version, batch_no, sealed)?;
        rec.touched = unix_now();
        self.repo.put_import(&rec)?;
        self.repo.set_import_batch_hash(id, b'c', batch_no, hash)?;
        Ok(rows.len())
    }

    /// Check every batch arrived, switch the current version, drop the old one.
    pub fn commit_import(
        &self,
        actor: &Caller,
        id: &str,
        id_batches: u32,
        cookie_batches: u32,
    ) -> Result<GraphInfo, ApiError> {
        let _g = lock(&self.import_lock);
        let mut rec = self.open_import(id)?;
        for (part, n, what) in [
            (b'i', id_batches, "identifiers"),
            (b'c', cookie_batches, "cookies"),
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
        // Merge the staged batches into the version's tables (and count them).
        rec.info = self.repo.seal_version(rec.version)?;
        rec.status = "committed".into();
        self.repo.put_import(&rec)?;
        // Crash test: sealed, not yet current.
        crate::faults::crash_point!("import-commit-sealed", self.repo);
        let old = self.repo.commit_graph(&rec.info)?;
        // Crash test: current, the old version not yet deleted.
        crate::faults::crash_point!("import-commit-switched", self.repo);
        if let Some(old) = old {
            self.repo.delete_version(old)?;
        }
        self.audit(&actor.name, "graph.import.commit", id, "ok")?;
        tracing::info!(
            version = rec.info.version,
            persons = rec.info.persons,
            "graph version committed"
        );
        Ok(rec.info)
    }

    /// Delete the data of graph versions that are not current: imports
    /// abandoned longer than the job abandonment setting, and committed
    /// versions since replaced (normally deleted at commit; this finishes
    /// the work if the server stopped half-way). Returns versions deleted.
    pub fn cleanup_graph_versions(&self) -> Result<usize, ApiError> {
        let _g = lock(&self.import_lock);
        let current = self.repo.current_graph()?.map(|g| g.version);
        let ttl = self.config.abandoned_job_ttl.as_secs();
        let now = unix_now();
        let mut n = 0;
        for mut rec in self.repo.imports()? {
            let retire = match rec.status.as_str() {
                "open" => rec.touched.saturating_add(ttl) <= now,
                "committed" => Some(rec.version) != current,
                _ => false,
            };
            if retire {
                self.repo.delete_version(rec.version)?;
                let action = if rec.status == "open" {
                    "graph.import.abandon"
                } else {
                    "graph.version.delete"
                };
                rec.status = "retired".into();
                self.repo.put_import(&rec)?;
                self.audit("system", action, &rec.id, "ok")?;
                n += 1;
            }
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
        let mut jobs = BTreeMap::from([("open", 0u64), ("finished", 0), ("failed", 0)]);
        for (status, n) in self.repo.job_counts()? {
            if let Some(count) = jobs.get_mut(status.as_str()) {
                *count = n;
            }
        }
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
        let points = blind::hash_and_blind(self.key(), &items);
        drop(items);
        self.repo.add_optouts(&points)?;
        {
            let mut bloom = lock(&self.optout_bloom);
            for p in &points {
                bloom.set(&p.0);
            }
        }
        let mut suppressed = 0;
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

    /// Remove a person from the current graph and from unpulled audiences.
    pub fn erase(&self, actor: &Caller, person: &str) -> Result<usize, ApiError> {
        if person.is_empty() || person.len() > 255 {
            return Err(ApiError::BadRequest("person: 1 to 255 bytes".into()));
        }
        let key = self.person_key(person);
        {
            let _g = lock(&self.import_lock);
            if let Some(mut g) = self.repo.current_graph()? {
                // Suppressed first: a crash during the rewrite still keeps
                // the person out of every match.
                self.repo.suppress(g.version, &key)?;
                let erased = self.repo.erase_person(g.version, &key)?;
                if erased.person {
                    g.persons = g.persons.saturating_sub(1);
                    for (kind, n) in erased.identifiers {
                        let c = g.identifiers.entry(kind).or_default();
                        *c = c.saturating_sub(n);
                    }
                    for (dest, n) in erased.cookies {
                        let c = g.cookies.entry(dest).or_default();
                        *c = c.saturating_sub(n);
                    }
                    // Same version: only the counts change.
                    self.repo.commit_graph(&g)?;
                }
            }
        }
        let updated = self.remove_from_unpulled(&Self::member_name(&key))?;
        self.audit(&actor.name, "erase", &self.person_pseudonym(person), "ok")?;
        Ok(updated)
    }
}
