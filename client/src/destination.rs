//! The destination's side: list own audiences, pull members page by page,
//! each page and line read within its limit ([`limits`]).

use crate::api::{limits, segment, ApiClient, Body};
use crate::error::ClientError;
use reqwest::blocking::Response;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};

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
    /// 1 at release, one more at each refresh.
    #[serde(default)]
    pub version: u64,
    /// When the current version was released by a refresh.
    #[serde(default)]
    pub refreshed: serde_json::Value,
}

/// The caller's audiences (destination key).
pub fn list_audiences(api: &ApiClient) -> Result<Vec<AudienceInfo>, ClientError> {
    #[derive(Deserialize)]
    struct List {
        audiences: Vec<AudienceInfo>,
    }
    Ok(api.get_json::<List>("/v1/audiences", &[])?.audiences)
}

/// Write every member's cookie ID, one per line; returns how many. Pages of
/// [`limits::MEMBERS_PAGE_LIMIT`] cookie IDs are asked for.
pub fn pull_audience(api: &ApiClient, id: &str, out: &mut dyn Write) -> Result<u64, ClientError> {
    pull_audience_paged(api, id, limits::MEMBERS_PAGE_LIMIT, out)
}

/// [`pull_audience`] asking `page_limit` cookie IDs per page (at most the
/// server's `members_page_limit`). Each page is read no further than
/// [`limits::members_page`]`(page_limit)` bytes, each line no further than
/// [`limits::MAX_MEMBER_LINE`].
pub fn pull_audience_paged(
    api: &ApiClient,
    id: &str,
    page_limit: u32,
    out: &mut dyn Write,
) -> Result<u64, ClientError> {
    let path = format!("/v1/audiences/{}/members", segment(id));
    pull_pages(api, &path, &[], page_limit, out, &member_line)
}

/// Write the cookie IDs added and removed since audience version `since`,
/// `+id` or `-id` one per line; returns how many lines. Paged and bounded
/// like [`pull_audience`]. A `since` whose changes the server no longer
/// keeps is the error `version-not-kept` (pull the members instead).
pub fn pull_changes(
    api: &ApiClient,
    id: &str,
    since: u64,
    out: &mut dyn Write,
) -> Result<u64, ClientError> {
    pull_changes_paged(api, id, since, limits::MEMBERS_PAGE_LIMIT, out)
}

/// [`pull_changes`] asking `page_limit` changes per page.
pub fn pull_changes_paged(
    api: &ApiClient,
    id: &str,
    since: u64,
    page_limit: u32,
    out: &mut dyn Write,
) -> Result<u64, ClientError> {
    let path = format!("/v1/audiences/{}/changes", segment(id));
    let since = since.to_string();
    pull_pages(
        api,
        &path,
        &[("since", &since)],
        page_limit,
        out,
        &change_line,
    )
}

/// Turns one non-empty line of a page (`true`: CSV) into the line written,
/// or `None` for a line to skip (a CSV header).
type LineDecoder = dyn Fn(&str, bool, bool) -> Result<Option<String>, ClientError>;

/// A members line: `{"cookie":…}`, or a CSV line after the `cookie_id` header.
fn member_line(text: &str, csv: bool, first: bool) -> Result<Option<String>, ClientError> {
    #[derive(Deserialize)]
    struct Member {
        cookie: String,
    }
    if csv {
        return Ok((!(first && text == "cookie_id")).then(|| text.to_owned()));
    }
    serde_json::from_str::<Member>(text)
        .map(|m| Some(m.cookie))
        .map_err(|e| ClientError::Protocol(format!("member line is not {{\"cookie\":…}}: {e}")))
}

/// A changes line: `{"op":"add"|"remove","cookie_id":…}`, or CSV `+id` / `-id`.
fn change_line(text: &str, csv: bool, _first: bool) -> Result<Option<String>, ClientError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Op {
        Add,
        Remove,
    }
    #[derive(Deserialize)]
    struct Change {
        op: Op,
        cookie_id: String,
    }
    if csv {
        let field = text
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .map(|t| t.replace("\"\"", "\""))
            .unwrap_or_else(|| text.to_owned());
        return match field.chars().next() {
            Some('+' | '-') => Ok(Some(field)),
            _ => Err(ClientError::Protocol(
                "a changes line starts with neither + nor -".into(),
            )),
        };
    }
    let c: Change = serde_json::from_str(text).map_err(|e| {
        ClientError::Protocol(format!(
            "change line is not {{\"op\":\"add\"|\"remove\",\"cookie_id\":…}}: {e}"
        ))
    })?;
    let sign = match c.op {
        Op::Add => '+',
        Op::Remove => '-',
    };
    Ok(Some(format!("{sign}{}", c.cookie_id)))
}

/// Walk the pages of `path` (cursor by cursor) and write each decoded line.
fn pull_pages(
    api: &ApiClient,
    path: &str,
    query: &[(&str, &str)],
    page_limit: u32,
    out: &mut dyn Write,
    decode: &LineDecoder,
) -> Result<u64, ClientError> {
    if page_limit == 0 {
        return Err(ClientError::Usage(
            "the members page size must be at least 1".into(),
        ));
    }
    let limit_text = page_limit.to_string();
    let mut cursor: Option<String> = None;
    let mut count = 0u64;
    loop {
        let mut q: Vec<(&str, &str)> = query.to_vec();
        q.push(("limit", &limit_text));
        if let Some(c) = cursor.as_deref() {
            q.push(("cursor", c));
        }
        let resp = api.send(
            Method::GET,
            path,
            &q,
            &Body::Empty,
            Some("application/x-ndjson"),
        )?;
        let next = resp
            .headers()
            .get(NEXT_CURSOR_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .filter(|c| !c.is_empty());
        count += copy_page(resp, page_limit, out, decode)?;
        match next {
            Some(c) if cursor.as_deref() != Some(c.as_str()) => cursor = Some(c),
            _ => break,
        }
    }
    out.flush().map_err(write_error)?;
    Ok(count)
}

fn write_error(e: std::io::Error) -> ClientError {
    ClientError::File {
        action: "cannot write",
        path: "output".into(),
        source: e,
    }
}

/// Copy one page (NDJSON or CSV) to `out`, one decoded line a line,
/// reading no more than the page's and each line's limit.
fn copy_page(
    resp: Response,
    page_limit: u32,
    out: &mut dyn Write,
    decode: &LineDecoder,
) -> Result<u64, ClientError> {
    let page_bytes = limits::members_page(page_limit);
    let too_large = |what: &str, limit| ClientError::AnswerTooLarge {
        what: what.to_owned(),
        limit,
    };
    if resp.content_length().is_some_and(|n| n > page_bytes) {
        return Err(too_large("a members page", page_bytes));
    }
    let is_csv = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/csv"));
    let mut reader = BufReader::new(resp.take(page_bytes + 1));
    let (mut read, mut count, mut first) = (0u64, 0u64, true);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(limits::MAX_MEMBER_LINE + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| ClientError::Protocol(format!("reading members: {e}")))?;
        if n == 0 {
            return Ok(count);
        }
        read += n as u64;
        if read > page_bytes {
            return Err(too_large("a members page", page_bytes));
        }
        if n as u64 > limits::MAX_MEMBER_LINE {
            return Err(too_large("a member line", limits::MAX_MEMBER_LINE));
        }
        let text = std::str::from_utf8(&line)
            .map_err(|_| ClientError::Protocol("a member line is not UTF-8".into()))?
            .trim();
        if text.is_empty() {
            continue;
        }
        let Some(decoded) = decode(text, is_csv, std::mem::take(&mut first))? else {
            continue;
        };
        count += 1;
        if count > u64::from(page_limit) {
            return Err(ClientError::Protocol(format!(
                "a page holds more than the {page_limit} lines asked for"
            )));
        }
        writeln!(out, "{decoded}").map_err(write_error)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_lines_read_as_plus_or_minus_cookie_ids_in_either_format() {
        let ndjson = |t| change_line(t, false, false);
        let csv = |t| change_line(t, true, false);
        assert_eq!(
            ndjson(r#"{"op":"add","cookie_id":"ck-1"}"#).unwrap(),
            Some("+ck-1".into())
        );
        assert_eq!(
            ndjson(r#"{"op":"remove","cookie_id":"a,b"}"#).unwrap(),
            Some("-a,b".into())
        );
        assert!(ndjson(r#"{"op":"move","cookie_id":"x"}"#).is_err());
        assert!(ndjson(r#"{"cookie":"x"}"#).is_err());
        assert_eq!(csv("+ck-1").unwrap(), Some("+ck-1".into()));
        assert_eq!(csv(r#""-a,""b""#).unwrap(), Some(r#"-a,"b"#.into()));
        assert!(csv("ck-1").is_err(), "a line without its sign");
    }

    #[test]
    fn member_lines_skip_only_the_csv_header() {
        assert_eq!(member_line("cookie_id", true, true).unwrap(), None);
        assert_eq!(
            member_line("cookie_id", true, false).unwrap(),
            Some("cookie_id".into())
        );
        assert_eq!(
            member_line(r#"{"cookie":"ck-2"}"#, false, true).unwrap(),
            Some("ck-2".into())
        );
        assert!(member_line("ck-2", false, false).is_err());
    }
}
