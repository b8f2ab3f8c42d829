//! The per-key cache of `(b·P(y), a·b·P(y))` pairs read as one ordered
//! sequence: the graph pass skips what is cached, in a merge.

use super::*;

/// Cached runs fetched per store call.
const RUNS_PER_FETCH: usize = 4;

/// A forward-only merge of one cache namespace's runs: every cached pair
/// `(b·P(y), a·b·P(y))` once, in `b·P(y)` order (the graph's order too, so
/// the graph pass and the join are merges, with no random reads). Runs are
/// opened when the merge reaches their first point; only overlapping runs
/// are held at once.
pub(super) struct CacheMerge<'a> {
    services: &'a Services,
    ns: [u8; 16],
    /// Fetched runs not yet opened, in key order.
    pending: std::collections::VecDeque<Vec<(PointBytes, PointBytes)>>,
    last_key: Option<Vec<u8>>,
    fetched_all: bool,
    /// Open runs with their position; the heap holds (next point, slot).
    open: Vec<(Vec<(PointBytes, PointBytes)>, usize)>,
    heap: BinaryHeap<Reverse<([u8; 32], usize)>>,
    last: Option<PointBytes>,
}

impl<'a> CacheMerge<'a> {
    pub(super) fn new(services: &'a Services, ns: [u8; 16]) -> Self {
        Self {
            services,
            ns,
            pending: Default::default(),
            last_key: None,
            fetched_all: false,
            open: Vec::new(),
            heap: BinaryHeap::new(),
            last: None,
        }
    }

    fn front_first(&mut self) -> Result<Option<[u8; 32]>, ApiError> {
        while self.pending.is_empty() && !self.fetched_all {
            let runs = self.services.repo.cache_runs_after(
                &self.ns,
                self.last_key.as_deref(),
                RUNS_PER_FETCH,
            )?;
            match runs.last() {
                None => self.fetched_all = true,
                Some((k, _)) => self.last_key = Some(k.clone()),
            }
            self.pending
                .extend(runs.into_iter().map(|(_, r)| r).filter(|r| !r.is_empty()));
        }
        Ok(self.pending.front().map(|r| r[0].0 .0))
    }

    /// The next cached pair, or `None` at the end.
    fn next_pair(&mut self) -> Result<Option<(PointBytes, PointBytes)>, ApiError> {
        loop {
            if let Some(first) = self.front_first()? {
                if self.heap.peek().is_none_or(|Reverse((p, _))| first <= *p) {
                    // front_first just returned Some, so a pending run exists.
                    let Some(run) = self.pending.pop_front() else {
                        return Err(ApiError::Internal("cache merge lost its front run".into()));
                    };
                    let slot = match self.open.iter().position(|(r, _)| r.is_empty()) {
                        Some(i) => {
                            self.open[i] = (run, 0);
                            i
                        }
                        None => {
                            self.open.push((run, 0));
                            self.open.len() - 1
                        }
                    };
                    self.heap.push(Reverse((first, slot)));
                    continue;
                }
            }
            let Some(Reverse((_, slot))) = self.heap.pop() else {
                return Ok(None);
            };
            let (run, pos) = &mut self.open[slot];
            let pair = run[*pos];
            *pos += 1;
            if let Some(next) = run.get(*pos) {
                self.heap.push(Reverse((next.0 .0, slot)));
            } else {
                *run = Vec::new();
            }
            // Overlapping runs may repeat a point: the first one counts.
            if self.last == Some(pair.0) {
                continue;
            }
            self.last = Some(pair.0);
            return Ok(Some(pair));
        }
    }
}

/// Membership tests in increasing order against a [`CacheMerge`].
pub(super) struct CacheCursor<'a> {
    merge: CacheMerge<'a>,
    current: Option<PointBytes>,
    started: bool,
}

impl<'a> CacheCursor<'a> {
    pub(super) fn new(services: &'a Services, ns: [u8; 16]) -> Self {
        Self {
            merge: CacheMerge::new(services, ns),
            current: None,
            started: false,
        }
    }

    /// Is `p` cached? Calls must come in increasing order of `p`.
    pub(super) fn contains(&mut self, p: &PointBytes) -> Result<bool, ApiError> {
        if !self.started {
            self.started = true;
            self.current = self.merge.next_pair()?.map(|(b, _)| b);
        }
        while let Some(c) = self.current {
            match c.0.cmp(&p.0) {
                std::cmp::Ordering::Less => self.current = self.merge.next_pair()?.map(|(b, _)| b),
                std::cmp::Ordering::Equal => return Ok(true),
                std::cmp::Ordering::Greater => return Ok(false),
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(i: u32) -> PointBytes {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&i.to_be_bytes());
        b[31] = 1;
        PointBytes(b)
    }

    fn pair(i: u32) -> (PointBytes, PointBytes) {
        let mut ab = point(i);
        ab.0[30] = 9;
        (point(i), ab)
    }

    #[test]
    fn cache_merge_yields_overlapping_runs_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let repo = crate::storage::open_sled(dir.path()).unwrap();
        let services = Services::new(
            repo,
            crate::config::Config::default(),
            crate::keyfiles::ServerSecrets::derive_for_tests("merge"),
        )
        .unwrap();
        let ns = [1u8; 16];
        let other = [2u8; 16];
        // Runs that interleave and overlap (and one re-sent), out of order.
        let runs: Vec<Vec<u32>> = vec![
            (0..50).map(|i| i * 3).collect(),
            (0..40).map(|i| i * 5 + 1).collect(),
            vec![2, 3, 4, 5, 6, 7],
            (0..50).map(|i| i * 3).collect(),
            vec![500, 400, 300],
        ];
        let mut expected = BTreeSet::new();
        for r in &runs {
            let pairs: Vec<_> = r.iter().map(|&i| pair(i)).collect();
            services.repo.cache_put(&ns, &pairs).unwrap();
            expected.extend(r.iter().copied());
        }
        services.repo.cache_put(&other, &[pair(1000)]).unwrap();
        let mut merge = CacheMerge::new(&services, ns);
        let mut got = Vec::new();
        while let Some((b, ab)) = merge.next_pair().unwrap() {
            assert_eq!(
                (b, ab),
                pair(u32::from_be_bytes(b.0[..4].try_into().unwrap()))
            );
            got.push(u32::from_be_bytes(b.0[..4].try_into().unwrap()));
        }
        assert_eq!(got, expected.iter().copied().collect::<Vec<_>>());
        let mut cursor = CacheCursor::new(&services, ns);
        for i in 0..600 {
            assert_eq!(
                cursor.contains(&point(i)).unwrap(),
                expected.contains(&i),
                "{i}"
            );
        }
        for i in [0, 7, 300, 500] {
            assert!(services.repo.cache_contains(&ns, &point(i)).unwrap());
        }
        assert!(!services.repo.cache_contains(&ns, &point(8)).unwrap());
        assert!(!services.repo.cache_contains(&ns, &point(1000)).unwrap());
    }
}
