//! A throw-away schema of the database at `ONBOARD_TEST_DATABASE_URL` for
//! each PostgreSQL test (dropped at the end). Without the variable a test
//! prints one line and passes, unless `CI=true`: then it fails.

use super::*;

/// The environment variable naming the test database.
const TEST_DATABASE_URL: &str = "ONBOARD_TEST_DATABASE_URL";

/// A schema of the test database, dropped on drop.
pub(crate) struct TestDb {
    pub(crate) admin_url: String,
    pub(crate) schema: String,
    pub(crate) url: DatabaseUrl,
}

/// Run `sql` on a connection of its own (setting up and dropping schemas).
pub(crate) fn admin(url: &str, sql: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let driver = tokio::spawn(connection);
        client.batch_execute(sql).await.unwrap();
        drop(client);
        let _ = driver.await;
    });
}

impl TestDb {
    /// A fresh schema, or `None` (skip) without a test database.
    pub(crate) fn new() -> Option<Self> {
        let Ok(admin_url) = std::env::var(TEST_DATABASE_URL) else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{TEST_DATABASE_URL} is not set but CI=true: the PostgreSQL tests must run"
            );
            static SKIP: std::sync::Once = std::sync::Once::new();
            // Straight to stderr: the test harness captures `println!`.
            SKIP.call_once(|| {
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "PostgreSQL storage tests skipped: {TEST_DATABASE_URL} is not set"
                );
            });
            return None;
        };
        let schema = format!("onboard_test_{}", crate::services::new_id(""));
        admin(&admin_url, &format!("CREATE SCHEMA {schema}"));
        let sep = if admin_url.contains('?') { '&' } else { '?' };
        let url =
            format!("{admin_url}{sep}options=-csearch_path%3D{schema}&application_name={schema}")
                .parse()
                .unwrap();
        Some(Self {
            admin_url,
            schema,
            url,
        })
    }

    pub(crate) fn store(&self) -> PgStore {
        PgStore::connect(&self.url).unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        admin(
            &self.admin_url,
            &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema),
        );
    }
}
