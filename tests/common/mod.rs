//! Shared helpers of the end-to-end tests: a real `onboard-server` process
//! over TLS on 127.0.0.1, the real `onboard` command line against it, and
//! synthetic data with its ground truth (`onboard_suite::synth`).
//!
//! The same files run on both storage backends: as their own test binaries
//! on sled, and as modules of `tests/postgres_suite.rs` on PostgreSQL, where
//! each [`TestServer`] has a database of its own (see [`postgres`]).
//!
//! Both command lines are reached through the `onboard-suite` binary's hidden
//! `server` and `client` subcommands, which call the very entry points of
//! the `onboard-server` and `onboard` binaries.
#![allow(dead_code)]

pub mod console;
pub mod http;
pub mod postgres;

use postgres::{backend, Backend, TestDatabase};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const SUITE: &str = env!("CARGO_BIN_EXE_onboard-suite");

/// A running server with its own temporary data dir.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub url: String,
    pub ca: PathBuf,
    pub admin_key: String,
    /// On PostgreSQL: the database, shared with servers started beside.
    pub database: Option<Arc<TestDatabase>>,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl TestServer {
    /// `init --dev-tls` then `serve` with `ONBOARD_*` settings from `env`
    /// (e.g. `[("K", "50"), ("MIN_JOB_ROWS", "100")]`), on this binary's
    /// backend.
    pub fn start(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        let key_out = dir.path().join("admin.apikey");
        let database = (backend() == Backend::Postgres).then(|| Arc::new(TestDatabase::create()));
        let mut init = server_command();
        init.args(["init", "--dev-tls", "--data-dir"])
            .arg(&data_dir)
            .arg("--admin-key-out")
            .arg(&key_out);
        if let Some(db) = &database {
            init.args(["--database-url", &db.url]);
        }
        let out = init.output().expect("run init");
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let admin_key = std::fs::read_to_string(&key_out)
            .expect("admin key")
            .trim()
            .to_string();
        let mut server = Self {
            ca: data_dir.join("tls").join("ca.pem"),
            dir,
            data_dir,
            url: String::new(),
            admin_key,
            database,
            env: env
                .iter()
                .map(|(k, v)| (format!("ONBOARD_{k}"), v.to_string()))
                .collect(),
            child: None,
        };
        server.serve();
        server
    }

    /// A second server on this one's database, as an operator adds one: a
    /// copy of the data dir's key, TLS and config files, the same settings.
    /// PostgreSQL only (servers share state only through the database).
    pub fn start_beside(&self) -> Self {
        assert!(self.database.is_some(), "servers share only a database");
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        copy_files(&self.data_dir, &data_dir);
        let mut server = Self {
            ca: data_dir.join("tls").join("ca.pem"),
            dir,
            data_dir,
            url: String::new(),
            admin_key: self.admin_key.clone(),
            database: self.database.clone(),
            env: self.env.clone(),
            child: None,
        };
        server.serve();
        server
    }

    /// Every stored byte a reader of the disks could see: the data dir's
    /// files and, on PostgreSQL, a `pg_dump` of the database.
    pub fn stored_bytes(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut files = all_files(&self.data_dir);
        if let Some(db) = &self.database {
            files.push((PathBuf::from(format!("pg_dump of {}", db.name)), db.dump()));
        }
        files
    }

    /// Start (or restart) the server process on a fresh ephemeral port.
    pub fn serve(&mut self) {
        self.serve_with(&[]);
    }

    /// Like [`serve`](Self::serve), with extra environment variables for this
    /// run only (e.g. `[("FAILPOINTS", "upload-batch-stored=return")]`).
    pub fn serve_with(&mut self, extra_env: &[(&str, &str)]) {
        for _attempt in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut child = server_command()
                .args(["serve", "--data-dir"])
                .arg(&self.data_dir)
                .args(["--listen", &format!("127.0.0.1:{port}")])
                // Parallel servers must not share the default metrics port.
                .env("ONBOARD_METRICS_LISTEN", "127.0.0.1:0")
                .envs(self.env.iter().cloned())
                .envs(extra_env.iter().copied())
                .stdout(Stdio::null())
                .stderr(self.fresh_log())
                .spawn()
                .expect("spawn serve");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    self.url = format!("https://127.0.0.1:{port}");
                    self.child = Some(child);
                    return;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("serve did not come up: {}", self.log());
        }
        panic!("the server did not start in 5 attempts");
    }

    /// A new, empty `server.log` for the next server process's stderr (a
    /// file, not a pipe: a pipe nobody reads would stall a chatty server).
    fn fresh_log(&self) -> std::fs::File {
        std::fs::File::create(self.path("server.log")).expect("create server.log")
    }

    /// The stderr of the latest server process so far.
    /// `http://ADDR/metrics` of the running server's metrics listener, from
    /// the line its log prints at start.
    pub fn metrics_url(&self) -> String {
        let log = self.log();
        let addr = log
            .lines()
            .rev()
            .filter(|l| l.contains("serving /metrics over plain HTTP"))
            .filter_map(|l| l.split("metrics=").nth(1))
            .find_map(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no metrics address in the server log: {log}"));
        format!("http://{addr}/metrics")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("server.log")).unwrap_or_default()
    }

    /// Wait (at most `within`) for the server process to die, and return
    /// how it ended; panics if it is still running then. For crash tests.
    pub fn wait_for_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("a running server");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the server") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the server was still running {within:?} later: {}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGTERM: the server finishes in-flight requests, flushes and exits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server did not stop within 20 s of SIGTERM");
        }
    }

    /// SIGKILL the server process (no graceful shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Run `onboard ARGS…` against this server with `api_key`.
    pub fn onboard(&self, api_key: &str, args: &[&str]) -> Output {
        onboard_at(&self.url, &self.ca, api_key, args)
    }

    /// Run `onboard ARGS…`, assert success, return stdout.
    pub fn ok(&self, api_key: &str, args: &[&str]) -> String {
        let out = self.onboard(api_key, args);
        assert!(
            out.status.success(),
            "onboard {args:?} failed ({:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// `admin <role> create NAME`: the new API key (last line of stdout).
    pub fn create(&self, role: &str, name: &str) -> String {
        let out = self.ok(&self.admin_key.clone(), &["admin", role, "create", name]);
        out.lines().last().expect("a key line").trim().to_string()
    }

    /// A JSON command's stdout, parsed.
    pub fn json(&self, api_key: &str, args: &[&str]) -> serde_json::Value {
        let out = self.ok(api_key, args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
    }

    /// `admin graph import` of an identifiers file (and cookies), as the operator.
    pub fn import(&self, ids: &Path, cookies: Option<&Path>) {
        let mut args = vec![
            "admin",
            "graph",
            "import",
            "--identifiers",
            ids.to_str().unwrap(),
        ];
        if let Some(c) = cookies {
            args.extend(["--cookies", c.to_str().unwrap()]);
        }
        self.ok(&self.admin_key.clone(), &args);
    }

    /// The audiences `api_key` may list (`audiences list --json`).
    pub fn audiences(&self, api_key: &str) -> Vec<serde_json::Value> {
        let listed = self.json(api_key, &["audiences", "list", "--json"]);
        listed
            .as_array()
            .or_else(|| listed["audiences"].as_array())
            .cloned()
            .unwrap_or_default()
    }

    /// A path inside the test's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `onboard-server audit verify` of the data dir succeeds (`when` names
    /// the moment in the failure message).
    pub fn assert_audit_verifies(&self, when: &str) {
        let out = self.server_cmd(&[
            "audit",
            "verify",
            "--data-dir",
            self.data_dir.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "audit verify {when}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `onboard-server ARGS…` (e.g. `audit verify`).
    pub fn server_cmd(&self, args: &[&str]) -> Output {
        server_command()
            .args(args)
            .output()
            .expect("run onboard-server")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `onboard-server …`, on this binary's backend whatever the caller's
/// environment says (the database URL is recorded by `init`).
fn server_command() -> Command {
    let mut command = Command::new(SUITE);
    command
        .arg("server")
        .env_remove("ONBOARD_DATABASE_URL")
        .env_remove("ONBOARD_STORAGE");
    command
}

/// Run `onboard` against any URL (for unreachable-server tests).
pub fn onboard_at(url: &str, ca: &Path, api_key: &str, args: &[&str]) -> Output {
    Command::new(SUITE)
        .arg("client")
        .arg("--server")
        .arg(url)
        .arg("--ca")
        .arg(ca)
        .args(args)
        .env("ONBOARD_API_KEY", api_key)
        .env_remove("ONBOARD_SERVER")
        .env_remove("ONBOARD_CA")
        .output()
        .expect("run onboard")
}

/// Every byte of every file under `dir`.
pub fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.push((p, bytes));
            }
        }
    }
    out
}

/// Copy the regular files under `from` (keys, certificates, config) to `to`,
/// keeping their modes; sockets and the like are left behind.
fn copy_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create data dir");
    for entry in std::fs::read_dir(from).expect("read data dir").flatten() {
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            copy_files(&src, &dst);
        } else if kind.is_file() {
            std::fs::copy(&src, &dst).expect("copy a data dir file");
        }
    }
}

/// A key file of `server`'s data dir (`LABEL HEX`): its hex and its bytes.
pub fn key_file(server: &TestServer, name: &str) -> (String, Vec<u8>) {
    let text = std::fs::read_to_string(server.data_dir.join(name)).expect("key file");
    let hex_part = text.split_whitespace().nth(1).expect("key hex").to_string();
    let raw = hex::decode(&hex_part).expect("hex key");
    (hex_part, raw)
}

/// No stored byte string holds `key` (from [`key_file`]), as hex or raw.
pub fn assert_no_key_bytes(stored: &[(PathBuf, Vec<u8>)], key: &(String, Vec<u8>), what: &str) {
    for (path, bytes) in stored {
        assert!(
            !contains(bytes, key.0.as_bytes()) && !contains(bytes, &key.1),
            "{} holds the old {what}",
            path.display()
        );
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A plain graph for attack tests: person `p{i}` has `person{i}@example.com`
/// and the cookie `ck-{i}` at `destination`.
pub fn simple_graph(server: &TestServer, persons: usize, destination: &str) {
    graph_at(server, "simple", persons, &[destination], |i| {
        format!("ck-{i}")
    });
}

/// A graph of `persons`: `p{i}` has `person{i}@example.com` and the cookie
/// `cookie(i)` at each of `destinations`; imported by the operator from
/// `NAME-ids.csv` and `NAME-cookies.csv` (left for the test).
pub fn graph_at(
    server: &TestServer,
    name: &str,
    persons: usize,
    destinations: &[&str],
    cookie: impl Fn(usize) -> String,
) {
    let ids = server.path(&format!("{name}-ids.csv"));
    let cookies = server.path(&format!("{name}-cookies.csv"));
    let mut id_lines = String::from("person_id,kind,value\n");
    let mut cookie_lines = String::from("person_id,destination,cookie_id\n");
    for i in 0..persons {
        id_lines.push_str(&format!("p{i},email,person{i}@example.com\n"));
        for d in destinations {
            cookie_lines.push_str(&format!("p{i},{d},{}\n", cookie(i)));
        }
    }
    std::fs::write(&ids, id_lines).unwrap();
    std::fs::write(&cookies, cookie_lines).unwrap();
    server.import(&ids, Some(&cookies));
}

/// A CRM file `email,segment` with the graph persons `members` plus
/// `strangers` rows unknown to the graph, all in `segment`.
pub fn crm_file(
    server: &TestServer,
    name: &str,
    segment: &str,
    members: impl IntoIterator<Item = usize>,
    strangers: usize,
) -> PathBuf {
    let path = server.path(name);
    let mut text = String::from("email,segment\n");
    for i in members {
        text.push_str(&format!("person{i}@example.com,{segment}\n"));
    }
    for j in 0..strangers {
        text.push_str(&format!(
            "stranger{j}.{name}@elsewhere.example.org,{segment}\n"
        ));
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// `onboard match --json` of an `email,segment` file; the raw output.
pub fn match_emails(
    server: &TestServer,
    api_key: &str,
    key_file: &Path,
    crm: &Path,
    destination: &str,
) -> Output {
    let args = match_email_args(key_file, crm, destination);
    server.onboard(api_key, &[&args[..], &["--json"]].concat())
}

/// The arguments of `onboard match` for an `email,segment` file.
pub fn match_email_args<'a>(
    key_file: &'a Path,
    crm: &'a Path,
    destination: &'a str,
) -> Vec<&'a str> {
    vec![
        "match",
        "--input",
        crm.to_str().unwrap(),
        "--key",
        key_file.to_str().unwrap(),
        "--destination",
        destination,
        "--email-col",
        "email",
        "--segment-col",
        "segment",
    ]
}

/// The segment entry of a report printed by `match --json`.
pub fn segment_of<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    let segments = report["report"]["segments"]
        .as_array()
        .or_else(|| report["segments"].as_array());
    segments
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("segment {name} not in {report}"))
}

/// Cookie IDs of every audience `api_key` can pull, by segment name.
pub fn pull_all(
    server: &TestServer,
    api_key: &str,
) -> Vec<(String, std::collections::BTreeSet<String>)> {
    let listed = server.audiences(api_key);
    listed
        .iter()
        .map(|a| {
            let id = a["id"].as_str().unwrap();
            let out = server.ok(api_key, &["audiences", "pull", id]);
            (
                a["segment"].as_str().unwrap_or_default().to_string(),
                out.lines().map(str::to_owned).collect(),
            )
        })
        .collect()
}
