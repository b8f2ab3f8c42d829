//! Rotation of the sealing key and of the API-key pepper end to end (issue
//! #23): `onboard-server keys rotate --seal-key` against a running server
//! re-seals every cookie ID (pulls return the same cookies, nothing stored
//! opens under the old key, a crash half-way resumes at start), and
//! `keys rotate --pepper` keeps every issued API key valid while unknown
//! keys stay refused. Older data dirs, whose one pepper keyed everything,
//! keep their person pseudonyms and sealed cookies through both.

mod common;

use common::{
    all_files, assert_no_key_bytes, crm_file, graph_at, key_file, match_emails, pull_all,
    TestServer,
};
use std::collections::BTreeSet;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

const PERSONS: usize = 200;
const DESTINATIONS: [&str; 2] = ["dsp-one", "dsp-two"];

struct Setup {
    server: TestServer,
    advertiser: String,
    destinations: Vec<String>,
    key: PathBuf,
}

/// The cookie of person `i` at every destination: all the same length, so
/// a scan for sealed values tries one window size.
fn cookie(i: usize) -> String {
    format!("ck-{i:05}")
}

/// A sealed cookie's length: nonce, ciphertext, tag.
const SEALED_LEN: usize = 24 + 8 + 16;

fn start() -> TestServer {
    TestServer::start(&[
        ("K", "50"),
        ("MIN_JOB_ROWS", "50"),
        ("PRIVACY_BUDGET", "100"),
    ])
}

/// Principals, a graph of `PERSONS` with a cookie at each destination, the
/// advertiser's key.
fn setup_on(server: TestServer) -> Setup {
    let advertiser = server.create("advertiser", "acme");
    let destinations = DESTINATIONS
        .iter()
        .map(|d| server.create("destination", d))
        .collect();
    graph_at(&server, "graph", PERSONS, &DESTINATIONS, cookie);
    let key = server.path("acme.key");
    server.ok(&advertiser, &["keygen", "--out", key.to_str().unwrap()]);
    Setup {
        server,
        advertiser,
        destinations,
        key,
    }
}

/// The CRM of persons 0–159 matched to destination `d`.
fn match_to(s: &Setup, d: usize) {
    let crm = crm_file(&s.server, "crm.csv", "Buyers", 0..160, 0);
    let out = match_emails(&s.server, &s.advertiser, &s.key, &crm, DESTINATIONS[d]);
    assert!(
        out.status.success(),
        "match to {}: {}",
        DESTINATIONS[d],
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every audience of destination `d`, pulled in pages of 50 (so cursors are
/// used), by audience ID.
fn pulled(s: &Setup, d: usize) -> Vec<(String, BTreeSet<String>)> {
    let api_key = &s.destinations[d];
    s.server
        .audiences(api_key)
        .iter()
        .map(|a| {
            let id = a["id"].as_str().unwrap();
            let out = s
                .server
                .ok(api_key, &["audiences", "pull", id, "--page-size", "50"]);
            (id.to_string(), out.lines().map(str::to_owned).collect())
        })
        .collect()
}

fn expected_audience() -> BTreeSet<String> {
    (0..160).map(cookie).collect()
}

/// `onboard-server keys rotate ARGS… --data-dir DIR`. On PostgreSQL the
/// test's server is the database's only one, as the flag asserts.
fn rotate(server: &TestServer, args: &[&str]) -> Output {
    let dir = server.data_dir.to_str().unwrap();
    let mut all = vec!["keys", "rotate", "--data-dir", dir];
    all.extend(args);
    if server.database.is_some() {
        all.push("--other-servers-stopped");
    }
    server.server_cmd(&all)
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every stored byte string: each file, and each hex run of the database
/// dump decoded (PostgreSQL dumps `bytea` as `\x…` text).
fn stored_values(server: &TestServer) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for (path, bytes) in server.stored_bytes() {
        for run in bytes.split(|b| !b.is_ascii_hexdigit()) {
            if run.len() >= 2 * SEALED_LEN && run.len() % 2 == 0 {
                if let Ok(raw) = hex::decode(run) {
                    out.push((path.clone(), raw));
                }
            }
        }
        out.push((path, bytes));
    }
    out
}

/// How many windows of the stored bytes open as a cookie sealed under the
/// sealing key `seal` (the `cookie-aead` key derived from it).
fn sealed_under(server: &TestServer, seal: &[u8]) -> usize {
    let key: [u8; 32] = seal.try_into().unwrap();
    stored_values(server)
        .iter()
        .map(|(_, bytes)| {
            bytes
                .windows(SEALED_LEN)
                .filter(|w| onboard_server::services::seal::open(&key, w).is_some())
                .count()
        })
        .sum()
}

fn assert_no_byte_of(server: &TestServer, old: &(String, Vec<u8>), what: &str) {
    assert_no_key_bytes(&stored_values(server), old, what);
}

#[test]
fn a_sealing_key_rotation_keeps_every_pull_and_leaves_nothing_under_the_old_key() {
    let mut s = setup_on(start());
    match_to(&s, 0);
    let before = pulled(&s, 0);
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].1, expected_audience());
    let old = key_file(&s.server, "seal.key");
    // The graph's cookies at both destinations and the audience's members.
    assert!(sealed_under(&s.server, &old.1) >= 2 * PERSONS + 160);

    let out = rotate(&s.server, &["--seal-key"]);
    assert!(
        out.status.success(),
        "keys rotate --seal-key: {}",
        said(&out)
    );
    assert!(said(&out).contains("finished"), "{}", said(&out));
    assert!(!s.server.data_dir.join("seal.key.next").exists());
    assert_ne!(key_file(&s.server, "seal.key"), old);

    // The same audience pulls the same cookie IDs (its positions kept).
    assert_eq!(pulled(&s, 0), before);
    // A job after it seals from the re-sealed graph: the same cookies.
    match_to(&s, 1);
    let after = pull_all(&s.server, &s.destinations[1]);
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].1, expected_audience());

    assert_eq!(sealed_under(&s.server, &old.1), 0);
    assert_no_byte_of(&s.server, &old, "sealing key");
    s.server.stop();
    s.server
        .assert_audit_verifies("after a sealing-key rotation");
}

/// The `keys rotate ARGS… --status` line.
fn status(server: &TestServer, args: &[&str]) -> String {
    let out = rotate(server, &[args, &["--status"]].concat());
    assert!(out.status.success(), "{}", said(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The port accepts before the server has opened its store and control
/// socket: one answered request shows both are there.
fn wait_until_serving(server: &TestServer) {
    server.json(&server.admin_key.clone(), &["admin", "stats", "--json"]);
}

#[test]
fn a_sealing_key_rotation_crashed_after_the_audiences_resumes_at_start() {
    let mut s = setup_on(start());
    match_to(&s, 0);
    let before = pulled(&s, 0);
    let old = key_file(&s.server, "seal.key");
    s.server.stop();
    let point = "rotation-audiences-resealed";
    s.server
        .serve_with(&[("FAILPOINTS", &format!("{point}=return(durable)"))]);
    wait_until_serving(&s.server);
    let out = rotate(&s.server, &["--seal-key"]);
    assert!(
        !out.status.success(),
        "the server crashed under keys rotate: {}",
        said(&out)
    );
    let exit = s.server.wait_for_exit(Duration::from_secs(120));
    assert_eq!(exit.signal(), Some(libc::SIGABRT), "{}", s.server.log());
    assert!(s
        .server
        .log()
        .contains(&format!("crash point {point}: aborting")));
    assert!(s.server.data_dir.join("seal.key.next").exists());

    // Restarted: the rotation resumes by itself and ends.
    s.server.serve();
    wait_until_serving(&s.server);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = status(&s.server, &[]);
        if line.contains("idle finished") {
            break;
        }
        assert!(Instant::now() < deadline, "no end: {line}");
        assert!(!line.contains("failed"), "{line}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!s.server.data_dir.join("seal.key.next").exists());
    assert_eq!(pulled(&s, 0), before);
    assert_eq!(sealed_under(&s.server, &old.1), 0);
    assert_no_byte_of(&s.server, &old, "sealing key");
}

/// `onboard ARGS…` with `api_key` is refused as unauthenticated.
fn assert_refused(server: &TestServer, api_key: &str, args: &[&str]) {
    let out = server.onboard(api_key, args);
    assert!(!out.status.success(), "{args:?} passed with {api_key}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unauthenticated"),
        "{}",
        said(&out)
    );
}

#[test]
fn a_pepper_rotation_keeps_issued_keys_refuses_unknown_ones_and_moves_no_person() {
    let mut s = setup_on(start());
    match_to(&s, 0);
    let old = key_file(&s.server, "pepper.key");
    let unknown = "obk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    assert_refused(&s.server, unknown, &["jobs", "list"]);

    let out = rotate(&s.server, &["--pepper"]);
    assert!(out.status.success(), "keys rotate --pepper: {}", said(&out));
    // admin, acme, dsp-one, dsp-two: none used since.
    assert!(said(&out).contains("4 live API keys"), "{}", said(&out));
    assert!(s.server.data_dir.join("pepper.key.old").exists());
    let again = rotate(&s.server, &["--pepper"]);
    assert!(!again.status.success(), "one pepper rotation at a time");

    // Keys issued before still authenticate, and move on use.
    s.server.ok(&s.advertiser, &["jobs", "list"]);
    s.server.ok(&s.destinations[0], &["audiences", "list"]);
    assert!(status(&s.server, &["--pepper"]).contains("2 live API keys"));
    assert_refused(&s.server, unknown, &["jobs", "list"]);
    let refused = rotate(&s.server, &["--pepper", "--finish"]);
    assert!(!refused.status.success());
    assert!(
        said(&refused).contains("2 live API keys"),
        "{}",
        said(&refused)
    );

    // A key made now, the remaining old ones used: finish.
    let late = s.server.create("destination", "dsp-late");
    s.server.ok(&late, &["audiences", "list"]);
    s.server.ok(&s.destinations[1], &["audiences", "list"]);
    s.server
        .json(&s.server.admin_key.clone(), &["admin", "stats", "--json"]);
    assert!(status(&s.server, &["--pepper"]).contains(" 0 live API keys"));
    let out = rotate(&s.server, &["--pepper", "--finish"]);
    assert!(out.status.success(), "{}", said(&out));
    assert!(!s.server.data_dir.join("pepper.key.old").exists());
    assert_no_byte_of(&s.server, &old, "pepper");

    // After a restart every key still works; the unknown one does not.
    s.server.stop();
    s.server.serve();
    s.server.ok(&s.advertiser, &["jobs", "list"]);
    s.server.ok(&late, &["audiences", "list"]);
    assert_refused(&s.server, unknown, &["jobs", "list"]);
    // Person pseudonyms did not move: the same CRM reaches the same persons.
    match_to(&s, 1);
    assert_eq!(
        pull_all(&s.server, &s.destinations[1])[0].1,
        expected_audience()
    );
    s.server.stop();
    s.server.assert_audit_verifies("after a pepper rotation");
}

/// Remove the store's key fingerprints (server stopped), as in a store an
/// older build wrote.
fn forget_key_fingerprints(server: &TestServer) {
    let storage = onboard_server::Config::for_data_dir(&server.data_dir, None)
        .unwrap()
        .storage_config()
        .unwrap();
    let repo = onboard_server::storage::open(&server.data_dir, &storage).unwrap();
    repo.put_key_fingerprints(None).unwrap();
    repo.flush().unwrap();
}

#[test]
fn an_older_data_dir_keeps_its_pseudonyms_and_cookies_through_both_rotations() {
    // A data dir of a build with one pepper for everything: no identity or
    // sealing key file, no key fingerprints in the store. The server writes
    // both files from the pepper at start.
    let mut server = start();
    server.stop();
    for f in ["identity.key", "seal.key"] {
        std::fs::remove_file(server.data_dir.join(f)).unwrap();
    }
    forget_key_fingerprints(&server);
    server.serve();
    wait_until_serving(&server);
    let pepper = key_file(&server, "pepper.key");
    assert_eq!(key_file(&server, "identity.key").1, pepper.1);
    assert_eq!(key_file(&server, "seal.key").1, pepper.1);
    let s = setup_on(server);
    match_to(&s, 0);
    let before = pulled(&s, 0);

    let out = rotate(&s.server, &["--pepper"]);
    assert!(out.status.success(), "{}", said(&out));
    let out = rotate(&s.server, &["--seal-key"]);
    assert!(out.status.success(), "{}", said(&out));
    assert_eq!(key_file(&s.server, "identity.key").1, pepper.1);
    assert_ne!(key_file(&s.server, "pepper.key").1, pepper.1);
    assert_ne!(key_file(&s.server, "seal.key").1, pepper.1);
    assert_eq!(pulled(&s, 0), before);
    match_to(&s, 1);
    assert_eq!(
        pull_all(&s.server, &s.destinations[1])[0].1,
        expected_audience()
    );
    // What was sealed under the pepper now opens only under the new key.
    assert_eq!(sealed_under(&s.server, &pepper.1), 0);
    for (path, _) in all_files(&s.server.data_dir) {
        assert!(!path.ends_with("seal.key.next"), "{}", path.display());
    }
}

/// `serve` of `data_dir`, which must fail at start; its stderr (a file, so
/// a chatty process never blocks on a full pipe).
fn refused_start(data_dir: &std::path::Path) -> String {
    let log_path = data_dir.with_file_name("refused-start.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = std::process::Command::new(common::SUITE)
        .args(["server", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("ONBOARD_METRICS_LISTEN", "127.0.0.1:0")
        .env_remove("ONBOARD_DATABASE_URL")
        .env_remove("ONBOARD_STORAGE")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the server started with key files the store does not know: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    std::fs::read_to_string(&log_path).unwrap()
}

/// Replace a 32-byte key file by a fresh key of the same format.
fn replace_key_file(data_dir: &std::path::Path, name: &str) -> Vec<u8> {
    let path = data_dir.join(name);
    let original = std::fs::read(&path).unwrap();
    let text = String::from_utf8(original.clone()).unwrap();
    let label = text.split_whitespace().next().unwrap();
    std::fs::remove_file(&path).unwrap();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    writeln!(file, "{label} {}", "ab".repeat(32)).unwrap();
    original
}

/// Write a key file (mode 0600, as an operator copies one), replacing it.
fn restore_key_file(data_dir: &std::path::Path, name: &str, bytes: &[u8]) {
    let path = data_dir.join(name);
    let _ = std::fs::remove_file(&path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

#[test]
fn a_server_whose_key_file_differs_from_the_stores_refuses_to_start() {
    let mut server = start();
    // Answered with our admin key: this server ran its start-up checks
    // (and recorded the fingerprints), not another process on the port.
    wait_until_serving(&server);
    server.stop();
    for name in ["seal.key", "pepper.key", "identity.key"] {
        let original = replace_key_file(&server.data_dir, name);
        let said = refused_start(&server.data_dir);
        assert!(
            said.contains(&format!("{name} of this data dir is not the key")),
            "{name}: {said}"
        );
        restore_key_file(&server.data_dir, name, &original);
    }
    server.serve();
    wait_until_serving(&server);
}

/// Copy key files from one server's data dir to another's, as an operator.
fn copy_keys(from: &TestServer, to: &TestServer, names: &[&str]) {
    for name in names {
        let bytes = std::fs::read(from.data_dir.join(name)).unwrap();
        restore_key_file(&to.data_dir, name, &bytes);
    }
}

#[test]
fn two_servers_on_one_database_rotate_with_one_stopped_and_take_the_new_keys() {
    let first = start();
    if first.database.is_none() {
        println!("skipped: several servers share only a PostgreSQL database");
        return;
    }
    let s = setup_on(first);
    match_to(&s, 0);
    let before = pulled(&s, 0);
    let mut other = s.server.start_beside();
    other.stop();

    for args in [&["--seal-key"][..], &["--pepper"], &[]] {
        let out = rotate(&s.server, args);
        assert!(out.status.success(), "keys rotate {args:?}: {}", said(&out));
    }
    // The other server still holds the old keys: it refuses to start.
    let said = refused_start(&other.data_dir);
    assert!(said.contains("is not the key"), "{said}");
    copy_keys(&s.server, &other, &["server.key", "seal.key", "pepper.key"]);
    let said = refused_start(&other.data_dir);
    assert!(said.contains("pepper.key.old"), "{said}");
    copy_keys(&s.server, &other, &["pepper.key.old"]);
    other.serve();
    wait_until_serving(&other);

    // Through the other server: the same audience, the same cookies, keys
    // issued before the pepper rotation still valid.
    let api_key = &s.destinations[0];
    for (id, cookies) in &before {
        let out = other.ok(api_key, &["audiences", "pull", id, "--page-size", "50"]);
        let again: BTreeSet<String> = out.lines().map(str::to_owned).collect();
        assert_eq!(&again, cookies);
    }
    other.ok(&s.advertiser, &["jobs", "list"]);
}
