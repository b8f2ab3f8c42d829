//! Segment refreshes through the real client and server: a repeat job of
//! the same segment versions its audience, the destination pulls exactly
//! what changed, a change of fewer than `k` persons is held back, an
//! opted-out member leaves through the removed set, and `--new-audience`
//! keeps audiences apart. Sizes leave room for the noise (k = 100, margin
//! T = 28): every applied side is at least 150 persons.

mod common;

use common::{crm_file, match_email_args, match_emails, segment_of, simple_graph, TestServer};
use std::collections::BTreeSet;
use std::path::PathBuf;

const DSP: &str = "dsp-alpha";

struct Setup {
    server: TestServer,
    advertiser: String,
    destination: String,
    key: PathBuf,
}

fn setup(persons: usize) -> Setup {
    let server = TestServer::start(&[("MIN_JOB_ROWS", "100")]);
    let advertiser = server.create("advertiser", "acme");
    let destination = server.create("destination", DSP);
    simple_graph(&server, persons, DSP);
    let key = server.path("acme.key");
    server.ok(&advertiser, &["keygen", "--out", key.to_str().unwrap()]);
    Setup {
        server,
        advertiser,
        destination,
        key,
    }
}

impl Setup {
    /// Match graph persons `members` as segment `Fans`; the report's `Fans`.
    fn run(
        &self,
        name: &str,
        members: std::ops::Range<usize>,
        extra: &[&str],
    ) -> serde_json::Value {
        let crm = crm_file(&self.server, name, "Fans", members, 0);
        let out = if extra.is_empty() {
            match_emails(&self.server, &self.advertiser, &self.key, &crm, DSP)
        } else {
            let args = match_email_args(&self.key, &crm, DSP);
            self.server
                .onboard(&self.advertiser, &[&args[..], extra, &["--json"]].concat())
        };
        assert!(
            out.status.success(),
            "match failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        segment_of(&report, "Fans").clone()
    }

    /// The destination's one audience as listed.
    fn only_audience(&self) -> serde_json::Value {
        let listed = self.server.audiences(&self.destination);
        assert_eq!(listed.len(), 1, "{listed:?}");
        listed[0].clone()
    }

    /// `audiences pull ID [--since V]`: the lines.
    fn pull(&self, id: &str, since: Option<&str>) -> BTreeSet<String> {
        let mut args = vec!["audiences", "pull", id];
        if let Some(v) = since {
            args.extend(["--since", v]);
        }
        let out = self.server.ok(&self.destination, &args);
        out.lines().map(str::to_owned).collect()
    }
}

/// `prefix` + `ck-i` for each `i`.
fn cookies(prefix: &str, persons: impl IntoIterator<Item = usize>) -> BTreeSet<String> {
    persons
        .into_iter()
        .map(|i| format!("{prefix}ck-{i}"))
        .collect()
}

#[test]
fn a_refresh_adding_150_persons_is_version_2_with_exactly_their_cookies_as_changes() {
    let s = setup(700);
    let first = s.run("v1.csv", 0..300, &[]);
    assert_eq!(first["status"], "delivered", "{first}");
    assert_eq!(first["version"], 1, "{first}");
    let id = first["audience_id"].as_str().unwrap().to_owned();
    assert_eq!(s.pull(&id, None), cookies("", 0..300));

    let second = s.run("v2.csv", 0..450, &[]);
    assert_eq!(second["status"], "delivered", "{second}");
    assert_eq!(second["audience_id"], id.as_str(), "the same audience");
    assert_eq!(second["version"], 2, "{second}");
    let listed = s.only_audience();
    assert_eq!(
        (listed["version"].as_u64(), listed["size"].as_u64()),
        (Some(2), Some(450))
    );
    assert_eq!(s.pull(&id, Some("1")), cookies("+", 300..450));
    assert!(
        s.pull(&id, Some("2")).is_empty(),
        "nothing since the current version"
    );
    assert_eq!(
        s.pull(&id, None),
        cookies("", 0..450),
        "members: the current version"
    );

    // A third version keeps only the changes since the second.
    let third = s.run("v3.csv", 0..600, &[]);
    assert_eq!(third["version"], 3, "{third}");
    assert_eq!(s.pull(&id, Some("2")), cookies("+", 450..600));
    let out = s
        .server
        .onboard(&s.destination, &["audiences", "pull", &id, "--since", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("version-not-kept"), "{stderr}");
}

#[test]
fn a_refresh_changing_5_persons_is_held_back_and_the_destination_sees_nothing() {
    let s = setup(400);
    let first = s.run("v1.csv", 0..300, &[]);
    let id = first["audience_id"].as_str().unwrap().to_owned();

    // Five persons added, then five removed: each held back.
    for (name, members) in [("plus5.csv", 0..305), ("minus5.csv", 0..295)] {
        let seg = s.run(name, members, &[]);
        assert_eq!(seg["status"], "withheld", "{seg}");
        assert_eq!(seg["reason"], "refresh-change-below-k", "{seg}");
        assert_eq!(seg["audience_id"], id.as_str(), "{seg}");
        assert_eq!(seg["version"], 1, "{seg}");
    }
    let listed = s.only_audience();
    assert_eq!(
        (listed["version"].as_u64(), listed["size"].as_u64()),
        (Some(1), Some(300))
    );
    assert!(s.pull(&id, Some("1")).is_empty());
    assert_eq!(s.pull(&id, None), cookies("", 0..300));
}

#[test]
fn opted_out_and_erased_members_are_in_the_removed_set_of_the_next_refresh() {
    let s = setup(500);
    let first = s.run("v1.csv", 0..400, &[]);
    let id = first["audience_id"].as_str().unwrap().to_owned();
    // Pulled to the end: the opt-out and the erasure leave the released
    // version as it is.
    assert_eq!(s.pull(&id, None).len(), 400);
    let optouts = s.server.path("optouts.csv");
    std::fs::write(&optouts, "kind,value\nemail,person3@example.com\n").unwrap();
    let admin = s.server.admin_key.clone();
    s.server.ok(
        &admin,
        &["admin", "optout", "--file", optouts.to_str().unwrap()],
    );
    s.server.ok(&admin, &["admin", "erase", "--person", "p5"]);
    assert_eq!(s.pull(&id, None).len(), 400);

    // The advertiser still lists persons 3 and 5; the segment also loses 200..400.
    let second = s.run("v2.csv", 0..200, &[]);
    assert_eq!(second["status"], "delivered", "{second}");
    assert_eq!(second["version"], 2, "{second}");
    let removed = cookies("-", [3, 5].into_iter().chain(200..400));
    assert_eq!(s.pull(&id, Some("1")), removed);
    let members = s.pull(&id, None);
    assert_eq!(members.len(), 198);
    assert!(!members.contains("ck-3") && !members.contains("ck-5"));
}

#[test]
fn new_audience_releases_a_separate_audience_and_leaves_the_first_as_it_was() {
    let s = setup(500);
    let first = s.run("v1.csv", 0..300, &[]);
    let id = first["audience_id"].as_str().unwrap().to_owned();
    let second = s.run("v2.csv", 0..450, &["--new-audience"]);
    assert_eq!(second["status"], "delivered", "{second}");
    assert_eq!(second["version"], 1, "{second}");
    let other = second["audience_id"].as_str().unwrap().to_owned();
    assert_ne!(other, id);
    let listed = s.server.audiences(&s.destination);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().all(|a| a["version"] == 1), "{listed:?}");
    assert_eq!(s.pull(&id, None), cookies("", 0..300));
    assert_eq!(s.pull(&other, None), cookies("", 0..450));
}

#[test]
fn a_refresh_crashed_before_its_job_finished_rolls_back_and_resumes_to_version_2() {
    use std::os::unix::process::ExitStatusExt as _;
    let mut s = setup(600);
    let id = s.run("v1.csv", 0..300, &[])["audience_id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.server.stop();
    s.server
        .serve_with(&[("FAILPOINTS", "finish-audience-written=return(durable)")]);
    let crm = crm_file(&s.server, "v2.csv", "Fans", 0..450, 0);
    let out = match_emails(&s.server, &s.advertiser, &s.key, &crm, DSP);
    assert!(!out.status.success(), "the job survived its crash");
    let status = s.server.wait_for_exit(std::time::Duration::from_secs(120));
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{}", s.server.log());
    assert!(s
        .server
        .log()
        .contains("crash point finish-audience-written: aborting"));

    // At start the unreported version 2 is rolled back (audited).
    s.server.serve();
    let listed = s.only_audience();
    assert_eq!(
        (listed["version"].as_u64(), listed["size"].as_u64()),
        (Some(1), Some(300))
    );
    assert_eq!(s.pull(&id, None), cookies("", 0..300));
    assert!(s.pull(&id, Some("1")).is_empty());
    let admin = s.server.admin_key.clone();
    let audit = s.server.json(&admin, &["admin", "audit", "--json"]);
    let entries = audit.as_array().or_else(|| audit["entries"].as_array());
    assert!(
        entries
            .unwrap()
            .iter()
            .any(|e| e["action"] == "audience.rollback" && e["object"] == id.as_str()),
        "{audit}"
    );

    // The resumed finish refreshes again, once.
    let jobs = s.server.json(&s.advertiser, &["jobs", "list", "--json"]);
    let open = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["status"] == "open")
        .expect("the crashed job is open");
    let job = open["job_id"].as_str().unwrap();
    let args = match_email_args(&s.key, &crm, DSP);
    let out = s.server.onboard(
        &s.advertiser,
        &[&args[..], &["--resume", job, "--json"]].concat(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let seg = segment_of(&report, "Fans");
    assert_eq!(
        (seg["audience_id"].as_str(), seg["version"].as_u64()),
        (Some(id.as_str()), Some(2))
    );
    assert_eq!(s.pull(&id, Some("1")), cookies("+", 300..450));
    assert_eq!(s.pull(&id, None), cookies("", 0..450));
}

#[test]
fn an_opt_out_in_an_unpulled_refresh_edits_its_changes() {
    let s = setup(500);
    let id = s.run("v1.csv", 0..300, &[])["audience_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(s.run("v2.csv", 0..450, &[])["version"], 2);
    // Version 2 not pulled: person 3 (in both versions) and person 310
    // (added by the refresh) are withdrawn at once.
    let optouts = s.server.path("optouts.csv");
    std::fs::write(
        &optouts,
        "kind,value\nemail,person3@example.com\nemail,person310@example.com\n",
    )
    .unwrap();
    s.server.ok(
        &s.server.admin_key.clone(),
        &["admin", "optout", "--file", optouts.to_str().unwrap()],
    );
    let mut changes = cookies("+", (300..450).filter(|&i| i != 310));
    changes.insert("-ck-3".into());
    assert_eq!(s.pull(&id, Some("1")), changes);
    let members = s.pull(&id, None);
    assert_eq!(
        members,
        cookies("", (0..450).filter(|&i| i != 3 && i != 310))
    );
}

/// `GET /v1/audiences/{id}/changes` over HTTPS with the destination key.
fn get_changes(s: &Setup, id: &str, query: &str, accept: &str) -> reqwest::blocking::Response {
    let pem = std::fs::read(&s.server.ca).unwrap();
    let client = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    client
        .get(format!(
            "{}/v1/audiences/{id}/changes?{query}",
            s.server.url
        ))
        .bearer_auth(&s.destination)
        .header("Accept", accept)
        .send()
        .unwrap()
}

#[test]
fn changes_page_as_csv_with_cursors_bound_to_their_version() {
    let s = setup(700);
    let id = s.run("v1.csv", 0..300, &[])["audience_id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.run("v2.csv", 0..450, &[]);
    // Pages of 64 lines, `+id` without a header, until no cursor is given.
    let (mut lines, mut cursor, mut pages) = (BTreeSet::new(), None::<String>, 0);
    loop {
        let query = match &cursor {
            Some(c) => format!("since=1&limit=64&cursor={c}"),
            None => "since=1&limit=64".to_owned(),
        };
        let resp = get_changes(&s, &id, &query, "text/csv");
        assert_eq!(resp.status(), 200);
        let next = resp
            .headers()
            .get("Onboard-Next-Cursor")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = resp.text().unwrap();
        assert!(body.lines().count() <= 64);
        lines.extend(body.lines().map(str::to_owned));
        pages += 1;
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
        assert!(pages < 10, "paging ends");
    }
    assert_eq!(pages, 3);
    assert_eq!(lines, cookies("+", 300..450));
    // A cursor of version 2's changes dies with them.
    let first = get_changes(&s, &id, "since=1&limit=64", "application/x-ndjson");
    let stale = first.headers()["Onboard-Next-Cursor"]
        .to_str()
        .unwrap()
        .to_owned();
    let ndjson = first.text().unwrap();
    assert_eq!(ndjson.lines().count(), 64);
    for line in ndjson.lines() {
        let change: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(change["op"], "add", "{line}");
        let cookie = change["cookie_id"].as_str().unwrap();
        assert!(lines.contains(&format!("+{cookie}")), "{line}");
    }
    s.run("v3.csv", 0..600, &[]);
    let resp = get_changes(&s, &id, &format!("since=2&cursor={stale}"), "text/csv");
    assert_eq!(resp.status(), 400);
    assert!(resp.text().unwrap().contains("bad-cursor"));
    for (query, status, code) in [
        ("since=0", 400, "bad-request"),
        ("since=4", 400, "bad-request"),
        ("since=1", 410, "version-not-kept"),
        ("limit=5", 400, "bad-request"),
    ] {
        let resp = get_changes(&s, &id, query, "text/csv");
        assert_eq!(resp.status(), status, "{query}");
        assert!(resp.text().unwrap().contains(code), "{query}");
    }
}
