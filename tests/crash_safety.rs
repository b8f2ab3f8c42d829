//! Crash safety: the real server binary is aborted at named crash points
//! (`server/src/faults.rs`, set through `FAILPOINTS`) in the middle of a
//! graph import's commit, of a batch's acknowledgement, of a graph-pass
//! page's acknowledgement and of a job's finish. Each test checks that the
//! server died by SIGABRT at that very point, then restarts it and checks
//! the state in between is resolved: the graph version is the old one or the
//! complete new one, the job is open and resumes to the right audiences,
//! every audience is whole, and the audit chain verifies.

mod common;

use common::{simple_graph, TestServer};
use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::Duration;

/// Reads the advertiser's jobs straight from the API.
struct JobProbe {
    client: reqwest::blocking::Client,
    url: String,
    key: String,
}

impl JobProbe {
    fn new(server: &TestServer, key: &str) -> Self {
        let pem = std::fs::read(&server.ca).unwrap();
        let client = reqwest::blocking::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        Self {
            client,
            url: format!("{}/v1/jobs", server.url),
            key: key.to_string(),
        }
    }

    fn get(&self, url: &str) -> serde_json::Value {
        let resp = self.client.get(url).bearer_auth(&self.key).send().unwrap();
        assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
        resp.json().unwrap()
    }

    fn jobs(&self) -> Vec<serde_json::Value> {
        self.get(&self.url)["jobs"].as_array().cloned().unwrap()
    }

    /// The advertiser's only job.
    fn only_job(&self) -> serde_json::Value {
        let jobs = self.jobs();
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        jobs[0].clone()
    }

    /// One job with what a resumed client reads (`next_batch`, `graph_pass`).
    fn detail(&self, id: &str) -> serde_json::Value {
        self.get(&format!("{}/{id}", self.url))
    }
}

/// Restart the server with `FAILPOINTS=spec`.
fn restart_with_faults(server: &mut TestServer, spec: &str) {
    server.stop();
    server.serve_with(&[("FAILPOINTS", spec)]);
}

/// The server died by SIGABRT at crash point `name` (and nowhere else).
fn assert_crashed_at(server: &mut TestServer, name: &str) {
    let status = server.wait_for_exit(Duration::from_secs(120));
    let log = server.log();
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "the server did not abort ({status:?}): {log}"
    );
    assert!(
        log.contains(&format!("crash point {name}: aborting")),
        "the server aborted elsewhere than at {name}: {log}"
    );
}

/// After a crash: audit chain intact, the server restarted, every audience
/// whole. Returns the admin statistics.
fn check_consistent(server: &mut TestServer, destination: &str) -> serde_json::Value {
    server.assert_audit_verifies("after a crash");
    server.serve();
    let stats = server.json(&server.admin_key.clone(), &["admin", "stats", "--json"]);
    let listed = server.audiences(destination);
    for (segment, cookies) in common::pull_all(server, destination) {
        let size = listed
            .iter()
            .find(|a| a["segment"] == segment.as_str())
            .and_then(|a| a["size"].as_u64());
        assert_eq!(
            size,
            Some(cookies.len() as u64),
            "audience {segment} is whole"
        );
    }
    stats
}

fn new_ids(server: &TestServer, persons: usize) -> PathBuf {
    let path = server.path("new-ids.csv");
    let mut text = String::from("person_id,kind,value\n");
    for i in 0..persons {
        text.push_str(&format!("q{i},email,new{i}@example.net\n"));
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// A graph of 100 persons, then an import of 5,000 others that crashes at
/// `point` of its commit. Returns the statistics before and after (restarted).
fn crash_an_import(point: &str) -> (TestServer, serde_json::Value, serde_json::Value) {
    let mut server = TestServer::start(&[("K", "50"), ("MIN_JOB_ROWS", "50")]);
    let destination = server.create("destination", "dsp-alpha");
    simple_graph(&server, 100, "dsp-alpha");
    let admin = server.admin_key.clone();
    let before = server.json(&admin, &["admin", "stats", "--json"]);
    assert_eq!(before["persons"], 100, "{before}");
    restart_with_faults(&mut server, &format!("{point}=return"));
    let ids = new_ids(&server, 5_000);
    let out = server.onboard(
        &admin,
        &[
            "admin",
            "graph",
            "import",
            "--identifiers",
            ids.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success(), "the import survived its crash");
    assert_crashed_at(&mut server, point);
    let after = check_consistent(&mut server, &destination);
    (server, before, after)
}

/// The import can simply be run again: the new version is complete.
fn import_again(server: &TestServer, before: &serde_json::Value) {
    server.import(&server.path("new-ids.csv"), None);
    let again = server.json(&server.admin_key.clone(), &["admin", "stats", "--json"]);
    assert_eq!(again["persons"], 5_000, "{again}");
    assert!(again["graph_version"].as_u64() > before["graph_version"].as_u64());
}

#[test]
fn an_import_crashed_before_the_switch_keeps_the_previous_version() {
    let (server, before, after) = crash_an_import("import-commit-sealed");
    assert_eq!(
        after["graph_version"], before["graph_version"],
        "the sealed version did not become current: {after}"
    );
    assert_eq!(
        after["persons"], 100,
        "the old version is untouched: {after}"
    );
    import_again(&server, &before);
}

#[test]
fn an_import_crashed_after_the_switch_serves_the_complete_new_version() {
    let (server, before, after) = crash_an_import("import-commit-switched");
    assert!(
        after["graph_version"].as_u64() > before["graph_version"].as_u64(),
        "the switch was made before the crash: {after}"
    );
    assert_eq!(after["persons"], 5_000, "the new version is whole: {after}");
    import_again(&server, &before);
}

/// A server with a graph of 1,000 persons (`p{i}`, cookie `ck-{i}` at
/// `dsp-alpha`), an advertiser `acme` with a key, and a CRM of 1,000 rows
/// in batches of 100: persons 0..600 in three segments of 200, and 400
/// strangers.
struct JobSetup {
    server: TestServer,
    advertiser: String,
    destination: String,
    key: PathBuf,
    crm: PathBuf,
}

const SEGMENTS: [&str; 3] = ["Gold", "Silver", "Bronze"];

impl JobSetup {
    fn new() -> Self {
        let server = TestServer::start(&[
            ("K", "50"),
            ("MIN_JOB_ROWS", "50"),
            ("PRIVACY_BUDGET", "100"),
        ]);
        let advertiser = server.create("advertiser", "acme");
        let destination = server.create("destination", "dsp-alpha");
        simple_graph(&server, 1_000, "dsp-alpha");
        let key = server.path("acme.key");
        server.ok(&advertiser, &["keygen", "--out", key.to_str().unwrap()]);
        let crm = server.path("crm.csv");
        let mut text = String::from("email,segment\n");
        for i in 0..600 {
            text.push_str(&format!("person{i}@example.com,{}\n", SEGMENTS[i / 200]));
        }
        for j in 0..400 {
            text.push_str(&format!("stranger{j}@elsewhere.example.org,Gold\n"));
        }
        std::fs::write(&crm, text).unwrap();
        Self {
            server,
            advertiser,
            destination,
            key,
            crm,
        }
    }

    /// `onboard match … --json` (with `--resume JOB` if given).
    fn run_match(&self, resume: Option<&str>) -> std::process::Output {
        let mut args = vec![
            "match",
            "--input",
            self.crm.to_str().unwrap(),
            "--key",
            self.key.to_str().unwrap(),
            "--destination",
            "dsp-alpha",
            "--email-col",
            "email",
            "--segment-col",
            "segment",
            "--batch-size",
            "100",
            "--json",
        ];
        if let Some(job) = resume {
            args.extend(["--resume", job]);
        }
        self.server.onboard(&self.advertiser, &args)
    }

    /// Run the job against a server set to crash at `spec`'s point; after
    /// the crash, check the store and return the job's detail (restarted).
    fn crash_the_job(&mut self, spec: &str) -> serde_json::Value {
        let point = spec.split('=').next().unwrap();
        restart_with_faults(&mut self.server, spec);
        let out = self.run_match(None);
        assert!(!out.status.success(), "the job survived its crash");
        assert_crashed_at(&mut self.server, point);
        check_consistent(&mut self.server, &self.destination);
        let probe = JobProbe::new(&self.server, &self.advertiser);
        let job = probe.only_job();
        assert_eq!(job["status"], "open", "resumable after the crash: {job}");
        probe.detail(job["job_id"].as_str().unwrap())
    }

    /// Resume the job: it finishes with all 1,000 rows counted once, and the
    /// destination holds exactly the three audiences of its report, each
    /// with the cookies of its 200 persons.
    fn resume_and_check(&self, job_id: &str) {
        let out = self.run_match(Some(job_id));
        assert!(
            out.status.success(),
            "resume failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["report"]["job_id"], job_id, "{report}");
        assert_eq!(report["report"]["rows_uploaded"], 1_000, "{report}");
        let probe = JobProbe::new(&self.server, &self.advertiser);
        assert_eq!(probe.detail(job_id)["status"], "finished");
        let mut reported = BTreeSet::new();
        for (n, name) in SEGMENTS.iter().enumerate() {
            let segment = common::segment_of(&report, name);
            assert_eq!(segment["status"], "delivered", "{report}");
            reported.insert(segment["audience_id"].as_str().unwrap().to_string());
            let expected: BTreeSet<String> = (n * 200..n * 200 + 200)
                .map(|i| format!("ck-{i}"))
                .collect();
            let id = segment["audience_id"].as_str().unwrap();
            let pulled = self
                .server
                .ok(&self.destination, &["audiences", "pull", id]);
            let pulled: BTreeSet<String> = pulled.lines().map(str::to_owned).collect();
            assert_eq!(pulled, expected, "audience {name}");
        }
        let listed: BTreeSet<String> = self
            .server
            .audiences(&self.destination)
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            listed, reported,
            "the destination holds the reported audiences, and only those"
        );
    }
}

/// The number in the client's "interrupted after N acknowledged batches".
fn acknowledged_batches(stderr: &str) -> u64 {
    stderr
        .split("interrupted after ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_batch_stored_but_not_acknowledged_is_counted_once_on_resume() {
    let mut setup = JobSetup::new();
    // The third batch stored (and flushed) aborts the server before it answers.
    restart_with_faults(&mut setup.server, "upload-batch-stored=2*off->return");
    let out = setup.run_match(None);
    assert!(!out.status.success(), "the job survived its crash");
    assert_crashed_at(&mut setup.server, "upload-batch-stored");
    let acked = acknowledged_batches(&String::from_utf8_lossy(&out.stderr));
    check_consistent(&mut setup.server, &setup.destination);
    let probe = JobProbe::new(&setup.server, &setup.advertiser);
    let job = probe.only_job();
    assert_eq!(job["status"], "open", "{job}");
    // Batches are stored one at a time: exactly three, the third unacknowledged.
    assert_eq!(job["batches"], 3, "{job}");
    assert_eq!(job["records"], 300, "{job}");
    assert!(acked < 3, "the client saw {acked} acknowledgements");
    setup.resume_and_check(job["job_id"].as_str().unwrap());
}

#[test]
fn a_graph_page_cached_but_not_acknowledged_is_done_again_on_resume() {
    let mut setup = JobSetup::new();
    let detail = setup.crash_the_job("graph-page-cached=return(durable)");
    let pass = &detail["graph_pass"]["email"];
    assert!(pass["pages"].as_u64() >= Some(1), "{detail}");
    assert_eq!(pass["done"], 0, "no page was acknowledged: {detail}");
    setup.resume_and_check(detail["job_id"].as_str().unwrap());
}

#[test]
fn a_finish_crashed_after_writing_an_audience_resumes_to_the_reported_audiences() {
    let mut setup = JobSetup::new();
    // The store is flushed at the point, so the audiences written so far
    // are on disk when the server aborts.
    let detail = setup.crash_the_job("finish-audience-written=return(durable)");
    assert_eq!(detail["batches"], 10, "every batch was in: {detail}");
    assert!(
        detail["report"].is_null(),
        "the job was not finished: {detail}"
    );
    // The restart discarded what the interrupted finish wrote (audited):
    // nothing unreported is left for the destination to pull.
    let admin = setup.server.admin_key.clone();
    let audit = setup.server.json(&admin, &["admin", "audit", "--json"]);
    let discarded = audit
        .as_array()
        .or_else(|| audit["entries"].as_array())
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "audience.discard")
        .count();
    assert!(
        (1..=3).contains(&discarded),
        "audiences written before the crash: {discarded}"
    );
    assert!(
        setup.server.audiences(&setup.destination).is_empty(),
        "an unfinished job's audiences are not released"
    );
    setup.resume_and_check(detail["job_id"].as_str().unwrap());
}
