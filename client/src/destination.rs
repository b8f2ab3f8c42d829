//! The destination's side: list own audiences, pull members page by page.

use crate::api::{segment, ApiClient, Body};
use crate::error::ClientError;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};

/// Name of the header carrying the next page's cursor.
pub const NEXT_CURSOR_HEADER: &str = "Onboard-Next-Cursor";

/// An audience as listed to its destination.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AudienceInfo {
    /// Audience ID.
    pub id: String,
    /// Segment name.
    #[serde(default)]
    pub segment: String,
    /// Advertiser that ran the job.
    #[serde(default)]
    pub advertiser: String,
    /// Members.
    #[serde(default)]
    pub size: u64,
    /// Creation time.
    #[serde(default)]
    pub created: serde_json::Value,
    /// Expiry time.
    #[serde(default)]
    pub expires: serde_json::Value,
    /// Pulled already?
    #[serde(default)]
    pub pulled: serde_json::Value,
}

/// The caller's audiences (destination key).
pub fn list_audiences(api: &ApiClient) -> Result<Vec<AudienceInfo>, ClientError> {
    #[derive(Deserialize)]
    struct List {
        audiences: Vec<AudienceInfo>,
    }
    Ok(api.get_json::<List>("/v1/audiences", &[])?.audiences)
}

/// Write every member's cookie ID, one per line; returns how many.
pub fn pull_audience(api: &ApiClient, id: &str, out: &mut dyn Write) -> Result<u64, ClientError> {
    #[derive(Deserialize)]
    struct Member {
        cookie: String,
    }
    let path = format!("/v1/audiences/{}/members", segment(id));
    let mut cursor: Option<String> = None;
    let mut count = 0u64;
    let write_err = |e: std::io::Error| ClientError::File {
        action: "cannot write",
        path: "output".into(),
        source: e,
    };
    loop {
        let query: Vec<(&str, &str)> = cursor
            .as_deref()
            .map(|c| vec![("cursor", c)])
            .unwrap_or_default();
        let resp = api.send(
            Method::GET,
            &path,
            &query,
            &Body::Empty,
            Some("application/x-ndjson"),
        )?;
        let next = resp
            .headers()
            .get(NEXT_CURSOR_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .filter(|c| !c.is_empty());
        let is_csv = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("text/csv"));
        let reader = BufReader::new(resp);
        for (i, line) in reader.lines().enumerate() {
            let line = line.map_err(|e| ClientError::Protocol(format!("reading members: {e}")))?;
            let line = line.trim();
            if line.is_empty() || (is_csv && i == 0 && line == "cookie_id") {
                continue;
            }
            let cookie = if is_csv {
                line.to_owned()
            } else {
                serde_json::from_str::<Member>(line)
                    .map_err(|e| {
                        ClientError::Protocol(format!("member line is not {{\"cookie\":…}}: {e}"))
                    })?
                    .cookie
            };
            writeln!(out, "{cookie}").map_err(write_err)?;
            count += 1;
        }
        match next {
            Some(c) if cursor.as_deref() != Some(c.as_str()) => cursor = Some(c),
            _ => break,
        }
    }
    out.flush().map_err(write_err)?;
    Ok(count)
}
