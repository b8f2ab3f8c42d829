//! End to end: a real server (TLS on 127.0.0.1 with a dev CA) and the real
//! `onboard` binary. One server is shared by the tests of this file; each
//! test uses its own advertiser so audiences never interfere.

use onboard_server::{Config, InitOptions, ServerHandle};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Persons in the test graph.
const PERSONS: usize = 1500;

struct Env {
    dir: tempfile::TempDir,
    url: String,
    ca: PathBuf,
    admin_key: PathBuf,
    _server: ServerHandle,
}

fn phone_national(i: usize) -> String {
    let n = format!("{:08}", 12_000_000 + i);
    format!("06 {} {} {} {}", &n[..2], &n[2..4], &n[4..6], &n[6..8])
}

fn phone_international(i: usize) -> String {
    format!("+336{:08}", 12_000_000 + i)
}

fn email(i: usize) -> String {
    format!("person{i}@example.com")
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        // A static is never dropped, so its directory would outlive the run:
        // it lives under cargo's test scratch space, and an earlier run's is
        // removed first.
        let scratch = Path::new(env!("CARGO_TARGET_TMPDIR"));
        for old in std::fs::read_dir(scratch).into_iter().flatten().flatten() {
            if old.file_name().to_string_lossy().starts_with("client-e2e-") {
                let _ = std::fs::remove_dir_all(old.path());
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("client-e2e-")
            .tempdir_in(scratch)
            .unwrap();
        let data = dir.path().join("data");
        let init = onboard_server::init(&InitOptions {
            data_dir: data.clone(),
            dev_tls: true,
            admin_key_out: None,
            database_url: None,
        })
        .expect("server init");
        let config = Config {
            data_dir: data,
            k: 50,
            min_job_rows: 10,
            page_size: 500,
            privacy_budget_micro: 1_000_000_000,
            max_open_jobs: 16,
            metrics_listen: None,
            ..Config::default()
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = onboard_server::start(config, listener).expect("server start");
        let admin_key = dir.path().join("admin.key");
        write_private(&admin_key, &init.admin_api_key);
        let env = Env {
            url: format!("https://127.0.0.1:{}", server.addr.port()),
            ca: init.ca_cert.expect("dev CA"),
            admin_key,
            dir,
            _server: server,
        };
        // The graph: every person has an email and a French mobile, and a
        // cookie at dsp-a; one row in 50 is invalid and must be skipped.
        let mut ids = String::from("person_id,kind,value\n");
        let mut cookies = String::from("person_id,destination,cookie_id\n");
        for i in 0..PERSONS {
            let _ = writeln!(ids, "p{i},email,{}", email(i));
            let _ = writeln!(ids, "p{i},phone,{}", phone_international(i));
            if i % 50 == 0 {
                let _ = writeln!(ids, "p{i},email,not-an-email");
            }
            let _ = writeln!(cookies, "p{i},dsp-a,c-{i}");
        }
        let ids = write(env.dir.path(), "ids.csv", &ids);
        let cookies = write(env.dir.path(), "cookies.csv", &cookies);
        let out = env.admin(&[
            "admin",
            "graph",
            "import",
            "--identifiers",
            s(&ids),
            "--cookies",
            s(&cookies),
            "--json",
        ]);
        assert_ok(&out);
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(summary["identifiers_sent"], 2 * PERSONS as u64);
        assert_eq!(
            summary["invalid"]["email-shape"]["count"],
            (PERSONS / 50) as u64
        );
        assert_eq!(summary["cookies_sent"], PERSONS as u64);
        assert_ok(&env.admin(&["admin", "destination", "create", "dsp-a"]));
        env
    })
}

impl Env {
    fn run(&self, key: Option<&Path>, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_onboard"));
        cmd.args(["--server", &self.url, "--ca", s(&self.ca), "--quiet"]);
        if let Some(key) = key {
            cmd.args(["--api-key-file", s(key)]);
        }
        cmd.args(args)
            .env_remove("ONBOARD_API_KEY")
            .output()
            .expect("run onboard")
    }

    fn admin(&self, args: &[&str]) -> Output {
        self.run(Some(&self.admin_key), args)
    }

    /// Create a principal with the CLI; the key is the last line of stdout.
    fn principal(&self, role: &str, name: &str) -> PathBuf {
        let out = self.admin(&["admin", role, "create", name]);
        assert_ok(&out);
        let stdout = String::from_utf8(out.stdout).unwrap();
        let key = stdout.lines().last().unwrap();
        assert!(
            key.starts_with("obk_"),
            "the key alone on the last line: {stdout}"
        );
        let path = self.dir.path().join(format!("{name}.apikey"));
        write_private(&path, key);
        path
    }

    fn keygen(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.key"));
        assert_ok(&self.run(None, &["keygen", "--out", s(&path)]));
        path
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Write a file of mode 0600: `onboard` refuses key files others may read
/// (harmless for the CSVs written here too).
fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    write_private(&path, content);
    path
}

fn write_private(path: &Path, content: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_fails(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "`{n}` not in: {stderr}");
    }
}

/// Who is in which segment of the test CRM: persons 0..600, Gold below 300,
/// Silver from 300, both for 280..320; no consent for every tenth; plus
/// 150 rows of people unknown to the graph.
fn crm_rows() -> Vec<(Option<usize>, &'static str, bool)> {
    let mut rows = Vec::new();
    for i in 0..600 {
        let seg = if (280..320).contains(&i) {
            "Gold|Silver"
        } else if i < 300 {
            "Gold"
        } else {
            "Silver"
        };
        rows.push((Some(i), seg, i % 10 != 9));
    }
    for _ in 0..150 {
        rows.push((None, "Gold", true));
    }
    rows
}

fn expected_members(segment: &str) -> BTreeSet<String> {
    crm_rows()
        .into_iter()
        .filter(|(p, seg, consent)| p.is_some() && *consent && seg.split('|').any(|s| s == segment))
        .map(|(p, _, _)| format!("c-{}", p.unwrap()))
        .collect()
}

fn run_match(
    env: &Env,
    api_key: &Path,
    key: &Path,
    crm: &Path,
    cols: &[&str],
) -> serde_json::Value {
    let mut args = vec![
        "match",
        "--input",
        s(crm),
        "--key",
        s(key),
        "--destination",
        "dsp-a",
        "--json",
    ];
    args.extend_from_slice(cols);
    let out = env.run(Some(api_key), &args);
    assert_ok(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn pull(env: &Env, dest_key: &Path, audience: &str) -> BTreeSet<String> {
    let out = env.run(Some(dest_key), &["audiences", "pull", audience]);
    assert_ok(&out);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn french_export_with_bom_matches_like_the_international_one() {
    let env = env();
    let api_key = env.principal("advertiser", "acme");
    let key = env.keygen("acme");
    // The French export goes through a second advertiser: the same persons
    // again under one advertiser would be withheld as identical audiences.
    let api_key_fr = env.principal("advertiser", "acme-fr");
    let key_fr = env.keygen("acme-fr");

    // `,`-separated, international phones, plain lower-case emails for half.
    let mut a = String::from("email,phone,segment,consent\n");
    // `;`-separated with BOM, national phones, messy emails, quoted cells, oui/non.
    let mut b = String::from("\u{feff}Email;Téléphone;Segments;Consentement\n");
    for (n, (person, seg, consent)) in crm_rows().into_iter().enumerate() {
        let (mail, intl, national) = match person {
            Some(i) => (
                if i % 2 == 0 { email(i) } else { String::new() },
                phone_international(i),
                phone_national(i),
            ),
            None => (
                format!("stranger{n}@example.org"),
                String::new(),
                String::new(),
            ),
        };
        let messy = if mail.is_empty() {
            String::new()
        } else {
            format!(" {} ", mail.to_uppercase())
        };
        let _ = writeln!(
            a,
            "{mail},{intl},{seg},{}",
            if consent { "true" } else { "false" }
        );
        let _ = writeln!(
            b,
            "\"{messy}\";{national};\"{seg}\";{}",
            if consent { "Oui" } else { "non" }
        );
    }
    let a = write(env.dir.path(), "crm-a.csv", &a);
    let b = write(env.dir.path(), "crm-b.csv", &b);
    let ra = run_match(
        env,
        &api_key,
        &key,
        &a,
        &[
            "--email-col",
            "email",
            "--phone-col",
            "phone",
            "--segment-col",
            "segment",
            "--consent-col",
            "consent",
        ],
    );
    let rb = run_match(
        env,
        &api_key_fr,
        &key_fr,
        &b,
        &[
            "--email-col",
            "Email",
            "--phone-col",
            "Téléphone",
            "--segment-col",
            "Segments",
            "--consent-col",
            "Consentement",
        ],
    );

    for r in [&ra, &rb] {
        assert_eq!(r["quality"]["rows_read"], 750);
        assert_eq!(r["quality"]["rows_without_consent"], 60);
        assert_eq!(r["quality"]["rows_to_upload"], 690);
        assert_eq!(r["report"]["rows_uploaded"], 690);
        assert_eq!(r["report"]["status"], "finished");
    }
    assert_eq!(rb["quality"]["delimiter"], ";");
    let segments = |r: &serde_json::Value| -> Vec<(String, u64, String)> {
        let mut v: Vec<_> = r["report"]["segments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_owned(),
                    s["rows_uploaded"].as_u64().unwrap(),
                    s["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(segments(&ra), segments(&rb));
    assert_eq!(ra["report"]["identifiers"], rb["report"]["identifiers"]);
    assert!(
        segments(&ra)
            .iter()
            .all(|(_, _, status)| status == "delivered"),
        "{ra}"
    );

    // The audiences hold exactly the consenting matched persons' cookies,
    // the same for both exports.
    let dest = env.dir.path().join("dsp-a.apikey.pull");
    let out = env.admin(&["admin", "keys", "create", "dsp-a"]);
    assert_ok(&out);
    write_private(
        &dest,
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    );
    for segment in ["Gold", "Silver"] {
        let audience = |r: &serde_json::Value| -> String {
            r["report"]["segments"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == segment)
                .unwrap()["audience_id"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let (ma, mb) = (
            pull(env, &dest, &audience(&ra)),
            pull(env, &dest, &audience(&rb)),
        );
        assert_eq!(ma, expected_members(segment), "{segment}");
        assert_eq!(ma, mb, "{segment}");
    }

    // The destination lists them; the advertiser may not.
    let out = env.run(Some(&dest), &["audiences", "list", "--json"]);
    assert_ok(&out);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(list["audiences"].as_array().unwrap().len() >= 4);
    assert_fails(&env.run(Some(&api_key), &["audiences", "list"]), &["403"]);

    // The advertiser sees its finished jobs.
    let out = env.run(Some(&api_key), &["jobs", "list", "--json"]);
    assert_ok(&out);
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&ra["report"]["job_id"].as_str().unwrap()),
        "{jobs}"
    );
    let out = env.run(
        Some(&api_key),
        &["jobs", "show", ra["report"]["job_id"].as_str().unwrap()],
    );
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("finished"));

    // A repeat job uses the server's cache: no graph pass, the same persons,
    // so each segment's refresh of its audience changes nothing and is held
    // back (an empty change reads like any change below k).
    let rc = run_match(
        env,
        &api_key,
        &key,
        &a,
        &[
            "--email-col",
            "email",
            "--phone-col",
            "phone",
            "--segment-col",
            "segment",
            "--consent-col",
            "consent",
        ],
    );
    assert_eq!(rc["report"]["identifiers"], ra["report"]["identifiers"]);
    for (repeat, first) in segments(&rc).iter().zip(segments(&ra)) {
        assert_eq!((&repeat.0, repeat.1), (&first.0, first.1));
        assert_eq!(repeat.2, "withheld", "{rc}");
    }
    assert!(
        rc["report"]["segments"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["reason"] == "refresh-change-below-k" && s["version"] == 1),
        "{rc}"
    );
}

#[test]
fn library_api_round_trip() {
    let env = env();
    let api_key = env.principal("advertiser", "libco");
    let key = env.keygen("libco");
    let mut crm = String::from("mail,seg\n");
    for i in 700..900 {
        let _ = writeln!(crm, "{},Lib", email(i));
    }
    let crm = write(env.dir.path(), "crm-lib.csv", &crm);
    let api = onboard_client::ApiClient::new(
        &env.url,
        Some(&env.ca),
        std::fs::read_to_string(&api_key).unwrap().trim(),
    )
    .unwrap();
    let mut opts = onboard_client::MatchOptions::new(&crm, &key, "dsp-a", "seg");
    opts.email_cols = vec!["mail".into()];
    opts.batch_size = 64;
    let outcome = onboard_client::run_match(&api, &opts).unwrap();
    assert_eq!(outcome.records_uploaded, 200);
    assert_eq!(outcome.batches_uploaded, 4);
    assert!(
        outcome.graph_points_blinded >= PERSONS as u64,
        "first job of this key re-blinds the graph"
    );
    let report = outcome.report.unwrap();
    let seg = &report.segments[0];
    assert_eq!(
        (seg.name.as_str(), seg.rows_uploaded, seg.status.as_str()),
        ("Lib", 200, "delivered")
    );

    let admin = onboard_client::ApiClient::new(
        &env.url,
        Some(&env.ca),
        std::fs::read_to_string(&env.admin_key).unwrap().trim(),
    )
    .unwrap();
    let dest = onboard_client::create_key(&admin, "dsp-a").unwrap();
    let dest = onboard_client::ApiClient::new(&env.url, Some(&env.ca), &dest.api_key).unwrap();
    let id = seg.audience_id.clone().unwrap();
    assert!(onboard_client::list_audiences(&dest)
        .unwrap()
        .iter()
        .any(|a| a.id == id && a.size == 200));
    let mut out = Vec::new();
    assert_eq!(
        onboard_client::pull_audience(&dest, &id, &mut out).unwrap(),
        200
    );
    let stats = onboard_client::stats(&admin).unwrap();
    assert!(stats["persons"].as_u64().unwrap() >= PERSONS as u64);
    assert!(!onboard_client::audit(&admin).unwrap().is_empty());
}

#[test]
fn errors_are_clear() {
    let env = env();
    let api_key = env.principal("advertiser", "errco");
    let key = env.keygen("errco");
    let crm = write(
        env.dir.path(),
        "crm-err.csv",
        "email,segment\na@example.com,Gold\nb@example.com,Gold\n",
    );
    let cols = ["--email-col", "email", "--segment-col", "segment"];
    let matching = |api: Option<&Path>, extra: &[&str]| {
        let mut args = vec![
            "match",
            "--input",
            s(&crm),
            "--key",
            s(&key),
            "--destination",
            "dsp-a",
        ];
        args.extend_from_slice(&cols);
        args.extend_from_slice(extra);
        env.run(api, &args)
    };

    // Job refused by the server, with its message.
    assert_fails(&matching(Some(&api_key), &[]), &["too few rows"]);

    // Wrong key, wrong role.
    let wrong = write(
        env.dir.path(),
        "wrong.apikey",
        "obk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    );
    assert_fails(
        &matching(Some(&wrong), &[]),
        &["401", "wrong or has been revoked"],
    );
    assert_fails(
        &env.run(Some(&api_key), &["admin", "stats"]),
        &["403", "no permission"],
    );

    // Revoked key.
    let revoked = env.principal("advertiser", "gone");
    assert_ok(&env.admin(&["admin", "keys", "revoke", "--principal", "gone"]));
    assert_fails(&env.run(Some(&revoked), &["audiences", "list"]), &["401"]);

    // Certificate not trusted without --ca.
    let out = Command::new(env!("CARGO_BIN_EXE_onboard"))
        .args([
            "--server",
            &env.url,
            "--api-key-file",
            s(&env.admin_key),
            "admin",
            "stats",
        ])
        .env_remove("ONBOARD_CA")
        .output()
        .unwrap();
    assert_fails(&out, &["not trusted", "--ca"]);

    // Unreachable server.
    let out = Command::new(env!("CARGO_BIN_EXE_onboard"))
        .args([
            "--server",
            "https://127.0.0.1:1",
            "--ca",
            s(&env.ca),
            "--api-key-file",
            s(&env.admin_key),
            "admin",
            "stats",
        ])
        .output()
        .unwrap();
    assert_fails(&out, &["cannot reach the server"]);

    // Unknown column, missing file: nothing reaches the server.
    assert_fails(
        &env.run(
            Some(&api_key),
            &[
                "match",
                "--input",
                s(&crm),
                "--key",
                s(&key),
                "--destination",
                "dsp-a",
                "--email-col",
                "mail",
                "--segment-col",
                "segment",
            ],
        ),
        &["`mail`", "`email`, `segment`"],
    );
    assert_fails(
        &env.run(
            Some(&api_key),
            &[
                "match",
                "--input",
                "/nonexistent.csv",
                "--key",
                s(&key),
                "--destination",
                "dsp-a",
                "--email-col",
                "email",
                "--segment-col",
                "segment",
            ],
        ),
        &["/nonexistent.csv"],
    );

    // A second operator, created with the generic principals command.
    let out = env.admin(&["admin", "principals", "create", "ops", "--role", "admin"]);
    assert_ok(&out);
    let ops = write(
        env.dir.path(),
        "ops.apikey",
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    );
    assert_ok(&env.run(Some(&ops), &["admin", "stats"]));

    // Stats and principals as admin work.
    let out = env.admin(&["admin", "stats", "--json"]);
    assert_ok(&out);
    let out = env.admin(&["admin", "principals", "list"]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("errco"));
}

#[test]
fn optout_and_erase() {
    let env = env();
    let optouts = write(
        env.dir.path(),
        "optouts.csv",
        &format!(
            "kind,value\nemail,{}\nphone,{}\nfax,123\n",
            email(1400),
            phone_national(1401)
        ),
    );
    let out = env.admin(&["admin", "optout", "--file", s(&optouts), "--json"]);
    assert_ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rows"], 3);
    assert_eq!(v["invalid"]["unknown-kind"]["count"], 1);
    let out = env.admin(&["admin", "erase", "--person", "p1402"]);
    assert_ok(&out);
    let out = env.admin(&["admin", "audit", "--json"]);
    assert_ok(&out);
}

/// A TCP proxy that forwards until the client has sent `limit` bytes, then
/// cuts every connection and refuses new ones: a network that goes away in
/// the middle of an upload.
fn cutting_proxy(target: std::net::SocketAddr, limit: u64) -> u16 {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = Arc::new(AtomicU64::new(0));
    let cut = Arc::new(AtomicBool::new(false));
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            if cut.load(Ordering::SeqCst) {
                let _ = client.shutdown(Shutdown::Both);
                continue;
            }
            let Ok(server) = TcpStream::connect(target) else {
                continue;
            };
            let pump = |mut from: TcpStream,
                        mut to: TcpStream,
                        count: bool,
                        sent: Arc<AtomicU64>,
                        cut: Arc<AtomicBool>| {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if count && sent.fetch_add(n as u64, Ordering::SeqCst) + n as u64 > limit {
                            cut.store(true, Ordering::SeqCst);
                        }
                        if cut.load(Ordering::SeqCst) || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                });
            };
            pump(
                client.try_clone().unwrap(),
                server.try_clone().unwrap(),
                true,
                sent.clone(),
                cut.clone(),
            );
            pump(server, client, false, sent.clone(), cut.clone());
        }
    });
    port
}

#[test]
fn an_interrupted_upload_resumes_from_the_last_acknowledged_batch() {
    let env = env();
    let api_key = env.principal("advertiser", "resumeco");
    let key = env.keygen("resumeco");
    let mut crm = String::from("email,phone,segment\n");
    for i in 0..600 {
        let _ = writeln!(
            crm,
            "{},{},{}",
            email(i),
            phone_international(i),
            if i < 300 { "Gold" } else { "Silver" }
        );
    }
    let crm = write(env.dir.path(), "crm-resume.csv", &crm);
    // The graph pass and the upload run at the same time, so a cut counted
    // in bytes would land anywhere in either: a first job with this key
    // fills the cache, so the interrupted job has no graph pass and the cut
    // lands some 25 kB into its ~45 kB of record batches.
    let addr: std::net::SocketAddr = env.url.trim_start_matches("https://").parse().unwrap();
    let port = cutting_proxy(addr, 25_000);
    let args = |server: &str, resume: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_onboard"));
        cmd.args([
            "--server",
            server,
            "--ca",
            s(&env.ca),
            "--quiet",
            "--api-key-file",
            s(&api_key),
        ])
        .args([
            "match",
            "--input",
            s(&crm),
            "--key",
            s(&key),
            "--destination",
            "dsp-a",
            "--batch-size",
            "32",
        ])
        .args([
            "--email-col",
            "email",
            "--phone-col",
            "phone",
            "--segment-col",
            "segment",
            "--json",
        ]);
        if let Some(job) = resume {
            cmd.args(["--resume", job]);
        }
        cmd.output().unwrap()
    };
    let first = args(&env.url, None);
    assert_ok(&first);
    let first: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    let out = args(&format!("https://127.0.0.1:{port}"), None);
    assert_fails(&out, &["interrupted after", "--resume j-"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let job = stderr
        .split("--resume ")
        .nth(1)
        .unwrap()
        .split(|c: char| c == '`' || c.is_whitespace())
        .next()
        .unwrap()
        .to_owned();
    let acked: u32 = stderr
        .split("interrupted after ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(acked > 0 && acked < 19, "{stderr}");
    // The server's side of the cut: the job is open, holds every batch the
    // client saw acknowledged, and misses some of the 19: it landed mid-upload.
    let shown = env.run(Some(&api_key), &["jobs", "show", &job, "--json"]);
    assert_ok(&shown);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["status"], "open", "{shown}");
    let held = shown["batches"].as_u64().unwrap();
    let next = shown["next_batch"].as_u64().unwrap();
    assert!(
        u64::from(acked) <= next && next <= held && held < 19,
        "client acked {acked}, server holds {held}, first missing {next}"
    );

    let out = args(&env.url, Some(&job));
    assert_ok(&out);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["report"]["job_id"], job.as_str());
    assert_eq!(r["report"]["rows_uploaded"], 600);
    // Every identifier arrived once: as many distinct ones as the whole job had.
    assert_eq!(r["report"]["identifiers"], first["report"]["identifiers"]);
    assert_eq!(first["report"]["identifiers"], 1200, "{first}");
    // The same persons as the first job's audiences: refreshes held back.
    let segs = r["report"]["segments"].as_array().unwrap();
    assert!(
        segs.iter().all(|s| s["rows_uploaded"] == 300
            && s["status"] == "withheld"
            && s["reason"] == "refresh-change-below-k"),
        "{r}"
    );
}
