//! The advertiser's own jobs: list, show, abort.

use crate::api::{segment, ApiClient, Body};
use crate::error::ClientError;
use crate::report::JobReport;
use reqwest::Method;
use serde::{Deserialize, Serialize};

/// A job as the server describes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    /// The job.
    pub job_id: String,
    /// `open`, `finished` or `failed`.
    #[serde(default)]
    pub status: String,
    /// Destination.
    #[serde(default)]
    pub destination: String,
    /// Creation time.
    #[serde(default)]
    pub created: serde_json::Value,
    /// Batches received.
    #[serde(default)]
    pub batches: u64,
    /// Records received.
    #[serde(default)]
    pub records: u64,
    /// Of an open job: the first batch number the server has not received.
    #[serde(default)]
    pub next_batch: Option<u64>,
    /// Graph-pass pages and points per kind (of an open job, how many pages are done).
    #[serde(default)]
    pub graph_pass: std::collections::BTreeMap<String, PassProgress>,
    /// The report of a finished job.
    #[serde(default)]
    pub report: Option<JobReport>,
    /// Fields this client does not know yet.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Graph-pass progress of one kind in an open job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct PassProgress {
    /// Pages in the pass.
    #[serde(default)]
    pub pages: u32,
    /// Points in the pass.
    #[serde(default)]
    pub points: u64,
    /// Pages the server has acknowledged.
    #[serde(default)]
    pub done: u32,
}

/// The caller's jobs (advertiser key).
pub fn list_jobs(api: &ApiClient) -> Result<Vec<JobInfo>, ClientError> {
    #[derive(Deserialize)]
    struct List {
        jobs: Vec<JobInfo>,
    }
    Ok(api.get_json::<List>("/v1/jobs", &[])?.jobs)
}

/// One job.
pub fn get_job(api: &ApiClient, id: &str) -> Result<JobInfo, ClientError> {
    api.get_json(&format!("/v1/jobs/{}", segment(id)), &[])
}

/// Abort an open job: its uploads are deleted.
pub fn abort_job(api: &ApiClient, id: &str) -> Result<(), ClientError> {
    api.send(
        Method::DELETE,
        &format!("/v1/jobs/{}", segment(id)),
        &[],
        &Body::Empty,
        Some("application/json"),
    )?;
    Ok(())
}
