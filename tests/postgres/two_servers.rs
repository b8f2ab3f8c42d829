//! Two servers on one database, as behind a load balancer: any request may
//! reach either, and one may die mid-job without the job noticing more than
//! a retry. Server B is added as the operations guide says: a copy of A's
//! data dir (key files, TLS, config), nothing else.

use crate::common::http::{batch, Http};
use crate::common::{crm_file, match_email_args, pull_all, simple_graph, TestServer};
use onboard_protocol::wire::PointPage;
use onboard_protocol::{blind, Digest, MatchKind, SecretKey};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

const DSP: &str = "dsp-alpha";
/// Graph persons; each job's segment is `MEMBERS` of them, past k = 50 plus
/// the release margin (28 at ε = 0.5) with room for noise.
const PERSONS: usize = 400;
const MEMBERS: usize = 150;
const SETTINGS: [(&str, &str); 4] = [
    ("K", "50"),
    ("MIN_JOB_ROWS", "50"),
    ("PAGE_SIZE", "64"),
    ("PRIVACY_BUDGET", "100"),
];

/// The cookie IDs a delivered audience of `members` holds.
fn cookies_of(members: std::ops::Range<usize>) -> BTreeSet<String> {
    members.map(|i| format!("ck-{i}")).collect()
}

#[test]
fn a_job_alternates_between_two_servers_and_resumes_on_one_after_the_other_dies() {
    let mut a = TestServer::start(&SETTINGS);
    let b = a.start_beside();
    let (http_a, http_b) = (Http::new(&a), Http::new(&b));
    let servers = [&http_a, &http_b];

    // Principals through A, the graph through B.
    let advertiser = a.create("advertiser", "acme");
    let destination = a.create("destination", DSP);
    simple_graph(&b, PERSONS, DSP);

    // A job created on A; each graph-pass page fetched from one server and
    // returned to the other; batches alternate; finished through B.
    let key = SecretKey::generate(&mut rand::thread_rng());
    let (status, created) = http_a.json(
        "POST",
        "/v1/jobs",
        &advertiser,
        json!({"destination": DSP, "kinds": ["email"], "key_fingerprint": key.fingerprint().to_string()}),
    );
    assert_eq!(status, 201, "{created}");
    let job = created["job_id"].as_str().unwrap().to_string();
    let pages = created["graph_pass"]["email"]["pages"].as_u64().unwrap();
    assert!(pages >= 4, "a graph pass of several pages: {created}");
    for page_no in 0..pages {
        let (from, to) = (
            servers[page_no as usize % 2],
            servers[1 - page_no as usize % 2],
        );
        let path = format!("/v1/jobs/{job}/graph/email/{page_no}");
        let (status, bytes) = from.get_bytes(&path, &advertiser);
        assert_eq!(status, 200, "page {page_no} from {}", from.base);
        let page = PointPage::decode(&bytes).unwrap();
        let points = blind::reblind(&key, &page.points).unwrap();
        let back = PointPage { points, ..page }.encode();
        let (status, body) = to.frame(&path, &advertiser, back);
        assert_eq!(status, 200, "page {page_no} to {}: {body}", to.base);
    }
    let items: Vec<_> = (0..MEMBERS)
        .map(|i| {
            (
                MatchKind::Email,
                Digest::of(&format!("person{i}@example.com")),
            )
        })
        .collect();
    let points = blind::hash_and_blind(&key, &items);
    let chunks: Vec<_> = points.chunks(MEMBERS.div_ceil(4)).collect();
    for (batch_no, chunk) in chunks.iter().enumerate() {
        let server = servers[batch_no % 2];
        let path = format!("/v1/jobs/{job}/batches/{batch_no}");
        let (status, body) = server.frame(&path, &advertiser, batch(batch_no as u32, chunk));
        assert_eq!(status, 200, "batch {batch_no} to {}: {body}", server.base);
    }
    let (status, report) = http_b.json(
        "POST",
        &format!("/v1/jobs/{job}/finish"),
        &advertiser,
        json!({"batches": chunks.len()}),
    );
    assert_eq!(status, 200, "{report}");

    // The audience: listed on B, its first page pulled from B, the rest
    // from A with B's cursor.
    let (status, listed) = http_b.get("/v1/audiences", &destination);
    assert_eq!(status, 200, "{listed}");
    let id = listed["audiences"][0]["id"]
        .as_str()
        .expect("an audience")
        .to_string();
    let members = format!("/v1/audiences/{id}/members?limit=40");
    let first = http_b
        .req("GET", &members, Some(&destination))
        .send()
        .unwrap();
    assert_eq!(first.status().as_u16(), 200);
    let mut cursor = first
        .headers()
        .get("onboard-next-cursor")
        .map(|c| c.to_str().unwrap().to_string());
    let mut pulled = cookie_lines(&first.text().unwrap());
    assert!(cursor.is_some(), "more than one page of members");
    while let Some(c) = cursor {
        let page = http_a
            .req("GET", &format!("{members}&cursor={c}"), Some(&destination))
            .send()
            .unwrap();
        assert_eq!(page.status().as_u16(), 200, "B's cursor on A");
        cursor = page
            .headers()
            .get("onboard-next-cursor")
            .map(|c| c.to_str().unwrap().to_string());
        pulled.extend(cookie_lines(&page.text().unwrap()));
    }
    assert_eq!(pulled, cookies_of(0..MEMBERS));

    // A dies mid-job (aborted with a batch stored but not acknowledged);
    // `onboard match --resume` against B completes the job.
    let key_file = a.path("acme.key");
    a.ok(
        &advertiser,
        &["keygen", "--out", key_file.to_str().unwrap()],
    );
    a.stop();
    a.serve_with(&[("FAILPOINTS", "upload-batch-stored=return")]);
    // Other persons than the first job's: an audience differing from an
    // earlier one by fewer than k persons would be withheld.
    let crm = crm_file(&a, "crm.csv", "Resumed", MEMBERS..2 * MEMBERS, 30);
    let args = match_email_args(&key_file, &crm, DSP);
    let interrupted = a.onboard(&advertiser, &[&args[..], &["--batch-size", "40"]].concat());
    assert!(!interrupted.status.success(), "the job outlived its server");
    a.wait_for_exit(Duration::from_secs(20));
    let (_, jobs) = http_b.get("/v1/jobs", &advertiser);
    let open: Vec<_> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["status"] == "open")
        .collect();
    assert_eq!(open.len(), 1, "{jobs}");
    let job = open[0]["job_id"].as_str().unwrap().to_string();
    b.ok(
        &advertiser,
        &[&args[..], &["--batch-size", "40", "--resume", &job]].concat(),
    );
    let resumed: Vec<_> = pull_all(&b, &destination)
        .into_iter()
        .filter(|(segment, _)| segment == "Resumed")
        .collect();
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    // What an uninterrupted run delivers: every member's cookie ID.
    assert_eq!(resumed[0].1, cookies_of(MEMBERS..2 * MEMBERS));
}

fn cookie_lines(ndjson: &str) -> BTreeSet<String> {
    ndjson
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["cookie"].as_str().unwrap().to_string()
        })
        .collect()
}
