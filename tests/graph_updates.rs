//! Graph updates through the real CLI and server: delta imports (added
//! persons, removed persons, both) give the same audiences as a full import
//! of the same graph; an advertiser's repeat job after a delta re-blinds only
//! the new points; `graph versions` lists the kept versions and `graph
//! activate` rolls back to one, with later opt-outs and erasures applied; a
//! delta interrupted by a crash or a SIGKILL leaves the old version current
//! and whole.

mod common;

use common::TestServer;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const DESTINATION: &str = "dsp-alpha";

/// A server with `k` = 50 and a destination; its key.
fn server() -> (TestServer, String) {
    let server = TestServer::start(&[
        ("K", "50"),
        ("MIN_JOB_ROWS", "50"),
        ("PRIVACY_BUDGET", "100"),
    ]);
    let destination = server.create("destination", DESTINATION);
    (server, destination)
}

/// `person_id,kind,value` rows: person `p{i}` has `person{i}@example.com`.
fn ids_file(server: &TestServer, name: &str, persons: Range<usize>) -> PathBuf {
    let mut text = String::from("person_id,kind,value\n");
    for i in persons {
        text.push_str(&format!("p{i},email,person{i}@example.com\n"));
    }
    let path = server.path(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `person_id,destination,cookie_id` rows: person `p{i}` has `ck-{i}`.
fn cookies_file(server: &TestServer, name: &str, persons: Range<usize>) -> PathBuf {
    let mut text = String::from("person_id,destination,cookie_id\n");
    for i in persons {
        text.push_str(&format!("p{i},{DESTINATION},ck-{i}\n"));
    }
    let path = server.path(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `person_id` rows.
fn persons_file(server: &TestServer, name: &str, persons: Range<usize>) -> PathBuf {
    let mut text = String::from("person_id\n");
    for i in persons {
        text.push_str(&format!("p{i}\n"));
    }
    let path = server.path(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A full import of persons `persons` (an email and a cookie each).
fn full_import(server: &TestServer, persons: Range<usize>) -> serde_json::Value {
    let ids = ids_file(server, "full-ids.csv", persons.clone());
    let cookies = cookies_file(server, "full-cookies.csv", persons);
    server.json(
        &server.admin_key.clone(),
        &[
            "admin",
            "graph",
            "import",
            "--identifiers",
            path(&ids),
            "--cookies",
            path(&cookies),
            "--json",
        ],
    )
}

/// The `admin graph import --delta` arguments adding `added` persons and
/// removing `removed` ones.
fn delta_args(server: &TestServer, added: Range<usize>, removed: Range<usize>) -> Vec<String> {
    let mut args: Vec<String> = ["admin", "graph", "import", "--delta", "--json"]
        .map(String::from)
        .to_vec();
    if !added.is_empty() {
        let ids = ids_file(server, "delta-ids.csv", added.clone());
        let cookies = cookies_file(server, "delta-cookies.csv", added);
        args.extend(["--identifiers".into(), path(&ids).into()]);
        args.extend(["--cookies".into(), path(&cookies).into()]);
    }
    if !removed.is_empty() {
        let persons = persons_file(server, "delta-remove.csv", removed);
        args.extend(["--remove-persons".into(), path(&persons).into()]);
    }
    args
}

/// A delta import adding `added` persons and removing `removed` ones.
fn delta(server: &TestServer, added: Range<usize>, removed: Range<usize>) -> serde_json::Value {
    let args = delta_args(server, added, removed);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    server.json(&server.admin_key.clone(), &args)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// What one job shows: its ID and each released segment's pulled cookie IDs.
struct JobResult {
    id: String,
    audiences: BTreeMap<String, BTreeSet<String>>,
}

/// A job of `advertiser` (created if new) with one CRM row per person of
/// each segment, plus 60 strangers; every released segment's audience pulled.
fn job(
    server: &TestServer,
    destination_key: &str,
    advertiser: &str,
    segments: &[(&str, Range<usize>)],
) -> JobResult {
    let key_file = server.path(&format!("{advertiser}.key"));
    let api_key_file = server.path(&format!("{advertiser}.api"));
    let api_key = if api_key_file.exists() {
        std::fs::read_to_string(&api_key_file).unwrap()
    } else {
        let k = server.create("advertiser", advertiser);
        std::fs::write(&api_key_file, &k).unwrap();
        server.ok(&k, &["keygen", "--out", path(&key_file)]);
        k
    };
    let crm = server.path(&format!("{advertiser}-crm.csv"));
    let mut text = String::from("email,segment\n");
    for (name, persons) in segments {
        for i in persons.clone() {
            text.push_str(&format!("person{i}@example.com,{name}\n"));
        }
    }
    for j in 0..60 {
        text.push_str(&format!("stranger{j}@elsewhere.example.org,Strangers\n"));
    }
    std::fs::write(&crm, text).unwrap();
    let args = common::match_email_args(&key_file, &crm, DESTINATION);
    let report = server.json(&api_key, &[&args[..], &["--json"]].concat());
    let mut audiences = BTreeMap::new();
    for (name, _) in segments {
        let segment = common::segment_of(&report, name);
        let Some(id) = segment["audience_id"].as_str() else {
            continue;
        };
        let pulled = server.ok(destination_key, &["audiences", "pull", id]);
        audiences.insert(
            name.to_string(),
            pulled.lines().map(str::to_owned).collect(),
        );
    }
    JobResult {
        id: report["report"]["job_id"].as_str().unwrap().to_string(),
        audiences,
    }
}

/// The graph points a finished job passed to its advertiser, per kind.
fn graph_pass_points(server: &TestServer, advertiser: &str, job_id: &str) -> u64 {
    let api_key = std::fs::read_to_string(server.path(&format!("{advertiser}.api"))).unwrap();
    let shown = server.json(&api_key, &["jobs", "show", job_id, "--json"]);
    let pass = shown["graph_pass"]
        .as_object()
        .or_else(|| shown["job"]["graph_pass"].as_object())
        .unwrap_or_else(|| panic!("no graph pass in {shown}"));
    pass.values().map(|p| p["points"].as_u64().unwrap()).sum()
}

/// The cookie IDs of persons `persons`.
fn cookies_of(persons: impl IntoIterator<Item = usize>) -> BTreeSet<String> {
    persons.into_iter().map(|i| format!("ck-{i}")).collect()
}

fn versions(server: &TestServer) -> Vec<serde_json::Value> {
    server
        .json(
            &server.admin_key.clone(),
            &["admin", "graph", "versions", "--json"],
        )
        .as_array()
        .cloned()
        .unwrap()
}

/// One delta: persons added and removed, the graph after it, and the rows
/// (identifiers and cookies) it adds and removes.
struct Stage {
    name: &'static str,
    added: Range<usize>,
    removed: Range<usize>,
    graph: Range<usize>,
    rows: (u64, u64),
}

#[test]
fn deltas_that_add_remove_and_do_both_give_the_audiences_of_an_equal_full_import() {
    let (a, a_dest) = server();
    let (b, b_dest) = server();
    full_import(&a, 0..600);
    // Each stage: the delta on `a`, the same graph imported whole on `b`,
    // a job of a new advertiser on each (no cache, no difference check).
    let stages = [
        Stage {
            name: "add",
            added: 600..800,
            removed: 0..0,
            graph: 0..800,
            rows: (400, 0),
        },
        Stage {
            name: "remove",
            added: 0..0,
            removed: 0..100,
            graph: 100..800,
            rows: (0, 200),
        },
        Stage {
            name: "mixed",
            added: 800..900,
            removed: 100..150,
            graph: 150..900,
            rows: (200, 100),
        },
    ];
    for Stage {
        name: stage,
        added,
        removed,
        graph,
        rows: (rows_added, rows_removed),
    } in stages
    {
        let summary = delta(&a, added, removed);
        assert_eq!(summary["delta"], true, "{summary}");
        assert_eq!(summary["added"], rows_added, "{stage}: {summary}");
        assert_eq!(summary["removed"], rows_removed, "{stage}: {summary}");
        assert_eq!(summary["persons"], graph.len(), "{stage}: {summary}");
        full_import(&b, graph.clone());
        let segments = [("Low", 0..450), ("High", 450..900)];
        let on_delta = job(&a, &a_dest, &format!("adv-{stage}"), &segments);
        let on_full = job(&b, &b_dest, &format!("adv-{stage}"), &segments);
        assert_eq!(on_delta.audiences, on_full.audiences, "{stage}");
        for (name, persons) in &segments {
            let expected = cookies_of(persons.clone().filter(|i| graph.contains(i)));
            assert_eq!(
                on_delta.audiences.get(*name),
                Some(&expected),
                "{stage}: {name}"
            );
        }
    }
    // The history: the newest three versions, deltas chained on their bases.
    let kept = versions(&a);
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert_eq!(kept[0]["current"], true);
    assert!(kept
        .iter()
        .all(|v| v["mode"] == "delta" && v["importer"] == "admin"));
    for pair in kept.windows(2) {
        assert_eq!(pair[0]["base"], pair[1]["version"], "{kept:?}");
    }
    assert_eq!(kept[0]["persons"], 750);
    assert_eq!(kept[0]["identifiers"]["email"], 750);
    assert_eq!(kept[0]["cookies"][DESTINATION], 750);
    assert_eq!(
        (kept[0]["added"].as_u64(), kept[0]["removed"].as_u64()),
        (Some(200), Some(100))
    );
}

#[test]
fn the_repeat_job_after_a_delta_re_blinds_exactly_the_new_points() {
    let (server, destination) = server();
    full_import(&server, 0..600);
    let segments = [("Low", 0..300), ("High", 300..800)];
    let first = job(&server, &destination, "acme", &segments);
    assert_eq!(graph_pass_points(&server, "acme", &first.id), 600);
    assert_eq!(first.audiences["High"], cookies_of(300..600));

    delta(&server, 600..800, 0..100);
    let repeat = job(&server, &destination, "acme", &segments);
    assert_eq!(
        graph_pass_points(&server, "acme", &repeat.id),
        200,
        "only the 200 added points are new to this key"
    );
    // Cached pairs of removed persons' points match no one any more.
    assert_eq!(repeat.audiences["Low"], cookies_of(100..300));
    assert_eq!(repeat.audiences["High"], cookies_of(300..800));
}

#[test]
fn activate_rolls_back_with_later_optouts_and_erasures_applied() {
    let (server, destination) = server();
    let admin = server.admin_key.clone();
    full_import(&server, 0..400);
    let segments = [("Low", 0..200), ("High", 200..600)];
    let before = job(&server, &destination, "adv-before", &segments);
    assert_eq!(before.audiences["Low"], cookies_of(0..200));
    let delta = delta(&server, 400..600, 0..200);
    let after = job(&server, &destination, "adv-after", &segments);
    assert_eq!(after.audiences.get("Low"), None, "no one of Low is left");
    assert_eq!(after.audiences["High"], cookies_of(200..600));

    let kept = versions(&server);
    let old = kept[1]["version"].as_u64().unwrap();
    assert_eq!(kept[0]["version"], delta["version"]);
    assert_eq!(
        (kept[1]["mode"].as_str(), kept[1]["current"].as_bool()),
        (Some("full"), Some(false))
    );

    // Since the delta: p7 opts out, p8 is erased (from every kept version).
    let optouts = server.path("optouts.csv");
    std::fs::write(&optouts, "kind,value\nemail,person7@example.com\n").unwrap();
    server.ok(&admin, &["admin", "optout", "--file", path(&optouts)]);
    server.ok(&admin, &["admin", "erase", "--person", "p8"]);

    let out = server.ok(&admin, &["admin", "graph", "activate", &old.to_string()]);
    assert!(out.contains("is now current"), "{out}");
    let kept = versions(&server);
    assert_eq!(kept[1]["current"], true, "{kept:?}");
    assert_eq!(
        kept[1]["persons"], 399,
        "the erased person is gone from the kept version"
    );
    let rolled_back = job(&server, &destination, "adv-rolled-back", &segments);
    let mut expected = before.audiences.clone();
    for gone in ["ck-7", "ck-8"] {
        expected.get_mut("Low").unwrap().remove(gone);
    }
    assert_eq!(rolled_back.audiences, expected);

    // Forward again, then a version no longer kept is refused.
    let newest = kept[0]["version"].as_u64().unwrap();
    server.ok(&admin, &["admin", "graph", "activate", &newest.to_string()]);
    for _ in 0..3 {
        full_import(&server, 0..10);
    }
    let out = server.onboard(&admin, &["admin", "graph", "activate", &old.to_string()]);
    assert_eq!(out.status.code(), Some(1), "a deleted version is refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let audit = server.ok(&admin, &["admin", "audit"]);
    assert!(audit.contains("graph.activate"), "{audit}");
}

/// Statistics and a job's audiences before and after an interrupted delta.
fn assert_old_version_intact(server: &TestServer, destination: &str, stats: &serde_json::Value) {
    let now = server.json(&server.admin_key.clone(), &["admin", "stats", "--json"]);
    assert_eq!(now["graph_version"], stats["graph_version"], "{now}");
    assert_eq!(now["persons"], stats["persons"], "{now}");
    assert_eq!(now["cookies"], stats["cookies"], "{now}");
    let segments = [("All", 0..300)];
    let result = job(server, destination, "adv-after-crash", &segments);
    assert_eq!(result.audiences["All"], cookies_of(0..300));
}

#[test]
fn a_delta_crashed_before_its_switch_keeps_the_old_version_whole() {
    let (mut server, destination) = server();
    full_import(&server, 0..300);
    let admin = server.admin_key.clone();
    let stats = server.json(&admin, &["admin", "stats", "--json"]);
    server.stop();
    server.serve_with(&[("FAILPOINTS", "import-commit-sealed=return(durable)")]);
    let args = delta_args(&server, 300..400, 0..100);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = server.onboard(&admin, &args);
    assert!(!out.status.success(), "the delta survived its crash");
    let status = server.wait_for_exit(Duration::from_secs(120));
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{}", server.log());
    assert!(server
        .log()
        .contains("crash point import-commit-sealed: aborting"));
    server.assert_audit_verifies("after the crash");
    server.serve();
    assert_old_version_intact(&server, &destination, &stats);
    // The sealed, never current, version is not kept.
    assert_eq!(versions(&server).len(), 1);
    // Run again, the delta goes through.
    let again = delta(&server, 300..400, 0..100);
    assert_eq!(again["persons"], 300, "{again}");
}

#[test]
fn a_delta_killed_half_sent_keeps_the_old_version_and_can_be_run_again() {
    let (mut server, destination) = server();
    full_import(&server, 0..300);
    let admin = server.admin_key.clone();
    let stats = server.json(&admin, &["admin", "stats", "--json"]);
    // A delta opened and half sent (removals and cookies staged, no commit).
    let pem = std::fs::read(&server.ca).unwrap();
    let http = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let base = format!("{}/v1/admin/graph/imports", server.url);
    let created: serde_json::Value = http
        .post(&base)
        .bearer_auth(&admin)
        .json(&serde_json::json!({"mode": "delta"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(created["mode"], "delta", "{created}");
    let import = format!("{base}/{}", created["import_id"].as_str().unwrap());
    let persons: Vec<String> = (0..100).map(|i| format!("p{i}")).collect();
    let staged = [
        ("removals", serde_json::json!({ "persons": persons })),
        (
            "cookies",
            serde_json::json!({"cookies": [{"person": "p0", "destination": DESTINATION, "cookie": "ck-new"}]}),
        ),
    ];
    for (part, body) in staged {
        let resp = http
            .put(format!("{import}/{part}/0"))
            .bearer_auth(&admin)
            .json(&body)
            .send()
            .unwrap();
        assert!(resp.status().is_success(), "{part}: {}", resp.status());
    }
    // A full import refuses removals.
    let full: serde_json::Value = http
        .post(&base)
        .bearer_auth(&admin)
        .json(&serde_json::json!({}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let refused = http
        .put(format!(
            "{base}/{}/removals/0",
            full["import_id"].as_str().unwrap()
        ))
        .bearer_auth(&admin)
        .json(&serde_json::json!({ "persons": ["p1"] }))
        .send()
        .unwrap();
    assert_eq!(refused.status().as_u16(), 409);
    let commit_refused = http
        .post(format!(
            "{base}/{}/commit",
            full["import_id"].as_str().unwrap()
        ))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"identifier_batches": 0, "removal_batches": 1}))
        .send()
        .unwrap();
    assert_eq!(
        commit_refused.status().as_u16(),
        400,
        "a full import removes no one"
    );
    // A removals batch is validated, and the error names the entry.
    let bad = http
        .put(format!("{import}/removals/1"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({ "persons": ["p1", ""] }))
        .send()
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    assert!(bad.text().unwrap().contains("persons[1]"));

    server.kill();
    server.assert_audit_verifies("after the SIGKILL");
    server.serve();
    assert_old_version_intact(&server, &destination, &stats);
    // Run again from the start, the delta goes through.
    let again = delta(&server, 300..350, 0..100);
    assert_eq!(again["persons"], 250, "{again}");
    assert_eq!(
        (again["added"].as_u64(), again["removed"].as_u64()),
        (Some(100), Some(200))
    );
}
