//! Lifecycle and hostile input: backups while serving, restores, refusals,
//! connection timeouts, graceful shutdown of the real binary, the open-job
//! limit. Real servers over real TLS on 127.0.0.1:0; every wait is bounded.

mod common;

use common::*;
use onboard_protocol::wire::{DigestBatch, DigestEntry};
use onboard_protocol::{Digest, MatchKind, SecretKey};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_onboard-server");

fn cli(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("ONBOARD_LOG", "warn")
        .output()
        .unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Copy the key files and TLS material (not the store) of a data dir.
fn copy_keys(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("tls")).unwrap();
    let tls = ["tls/ca.pem", "tls/cert.pem", "tls/key.pem"];
    for f in onboard_server::keyfiles::KEY_FILES.into_iter().chain(tls) {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

/// Every file under a directory with its contents, to prove it unchanged.
fn snapshot_dir(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap_or_default();
                out.push((path, bytes));
            }
        }
    }
    out.sort();
    out
}

fn email_rows(range: std::ops::Range<usize>, segment: &str) -> Vec<Record> {
    range
        .map(|i| rec(segment, vec![(MatchKind::Email, Digest::of(&email(i)))]))
        .collect()
}

/// What a backup must reproduce, read over the API.
fn observed(s: &TestServer, base: &str, dsp: &str) -> Vec<Value> {
    let get = |path: &str, key: &str| -> Value {
        let r = s
            .client
            .get(format!("{base}{path}"))
            .bearer_auth(key)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.json().unwrap()
    };
    vec![
        get("/v1/admin/stats", &s.admin),
        get("/v1/admin/principals", &s.admin),
        get("/v1/audiences", dsp),
        get("/v1/admin/audit?limit=1000", &s.admin),
    ]
}

#[test]
fn backup_while_serving_and_uploading_then_restore_is_identical() {
    let s = TestServer::start();
    let adv = s.principal("acme", "advertiser");
    let dsp = s.principal("dsp-a", "destination");
    s.import(&synthetic_graph(400));
    let a = SecretKey::generate(&mut rand::thread_rng());
    s.run_job(&adv, &a, "dsp-a", &email_rows(0..200, "S"));
    let work = tempfile::tempdir().unwrap();

    // A backup taken while another job is uploading batches: it starts
    // once batches 0-5 are in, runs beside the uploads of 6-8, and ends
    // before 9-11 go, so it holds the job half-uploaded.
    let (job, _) = s.create_job_and_pass(&adv, &a, "dsp-a", &["email"]);
    let live = work.path().join("live.bak");
    let (half_tx, half_rx) = std::sync::mpsc::channel::<()>();
    let (backed_up_tx, backed_up_rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let uploader = scope.spawn(|| {
            let backed_up_rx = backed_up_rx; // moved in: a Receiver is not Sync
            for n in 0..12u32 {
                if n == 6 {
                    half_tx.send(()).unwrap();
                }
                if n == 9 {
                    backed_up_rx.recv().unwrap();
                }
                let rows = email_rows(n as usize * 20..n as usize * 20 + 20, "T");
                let r = s.put_bytes(
                    &format!("/v1/jobs/{job}/batches/{n}"),
                    &adv,
                    record_batch(n, &a, &rows),
                );
                assert_eq!(r.status(), 200);
            }
        });
        half_rx.recv_timeout(Duration::from_secs(60)).unwrap();
        let out = cli(&["backup", "--data-dir", p(&s.data_dir()), "--out", p(&live)]);
        backed_up_tx.send(()).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        uploader.join().unwrap();
    });
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&live).unwrap().permissions());
    assert_eq!(
        mode & 0o777,
        0o600,
        "backups hold sealed cookies: owner-only"
    );
    let r1 = work.path().join("r1");
    copy_keys(&s.data_dir(), &r1);
    let out = cli(&["restore", "--data-dir", p(&r1), "--from", p(&live)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["audit", "verify", "--data-dir", p(&r1)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    {
        // The restored job is the half-uploaded one, and whole: open, with
        // the batches acknowledged before the backup ended and their rows.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let handle = onboard_server::start(test_config(r1.clone()), listener).unwrap();
        let base = format!("https://127.0.0.1:{}", handle.addr.port());
        let restored: Value = s
            .client
            .get(format!("{base}/v1/jobs/{job}"))
            .bearer_auth(&adv)
            .send()
            .unwrap()
            .json()
            .unwrap();
        handle.stop();
        assert_eq!(restored["status"], "open", "{restored}");
        let batches = restored["batches"].as_u64().unwrap();
        assert!((6..=9).contains(&batches), "{restored}");
        assert_eq!(restored["records"], batches * 20, "{restored}");
        assert_eq!(restored["next_batch"], batches, "{restored}");
    }

    // A quiescent backup while serving: the restored store serves the same answers.
    let before = observed(&s, &s.base, &dsp);
    let bak = work.path().join("quiet.bak");
    let out = cli(&["backup", "--data-dir", p(&s.data_dir()), "--out", p(&bak)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(observed(&s, &s.base, &dsp), before);
    let r2 = work.path().join("r2");
    copy_keys(&s.data_dir(), &r2);
    let out = cli(&["restore", "--data-dir", p(&r2), "--from", p(&bak)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["audit", "verify", "--data-dir", p(&r2)]);
    assert!(out.status.success());
    let entries = before[3]["entries"].as_array().unwrap().len();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{entries} entries")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let handle = onboard_server::start(test_config(r2.clone()), listener).unwrap();
        let base = format!("https://127.0.0.1:{}", handle.addr.port());
        // Same keys (same pepper), same principals, stats, audiences, audit chain.
        assert_eq!(observed(&s, &base, &dsp), before);
        handle.stop();
    }

    // A damaged backup is refused by name and leaves the target untouched.
    let bad = work.path().join("bad.bak");
    let mut bytes = std::fs::read(&bak).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&bad, bytes).unwrap();
    let untouched = snapshot_dir(&r2);
    let out = cli(&[
        "restore",
        "--data-dir",
        p(&r2),
        "--from",
        p(&bad),
        "--force",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("checksum"), "{err}");
    assert_eq!(snapshot_dir(&r2), untouched);

    // A non-empty target needs --force; a running server's data dir is refused.
    let out = cli(&["restore", "--data-dir", p(&r2), "--from", p(&bak)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    let out = cli(&[
        "restore",
        "--data-dir",
        p(&r2),
        "--from",
        p(&bak),
        "--force",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let served = snapshot_dir(&s.data_dir().join("db"));
    let out = cli(&[
        "restore",
        "--data-dir",
        p(&s.data_dir()),
        "--from",
        p(&bak),
        "--force",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use"), "{err}");
    assert_eq!(observed(&s, &s.base, &dsp), before);
    drop(served);
}

#[test]
fn backup_of_a_stopped_server_and_control_socket_lifecycle() {
    let mut s = TestServer::start();
    s.principal("acme", "advertiser");
    let socket = s.data_dir().join("control.sock");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::symlink_metadata(&socket).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    s.stop();
    assert!(
        !socket.exists(),
        "the control socket is removed at shutdown"
    );
    let work = tempfile::tempdir().unwrap();
    let bak = work.path().join("stopped.bak");
    let out = cli(&["backup", "--data-dir", p(&s.data_dir()), "--out", p(&bak)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("not in the backup"));
    let help = cli(&["backup", "--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("pepper.key"));
    // A file that is not a backup is refused before anything is written.
    let junk = work.path().join("junk.bak");
    std::fs::write(&junk, vec![7u8; 100]).unwrap();
    let r = work.path().join("r");
    let out = cli(&["restore", "--data-dir", p(&r), "--from", p(&junk)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!r.exists());
}

/// A TLS client on a raw socket, to play a slow client.
fn tls_stream(
    s: &TestServer,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let ca = std::fs::read(s.data_dir().join("tls/ca.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let tcp = std::net::TcpStream::connect(s.handle.as_ref().unwrap().addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

#[test]
fn slow_clients_are_disconnected() {
    let s = TestServer::start_with(|c| {
        c.client_request_timeout = Duration::from_secs(1);
        c.tls_handshake_timeout = Duration::from_secs(1);
        c.keep_alive = Duration::from_secs(1);
    });
    // Slow-loris: half a request head, then nothing.
    let started = Instant::now();
    let mut tls = tls_stream(&s);
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .unwrap();
    tls.flush().unwrap();
    let mut got = Vec::new();
    let _ = tls.read_to_end(&mut got);
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    let text = String::from_utf8_lossy(&got);
    assert!(got.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");

    // No TLS handshake at all.
    let started = Instant::now();
    let mut tcp = std::net::TcpStream::connect(s.handle.as_ref().unwrap().addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 16];
    let n = tcp.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() < Duration::from_secs(10));

    // Idle keep-alive connections are closed; fresh requests still work.
    let mut tls = tls_stream(&s);
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = tls.read_to_end(&mut got);
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert_eq!(s.get("/healthz", &s.admin).status(), 200);
}

#[test]
fn timeouts_are_validated_by_name() {
    for (key, value) in [
        ("client_request_timeout", "0s"),
        ("tls_handshake_timeout", "2h"),
        ("keep_alive", "soon"),
    ] {
        let err = onboard_server::Config::load(None, vec![], &[(key, value.into())]).unwrap_err();
        assert!(err.to_string().contains(key), "{err}");
    }
    let c = onboard_server::Config::load(None, vec![], &[("keep_alive", "0s".into())]).unwrap();
    assert!(c.keep_alive.is_zero());
}

#[test]
fn open_job_limit_is_429_too_many_jobs() {
    let s = TestServer::start_with(|c| c.max_open_jobs = 2);
    let adv = s.principal("acme", "advertiser");
    s.principal("dsp-a", "destination");
    s.import(&synthetic_graph(200));
    let a = SecretKey::generate(&mut rand::thread_rng());
    let create = || {
        s.post(
            "/v1/jobs",
            &adv,
            json!({"destination": "dsp-a", "kinds": ["email"], "key_fingerprint": a.fingerprint().to_string()}),
        )
    };
    let first: Value = create().json().unwrap();
    assert_eq!(create().status(), 201);
    let r = create();
    assert_eq!(error_code(r), (429, "too-many-jobs".into()));
    // Aborting one frees its slot.
    let id = first["job_id"].as_str().unwrap();
    let r = s
        .client
        .delete(format!("{}/v1/jobs/{id}", s.base))
        .bearer_auth(&adv)
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(create().status(), 201);
}

/// A body that trickles out in chunks and reports when the first one has
/// gone out (the client asks for the second).
struct Trickle {
    data: Vec<u8>,
    pos: usize,
    started: Option<std::sync::mpsc::Sender<()>>,
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.data.len() {
            return Ok(0);
        }
        if self.pos > 0 {
            // The client asks for more: the first chunk went out on the
            // connection, so the request is under way at the server.
            if let Some(tx) = self.started.take() {
                let _ = tx.send(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let n = buf.len().min(64 * 1024).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[test]
fn sigterm_lets_the_in_flight_request_finish_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key_file = dir.path().join("admin.key");
    let out = cli(&[
        "init",
        "--data-dir",
        p(&data),
        "--dev-tls",
        "--admin-key-out",
        p(&key_file),
    ]);
    assert!(out.status.success());
    let admin = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_string();
    let mut child = Command::new(BIN)
        .args(["serve", "--data-dir", p(&data), "--listen", "127.0.0.1:0"])
        .env("ONBOARD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the address from stderr, then keep draining it.
    let stderr = child.stderr.take().unwrap();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let drain = std::thread::spawn(move || {
        use std::io::BufRead as _;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap_or_default();
            if let Some(a) = line.split("listening on https://").nth(1) {
                let _ = addr_tx.send(a.trim().to_string());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let ca = std::fs::read(data.join("tls/ca.pem")).unwrap();
    let client = reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let base = format!("https://{addr}");
    let r = client
        .post(format!("{base}/v1/admin/graph/imports"))
        .bearer_auth(&admin)
        .json(&json!({}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let import: Value = r.json().unwrap();
    let import = import["import_id"].as_str().unwrap().to_string();
    let entries: Vec<DigestEntry> = (0..12_000)
        .map(|i| DigestEntry {
            person: format!("p{i}"),
            kind: MatchKind::Email,
            digest: Digest::of(&email(i)),
        })
        .collect();
    let frame = DigestBatch {
        batch_no: 0,
        entries,
    }
    .encode()
    .unwrap();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let body = Trickle {
        data: frame,
        pos: 0,
        started: Some(started_tx),
    };
    let upload = {
        let client = client.clone();
        let url = format!("{base}/v1/admin/graph/imports/{import}/identifiers/0");
        let admin = admin.clone();
        std::thread::spawn(move || {
            client
                .put(url)
                .bearer_auth(admin)
                .header("Content-Type", "application/octet-stream")
                .body(reqwest::blocking::Body::new(body))
                .send()
                .map(|r| r.status().as_u16())
        })
    };
    started_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(!upload.is_finished(), "the request is still in flight");
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = upload.join().unwrap();
    assert!(child.try_wait().unwrap().is_none() || status.is_ok());
    assert_eq!(status.ok(), Some(200), "the in-flight request completes");
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = drain.join().unwrap();
    assert_eq!(exit.code(), Some(0), "{log}");
    assert!(!data.join("control.sock").exists());
    // The store reopens cleanly and keeps what was written.
    let out = cli(&["audit", "verify", "--data-dir", p(&data)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bak = dir.path().join("after.bak");
    let out = cli(&["backup", "--data-dir", p(&data), "--out", p(&bak)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
