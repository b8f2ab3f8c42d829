//! Attacks on the privacy rules, each done for real against the real server
//! through the real client: differencing, probe segments, repeated counts,
//! opt-out and erasure.

mod common;

use common::{contains, crm_file, match_emails, pull_all, segment_of, simple_graph, TestServer};
use std::collections::HashSet;
use std::path::PathBuf;

const DSP: &str = "dsp-alpha";

fn parse(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "match failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("match --json prints JSON")
}

struct Setup {
    server: TestServer,
    advertiser: String,
    destination: String,
    key: std::path::PathBuf,
}

fn setup(persons: usize, env: &[(&str, &str)]) -> Setup {
    let server = TestServer::start(env);
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

#[test]
fn differencing_a_segment_plus_one_person_is_withheld() {
    let s = setup(
        300,
        &[
            ("K", "50"),
            ("MIN_JOB_ROWS", "50"),
            ("PRIVACY_BUDGET", "100"),
        ],
    );
    let first = crm_file(&s.server, "s.csv", "Target", 0..120, 0);
    let report = parse(&match_emails(&s.server, &s.advertiser, &s.key, &first, DSP));
    assert_eq!(
        segment_of(&report, "Target")["status"],
        "delivered",
        "{report}"
    );

    // S plus one person: the audiences would differ by exactly that person,
    // as a refresh of S (held back) or as a new audience (difference check).
    let second = crm_file(&s.server, "s-plus-one.csv", "Target", 0..121, 0);
    let args = common::match_email_args(&s.key, &second, DSP);
    for (extra, reason) in [
        (None, "refresh-change-below-k"),
        (Some("--new-audience"), "too-close-to-earlier-audience"),
    ] {
        let args = [&args[..], extra.as_slice(), &["--json"]].concat();
        let report = parse(&s.server.onboard(&s.advertiser, &args));
        let seg = segment_of(&report, "Target");
        assert_eq!(seg["status"], "withheld", "{report}");
        assert_eq!(seg["reason"], reason, "{report}");
    }

    // The destination got the first audience only; person 120 is in none.
    let pulled = pull_all(&s.server, &s.destination);
    assert_eq!(pulled.len(), 1, "{pulled:?}");
    assert!(!pulled[0].1.contains("ck-120"));
    assert_eq!(pulled[0].1.len(), 120);
}

#[test]
fn probe_segment_with_one_target_is_withheld_and_reads_below_k() {
    let s = setup(100, &[("K", "50"), ("MIN_JOB_ROWS", "50")]);
    let probe = crm_file(&s.server, "probe.csv", "Probe", [7], 99);
    let report = parse(&match_emails(&s.server, &s.advertiser, &s.key, &probe, DSP));
    let seg = segment_of(&report, "Probe");
    assert_eq!(seg["status"], "withheld", "{report}");
    assert_eq!(seg["reason"], "below-minimum-size", "{report}");
    assert_eq!(seg["matched"], "< 50", "{report}");
    assert!(pull_all(&s.server, &s.destination).is_empty());
}

#[test]
fn repeated_counts_hit_the_budget_before_revealing_the_exact_count() {
    // ε = 0.05 per released value: noise of a few tens. A job of one
    // segment releases three (its count, its difference, the match rate):
    // 0.15 a job, so the budget of 0.76 pays for 5 jobs. Each asks for a
    // new audience: a noisy count may clear the size rule once, and a
    // refresh of that audience would release two values more.
    let s = setup(
        400,
        &[
            ("K", "50"),
            ("MIN_JOB_ROWS", "50"),
            ("EPSILON", "0.05"),
            ("PRIVACY_BUDGET", "0.76"),
        ],
    );
    let crm = crm_file(&s.server, "same.csv", "Same", 0..237, 0);
    let mut counts = Vec::new();
    let mut refused = None;
    for attempt in 0..10 {
        let args = common::match_email_args(&s.key, &crm, DSP);
        let out = s.server.onboard(
            &s.advertiser,
            &[&args[..], &["--new-audience", "--json"]].concat(),
        );
        if !out.status.success() {
            refused = Some((attempt, String::from_utf8_lossy(&out.stderr).to_string()));
            break;
        }
        let report = parse(&out);
        let matched = segment_of(&report, "Same")["matched"]
            .as_str()
            .unwrap()
            .to_string();
        counts.push(
            matched
                .trim_start_matches(['~', '≈', ' '])
                .parse::<i64>()
                .expect("a number above k"),
        );
    }
    let (attempt, message) = refused.expect("the budget must run out within 10 identical jobs");
    assert_eq!(
        attempt, 5,
        "5 jobs × 3 values × ε 0.05 fit the 0.76 budget, a sixth does not: {counts:?}: {message}"
    );
    assert!(message.contains("budget"), "{message}");
    // The answers are noisy and rounded: they are not all the exact count,
    // and they spread.
    assert!(counts.iter().all(|c| c % 10 == 0), "{counts:?}");
    let distinct: std::collections::BTreeSet<_> = counts.iter().collect();
    assert!(
        distinct.len() >= 2,
        "noisy counts should differ: {counts:?}"
    );
    let mean = counts.iter().sum::<i64>() as f64 / counts.len() as f64;
    assert!(
        (mean - 237.0).abs() < 150.0,
        "noise is centred on the truth: {counts:?}"
    );
}

#[test]
fn opted_out_identifier_never_reaches_a_later_audience_and_leaves_unpulled_ones() {
    let s = setup(
        300,
        &[
            ("K", "50"),
            ("MIN_JOB_ROWS", "50"),
            ("PRIVACY_BUDGET", "100"),
        ],
    );
    let crm = crm_file(&s.server, "crm.csv", "Fans", 0..150, 0);
    parse(&match_emails(&s.server, &s.advertiser, &s.key, &crm, DSP));

    let optouts = s.server.path("optouts.csv");
    std::fs::write(&optouts, "kind,value\nemail,Person3@Example.com\n").unwrap();
    s.server.ok(
        &s.server.admin_key.clone(),
        &["admin", "optout", "--file", optouts.to_str().unwrap()],
    );

    // The unpulled audience lost person 3.
    let pulled = pull_all(&s.server, &s.destination);
    assert_eq!(pulled.len(), 1);
    assert!(
        !pulled[0].1.contains("ck-3") && pulled[0].1.contains("ck-4"),
        "{pulled:?}"
    );

    // A later job with a different segment (110 persons past the first, so
    // it is released) never includes person 3.
    let later = crm_file(&s.server, "later.csv", "Later", 0..260, 0);
    let report = parse(&match_emails(&s.server, &s.advertiser, &s.key, &later, DSP));
    assert_eq!(
        segment_of(&report, "Later")["status"],
        "delivered",
        "{report}"
    );
    let pulled = pull_all(&s.server, &s.destination);
    assert!(pulled.iter().any(|(segment, _)| segment == "Later"));
    for (segment, cookies) in pulled {
        assert!(
            !cookies.contains("ck-3"),
            "{segment} contains the opted-out person"
        );
    }
}

#[test]
fn erased_person_leaves_the_graph_the_audiences_and_the_disk_and_stays_gone_after_reimports() {
    // Each job's segment is 110 persons past the last one, so it clears
    // k = 50 plus the release margin (28 at ε = 0.5) with room for noise.
    let s = setup(
        450,
        &[
            ("K", "50"),
            ("MIN_JOB_ROWS", "50"),
            ("PRIVACY_BUDGET", "100"),
        ],
    );
    // A job first: the advertiser's cache now holds p42's points.
    let crm = crm_file(&s.server, "crm.csv", "Fans", 0..110, 0);
    parse(&match_emails(&s.server, &s.advertiser, &s.key, &crm, DSP));
    let admin = s.server.admin_key.clone();
    let before = s.server.json(&admin, &["admin", "stats", "--json"]);

    s.server.ok(&admin, &["admin", "erase", "--person", "p42"]);

    let after = s.server.json(&admin, &["admin", "stats", "--json"]);
    let persons = after["persons"].as_u64().unwrap();
    assert_eq!(persons + 1, before["persons"].as_u64().unwrap(), "{after}");
    assert_eq!(after["erasures"], 1, "{after}");
    let pulled = pull_all(&s.server, &s.destination);
    assert!(
        pulled.iter().all(|(_, c)| !c.contains("ck-42")),
        "{pulled:?}"
    );
    assert!(pulled.iter().any(|(_, c)| c.contains("ck-41")));

    // A full import of the very same files skips p42's rows, and a later
    // job (whose audience would hold p42) does not find p42 again.
    let (ids, cookies) = (
        s.server.path("simple-ids.csv"),
        s.server.path("simple-cookies.csv"),
    );
    assert_eq!(import_json(&s.server, &ids, &cookies)["skipped_erased"], 2);
    let stats = s.server.json(&admin, &["admin", "stats", "--json"]);
    assert_eq!(stats["persons"].as_u64(), Some(persons), "{stats}");
    assert_delivered_without_person_42(&s, "Later", 0..220);

    // Nothing of person 42 remains anywhere in the data dir.
    let audit = s.server.ok(&admin, &["admin", "audit", "--json"]);
    assert!(audit.contains("\"erase\""), "erasure is audited");
    let mut s = s;
    s.server.stop();
    assert_no_trace_of_person_42(&s.server.stored_bytes());
    s.server.serve();

    // p42's email under a new person ID is skipped too.
    let renamed = |text: String| text.replace("p42,", "p42-new,");
    let ids_new = s.server.path("renamed-ids.csv");
    let cookies_new = s.server.path("renamed-cookies.csv");
    std::fs::write(&ids_new, renamed(std::fs::read_to_string(&ids).unwrap())).unwrap();
    std::fs::write(
        &cookies_new,
        renamed(std::fs::read_to_string(&cookies).unwrap()),
    )
    .unwrap();
    assert_eq!(
        import_json(&s.server, &ids_new, &cookies_new)["skipped_erased"],
        1
    );
    assert_delivered_without_person_42(&s, "Renamed", 0..330);

    // Lifted (audited, under the pseudonym), the next import brings p42 back.
    s.server
        .ok(&admin, &["admin", "erase", "--person", "p42", "--lift"]);
    let audit = s.server.ok(&admin, &["admin", "audit", "--json"]);
    assert!(audit.contains("\"erase.lift\""), "lifting is audited");
    assert!(
        !audit.contains("p42"),
        "the audit log names pseudonyms only"
    );
    assert_eq!(
        s.server.json(&admin, &["admin", "stats", "--json"])["erasures"],
        0
    );
    assert_eq!(import_json(&s.server, &ids, &cookies)["skipped_erased"], 0);
    let crm = crm_file(&s.server, "back.csv", "Back", 0..440, 0);
    let report = parse(&match_emails(&s.server, &s.advertiser, &s.key, &crm, DSP));
    assert_eq!(
        segment_of(&report, "Back")["status"],
        "delivered",
        "{report}"
    );
    assert!(
        pull_all(&s.server, &s.destination)
            .iter()
            .any(|(segment, c)| segment == "Back" && c.contains("ck-42")),
        "a lifted person comes back"
    );
}

/// The store at rest (sled's files; on PostgreSQL a `pg_dump` of the
/// database) after a whole job: no identifier, no plain SHA-256 of one
/// (raw or hex) and no cookie ID, of any person.
#[test]
fn after_a_job_nothing_at_rest_holds_an_identifier_its_plain_digest_or_a_cookie_id() {
    let persons = 200;
    let mut s = setup(persons, &[("K", "50"), ("MIN_JOB_ROWS", "50")]);
    let crm = crm_file(&s.server, "crm.csv", "Fans", 0..150, 20);
    let report = parse(&match_emails(&s.server, &s.advertiser, &s.key, &crm, DSP));
    assert_eq!(
        segment_of(&report, "Fans")["status"],
        "delivered",
        "{report}"
    );
    assert!(!pull_all(&s.server, &s.destination).is_empty());
    s.server.stop();

    let files = s.server.stored_bytes();
    assert_store_read(&files);
    let emails: Vec<String> = (0..persons)
        .map(|i| format!("person{i}@example.com"))
        .chain((0..20).map(|j| format!("stranger{j}.crm.csv@elsewhere.example.org")))
        .collect();
    let digests: HashSet<[u8; 32]> = emails.iter().map(|e| sha2_digest(e.as_bytes())).collect();
    let hex_digests: HashSet<[u8; 32]> = digests
        .iter()
        .map(|d| hex(&d[..16]).into_bytes().try_into().unwrap())
        .collect();
    for (path, bytes) in &files {
        let at = path.display();
        assert!(!contains(bytes, b"example.com"), "{at} holds an email");
        assert!(!contains(bytes, b"example.org"), "{at} holds an email");
        for w in bytes.windows(32) {
            let w: &[u8; 32] = w.try_into().unwrap();
            assert!(!digests.contains(w), "{at} holds a plain SHA-256");
            assert!(
                !hex_digests.contains(w),
                "{at} holds a plain SHA-256 in hex"
            );
        }
        let cookie = bytes
            .windows(5)
            .position(|w| w.starts_with(b"ck-") && w[3..].iter().all(u8::is_ascii_digit));
        assert_eq!(cookie, None, "{at} holds a cookie ID at that byte");
    }
}

/// `admin graph import --json` of an identifiers and a cookies file.
fn import_json(
    server: &common::TestServer,
    ids: &std::path::Path,
    cookies: &std::path::Path,
) -> serde_json::Value {
    let admin = server.admin_key.clone();
    let (ids, cookies) = (ids.to_str().unwrap(), cookies.to_str().unwrap());
    server.json(
        &admin,
        &[
            "admin",
            "graph",
            "import",
            "--identifiers",
            ids,
            "--cookies",
            cookies,
            "--json",
        ],
    )
}

/// A job on `members` delivers `segment`, and no audience holds person 42.
fn assert_delivered_without_person_42(s: &Setup, segment: &str, members: std::ops::Range<usize>) {
    let crm = crm_file(&s.server, &format!("{segment}.csv"), segment, members, 0);
    let report = parse(&match_emails(&s.server, &s.advertiser, &s.key, &crm, DSP));
    assert_eq!(
        segment_of(&report, segment)["status"],
        "delivered",
        "{report}"
    );
    let pulled = pull_all(&s.server, &s.destination);
    assert!(pulled.iter().any(|(name, _)| name == segment), "{pulled:?}");
    for (name, cookies) in pulled {
        assert!(!cookies.contains("ck-42"), "{name} holds the erased person");
    }
}

/// Nothing stored holds person 42's email, its digest or its cookie ID.
fn assert_no_trace_of_person_42(files: &[(PathBuf, Vec<u8>)]) {
    let email = b"person42@example.com".to_vec();
    let digest = sha2_digest(&email);
    assert_store_read(files);
    for (path, bytes) in files {
        for needle in [
            &email,
            &digest.to_vec(),
            &hex(&digest).into_bytes(),
            &b"ck-42".to_vec(),
        ] {
            assert!(
                !contains(bytes, needle),
                "{} still holds a trace of the erased person",
                path.display()
            );
        }
    }
}

/// Positive control of a scan: it reads the store's records (a principal's
/// name is stored as it is), and even live cookie IDs are sealed at rest.
fn assert_store_read(files: &[(PathBuf, Vec<u8>)]) {
    assert!(
        files.iter().any(|(_, b)| contains(b, DSP.as_bytes())),
        "the scan reads the store"
    );
    assert!(
        files.iter().all(|(_, b)| !contains(b, b"ck-41")),
        "cookie IDs are sealed at rest"
    );
}

fn sha2_digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
