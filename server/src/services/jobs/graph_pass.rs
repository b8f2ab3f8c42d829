//! The graph pass: a job's pages of `b·P(y)` (the version's points not yet
//! cached for the advertiser's key), served, and their `a·b·P(y)` taken back
//! into the cache.

use super::cache::CacheCursor;
use super::*;
use crate::storage::StoreResult;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// Graph-pass pages written (and synced) per store call.
const PAGES_PER_WRITE: usize = 32;
/// Graph points read per store call.
const POINTS_PER_READ: usize = 8192;
/// Reads held ready ahead of the filter, and page groups ahead of the writer.
const AHEAD: usize = 4;

impl Services {
    /// Store the job's graph pass: the version's points of each kind, in
    /// blinded-value order, minus those cached for this key and opted out.
    pub(super) fn build_graph_pass(
        &self,
        id: &str,
        ns: [u8; 16],
        version: u64,
        kinds: &BTreeSet<MatchKind>,
    ) -> Result<BTreeMap<String, PassInfo>, ApiError> {
        let mut pass = BTreeMap::new();
        for kind in kinds {
            // A finished pass of this version for this key: nothing is new.
            let info = if self.repo.cache_complete(&ns, version, *kind)? {
                PassInfo::default()
            } else {
                self.build_kind_pass(id, ns, version, *kind)?
            };
            pass.insert(kind.as_str().to_string(), info);
        }
        Ok(pass)
    }

    /// One kind's graph pass, as three stages on their own threads: reading
    /// the graph's points, filtering them into pages, writing the pages.
    /// Each store round trip (a database's above all) overlaps the others'
    /// work instead of waiting for it.
    fn build_kind_pass(
        &self,
        id: &str,
        ns: [u8; 16],
        version: u64,
        kind: MatchKind,
    ) -> Result<PassInfo, ApiError> {
        std::thread::scope(|scope| {
            let (points_tx, points) = sync_channel(AHEAD);
            scope.spawn(move || self.read_graph_points(version, kind, &points_tx));
            let (pages_tx, pages) = sync_channel::<(u32, Vec<Vec<u8>>)>(AHEAD);
            let writer = scope.spawn(move || -> Result<(), ApiError> {
                for (first, group) in pages {
                    self.repo.put_pass_pages(id, kind, first, &group)?;
                }
                Ok(())
            });
            let filtered = self.filter_into_pages(ns, &points, &pages_tx);
            // Whatever the filter's outcome, the reader and writer stop: the
            // reader on its next send, the writer once its queue is drained.
            drop((points, pages_tx));
            let written = writer
                .join()
                .unwrap_or_else(|_| Err(ApiError::Internal("graph-pass writer panicked".into())));
            // The writer's error first: a filter that stopped because its
            // queue closed has only that to say.
            written.and(filtered)
        })
    }

    /// Send the version's points of `kind` in order, a store call at a time,
    /// until they end, a read fails, or the receiver has gone.
    fn read_graph_points(
        &self,
        version: u64,
        kind: MatchKind,
        out: &SyncSender<StoreResult<Vec<PointBytes>>>,
    ) {
        let mut after: Option<PointBytes> = None;
        loop {
            let read = self
                .repo
                .bare_points_after(version, kind, after.as_ref(), POINTS_PER_READ);
            after = match &read {
                Ok(points) => points.last().copied(),
                Err(_) => None,
            };
            if out.send(read).is_err() || after.is_none() {
                return;
            }
        }
    }

    /// Pages of the points received, minus the opted-out and those cached
    /// for this key, sent to the writer in groups; the pass's counts.
    fn filter_into_pages(
        &self,
        ns: [u8; 16],
        points: &Receiver<StoreResult<Vec<PointBytes>>>,
        pages: &SyncSender<(u32, Vec<Vec<u8>>)>,
    ) -> Result<PassInfo, ApiError> {
        let page_bytes = self.config.page_size * 32;
        let mut info = PassInfo::default();
        let mut page: Vec<u8> = Vec::with_capacity(page_bytes);
        let mut pending: Vec<Vec<u8>> = Vec::new();
        // A group of pages to the writer, numbered from the pages sent so far.
        let send = |info: &mut PassInfo, group: Vec<Vec<u8>>| {
            let n = group.len() as u32;
            pages
                .send((info.pages, group))
                .map_err(|_| ApiError::Internal("graph-pass writer stopped".into()))?;
            info.pages += n;
            Ok::<_, ApiError>(())
        };
        // Both sequences are in blinded-value order: a merge, no random reads.
        let mut cached = CacheCursor::new(self, ns);
        for read in points {
            let points = read?;
            let opted_out = self.opted_out_each(&points)?;
            for (p, opted_out) in points.iter().zip(opted_out) {
                if opted_out || cached.contains(p)? {
                    continue;
                }
                page.extend_from_slice(&p.0);
                info.points += 1;
                if page.len() == page_bytes {
                    pending.push(std::mem::replace(&mut page, Vec::with_capacity(page_bytes)));
                    if pending.len() == PAGES_PER_WRITE {
                        send(&mut info, std::mem::take(&mut pending))?;
                    }
                }
            }
        }
        if !page.is_empty() {
            pending.push(page);
        }
        if !pending.is_empty() {
            send(&mut info, pending)?;
        }
        Ok(info)
    }

    /// A graph-pass page of `b·P(y)`, as a `PointPage` frame.
    pub fn graph_page(
        &self,
        caller: &Caller,
        id: &str,
        kind: &str,
        page_no: u32,
    ) -> Result<Vec<u8>, ApiError> {
        let kind = kind_of(kind)?;
        let job = self.own_open_job(caller, id)?;
        if !job.kinds.iter().any(|k| k == kind.as_str()) {
            return Err(ApiError::NotFound("graph page"));
        }
        let bytes = self
            .repo
            .pass_page(id, kind, page_no)?
            .ok_or(ApiError::NotFound("graph page"))?;
        let points = bytes
            .chunks_exact(32)
            .map(PointBytes::from_slice)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| ApiError::Internal("corrupt graph-pass page".into()))?;
        Ok(PointPage {
            kind,
            page_no,
            points,
        }
        .encode())
    }

    /// The advertiser's `a·b·P(y)` for a page: validated, cached.
    pub fn put_graph_page(
        &self,
        caller: &Caller,
        id: &str,
        kind: &str,
        page_no: u32,
        body: &[u8],
    ) -> Result<usize, ApiError> {
        let kind = kind_of(kind)?;
        let _key = self.key_gate(KeyUse::Continue)?;
        let job = self.own_open_job(caller, id)?;
        let sent = self
            .repo
            .pass_page(id, kind, page_no)?
            .ok_or(ApiError::NotFound("graph page"))?;
        let page = PointPage::decode(body)
            .map_err(|e| ApiError::BadFrame(format!("{kind} page {page_no}: {e}")))?;
        if page.kind != kind || page.page_no != page_no {
            return Err(ApiError::BadRequest(format!(
                "frame is {} page {}, path says {kind} page {page_no}",
                page.kind, page.page_no
            )));
        }
        if page.points.len() * 32 != sent.len() {
            return Err(ApiError::BadRequest(format!(
                "{kind} page {page_no}: {} points returned, {} sent",
                page.points.len(),
                sent.len() / 32
            )));
        }
        // a·b·P(y) is only compared with the server's canonical b·a·P(x),
        // never used in arithmetic: the encoding's form is checked (no field
        // arithmetic), since a point off the curve can match nothing anyway.
        let bad = page
            .points
            .iter()
            .enumerate()
            .find_map(|(i, p)| p.check_form().err().map(|e| (i, e)));
        if let Some((i, e)) = bad {
            return Err(ApiError::BadPoint(format!(
                "{kind} page {page_no}: point {i}: {e}"
            )));
        }
        let pairs: Vec<(PointBytes, PointBytes)> = sent
            .chunks_exact(32)
            .zip(&page.points)
            .filter_map(|(b, ab)| PointBytes::from_slice(b).ok().map(|b| (b, *ab)))
            .collect();
        let ns = cache_namespace(&job.advertiser, &job.key_fingerprint);
        self.repo.cache_put(&ns, &pairs)?;
        // Crash test: cached, the page not yet marked done.
        crate::faults::crash_point!("graph-page-cached", self.repo);
        self.repo.mark_page_done(id, kind, page_no)?;
        self.touch(id)?;
        // An acknowledged page is durable: a resumed job does not redo it.
        self.repo.flush()?;
        Ok(pairs.len())
    }
}
