//! The keyed audit chain and the key files, through the real `onboard-server`
//! command line: a chain rewritten by someone who can write the store but
//! not read `audit.key` fails `audit verify` at the first rewritten entry; a
//! cut tail fails against an anchored head; `serve` refuses key files that
//! are symlinks, open to others or owned by another user.

mod common;

use common::{contains, TestServer, SUITE};
use onboard_server::services::audit::{self, AuditKey};
use onboard_server::storage::AuditEntry;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn server_cmd(args: &[&str], data_dir: &Path) -> Output {
    Command::new(SUITE)
        .arg("server")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("run onboard-server")
}

fn verify(data_dir: &Path, anchors: &[String]) -> Output {
    let mut args = vec!["audit", "verify"];
    for a in anchors {
        args.extend(["--expect-head", a]);
    }
    server_cmd(&args, data_dir)
}

/// The data dir's store on its configured backend (sled, or PostgreSQL
/// when the data dir or the environment names a database).
fn store(data_dir: &Path) -> std::sync::Arc<dyn onboard_server::storage::Repo> {
    let config = onboard_server::Config::for_data_dir(data_dir, None).unwrap();
    let storage = config.storage_config().unwrap();
    // sled's flusher thread of a store just dropped may still hold the
    // directory's lock for a moment: a bounded retry.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match onboard_server::storage::open(data_dir, &storage) {
            Ok(repo) => return repo,
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            Err(e) => panic!("opening the store: {e}"),
        }
    }
}

fn entries(data_dir: &Path) -> Vec<AuditEntry> {
    let repo = store(data_dir);
    repo.audit_after(0, 10_000).unwrap()
}

fn put_entries(data_dir: &Path, list: &[AuditEntry]) {
    let repo = store(data_dir);
    for e in list {
        repo.put_audit(e).unwrap();
    }
    repo.flush().unwrap();
}

/// The hash of builds before the audit key, written out here on purpose
/// (not the library's): SHA-256(prev_hash || canonical JSON).
fn plain_sha256(e: &AuditEntry) -> String {
    hex::encode(
        Sha256::new()
            .chain_update(e.prev_hash.as_bytes())
            .chain_update(audit::canonical_json(e))
            .finalize(),
    )
}

/// What an attacker with write access to the store does: change entry
/// `seq`, then relink and rehash it and every later entry with `hash`.
fn rewrite_from(data_dir: &Path, seq: u64, hash: impl Fn(&AuditEntry) -> String) {
    let mut all = entries(data_dir);
    let start = seq as usize - 1;
    all[start].outcome = "refused".into();
    for i in start..all.len() {
        all[i].prev_hash = if i == 0 {
            audit::GENESIS.to_string()
        } else {
            all[i - 1].hash.clone()
        };
        all[i].hash = hash(&all[i]);
    }
    put_entries(data_dir, &all[start..]);
}

fn assert_broken_at(out: &Output, seq: u64) {
    assert_eq!(out.status.code(), Some(1), "{}", text(out));
    let t = text(out);
    assert!(t.contains(&format!("broken at entry {seq}:")), "{t}");
}

/// Some audited actions, so the chain has a few entries.
fn audited_actions(server: &TestServer, names: &[&str]) {
    for n in names {
        server.create("destination", n);
    }
}

#[test]
fn a_rewritten_audit_chain_fails_verify_at_the_first_rewritten_entry() {
    let mut server = TestServer::start(&[]);
    audited_actions(&server, &["dsp-a", "dsp-b", "dsp-c", "dsp-d"]);
    server.stop();
    let data = server.data_dir.clone();
    let original = entries(&data);
    assert!(original.len() >= 5, "{}", original.len());

    // `audit head` is the last entry; verify reaches it.
    let head = server_cmd(&["audit", "head", "--json"], &data);
    assert!(head.status.success(), "{}", text(&head));
    let head: serde_json::Value = serde_json::from_slice(&head.stdout).unwrap();
    let last = original.last().unwrap();
    assert_eq!(head["seq"], last.seq);
    assert_eq!(head["hash"], last.hash.as_str());
    assert_eq!(head["time"], last.time.as_str());
    let line = server_cmd(&["audit", "head"], &data);
    let anchor = format!("{}:{}", last.seq, last.hash);
    assert!(
        String::from_utf8_lossy(&line.stdout).starts_with(&format!("{anchor} ")),
        "{}",
        text(&line)
    );
    let ok = verify(&data, std::slice::from_ref(&anchor));
    assert!(ok.status.success(), "{}", text(&ok));

    // Entry 3 changed and the chain from it recomputed the old way.
    rewrite_from(&data, 3, plain_sha256);
    assert_eq!(entries(&data)[2].outcome, "refused");
    assert_broken_at(&verify(&data, &[]), 3);

    // The whole chain recomputed the old way: the first entry is already wrong.
    put_entries(&data, &original);
    assert!(verify(&data, &[]).status.success());
    rewrite_from(&data, 1, plain_sha256);
    assert_broken_at(&verify(&data, &[]), 1);

    // Recomputed under another HMAC key.
    put_entries(&data, &original);
    let other = AuditKey::generate();
    rewrite_from(&data, 3, |e| audit::entry_hash(&other, e));
    assert_broken_at(&verify(&data, &[]), 3);
    let anchored = verify(&data, &[anchor]);
    assert_broken_at(&anchored, 3);
}

#[test]
fn an_anchored_head_catches_a_rollback_and_backups_hold_no_key() {
    if common::postgres::on_postgres() {
        return; // sled only: restores a sled backup
    }
    let mut server = TestServer::start(&[]);
    audited_actions(&server, &["dsp-a"]);
    let backup = server.path("early.bak");
    let out = server_cmd(
        &["backup", "--out", backup.to_str().unwrap()],
        &server.data_dir,
    );
    assert!(out.status.success(), "{}", text(&out));
    audited_actions(&server, &["dsp-b", "dsp-c"]);
    // The head is read from the running server, through its control socket.
    let head = server_cmd(&["audit", "head"], &server.data_dir);
    assert!(head.status.success(), "{}", text(&head));
    let anchor = String::from_utf8_lossy(&head.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    server.stop();
    let data = server.data_dir.clone();
    assert_eq!(
        anchor,
        {
            let last = entries(&data).pop().unwrap();
            format!("{}:{}", last.seq, last.hash)
        },
        "the running server's head is the store's last entry"
    );
    assert!(verify(&data, std::slice::from_ref(&anchor))
        .status
        .success());

    // Rolled back to the earlier backup: intact as a chain, but short of
    // the anchor.
    let out = server_cmd(
        &["restore", "--force", "--from", backup.to_str().unwrap()],
        &data,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(verify(&data, &[]).status.success());
    let cut = verify(&data, std::slice::from_ref(&anchor));
    assert_eq!(cut.status.code(), Some(1), "{}", text(&cut));
    let anchored_seq = anchor.split(':').next().unwrap();
    assert!(
        text(&cut).contains(&format!("anchored head (entry {anchored_seq})")),
        "{}",
        text(&cut)
    );

    // The backup holds neither the audit key nor the other key files.
    let bak = std::fs::read(&backup).unwrap();
    for file in onboard_server::keyfiles::KEY_FILES {
        let key_text = std::fs::read_to_string(data.join(file)).unwrap();
        let key_hex = key_text.split_whitespace().nth(1).unwrap();
        assert!(!contains(&bak, key_hex.as_bytes()), "{file} in the backup");
        let raw = hex::decode(key_hex).unwrap();
        assert!(!contains(&bak, &raw), "{file}'s bytes in the backup");
    }
}

/// Run `serve` and expect it to refuse to start; its stderr.
fn serve_refused(data_dir: &Path) -> String {
    let mut child = Command::new(SUITE)
        .args(["server", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            assert!(!out.status.success(), "serve exited 0");
            return String::from_utf8_lossy(&out.stderr).into_owned();
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("serve started on {}", data_dir.display());
}

const SECRET_FILES: [&str; 6] = [
    "server.key",
    "pepper.key",
    "seal.key",
    "identity.key",
    "audit.key",
    "tls/key.pem",
];

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn serve_refuses_symlinked_open_and_foreign_key_files() {
    let mut server = TestServer::start(&[]);
    server.stop();
    let data = server.data_dir.clone();
    for file in SECRET_FILES {
        let path = data.join(file);
        let name = path.display().to_string();

        // A symlink to a perfectly private copy.
        let real = server.path(&format!("{}.real", file.replace('/', "_")));
        std::fs::rename(&path, &real).unwrap();
        std::os::unix::fs::symlink(&real, &path).unwrap();
        let stderr = serve_refused(&data);
        assert!(
            stderr.contains(&name) && stderr.contains("symbolic link"),
            "{file}: {stderr}"
        );
        std::fs::remove_file(&path).unwrap();
        std::fs::rename(&real, &path).unwrap();

        // Readable by everyone.
        set_mode(&path, 0o644);
        let stderr = serve_refused(&data);
        assert!(
            stderr.contains(&name) && stderr.contains("group or others"),
            "{file}: {stderr}"
        );
        set_mode(&path, 0o600);

        // Owned by another user (only root may give a file away).
        if running_as_root() {
            chown(&path, 65534);
            let stderr = serve_refused(&data);
            assert!(
                stderr.contains(&name) && stderr.contains("owned by uid 65534"),
                "{file}: {stderr}"
            );
            chown(&path, 0);
        }
    }
    if !running_as_root() {
        println!("skipped the other-owner case: changing a file's owner needs root");
    }
    // Put back as `init` made them, the same data dir serves again.
    server.serve();
    server.create("destination", "after");
}

fn running_as_root() -> bool {
    // The owner of a file this process just made is its effective uid.
    let probe = tempfile::NamedTempFile::new().unwrap();
    std::os::unix::fs::MetadataExt::uid(&probe.as_file().metadata().unwrap()) == 0
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), None).unwrap();
}

#[test]
fn a_data_dir_without_an_audit_key_is_upgraded_keeping_its_chain() {
    let mut server = TestServer::start(&[]);
    audited_actions(&server, &["dsp-a", "dsp-b"]);
    server.stop();
    let data = server.data_dir.clone();
    // Make it what an older build left: a plain SHA-256 chain, no audit.key.
    let mut all = entries(&data);
    for i in 0..all.len() {
        if i > 0 {
            all[i].prev_hash = all[i - 1].hash.clone();
        }
        all[i].hash = plain_sha256(&all[i]);
    }
    put_entries(&data, &all);
    std::fs::remove_file(data.join("audit.key")).unwrap();
    let legacy = all.len();

    let stderr = serve_refused(&data);
    assert!(
        stderr.contains("audit.key") && stderr.contains("keys add-audit-key"),
        "{stderr}"
    );
    let out = server_cmd(&["keys", "add-audit-key"], &data);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("entries 1-{legacy}")),
        "{}",
        text(&out)
    );
    let again = server_cmd(&["keys", "add-audit-key"], &data);
    assert!(!again.status.success(), "a second key must be refused");

    server.serve();
    audited_actions(&server, &["dsp-c"]);
    server.stop();
    let ok = verify(&data, &[]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert_eq!(entries(&data).len(), legacy + 2, "key added, dsp-c created");

    // The old entries are frozen by the pinned head: a rewrite of one,
    // recomputed the old way up to the pin, is caught.
    let before = entries(&data);
    let mut all = before.clone();
    all[1].outcome = "refused".into();
    for i in 1..legacy {
        all[i].prev_hash = all[i - 1].hash.clone();
        all[i].hash = plain_sha256(&all[i]);
    }
    put_entries(&data, &all[1..legacy]);
    let out = verify(&data, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("pinned"), "{}", text(&out));
}
