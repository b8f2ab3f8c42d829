//! Crash safety: the real server binary is SIGKILLed during a graph import,
//! during a job upload and during finish; after a restart the store is
//! consistent — the graph version is the old one or the complete new one,
//! the job is open (resumable) or failed, every audience is whole, and the
//! audit chain verifies.

mod common;

use common::{simple_graph, TestServer};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn spawn_onboard(server: &TestServer, api_key: &str, args: &[&str]) -> Child {
    Command::new(common::SUITE)
        .arg("client")
        .args([
            "--server",
            &server.url,
            "--ca",
            server.ca.to_str().unwrap(),
            "--quiet",
        ])
        .args(args)
        .env("ONBOARD_API_KEY", api_key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn onboard")
}

/// Reads the advertiser's jobs straight from the API (fast enough to poll).
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

    fn jobs(&self) -> Vec<serde_json::Value> {
        let Ok(resp) = self.client.get(&self.url).bearer_auth(&self.key).send() else {
            return Vec::new();
        };
        let body: serde_json::Value = resp.json().unwrap_or_default();
        body["jobs"].as_array().cloned().unwrap_or_default()
    }

    fn job(&self, id: &str) -> serde_json::Value {
        self.jobs()
            .into_iter()
            .find(|j| j["job_id"] == id)
            .unwrap_or_default()
    }
}

/// Kill the server once `ready()` says the operation is under way (bounded).
fn kill_when(server: &mut TestServer, mut ready: impl FnMut(&TestServer) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready(server) {
        assert!(
            Instant::now() < deadline,
            "the operation never got under way"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill();
}

/// After a restart: audit chain intact, stats readable, every audience whole.
fn check_consistent(server: &mut TestServer, destination: &str) -> serde_json::Value {
    let out = server.server_cmd(&[
        "audit",
        "verify",
        "--data-dir",
        server.data_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "audit verify after a crash: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.serve();
    let stats = server.json(&server.admin_key.clone(), &["admin", "stats", "--json"]);
    for (segment, cookies) in common::pull_all(server, destination) {
        let listed = server.audiences(destination);
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

fn big_ids(server: &TestServer, persons: usize) -> std::path::PathBuf {
    let path = server.path("big-ids.csv");
    let mut text = String::from("person_id,kind,value\n");
    for i in 0..persons {
        text.push_str(&format!("q{i},email,new{i}@example.net\n"));
    }
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn killed_during_graph_import_keeps_the_previous_version() {
    let mut server = TestServer::start(&[("K", "50"), ("MIN_JOB_ROWS", "50")]);
    let destination = server.create("destination", "dsp-alpha");
    simple_graph(&server, 100, "dsp-alpha");
    let admin = server.admin_key.clone();
    let before = server.json(&admin, &["admin", "stats", "--json"]);
    let ids = big_ids(&server, 150_000);
    let mut import = spawn_onboard(
        &server,
        &admin,
        &[
            "admin",
            "graph",
            "import",
            "--identifiers",
            ids.to_str().unwrap(),
        ],
    );
    let started = Instant::now();
    kill_when(&mut server, |_| {
        started.elapsed() > Duration::from_millis(1500)
    });
    let _ = import.kill();
    let _ = import.wait();

    let after = check_consistent(&mut server, &destination);
    let version_before = before["graph_version"].as_u64();
    let version_after = after["graph_version"].as_u64();
    if version_after == version_before {
        assert_eq!(
            after["persons"], before["persons"],
            "the old version is untouched: {after}"
        );
    } else {
        assert_eq!(
            after["persons"], 150_000,
            "a new version is only ever complete: {after}"
        );
    }
    // The import can simply be run again.
    server.import(&ids, None);
    assert_eq!(
        server.json(&admin, &["admin", "stats", "--json"])["persons"],
        150_000
    );
}

#[test]
fn killed_during_upload_and_during_finish_leaves_a_consistent_store() {
    let mut server = TestServer::start(&[
        ("K", "50"),
        ("MIN_JOB_ROWS", "50"),
        ("PRIVACY_BUDGET", "100"),
    ]);
    let advertiser = server.create("advertiser", "acme");
    let destination = server.create("destination", "dsp-alpha");
    simple_graph(&server, 2_000, "dsp-alpha");
    let key = server.path("acme.key");
    server.ok(&advertiser, &["keygen", "--out", key.to_str().unwrap()]);
    let crm = common::crm_file(&server, "crm.csv", "Gold", 0..2_000, 120_000);
    let args = [
        "match",
        "--input",
        crm.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--destination",
        "dsp-alpha",
        "--email-col",
        "email",
        "--segment-col",
        "segment",
    ];

    // Strike twice: early (graph pass or first batches) and late (last
    // batches or finish). Whatever the job was doing, afterwards it is
    // finished, failed, or open and resumable.
    for delay in [Duration::from_millis(800), Duration::from_millis(2_500)] {
        let mut job = spawn_onboard(&server, &advertiser, &args);
        let started = Instant::now();
        kill_when(&mut server, |_| started.elapsed() > delay);
        let _ = job.kill();
        let _ = job.wait();
        check_consistent(&mut server, &destination);
        for after in JobProbe::new(&server, &advertiser).jobs() {
            let status = after["status"].as_str().unwrap_or_default();
            assert!(
                ["open", "finished", "failed"].contains(&status),
                "{delay:?}: job in an unknown state: {after}"
            );
            if status == "open" {
                // Resumable: the same command picks it up where the server's
                // acknowledged state ends (graph-pass pages and batches).
                let job_id = after["job_id"].as_str().unwrap_or_default();
                let mut resume: Vec<&str> = args.to_vec();
                resume.extend(["--resume", job_id]);
                let out = server.onboard(&advertiser, &resume);
                assert!(
                    out.status.success(),
                    "{delay:?}: resume failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let resumed = JobProbe::new(&server, &advertiser).job(job_id);
                assert_eq!(resumed["status"], "finished", "{delay:?}: {resumed}");
            }
        }
    }
    // After the crashes a full job still runs and delivers.
    let out = server.onboard(&advertiser, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pulled = common::pull_all(&server, &destination);
    assert!(
        pulled.iter().any(|(_, c)| c.len() == 2_000),
        "{:?}",
        pulled.iter().map(|(s, c)| (s, c.len())).collect::<Vec<_>>()
    );
}
