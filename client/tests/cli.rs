//! The `onboard` binary's behaviour without a server: keygen, normalize,
//! usage errors, the dry run (which must not touch the network), and the
//! errors a user meets first.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn onboard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_onboard"))
        .args(args)
        .env_remove("ONBOARD_API_KEY")
        .env_remove("ONBOARD_SERVER")
        .env_remove("ONBOARD_CA")
        .output()
        .expect("run onboard")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

const CRM: &str = "email,phone,segment,consent\n\
    jane.doe+news@gmail.com,06 12 34 56 78,Gold|Silver,yes\n\
    not-an-email,,Gold,yes\n\
    bob@example.com,+33 6 98 76 54 32,Bronze,non\n";

#[test]
fn keygen_writes_a_private_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("adv.key");
    let out = onboard(&["keygen", "--out", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let fp = stdout
        .trim()
        .strip_prefix("fingerprint: ")
        .expect("prints the fingerprint");
    assert_eq!(fp.len(), 32);
    assert!(std::fs::read_to_string(&key)
        .unwrap()
        .starts_with("onboard-key-v1 "));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let before = std::fs::read(&key).unwrap();
    let again = onboard(&["keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("refusing to overwrite"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(std::fs::read(&key).unwrap(), before, "the key is untouched");
}

#[test]
fn normalize_prints_value_and_digest() {
    let out = onboard(&["normalize", "--kind", "email", " Jane.Doe+crm@GMail.com "]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    let (value, digest) = stdout.trim_end().split_once('\t').unwrap();
    assert_eq!(value, "janedoe@gmail.com");
    assert_eq!(
        digest,
        onboard_protocol::Digest::of("janedoe@gmail.com").to_hex()
    );

    let out = onboard(&[
        "normalize",
        "--kind",
        "phone",
        "06 12 34 56 78",
        "0033612345678",
    ]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("+33612345678\t"))
            .count(),
        2
    );

    let out = onboard(&[
        "normalize",
        "--kind",
        "phone",
        "--region",
        "US",
        "(201) 555-0123",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("+12015550123\t"));
}

#[test]
fn normalize_reports_position_and_reason_never_the_value() {
    let out = onboard(&[
        "normalize",
        "--kind",
        "email",
        "ok@example.com",
        "secret-value-xyz",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("value 2") && stderr.contains("email-shape"),
        "{stderr}"
    );
    assert!(!stderr.contains("secret-value-xyz"), "{stderr}");
    assert!(text(&out.stdout).starts_with("ok@example.com\t"));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(onboard(&["match"]).status.code(), Some(2));
    assert_eq!(
        onboard(&["normalize", "--kind", "fax", "x"]).status.code(),
        Some(2)
    );
    assert_eq!(
        onboard(&["normalize", "--kind", "phone", "--region", "ZZ", "x"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(onboard(&["admin", "keys", "revoke"]).status.code(), Some(2));
    assert_eq!(onboard(&["--help"]).status.code(), Some(0));
}

#[test]
fn dry_run_sends_nothing_and_needs_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let crm = write(dir.path(), "crm.csv", CRM);
    // Port 1 on localhost: any connection attempt would fail the command.
    let out = onboard(&[
        "--server",
        "https://127.0.0.1:1",
        "match",
        "--input",
        crm.to_str().unwrap(),
        "--key",
        "/nonexistent/key",
        "--destination",
        "dsp-a",
        "--email-col",
        "email",
        "--phone-col",
        "phone",
        "--segment-col",
        "segment",
        "--consent-col",
        "consent",
        "--dry-run",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("dry run: nothing was sent"), "{stdout}");
    assert!(
        stdout.contains("rows read                               3"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("not-an-email") && !stdout.contains("jane"),
        "no values in the report: {stdout}"
    );

    let out = onboard(&[
        "--server",
        "https://127.0.0.1:1",
        "match",
        "--input",
        crm.to_str().unwrap(),
        "--key",
        "/nonexistent/key",
        "--destination",
        "dsp-a",
        "--email-col",
        "email",
        "--segment-col",
        "segment",
        "--dry-run",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["quality"]["rows_read"], 3);
    assert_eq!(v["quality"]["rows_to_upload"], 2);
    assert!(v["report"].is_null());
}

#[test]
fn unknown_column_lists_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let crm = write(dir.path(), "crm.csv", CRM);
    let out = onboard(&[
        "match",
        "--input",
        crm.to_str().unwrap(),
        "--key",
        "k",
        "--destination",
        "d",
        "--email-col",
        "mail",
        "--segment-col",
        "segment",
        "--dry-run",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("`mail`") && stderr.contains("`email`, `phone`, `segment`, `consent`"),
        "{stderr}"
    );
}

#[test]
fn missing_files_are_named() {
    let out = onboard(&[
        "match",
        "--input",
        "/nonexistent/crm.csv",
        "--key",
        "k",
        "--destination",
        "d",
        "--email-col",
        "email",
        "--segment-col",
        "segment",
        "--dry-run",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("/nonexistent/crm.csv"),
        "{}",
        text(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let crm = write(dir.path(), "crm.csv", CRM);
    let out = Command::new(env!("CARGO_BIN_EXE_onboard"))
        .args([
            "match",
            "--input",
            crm.to_str().unwrap(),
            "--key",
            "/nonexistent/adv.key",
            "--destination",
            "d",
        ])
        .args(["--email-col", "email", "--segment-col", "segment"])
        .env("ONBOARD_API_KEY", "obk_test")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("/nonexistent/adv.key"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn commands_needing_a_key_say_so() {
    let out = onboard(&["audiences", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("ONBOARD_API_KEY"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn unreachable_server_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let crm = write(dir.path(), "crm.csv", CRM);
    let key = dir.path().join("adv.key");
    assert!(onboard(&["keygen", "--out", key.to_str().unwrap()])
        .status
        .success());
    let out = Command::new(env!("CARGO_BIN_EXE_onboard"))
        .args([
            "--server",
            "https://127.0.0.1:1",
            "--quiet",
            "match",
            "--input",
            crm.to_str().unwrap(),
        ])
        .args([
            "--key",
            key.to_str().unwrap(),
            "--destination",
            "d",
            "--email-col",
            "email",
            "--segment-col",
            "segment",
        ])
        .env("ONBOARD_API_KEY", "obk_test")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot reach the server at https://127.0.0.1:1"),
        "{stderr}"
    );
}

/// Stands in as every proxy of the environment and counts the connections it
/// is offered (dropping each at once): with it set, any network attempt of
/// the client shows.
struct Tripwire {
    url: String,
    seen: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tripwire {
    fn new() -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (count, halt) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !halt.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok(_) => {
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        });
        Self {
            url,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Connections offered so far (the listener is drained first).
    fn connections(&mut self) -> usize {
        use std::sync::atomic::Ordering;
        std::thread::sleep(std::time::Duration::from_millis(50));
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.seen.load(Ordering::SeqCst)
    }

    /// `onboard ARGS` with every proxy variable pointing here.
    fn onboard(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_onboard"));
        cmd.args(args)
            .env_remove("ONBOARD_API_KEY")
            .env_remove("ONBOARD_SERVER")
            .env_remove("ONBOARD_CA")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy");
        for var in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ] {
            cmd.env(var, &self.url);
        }
        cmd.output().expect("run onboard")
    }
}

/// A file of mode `mode` (umask notwithstanding).
fn write_mode(dir: &Path, name: &str, content: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = write(dir, name, content);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn a_server_url_that_could_leak_the_key_is_a_usage_error_before_any_connection() {
    let dir = tempfile::tempdir().unwrap();
    let api_key = write_mode(dir.path(), "api.key", "obk_test\n", 0o600);
    let mut trip = Tripwire::new();
    for (server, needle) in [
        ("http://127.0.0.1:1@evil.invalid", "user-info"),
        ("http://127.0.0.1@evil.invalid/", "user-info"),
        ("http://user:pw@127.0.0.1:1", "user-info"),
        (
            "http://127.0.0.1.evil.invalid",
            "plain http is allowed only to a loopback",
        ),
        (
            "http://127.0.0.1%2eevil.invalid",
            "plain http is allowed only to a loopback",
        ),
        (
            "http://localhost.",
            "plain http is allowed only to a loopback",
        ),
        (
            "http://[::ffff:127.0.0.1]:1",
            "plain http is allowed only to a loopback",
        ),
        (
            "http://evil.invalid",
            "plain http is allowed only to a loopback",
        ),
        ("http:\\\\127.0.0.1:1\\", "backslash"),
        ("https://evil.invalid/?k=v", "query"),
        ("ftp://evil.invalid", "scheme is `ftp`"),
    ] {
        let out = trip.onboard(&[
            "--server",
            server,
            "--api-key-file",
            api_key.to_str().unwrap(),
            "audiences",
            "list",
        ]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{server}: {stderr}");
        assert!(
            stderr.contains("--server") && stderr.contains(needle),
            "{server}: {stderr}"
        );
        assert!(
            !stderr.contains("pw"),
            "the password is not repeated: {stderr}"
        );
    }
    assert_eq!(
        trip.connections(),
        0,
        "a refused --server made a network attempt"
    );
}

/// The control of the test above: with the same proxies, an accepted
/// https URL does reach the network (through the proxy), so a count of zero
/// there means something.
#[test]
fn the_tripwire_sees_an_accepted_server_url() {
    let dir = tempfile::tempdir().unwrap();
    let api_key = write_mode(dir.path(), "api.key", "obk_test\n", 0o600);
    let mut trip = Tripwire::new();
    let out = trip.onboard(&[
        "--server",
        "https://onboard.invalid",
        "--api-key-file",
        api_key.to_str().unwrap(),
        "audiences",
        "list",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(trip.connections() >= 1);
}

/// Plain http is allowed because it stays on loopback: a proxy from the
/// environment must not carry the key off the machine in clear.
#[test]
fn plain_http_to_loopback_bypasses_proxies() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let api_key = write_mode(dir.path(), "api.key", "obk_test\n", 0o600);
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let hosts = ["127.0.0.1", "localhost"];
    let thread = std::thread::spawn(move || {
        let mut heads = Vec::new();
        for _ in hosts {
            let (mut conn, _) = server.accept().unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let body = r#"{"audiences":[]}"#;
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(answer.as_bytes()).unwrap();
            heads.push(String::from_utf8_lossy(&head).to_ascii_lowercase());
        }
        heads
    });
    let mut trip = Tripwire::new();
    for host in hosts {
        let out = trip.onboard(&[
            "--server",
            &format!("http://{host}:{port}"),
            "--api-key-file",
            api_key.to_str().unwrap(),
            "audiences",
            "list",
            "--json",
        ]);
        assert!(out.status.success(), "{host}: {}", text(&out.stderr));
    }
    for head in thread.join().unwrap() {
        assert!(head.contains("authorization: bearer obk_test"), "{head}");
    }
    assert_eq!(trip.connections(), 0, "a request went through the proxy");
}

#[test]
fn key_files_must_be_private_regular_files_of_ours() {
    let dir = tempfile::tempdir().unwrap();
    let crm = write(dir.path(), "crm.csv", CRM);
    let key = dir.path().join("adv.key");
    assert!(onboard(&["keygen", "--out", key.to_str().unwrap()])
        .status
        .success());
    let link = dir.path().join("link.key");
    std::os::unix::fs::symlink(&key, &link).unwrap();
    let open = write_mode(
        dir.path(),
        "open.key",
        &std::fs::read_to_string(&key).unwrap(),
        0o644,
    );
    let matching = |key: &Path| {
        Command::new(env!("CARGO_BIN_EXE_onboard"))
            .args([
                "--server",
                "https://127.0.0.1:1",
                "--quiet",
                "match",
                "--input",
            ])
            .arg(&crm)
            .arg("--key")
            .arg(key)
            .args([
                "--destination",
                "d",
                "--email-col",
                "email",
                "--segment-col",
                "segment",
            ])
            .env("ONBOARD_API_KEY", "obk_test")
            .env_remove("ONBOARD_SERVER")
            .env_remove("ONBOARD_CA")
            .output()
            .unwrap()
    };
    let refused = |out: &Output, path: &Path, needles: &[&str]| {
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(path.to_str().unwrap()), "{stderr}");
        for n in needles {
            assert!(stderr.contains(n), "`{n}` not in {stderr}");
        }
        assert!(
            !stderr.contains("cannot reach"),
            "refused before the network: {stderr}"
        );
    };
    refused(&matching(&link), &link, &["symbolic link"]);
    refused(&matching(&open), &open, &["mode 644", "chmod 600"]);
    refused(&matching(dir.path()), dir.path(), &["directory"]);
    // keygen's own file (0600) is used: the command gets as far as the network.
    assert!(text(&matching(&key).stderr).contains("cannot reach the server"));

    // The API key file follows the same rule.
    let api = |file: &Path| {
        onboard(&[
            "--server",
            "https://127.0.0.1:1",
            "--api-key-file",
            file.to_str().unwrap(),
            "audiences",
            "list",
        ])
    };
    let api_key = write_mode(dir.path(), "api.key", "obk_test\n", 0o600);
    let api_link = dir.path().join("api.link");
    std::os::unix::fs::symlink(&api_key, &api_link).unwrap();
    let api_open = write_mode(dir.path(), "api-open.key", "obk_test\n", 0o640);
    refused(
        &api(&api_link),
        &api_link,
        &["API key file", "symbolic link"],
    );
    refused(&api(&api_open), &api_open, &["mode 640", "chmod 600"]);
    assert!(text(&api(&api_key).stderr).contains("cannot reach the server"));
}
