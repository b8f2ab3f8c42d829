//! The database goes away in the middle of a job: requests fail with 503
//! `storage-unavailable` (never a panic, never half a batch), the server
//! reconnects by itself once the database is back, and the client's retries
//! carry the job to the audiences an uninterrupted run delivers.

use crate::common::http::Http;
use crate::common::postgres::TestDatabase;
use crate::common::{crm_file, pull_all, simple_graph, TestServer};
use onboard_client::matching::{run_match_with, MatchOptions};
use onboard_client::progress::ProgressSink;
use onboard_client::{ApiClient, RetryPolicy};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const DSP: &str = "dsp-alpha";

/// Takes the database away when the job's first batch is acknowledged (the
/// quality pass reports progress too, before the job exists).
struct OutageMidJob<'a> {
    database: &'a TestDatabase,
    started: AtomicBool,
}

impl ProgressSink for OutageMidJob<'_> {
    fn begin(&self, _: &str, _: u64) {}
    fn advance(&self, phase: &str, _: u64) {
        if phase == "upload" && !self.started.load(Ordering::SeqCst) {
            self.database.set_available(false);
            self.started.store(true, Ordering::SeqCst);
        }
    }
    fn end(&self, _: &str) {}
}

#[test]
fn a_database_outage_mid_job_answers_503_and_the_retried_job_completes() {
    let mut server = TestServer::start(&[("K", "50"), ("MIN_JOB_ROWS", "50"), ("PAGE_SIZE", "64")]);
    let database = server.database.clone().expect("a PostgreSQL server");
    let advertiser = server.create("advertiser", "acme");
    let destination = server.create("destination", DSP);
    simple_graph(&server, 400, DSP);
    let key = server.path("acme.key");
    server.ok(&advertiser, &["keygen", "--out", key.to_str().unwrap()]);
    let crm = crm_file(&server, "crm.csv", "Gold", 0..150, 30);

    let mut opts = MatchOptions::new(&crm, &key, DSP, "segment");
    opts.email_cols = vec!["email".into()];
    opts.batch_size = 20;
    // Patient retries: the outage lasts until this test has seen the
    // client refused, about a second.
    let api = ApiClient::new(&server.url, Some(&server.ca), &advertiser)
        .unwrap()
        .with_retry(RetryPolicy {
            attempts: 100,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(300),
        });
    let sink = OutageMidJob {
        database: &database,
        started: AtomicBool::new(false),
    };
    let outcome = std::thread::scope(|s| {
        let job = s.spawn(|| run_match_with(&api, &opts, &sink));
        // Once the database is gone: a request of ours is refused with
        // the stable code, and so is one of the client's job requests.
        wait_for("the outage", || sink.started.load(Ordering::SeqCst));
        let http = Http::new(&server);
        wait_for("a 503 storage-unavailable", || {
            let (status, body) = http.get("/v1/jobs", &advertiser);
            if status != 200 && status != 503 {
                eprintln!("during the outage: {status} {body}");
            }
            status == 503 && body["error"]["code"] == "storage-unavailable"
        });
        wait_for("the client refused on a job route", || {
            refused_job_requests(&server) > 0 || job.is_finished()
        });
        database.set_available(true);
        job.join().expect("the match thread")
    });
    let outcome = outcome.unwrap_or_else(|e| {
        panic!(
            "the job failed through the outage: {e}; server log: {}",
            server.log()
        )
    });
    assert!(
        refused_job_requests(&server) > 0,
        "the client never met the outage"
    );
    let report = outcome.report.expect("a report");
    assert_eq!(report.status, "finished", "{report:?}");

    let pulled = pull_all(&server, &destination);
    let expected: BTreeSet<String> = (0..150).map(|i| format!("ck-{i}")).collect();
    assert_eq!(pulled.len(), 1, "{pulled:?}");
    assert_eq!(pulled[0].1, expected);
    server.stop();
    server.assert_audit_verifies("after the outage");
}

/// Requests to a job's pages or batches answered 503, from the metrics listener.
fn refused_job_requests(server: &TestServer) -> u64 {
    let Ok(resp) = reqwest::blocking::get(server.metrics_url()) else {
        return 0;
    };
    resp.text()
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("onboard_http_requests_total") && l.contains("status=\"503\""))
        .filter(|l| l.contains("/graph/") || l.contains("/batches/"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Poll `done` (bounded: 60 s) every 20 ms.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "never saw {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
