//! The graph pass: every page of the server's `b·P(y)` re-blinded with the
//! advertiser key, a few pages in flight at once.

use super::GRAPH_PHASE;
use crate::api::{segment, ApiClient, Body};
use crate::error::ClientError;
use crate::progress::ProgressSink;
use onboard_protocol::wire::PointPage;
use onboard_protocol::{blind, MatchKind, SecretKey};
use reqwest::Method;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Graph pages in flight at once (network overlaps crypto).
const GRAPH_WORKERS: usize = 3;

/// Re-blind every page of the graph pass, a few pages in flight at once,
/// until done or `stop`.
pub(super) fn graph_pass(
    api: &ApiClient,
    key: &SecretKey,
    job: &JobCreated,
    progress: &dyn ProgressSink,
    stop: &AtomicBool,
) -> Result<(u64, u64), ClientError> {
    // (kind, page number, the page's size limit in bytes)
    let mut work: Vec<(MatchKind, u32, u64)> = Vec::new();
    let mut total_points = 0;
    for (kind, info) in &job.graph_pass {
        if info.pages == 0 {
            continue;
        }
        let kind: MatchKind = kind.parse().map_err(|_| {
            ClientError::Protocol(format!("graph pass names an unknown kind `{kind}`"))
        })?;
        total_points += info.points;
        let limit = crate::api::limits::point_page(job.page_size, info.points);
        work.extend((0..info.pages).map(|p| (kind, p, limit)));
    }
    if work.is_empty() {
        return Ok((0, 0));
    }
    progress.begin(GRAPH_PHASE, total_points);
    let next = AtomicUsize::new(0);
    let done_points = AtomicU64::new(0);
    let job_path = format!("/v1/jobs/{}/graph", segment(&job.job_id));
    let result: Result<(), ClientError> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..GRAPH_WORKERS.min(work.len()))
            .map(|_| {
                s.spawn(|| -> Result<(), ClientError> {
                    loop {
                        if stop.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(kind, page_no, limit)) = work.get(i) else {
                            return Ok(());
                        };
                        let r = reblind_page(api, key, &job_path, (kind, page_no), limit);
                        match r {
                            Ok(n) => {
                                done_points.fetch_add(n, Ordering::Relaxed);
                                progress.advance(GRAPH_PHASE, n);
                            }
                            Err(e) => {
                                stop.store(true, Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                    }
                })
            })
            .collect();
        let mut first_err = None;
        for h in handles {
            if let Err(e) = h.join().expect("graph worker panicked") {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    });
    progress.end(GRAPH_PHASE);
    result?;
    Ok((work.len() as u64, done_points.into_inner()))
}

fn reblind_page(
    api: &ApiClient,
    key: &SecretKey,
    job_path: &str,
    (kind, page_no): (MatchKind, u32),
    limit: u64,
) -> Result<u64, ClientError> {
    let path = format!("{job_path}/{kind}/{page_no}");
    let bytes = api.get_bytes(&path, limit, &format!("graph page {kind}/{page_no}"))?;
    let page = PointPage::decode(&bytes)
        .map_err(|e| ClientError::Protocol(format!("graph page {kind}/{page_no}: {e}")))?;
    if page.kind != kind || page.page_no != page_no {
        return Err(ClientError::Protocol(format!(
            "asked for graph page {kind}/{page_no}, got {}/{}",
            page.kind, page.page_no
        )));
    }
    let points = blind::reblind(key, &page.points)
        .map_err(|e| ClientError::Protocol(format!("graph page {kind}/{page_no}: {e}")))?;
    let n = points.len() as u64;
    let out = PointPage {
        kind,
        page_no,
        points,
    };
    let _: serde_json::Value = api.call_json(Method::PUT, &path, &Body::Frame(out.encode()))?;
    Ok(n)
}

/// A job as created (or, on resume, as the server reports it): the pages
/// of its graph pass.
#[derive(Debug, Deserialize)]
pub(super) struct JobCreated {
    pub(super) job_id: String,
    #[serde(default)]
    pub(super) graph_version: u64,
    /// Points per graph-pass page, as the server announced it (not known on resume).
    #[serde(default)]
    pub(super) page_size: Option<u32>,
    #[serde(default)]
    pub(super) graph_pass: BTreeMap<String, GraphPassInfo>,
}

#[derive(Debug, Deserialize)]
pub(super) struct GraphPassInfo {
    #[serde(default)]
    pub(super) pages: u32,
    #[serde(default)]
    pub(super) points: u64,
}
