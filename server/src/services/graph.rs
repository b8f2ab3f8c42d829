//! Graph imports (digests in, `b·P(y)` stored, digests dropped), commits that
//! switch the current version with one pointer write, opt-outs and erasure.

use super::{lock, new_id, rfc3339, unix_now, Services};
use crate::error::ApiError;
use crate::services::auth::Caller;
use crate::services::seal;
use crate::storage::{GraphInfo, ImportRecord, SealedCookie};
use onboard_protocol::wire::DigestBatch;
use onboard_protocol::{blind, MatchKind, PointBytes};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap};
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

    /// Person numbers for `persons`, allocating new ones in `rec`; the new
    /// mappings are written in one batch.
    fn person_numbers<'a>(
        &self,
        rec: &mut ImportRecord,
        persons: impl Iterator<Item = &'a str>,
    ) -> Result<Vec<u64>, ApiError> {
        let mut local: HashMap<&str, u64> = HashMap::new();
        let mut new = Vec::new();
        let mut out = Vec::new();
        for person in persons {
            let n = match local.get(person) {
                Some(n) => *n,
                None => {
                    let n = match self.repo.person_no(rec.version, person)? {
                        Some(n) => n,
                        None => {
                            let n = rec.next_person;
                            rec.next_person += 1;
                            rec.info.persons += 1;
                            new.push((person.to_string(), n));
                            n
                        }
                    };
                    local.insert(person, n);
                    n
                }
            };
            out.push(n);
        }
        self.repo.put_persons(rec.version, &new)?;
        Ok(out)
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
        let _g = lock(&self.import_lock);
        let mut rec = self.open_import(id)?;
        if self.seen_batch(id, b'i', path_batch, &hash)? {
            return Ok(batch.entries.len());
        }
        let persons =
            self.person_numbers(&mut rec, batch.entries.iter().map(|e| e.person.as_str()))?;
        let rows: Vec<_> = batch
            .entries
            .iter()
            .zip(&points)
            .zip(&persons)
            .map(|((e, p), n)| (e.kind, *p, *n))
            .collect();
        let fresh = self.repo.put_points(rec.version, &rows)?;
        for ((kind, point, person), new) in rows.iter().zip(fresh) {
            if new {
                *rec.info
                    .identifiers
                    .entry(kind.as_str().into())
                    .or_default() += 1;
            }
            if self.opted_out(point)? {
                self.repo.suppress(rec.version, *person)?;
            }
        }
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
        let persons = self.person_numbers(&mut rec, rows.iter().map(|r| r.person.as_str()))?;
        let sealed: Vec<(&str, u64, SealedCookie)> = rows
            .iter()
            .zip(persons)
            .map(|(r, person)| {
                Ok((
                    r.destination.as_str(),
                    person,
                    sealed_cookie(self.pepper(), &r.cookie)?,
                ))
            })
            .collect::<Result<_, ApiError>>()?;
        let fresh = self.repo.put_cookies(rec.version, &sealed)?;
        for ((dest, _, _), new) in sealed.iter().zip(fresh) {
            if new {
                *rec.info.cookies.entry(dest.to_string()).or_default() += 1;
            }
        }
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
        rec.status = "committed".into();
        self.repo.put_import(&rec)?;
        let old = self.repo.commit_graph(&rec.info)?;
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
        for j in self.repo.jobs()? {
            if let Some(n) = jobs.get_mut(j.status.as_str()) {
                *n += 1;
            }
        }
        let now = unix_now();
        let audiences = self
            .repo
            .audiences()?
            .iter()
            .filter(|a| a.expires_unix > now)
            .count();
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
                    if self.repo.suppress(g.version, person)? {
                        suppressed += 1;
                        if let Some(pid) = self.repo.person_id(g.version, person)? {
                            self.remove_from_unpulled(&pid)?;
                        }
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
        {
            let _g = lock(&self.import_lock);
            if let Some(mut g) = self.repo.current_graph()? {
                if let Some(n) = self.repo.person_no(g.version, person)? {
                    self.repo.suppress(g.version, n)?;
                    let erased = self.repo.erase_person(g.version, n)?;
                    if erased.person {
                        g.persons = g.persons.saturating_sub(1);
                    }
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
        let updated = self.remove_from_unpulled(person)?;
        self.audit(&actor.name, "erase", &self.person_pseudonym(person), "ok")?;
        Ok(updated)
    }

    /// Is `b·P(y)` of this kind owned by a live (not suppressed) person in `version`?
    pub(crate) fn live_owner(
        &self,
        version: u64,
        kind: MatchKind,
        bpy: &PointBytes,
    ) -> Result<Option<u64>, ApiError> {
        if self.opted_out(bpy)? {
            return Ok(None);
        }
        match self.repo.point_owner(version, kind, bpy)? {
            Some(p) if !self.repo.is_suppressed(version, p)? => Ok(Some(p)),
            _ => Ok(None),
        }
    }
}
