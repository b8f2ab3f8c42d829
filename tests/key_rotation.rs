//! Server key rotation end to end (issue #23): `onboard-server keys rotate`
//! against a running server moves the graph, the opt-outs and the
//! advertiser's cache to a new key, audiences stay the same, the old key
//! leaves no byte in the data dir, and a crash half-way resumes at start.

mod common;

use common::{
    all_files, assert_no_key_bytes, crm_file, graph_at, key_file, match_emails, pull_all,
    TestServer,
};
use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const PERSONS: usize = 200;
const DESTINATIONS: [&str; 3] = ["dsp-one", "dsp-two", "dsp-three"];

struct Setup {
    server: TestServer,
    advertiser: String,
    destinations: Vec<String>,
    key: PathBuf,
}

/// Persons `p{i}` with `person{i}@example.com` and the cookie `ck-{i}` at
/// every destination; persons 0–4 opted out.
fn setup() -> Setup {
    let server = TestServer::start(&[
        ("K", "50"),
        ("MIN_JOB_ROWS", "50"),
        ("PRIVACY_BUDGET", "100"),
    ]);
    let advertiser = server.create("advertiser", "acme");
    let destinations = DESTINATIONS
        .iter()
        .map(|d| server.create("destination", d))
        .collect();
    graph_at(&server, "graph", PERSONS, &DESTINATIONS, |i| {
        format!("ck-{i}")
    });
    opt_out(&server, 0..5);
    let key = server.path("acme.key");
    server.ok(&advertiser, &["keygen", "--out", key.to_str().unwrap()]);
    Setup {
        server,
        advertiser,
        destinations,
        key,
    }
}

fn opt_out(server: &TestServer, persons: std::ops::Range<usize>) {
    let file = server.path("optouts.csv");
    let mut text = String::from("kind,value\n");
    for i in persons {
        text.push_str(&format!("email,person{i}@example.com\n"));
    }
    std::fs::write(&file, text).unwrap();
    server.ok(
        &server.admin_key.clone(),
        &["admin", "optout", "--file", file.to_str().unwrap()],
    );
}

/// The same CRM (persons 0–159) sent to destination `d`; the cookies it got.
fn audience_at(s: &Setup, d: usize) -> BTreeSet<String> {
    let crm = crm_file(&s.server, "crm.csv", "Buyers", 0..160, 0);
    let out = match_emails(&s.server, &s.advertiser, &s.key, &crm, DESTINATIONS[d]);
    assert!(
        out.status.success(),
        "match to {}: {}",
        DESTINATIONS[d],
        String::from_utf8_lossy(&out.stderr)
    );
    let pulled = pull_all(&s.server, &s.destinations[d]);
    assert_eq!(pulled.len(), 1, "{pulled:?}");
    pulled.into_iter().next().unwrap().1
}

/// The scalar of `server.key`: its hex text and its raw bytes.
fn server_key(s: &Setup) -> (String, Vec<u8>) {
    key_file(&s.server, "server.key")
}

/// `keys rotate`; on PostgreSQL the test's server is the database's only
/// one, as the flag asserts.
fn rotate(s: &Setup) -> std::process::Output {
    let mut args = vec![
        "keys",
        "rotate",
        "--data-dir",
        s.server.data_dir.to_str().unwrap(),
    ];
    if s.server.database.is_some() {
        args.push("--other-servers-stopped");
    }
    s.server.server_cmd(&args)
}

fn assert_old_key_gone(s: &Setup, old: &(String, Vec<u8>)) {
    assert!(!s.server.data_dir.join("server.key.next").exists());
    assert_ne!(&server_key(s), old, "server.key holds a new scalar");
    assert_no_key_bytes(&all_files(&s.server.data_dir), old, "scalar");
}

#[test]
fn a_rotation_keeps_audiences_and_opt_outs_and_leaves_no_byte_of_the_old_key() {
    let s = setup();
    // A second version, so that an older kept one is blinded by the old key too.
    s.server.import(
        &s.server.path("graph-ids.csv"),
        Some(&s.server.path("graph-cookies.csv")),
    );
    let admin = s.server.admin_key.clone();
    let kept = s
        .server
        .json(&admin, &["admin", "graph", "versions", "--json"]);
    assert_eq!(kept.as_array().unwrap().len(), 2, "{kept}");
    let before = audience_at(&s, 0);
    assert_eq!(before.len(), 155, "persons 0–159 minus the 5 opted out");
    let old = server_key(&s);

    let out = rotate(&s);
    assert!(
        out.status.success(),
        "keys rotate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("finished"));
    assert_old_key_gone(&s, &old);
    // Only the rotated version is kept: the others were blinded by `b`.
    let kept = s
        .server
        .json(&admin, &["admin", "graph", "versions", "--json"]);
    let kept = kept.as_array().unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        (kept[0]["importer"].as_str(), kept[0]["current"].as_bool()),
        (Some("key-rotation"), Some(true))
    );

    // The same job (same advertiser key, so the client's `a` is unchanged)
    // after the rotation: the same audience, opted-out persons still out.
    assert_eq!(audience_at(&s, 1), before);

    // Opt-outs made after it are blinded by the new key and still hit.
    opt_out(&s.server, 10..11);
    let after = audience_at(&s, 2);
    assert!(!after.contains("ck-10"));
    assert_eq!(after.len(), before.len() - 1);

    let audit = s.server.server_cmd(&[
        "audit",
        "head",
        "--data-dir",
        s.server.data_dir.to_str().unwrap(),
    ]);
    assert!(audit.status.success());
}

/// The `keys rotate --status` line.
fn status(s: &Setup) -> String {
    let out = s.server.server_cmd(&[
        "keys",
        "rotate",
        "--status",
        "--data-dir",
        s.server.data_dir.to_str().unwrap(),
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The port accepts before the server has opened its store and control
/// socket: one answered request shows both are there.
fn wait_until_serving(s: &Setup) {
    s.server
        .json(&s.server.admin_key.clone(), &["admin", "stats", "--json"]);
}

fn crash_and_resume(point: &str) {
    let mut s = setup();
    let before = audience_at(&s, 0);
    let old = server_key(&s);
    s.server.stop();
    s.server
        .serve_with(&[("FAILPOINTS", &format!("{point}=return(durable)"))]);
    wait_until_serving(&s);
    let out = rotate(&s);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "the server crashed under keys rotate: {said}"
    );
    let exit = s.server.wait_for_exit(Duration::from_secs(120));
    assert_eq!(exit.signal(), Some(libc::SIGABRT), "{}", s.server.log());
    assert!(s
        .server
        .log()
        .contains(&format!("crash point {point}: aborting")));
    assert!(s.server.data_dir.join("server.key.next").exists());

    // Restarted: the rotation resumes by itself and ends.
    s.server.serve();
    wait_until_serving(&s);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = status(&s);
        if line.contains("idle finished") {
            break;
        }
        assert!(Instant::now() < deadline, "no end: {line}");
        assert!(!line.contains("failed"), "{line}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_old_key_gone(&s, &old);
    assert_eq!(audience_at(&s, 1), before);
}

#[test]
fn a_rotation_crashed_after_the_graph_copy_resumes_at_start() {
    crash_and_resume("rotation-graph-written");
}

#[test]
fn a_rotation_crashed_before_its_commit_resumes_at_start() {
    crash_and_resume("rotation-rewritten");
}
