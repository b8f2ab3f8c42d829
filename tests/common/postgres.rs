//! The PostgreSQL side of the end-to-end harness: which backend a test
//! binary runs on, and a throw-away database per test server, created from
//! `ONBOARD_TEST_DATABASE_URL` (a role allowed to create databases) with the
//! `psql` and `pg_dump` that come with the server packages.

use std::io::Write as _;
use std::process::Command;
use std::sync::Once;

/// The variable naming the test cluster (`postgres://user:pass@host:port/db`).
pub const DATABASE_URL_VAR: &str = "ONBOARD_TEST_DATABASE_URL";

/// The storage backend of this test binary's servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sled,
    Postgres,
}

/// `tests/postgres_suite.rs` compiles the end-to-end files a second time as
/// its modules: the crate's name is what tells the two builds apart.
pub fn backend() -> Backend {
    if env!("CARGO_CRATE_NAME") == "postgres_suite" {
        Backend::Postgres
    } else {
        Backend::Sled
    }
}

/// Whether this binary runs on PostgreSQL: the sled-only tests (those that
/// rewrite sled's records in place or restore its backups) return early.
pub fn on_postgres() -> bool {
    backend() == Backend::Postgres
}

/// The test cluster's URL. Without one this ends the test binary
/// successfully after ONE line (the skip must not pass for a run of
/// hundreds of tests), or panics under `CI=true`, where skipping would hide
/// a broken CI set-up.
pub fn cluster_url() -> String {
    if let Ok(url) = std::env::var(DATABASE_URL_VAR) {
        if !url.is_empty() {
            return url;
        }
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{DATABASE_URL_VAR} is not set under CI=true: the PostgreSQL suite must run");
    }
    static SKIP: Once = Once::new();
    SKIP.call_once(|| {
        // Straight to stderr: the test harness captures `eprintln!`.
        let _ = writeln!(
            std::io::stderr(),
            "\nPostgreSQL end-to-end tests skipped: {DATABASE_URL_VAR} is not set"
        );
        std::process::exit(0);
    });
    unreachable!("the process has exited")
}

/// `url` with its database name replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    format!("{}/{database}{query}", &base[..host_end])
}

/// A database of its own for one test server, dropped (with its sessions)
/// when the test ends.
pub struct TestDatabase {
    pub name: String,
    /// The URL the servers use.
    pub url: String,
    cluster: String,
}

impl TestDatabase {
    pub fn create() -> Self {
        let cluster = cluster_url();
        let name = format!("onboard_t_{:016x}", rand::random::<u64>());
        psql(&cluster, &format!("CREATE DATABASE {name}"));
        Self {
            url: with_database(&cluster, &name),
            name,
            cluster,
        }
    }

    /// Run SQL in this database; its output, unaligned, tuples only.
    pub fn sql(&self, sql: &str) -> String {
        psql(&self.url, sql)
    }

    /// `pg_dump` of the database, plain SQL with the data.
    pub fn dump(&self) -> Vec<u8> {
        let out = Command::new("pg_dump")
            .args(["--no-owner", "--dbname", &self.url])
            .output()
            .expect("run pg_dump");
        assert!(
            out.status.success(),
            "pg_dump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Make the database refuse (`false`) or accept (`true`) connections.
    /// Refusing also ends its open sessions, as a database restart would.
    pub fn set_available(&self, available: bool) {
        // Autovacuum may update the database's catalog row at the same
        // moment ("tuple concurrently updated"): a bounded retry.
        let alter = format!("ALTER DATABASE {} ALLOW_CONNECTIONS {available}", self.name);
        let mut attempts = 0;
        while let Err(e) = onboard_suite::harness::psql(&self.cluster, &alter) {
            attempts += 1;
            assert!(
                attempts < 20 && e.to_string().contains("concurrently updated"),
                "{alter}: {e}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if !available {
            psql(
                &self.cluster,
                &format!(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE datname = '{}'",
                    self.name
                ),
            );
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = onboard_suite::harness::psql(&self.cluster, &sql);
    }
}

/// `psql -c SQL` against `url`, asserting success; its output.
fn psql(url: &str, sql: &str) -> String {
    onboard_suite::harness::psql(url, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}
