//! The finish: completeness, the job minimum, the segment cap and the ε
//! spend, then the join (uploads → cached hits → owners → segments), the
//! release rules on noisy values and the audiences.

use super::refresh;
use super::*;

/// Sorted look-ups (owners, cookies) per parallel task at finish: each task
/// walks its own stretch of the graph in order.
const LOOKUP_STRETCH: usize = 32_768;

/// Marks a job as finishing while held, on this server and (through the
/// store lock `finish/<id>`) on every server sharing the store; a second
/// finish gets `job-not-open`.
struct FinishGuard<'a> {
    services: &'a Services,
    id: String,
    _store: crate::storage::HeldLock,
}

impl<'a> FinishGuard<'a> {
    fn take(services: &'a Services, id: &str) -> Result<Self, ApiError> {
        if !lock(&services.finishing).insert(id.to_string()) {
            return Err(ApiError::JobNotOpen("finishing".into()));
        }
        let store = match services.repo.try_lock(&crate::services::finish_lock(id)) {
            Ok(Some(held)) => held,
            elsewhere => {
                lock(&services.finishing).remove(id);
                elsewhere?;
                return Err(ApiError::JobNotOpen("finishing".into()));
            }
        };
        Ok(Self {
            services,
            id: id.to_string(),
            _store: store,
        })
    }
}

impl Drop for FinishGuard<'_> {
    fn drop(&mut self) {
        lock(&self.services.finishing).remove(&self.id);
    }
}

impl Services {
    /// Finish: check completeness, rows and budget, join, release audiences.
    /// The advertiser's local `quality` counts, if sent, are kept in the report.
    pub fn finish_job(
        &self,
        caller: &Caller,
        id: &str,
        batches: u32,
        quality: Option<LocalQuality>,
    ) -> Result<serde_json::Value, ApiError> {
        if let Some(q) = &quality {
            q.check()?;
        }
        let _key = self.key_gate(KeyUse::Continue)?;
        let job = self.own_open_job(caller, id)?;
        let _finishing = FinishGuard::take(self, id)?;
        let received: BTreeSet<u32> = self.repo.upload_numbers(id)?.into_iter().collect();
        let missing: Vec<String> = (0..batches)
            .filter(|b| !received.contains(b))
            .take(10)
            .map(|b| b.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(ApiError::Incomplete(format!(
                "batches missing: {}",
                missing.join(", ")
            )));
        }
        if let Some(extra) = received.iter().find(|&&b| b >= batches) {
            return Err(ApiError::Invalid(format!(
                "batch {extra} was uploaded but batches is {batches}"
            )));
        }
        for (kind, info) in &job.pass {
            let kind = kind_of(kind)?;
            for page in 0..info.pages {
                if !self.repo.page_done(id, kind, page)? {
                    return Err(ApiError::Incomplete(format!(
                        "graph pass: {kind} page {page} not returned"
                    )));
                }
            }
        }
        // Distinct identifiers, not rows: one email on 1,000 rows under
        // 1,000 labels is one identifier. Uploads are deterministic per
        // advertiser key, so equal identifiers are equal points here.
        let uploaded = timed(id, "uploaded points", || {
            self.uploaded_points(&job, batches)
        })?;
        if uploaded.wanted.len() < self.config.min_job_rows {
            self.fail_job(id, &caller.name, "job.fail.too-few-rows")?;
            return Err(ApiError::TooFewRows {
                rows: uploaded.wanted.len() as u64,
                min: self.config.min_job_rows,
            });
        }
        if uploaded.labels.len() > self.config.max_segments_per_job {
            self.fail_job(id, &caller.name, "job.fail.too-many-segments")?;
            return Err(self.too_many_segments(uploaded.labels.len()));
        }
        let targets = self.refresh_targets(&job, &uploaded.labels)?;
        // Paid before the join, in one atomic step: nothing is released unpaid.
        let values = uploaded.released_values() + 2 * targets.len() as u64;
        let charged = match self.spend_budget(&caller.name, id, values) {
            Ok(charged) => charged,
            Err(e) => {
                self.fail_job(id, &caller.name, "job.fail.privacy-budget")?;
                return Err(e);
            }
        };
        let result = timed(id, "join and release", || {
            self.join_and_release(&job, batches, uploaded.wanted, charged, &targets)
        });
        let mut report = match result {
            Ok(r) => r,
            Err(e) => {
                self.fail_job(id, &caller.name, "job.fail.internal")?;
                return Err(e);
            }
        };
        if let Some(q) = quality {
            report["quality"] = serde_json::to_value(q).unwrap_or_default();
        }
        // Every page came back: this key now caches the whole version.
        let ns = cache_namespace(&job.advertiser, &job.key_fingerprint);
        for kind in job.pass.keys() {
            self.repo
                .set_cache_complete(&ns, job.graph_version, kind_of(kind)?)?;
        }
        {
            let _g = self.exclusive(&self.job_lock, "jobs")?;
            let mut j = self.repo.job(id)?.ok_or(ApiError::NotFound("job"))?;
            j.status = "finished".into();
            // The end time: retention counts from here.
            j.touched = unix_now();
            j.report = Some(report.clone());
            // Finishing releases the audiences: their push messages are
            // enqueued in the same transaction (webhooks.rs).
            let messages = self.release_messages(&j, &released_audiences(&report))?;
            self.repo.put_job_with_messages(&j, messages)?;
        }
        timed(id, "delete job data", || self.repo.delete_job_data(id))?;
        self.audit(&caller.name, "job.finish", id, "ok")?;
        // The report the advertiser receives describes audiences that survive a crash.
        timed(id, "flush", || self.repo.flush())?;
        self.outbox_wake.notify_one();
        Ok(report)
    }

    fn stored_batch(&self, job: &str, b: u32) -> Result<RecordBatch, ApiError> {
        let frame = self
            .repo
            .upload(job, b)?
            .ok_or_else(|| ApiError::Internal("upload vanished".into()))?;
        RecordBatch::decode(&frame).map_err(|e| ApiError::Internal(format!("stored batch: {e}")))
    }

    fn join_and_release(
        &self,
        job: &Job,
        batches: u32,
        mut wanted: Wanted,
        charged: Epsilon,
        targets: &BTreeMap<String, String>,
    ) -> Result<serde_json::Value, ApiError> {
        let graph = self
            .repo
            .current_graph()?
            .ok_or_else(|| ApiError::Internal("graph vanished".into()))?;
        let version = graph.version;
        let hits = timed(&job.id, "cached hits", || self.cached_hits(job, &wanted))?;
        timed(&job.id, "owners", || {
            self.resolve_owners(version, &hits, &mut wanted)
        })?;
        drop(hits);
        let identifiers = wanted.len() as u64;
        let matched_identifiers = wanted
            .values()
            .filter(|(_, person)| person.is_some())
            .count() as u64;
        let Joined {
            rows,
            segments: joined,
        } = timed(&job.id, "segments", || {
            self.tally_segments(job, batches, &wanted)
        })?;
        drop(wanted);
        let k = self.config.k;
        let margin = release::release_margin(self.config.epsilon);
        let now = unix_now();
        let ttl = self.config.audience_ttl.as_secs();
        let cookies = timed(&job.id, "cookies", || {
            self.cookies_of_segments(version, &job.destination, &joined)
        })?;
        // Per segment (on all cores): its members, and why it is withheld if it is.
        let mut candidates: Vec<Candidate> = timed(&job.id, "members", || {
            joined
                .par_iter()
                .map(|segment| self.candidate(segment, &cookies, margin))
                .collect()
        });
        let _g = self.exclusive(&self.audience_lock, "audiences")?;
        timed(&job.id, "refreshes", || {
            self.plan_refreshes(targets, now, margin, &mut candidates)
        })?;
        timed(&job.id, "difference check", || {
            self.difference_check(job, now, margin, &mut candidates)
        })?;
        // Each audience is its own atomic write to its own files: on all cores.
        let audience_ids: Vec<Option<(String, u64)>> = timed(&job.id, "audiences", || {
            candidates
                .par_iter()
                .map(|c| -> Result<_, ApiError> {
                    if c.reason.is_some() {
                        return Ok(None);
                    }
                    if let Some(refresh) = &c.refresh {
                        let a = refresh.next_record(job, now, ttl);
                        self.repo
                            .refresh_audience(&a, &refresh.records, &refresh.changes)?;
                        crate::faults::crash_point!("finish-audience-written", self.repo);
                        return Ok(Some((a.id, a.version)));
                    }
                    let a = Audience {
                        id: new_id("a-"),
                        segment: c.name.clone(),
                        advertiser: job.advertiser.clone(),
                        destination: job.destination.clone(),
                        job_id: job.id.clone(),
                        size: c
                            .members
                            .iter()
                            .map(|(_, cookies)| cookies.len() as u64)
                            .sum(),
                        created: rfc3339(now),
                        expires: rfc3339(now + ttl),
                        expires_unix: now + ttl,
                        pulled: false,
                        version: 1,
                        refreshed: None,
                        changes_from: None,
                        prior: None,
                    };
                    self.repo.create_audience(&a, &c.members)?;
                    // Crash test: an audience written, the job not yet finished.
                    crate::faults::crash_point!("finish-audience-written", self.repo);
                    Ok(Some((a.id, 1)))
                })
                .collect::<Result<_, _>>()
        })?;
        let mut segments = Vec::new();
        for (c, released) in candidates.into_iter().zip(audience_ids) {
            // A refresh held back leaves the audience at its version: named too.
            let (audience_id, version) = match (released, targets.get(&c.name)) {
                (Some((id, version)), _) => (Some(id), Some(version)),
                (None, Some(id)) if c.reason == Some(refresh::HELD_BACK) => {
                    (Some(id.clone()), self.repo.audience(id)?.map(|a| a.version))
                }
                (None, _) => (None, None),
            };
            segments.push(serde_json::json!({
                "name": c.name,
                "rows_uploaded": c.rows,
                "matched": c.shown,
                "status": if c.reason.is_none() { "delivered" } else { "withheld" },
                "reason": c.reason,
                "audience_id": audience_id,
                "version": version,
            }));
        }
        Ok(serde_json::json!({
            "job_id": job.id,
            "status": "finished",
            "graph_version": version,
            "destination": job.destination,
            "rows_uploaded": rows,
            "identifiers": identifiers,
            "match_rate": self.noisy_match_rate(matched_identifiers, identifiers),
            "k": k,
            "epsilon_spent": charged,
            "segments": segments,
        }))
    }

    /// Join, step 1: the distinct uploaded `b·a·P(x)` of the job's kinds,
    /// and every segment label the batches name (batches decoded on all cores).
    fn uploaded_points(&self, job: &Job, batches: u32) -> Result<Uploaded, ApiError> {
        let kinds: Vec<MatchKind> = job
            .kinds
            .iter()
            .map(|k| kind_of(k))
            .collect::<Result<_, _>>()?;
        let per_batch: Vec<(UploadedPoints, Vec<String>)> = (0..batches)
            .into_par_iter()
            .map(|b| -> Result<_, ApiError> {
                let batch = self.stored_batch(&job.id, b)?;
                let points = batch
                    .kinds()
                    .iter()
                    .zip(batch.points())
                    .filter(|(kind, _)| kinds.contains(kind))
                    .map(|(kind, point)| (point.0, *kind))
                    .collect();
                Ok((points, batch.labels))
            })
            .collect::<Result<_, _>>()?;
        let mut wanted = uniform::map_with_capacity(per_batch.iter().map(|b| b.0.len()).sum());
        let mut labels = BTreeSet::new();
        for (points, batch_labels) in per_batch {
            for (point, kind) in points {
                wanted.entry(point).or_insert((kind, None));
            }
            labels.extend(batch_labels);
        }
        Ok(Uploaded { wanted, labels })
    }

    /// Join, step 2: every cached run of this key, on all cores: an
    /// `a·b·P(y)` equal to an upload gives `b·P(y)`, hence the person. Runs
    /// may overlap, so the hits are sorted by `b·P(y)` and deduplicated.
    fn cached_hits(&self, job: &Job, wanted: &Wanted) -> Result<Vec<Hit>, ApiError> {
        let ns = cache_namespace(&job.advertiser, &job.key_fingerprint);
        let run_keys = self.repo.cache_run_keys(&ns)?;
        let per_run: Vec<Vec<Hit>> = run_keys
            .par_iter()
            .map(|k| -> Result<_, ApiError> {
                Ok(self
                    .repo
                    .cache_run(&ns, k)?
                    .into_iter()
                    .filter_map(|(bpy, abpy)| wanted.get(&abpy.0).map(|slot| (bpy, slot.0, abpy.0)))
                    .collect())
            })
            .collect::<Result<_, _>>()?;
        let mut hits: Vec<Hit> = per_run.into_iter().flatten().collect();
        hits.par_sort_unstable_by_key(|h| h.0 .0);
        hits.dedup_by_key(|h| h.0 .0);
        Ok(hits)
    }

    /// Join, step 3: the owner of each hit, per kind in ordered passes over
    /// the graph (each core takes a sorted stretch of hits); opted-out points
    /// and suppressed persons count as none.
    fn resolve_owners(
        &self,
        version: u64,
        hits: &[Hit],
        wanted: &mut Wanted,
    ) -> Result<(), ApiError> {
        let suppressed: UniformSet<PersonKey> =
            self.repo.suppressed_persons(version)?.into_iter().collect();
        for kind in MatchKind::ALL {
            let of_kind: Vec<&Hit> = hits.iter().filter(|h| h.1 == kind).collect();
            if of_kind.is_empty() {
                continue;
            }
            let owned: Vec<Vec<([u8; 32], PersonKey)>> = of_kind
                .par_chunks(LOOKUP_STRETCH)
                .map(|stretch| self.live_owners(version, kind, stretch, &suppressed))
                .collect::<Result<_, _>>()?;
            for (abpy, person) in owned.into_iter().flatten() {
                if let Some(slot) = wanted.get_mut(&abpy) {
                    slot.1 = Some(person);
                }
            }
        }
        Ok(())
    }

    /// The live owners of a sorted stretch of hits: `(a·b·P(y), person)` for
    /// each hit whose point is not opted out and whose person is not suppressed.
    fn live_owners(
        &self,
        version: u64,
        kind: MatchKind,
        stretch: &[&Hit],
        suppressed: &UniformSet<PersonKey>,
    ) -> Result<Vec<([u8; 32], PersonKey)>, ApiError> {
        let points: Vec<PointBytes> = stretch.iter().map(|h| h.0).collect();
        let owners = self.repo.owners_of_sorted(version, kind, &points)?;
        let opted_out = self.opted_out_each(&points)?;
        Ok(stretch
            .iter()
            .zip(owners)
            .zip(opted_out)
            .filter_map(|((hit, owner), opted_out)| {
                let person = owner?;
                (!opted_out && !suppressed.contains(&person)).then_some((hit.2, person))
            })
            .collect())
    }

    /// Join, step 4: records to persons. A record counts once, via its first
    /// matching identifier (batches tallied on all cores, then merged; each
    /// segment's persons sorted and deduplicated on all cores).
    fn tally_segments(&self, job: &Job, batches: u32, wanted: &Wanted) -> Result<Joined, ApiError> {
        let tallies: Vec<BatchTally> = (0..batches)
            .into_par_iter()
            .map(|b| -> Result<_, ApiError> {
                Ok(BatchTally::of(&self.stored_batch(&job.id, b)?, wanted))
            })
            .collect::<Result<_, _>>()?;
        let mut per_segment: BTreeMap<String, (u64, Vec<PersonKey>)> = BTreeMap::new();
        let mut rows = 0u64;
        for t in tallies {
            rows += t.rows;
            for (label, (n, persons)) in t.labels.into_iter().zip(t.per_label) {
                if n == 0 {
                    continue;
                }
                let segment = per_segment.entry(label).or_default();
                segment.0 += n;
                segment.1.extend(persons);
            }
        }
        let segments = per_segment
            .into_iter()
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|(name, (rows, mut persons))| {
                persons.sort_unstable();
                persons.dedup();
                JoinedSegment {
                    name,
                    rows,
                    persons,
                }
            })
            .collect();
        Ok(Joined { rows, segments })
    }

    /// The destination's cookies of every person of every segment, sorted by
    /// person, in ordered passes over its cookie table. Small segments are
    /// looked up too: their reachable persons are noised and shown like any.
    fn cookies_of_segments(
        &self,
        version: u64,
        destination: &str,
        segments: &[JoinedSegment],
    ) -> Result<Vec<(PersonKey, Vec<SealedCookie>)>, ApiError> {
        let mut persons: Vec<PersonKey> = segments
            .iter()
            .flat_map(|s| s.persons.iter().copied())
            .collect();
        persons.par_sort_unstable();
        persons.dedup();
        let found: Vec<Vec<(PersonKey, Vec<SealedCookie>)>> = persons
            .par_chunks(LOOKUP_STRETCH)
            .map(|stretch| self.repo.cookies_of_sorted(version, destination, stretch))
            .collect::<Result<_, _>>()?;
        Ok(found.into_iter().flatten().collect())
    }

    /// One segment's members (the destination's cookies of its persons), its
    /// noisy size as shown, and the size rule's verdict on that noisy size;
    /// the difference check comes after.
    fn candidate<'c>(
        &self,
        segment: &JoinedSegment,
        cookies: &'c [(PersonKey, Vec<SealedCookie>)],
        margin: u64,
    ) -> Candidate<'c> {
        // Both sorted by person: one merge. Member names (hex) keep that order.
        let mut members: Vec<(String, &'c [SealedCookie])> = Vec::new();
        let mut rest = cookies;
        for p in &segment.persons {
            let skip = rest.partition_point(|(c, _)| c < p);
            rest = &rest[skip..];
            if let Some((c, sealed)) = rest.first() {
                if c == p {
                    members.push((Self::member_name(p), sealed.as_slice()));
                }
            }
        }
        let k = self.config.k;
        let noisy = self.noisy_count(members.len() as u64);
        Candidate {
            name: segment.name.clone(),
            rows: segment.rows,
            shown: shown_count(noisy, k),
            noisy,
            reason: release::size_withheld(members.len(), noisy, k, margin),
            members,
            refresh: None,
        }
    }

    /// Withhold every candidate whose person set differs from a live
    /// audience of the same advertiser and destination by fewer than `k`
    /// persons, **zero included**, or whose smallest such difference, noised,
    /// does not clear `k` by the release margin (see `release.rs`): earlier
    /// audiences (each read once, one at a time, so memory does not grow
    /// with their number), then the candidates released before it in this
    /// job, in segment order.
    ///
    /// Zero counts as too close because otherwise `Base` and `Base+target`
    /// would come back "delivered, withheld" when the target is in the graph
    /// and "delivered, delivered" (identical sets) when it is not; the noise
    /// keeps nested segments from finding the exact row at which a
    /// difference reaches `k`.
    fn difference_check(
        &self,
        job: &Job,
        now: u64,
        margin: u64,
        candidates: &mut [Candidate],
    ) -> Result<(), ApiError> {
        let k = self.config.k;
        // Per candidate: its smallest difference from an earlier audience.
        let mut closest: Vec<Option<usize>> = vec![None; candidates.len()];
        for earlier in self
            .repo
            .audiences_of(&job.advertiser, &job.destination)?
            .iter()
            .filter(|a| a.expires_unix > now)
        {
            // The merge below wants sorted, distinct names.
            let mut other = self.repo.audience_persons(&earlier.id)?;
            other.sort_unstable();
            other.dedup();
            for (c, best) in candidates.iter().zip(closest.iter_mut()) {
                // A refresh's relation to the version it replaces is the
                // refresh rule's (refresh.rs), not this check's.
                let replaces = c.refresh.as_ref().map(|r| r.base.id.as_str());
                if c.reason.is_none() && replaces != Some(earlier.id.as_str()) {
                    let d = symmetric_difference(c.names(), &other);
                    *best = Some(best.map_or(d, |b| b.min(d)));
                }
            }
        }
        for i in 0..candidates.len() {
            if candidates[i].reason.is_some() {
                continue;
            }
            let (released, rest) = candidates.split_at_mut(i);
            let c = &mut rest[0];
            let in_job = released
                .iter()
                .filter(|r| r.reason.is_none())
                .map(|r| symmetric_difference(c.names(), r.names()))
                .min();
            let smallest = match (closest[i], in_job) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            // No earlier audience (which the advertiser knows): nothing to compare.
            let Some(d) = smallest else { continue };
            let noisy = self.noisy_count(d as u64);
            if release::too_close(d, noisy, k, margin) {
                c.reason = Some("too-close-to-earlier-audience");
            }
        }
        Ok(())
    }
}

/// The IDs of the audiences a report released (new or refreshed).
fn released_audiences(report: &serde_json::Value) -> Vec<String> {
    report["segments"]
        .as_array()
        .map(|segments| {
            segments
                .iter()
                .filter(|s| s["status"] == "delivered")
                .filter_map(|s| s["audience_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Run one step of the finish and log how long it took (debug level: for
/// an operator sizing the finish of large jobs; job ids only, no data).
fn timed<T>(job: &str, step: &'static str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    let ms = started.elapsed().as_secs_f64() * 1e3;
    tracing::debug!(job, step, ms = format!("{ms:.1}"), "finish step");
    out
}

/// The job's distinct uploaded `b·a·P(x)`: kind, and the live person behind
/// it once the join has found one.
type Wanted = UniformMap<[u8; 32], (MatchKind, Option<PersonKey>)>;

/// One batch's uploaded `b·a·P(x)` of the job's kinds, with their kinds.
type UploadedPoints = Vec<([u8; 32], MatchKind)>;

/// What a job uploaded, as the finish sees it before the join.
struct Uploaded {
    wanted: Wanted,
    /// Every segment label named by the batches.
    labels: BTreeSet<String>,
}

impl Uploaded {
    /// Noisy values the job's report releases, each paid for with ε: per
    /// segment its reachable-person count and its smallest difference from
    /// earlier audiences, and the match rate's matched count. Counted from
    /// the labels alone, so the charge says nothing about the graph.
    fn released_values(&self) -> u64 {
        2 * self.labels.len() as u64 + 1
    }
}

/// A cached `a·b·P(y)` equal to an upload: `(b·P(y), kind, a·b·P(y))`.
type Hit = (PointBytes, MatchKind, [u8; 32]);

/// What the join found, before the release rules.
struct Joined {
    rows: u64,
    /// In segment-name order.
    segments: Vec<JoinedSegment>,
}

/// One segment after the join.
struct JoinedSegment {
    name: String,
    rows: u64,
    /// The persons of its matched rows: sorted, distinct.
    persons: Vec<PersonKey>,
}

/// One stored batch's share of the join: rows and matched persons per label.
struct BatchTally {
    rows: u64,
    labels: Vec<String>,
    /// Per label (same order): rows, and the persons of its matched rows.
    per_label: Vec<(u64, Vec<PersonKey>)>,
}

impl BatchTally {
    fn of(batch: &RecordBatch, wanted: &Wanted) -> Self {
        // A label index past the table (never in a decoded frame) counts as "".
        let mut labels = batch.labels.clone();
        labels.push(String::new());
        let unknown = labels.len() - 1;
        let mut per_label = vec![(0u64, Vec::new()); labels.len()];
        let mut rows = 0;
        for r in batch.records() {
            rows += 1;
            let person = r
                .points
                .iter()
                .find_map(|p| wanted.get(&p.0).and_then(|(_, person)| *person));
            for &s in r.segments {
                let slot = &mut per_label[usize::from(s).min(unknown)];
                slot.0 += 1;
                if let Some(p) = person {
                    slot.1.push(p);
                }
            }
        }
        Self {
            rows,
            labels,
            per_label,
        }
    }
}

/// A segment of a finishing job on its way to becoming an audience.
pub(super) struct Candidate<'c> {
    pub(super) name: String,
    rows: u64,
    shown: String,
    /// The noisy count of its reachable persons (`shown` before rounding).
    pub(super) noisy: i64,
    /// Member names (sorted) with their sealed cookies.
    pub(super) members: Vec<(String, &'c [SealedCookie])>,
    pub(super) reason: Option<&'static str>,
    /// The live audience it refreshes, once planned.
    pub(super) refresh: Option<refresh::Refresh>,
}

impl Candidate<'_> {
    /// The persons it would release (sorted): a refresh's new version, or the segment's.
    pub(super) fn names(&self) -> Box<dyn Iterator<Item = &String> + '_> {
        match &self.refresh {
            Some(r) => Box::new(r.persons.iter()),
            None => Box::new(self.members.iter().map(|(name, _)| name)),
        }
    }
}
