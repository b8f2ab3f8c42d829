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
