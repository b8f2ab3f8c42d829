//! The PostgreSQL backend: several stateless servers share one database.
//! Every trait call is one blocking round of SQL (a write is one
//! transaction), run on a pooled connection (deadpool-postgres) whose I/O
//! is driven by the store's own small tokio runtime, so the synchronous
//! storage traits work from any thread, including the services' blocking
//! threads, without entering the caller's runtime. The graph's rows and
//! audience members go in by binary `COPY` (`PgStore::copy_rows`), other
//! bulk rows as arrays (`unnest`) in one statement; look-ups of many points
//! take `= ANY($1)` over slices of a few thousand, pipelined on one
//! connection. Cross-server read-then-write steps take session advisory
//! locks ([`LockRepo`]); the ε budget locks the advertiser's row. The only
//! code in the crate that imports tokio-postgres.

mod audiences;
mod cache;
mod console;
mod graph;
mod jobs;
mod migrate;
mod outbox;
mod records;
mod rotation;
#[cfg(test)]
pub(crate) mod test_db;
#[cfg(test)]
mod tests;

pub use migrate::PG_SCHEMA_VERSION;

use super::*;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use std::future::Future;
use std::time::Duration;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

/// Connections per server: the join looks points up from every core at
/// once, and each held advisory lock keeps one connection.
const POOL_SIZE: usize = 16;
/// Longest wait for a pooled connection or a new one.
const POOL_WAIT: Duration = Duration::from_secs(30);
/// Longest wait for the database to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A `postgres://user:password@host:port/db` URL. Its `Display` and `Debug`
/// hide the password, so it can go into logs and errors.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

/// A database URL that cannot be used (the message never holds the password).
#[derive(Debug, Error)]
#[error("invalid database URL {url}: {reason}")]
pub struct DatabaseUrlError {
    /// The URL, redacted.
    pub url: String,
    /// Why.
    pub reason: String,
}

impl std::str::FromStr for DatabaseUrl {
    type Err = DatabaseUrlError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let bad = |reason: &str| DatabaseUrlError {
            url: redact(text),
            reason: reason.into(),
        };
        if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
            return Err(bad("it must start with postgres:// or postgresql://"));
        }
        text.parse::<tokio_postgres::Config>()
            .map_err(|_| bad("it does not parse as a PostgreSQL connection URL"))?;
        Ok(Self(text.to_string()))
    }
}

impl DatabaseUrl {
    /// The URL with its password: only for connecting and for the data
    /// dir's 0600 configuration file.
    pub(crate) fn expose_secret(&self) -> &str {
        &self.0
    }
}

/// `text` with the password of its user-info replaced by `***`.
fn redact(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "(unparsable URL)".to_string(),
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// The PostgreSQL store.
pub struct PgStore {
    pool: Pool,
    /// Drives the connections' sockets and the pool's timers; shut down in
    /// the background on drop (a drop may happen on an async thread).
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A lost connection, a database shutting down or refusing connections,
/// a pool timeout: [`StoreError::Unavailable`]; anything else a backend error.
pub(super) fn db_err(e: tokio_postgres::Error) -> StoreError {
    let unavailable = e.is_closed()
        || match e.code() {
            None => true,
            Some(code) => {
                code.code().starts_with("08")
                    || [
                        SqlState::ADMIN_SHUTDOWN,
                        SqlState::CRASH_SHUTDOWN,
                        SqlState::CANNOT_CONNECT_NOW,
                    ]
                    .contains(code)
            }
        };
    // A server-side error's message and code, never its detail (which may
    // quote a key); our values travel apart from the statement.
    let text = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    };
    if unavailable {
        StoreError::Unavailable(text)
    } else {
        StoreError::Backend(text)
    }
}

/// No connection to be had, whatever the reason (the database refusing
/// connections, e.g. `ALLOW_CONNECTIONS false` (55000), too many clients, a
/// timeout): the store is unavailable, not broken.
fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => match db_err(e) {
            StoreError::Backend(text) => StoreError::Unavailable(text),
            other => other,
        },
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// Most keys in one `= ANY($n)` array of [`PgStore::query_any`]. With a
/// long array the planner's custom plan prices the index scan above a
/// (parallel) sequential scan of the whole partition: at 32,768 persons of
/// a 5M-row cookie partition that scan took 350 ms where the index takes
/// 110 ms. At 4,096 keys the index scan wins wherever it should.
pub(super) const ANY_SLICE: usize = 4096;

/// The parameters of one statement.
pub(super) type Params<'a> = &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)];

/// An unsigned value (a time, a count, a sequence number) as PostgreSQL's
/// bigint, saturating: stored values are far below 2^63, and a bound such
/// as "touched before `u64::MAX`" must stay the largest, not wrap negative.
pub(super) fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A bigint back to the unsigned value it stores (never negative).
pub(super) fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(super) fn json<T: Serialize>(v: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| StoreError::Backend(e.to_string()))
}

pub(super) fn from_json<T: for<'de> Deserialize<'de>>(
    table: &'static str,
    bytes: &[u8],
) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(|_| StoreError::Corrupt(table))
}

pub(super) fn point_of(table: &'static str, bytes: &[u8]) -> StoreResult<PointBytes> {
    Ok(PointBytes(
        bytes.try_into().map_err(|_| StoreError::Corrupt(table))?,
    ))
}

pub(super) fn person_of(table: &'static str, bytes: &[u8]) -> StoreResult<PersonKey> {
    bytes.try_into().map_err(|_| StoreError::Corrupt(table))
}

pub(super) fn kind_of(table: &'static str, v: i16) -> StoreResult<MatchKind> {
    u8::try_from(v)
        .ok()
        .and_then(MatchKind::from_byte)
        .ok_or(StoreError::Corrupt(table))
}

pub(super) fn kind_col(kind: MatchKind) -> i16 {
    i16::from(kind.to_byte())
}

/// Points as the `bytea[]` parameter of a batched statement.
pub(super) fn point_params(points: &[PointBytes]) -> Vec<&[u8]> {
    points.iter().map(|p| &p.0[..]).collect()
}

impl PgStore {
    /// Connect, wait for the database, and apply pending migrations (under
    /// an advisory lock, so servers starting together apply them once).
    /// A database of a newer schema is refused naming both versions.
    pub fn connect(url: &DatabaseUrl) -> StoreResult<Self> {
        let mut config: tokio_postgres::Config = url
            .expose_secret()
            .parse()
            .map_err(|_| StoreError::Backend(format!("invalid database URL {url}")))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("onboard-server");
        }
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("onboard-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("database runtime: {e}")))?;
        let pool = {
            let _context = runtime.enter();
            Pool::builder(manager)
                .max_size(POOL_SIZE)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(POOL_WAIT))
                .create_timeout(Some(CONNECT_TIMEOUT))
                .recycle_timeout(Some(CONNECT_TIMEOUT))
                .build()
                .map_err(|e| StoreError::Backend(format!("database pool: {e}")))?
        };
        let store = Self {
            pool,
            runtime: Some(runtime),
        };
        store
            .run(async {
                let mut client = store.client().await?;
                migrate::migrate(&mut client).await
            })
            .map_err(|e| match e {
                StoreError::Unavailable(m) => {
                    StoreError::Unavailable(format!("cannot reach the database {url}: {m}"))
                }
                other => other,
            })?;
        Ok(store)
    }

    /// Run one future to completion on this thread, with the store's
    /// runtime as the context for the connections it opens.
    pub(super) fn run<T>(&self, fut: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
        let _context = self.runtime.as_ref().map(|rt| rt.enter());
        futures_executor::block_on(fut)
    }

    /// A pooled connection.
    pub(super) async fn client(&self) -> StoreResult<Object> {
        self.pool.get().await.map_err(pool_err)
    }

    /// Rows of one statement.
    pub(super) fn query(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> StoreResult<Vec<tokio_postgres::Row>> {
        self.run(async {
            let client = self.client().await?;
            let statement = client.prepare_cached(sql).await.map_err(db_err)?;
            client.query(&statement, params).await.map_err(db_err)
        })
    }

    /// Rows of one `… = ANY($n::bytea[])` statement over many keys, the
    /// array last among the parameters: sent as slices of [`ANY_SLICE`]
    /// keys, pipelined on one connection, their rows concatenated in order.
    pub(super) fn query_any(
        &self,
        sql: &str,
        head: Params<'_>,
        keys: &[&[u8]],
    ) -> StoreResult<Vec<tokio_postgres::Row>> {
        self.run(async {
            let client = self.client().await?;
            let statement = client.prepare_cached(sql).await.map_err(db_err)?;
            let queries = keys.chunks(ANY_SLICE).map(|slice| {
                let (client, statement) = (&client, &statement);
                async move {
                    let mut params = head.to_vec();
                    params.push(&slice);
                    client.query(statement, &params).await
                }
            });
            let slices = futures_util::future::try_join_all(queries)
                .await
                .map_err(db_err)?;
            Ok(slices.into_iter().flatten().collect())
        })
    }

    /// Rows changed by one statement (its own transaction).
    pub(super) fn execute(&self, sql: &str, params: Params<'_>) -> StoreResult<u64> {
        self.run(async {
            let client = self.client().await?;
            let statement = client.prepare_cached(sql).await.map_err(db_err)?;
            client.execute(&statement, params).await.map_err(db_err)
        })
    }

    /// `count` rows through `copy` (a binary `COPY … FROM STDIN` whose
    /// columns are typed as `types`), within `tx`; `row(i)` gives the
    /// i-th row's columns.
    pub(super) async fn copy_rows<'r>(
        tx: &tokio_postgres::Transaction<'_>,
        copy: &str,
        types: &[Type],
        count: usize,
        row: impl Fn(usize) -> Vec<&'r (dyn ToSql + Sync)>,
    ) -> StoreResult<()> {
        let sink = tx.copy_in(copy).await.map_err(db_err)?;
        let writer = BinaryCopyInWriter::new(sink, types);
        futures_util::pin_mut!(writer);
        for i in 0..count {
            writer.as_mut().write(&row(i)).await.map_err(db_err)?;
        }
        writer.finish().await.map(drop).map_err(db_err)
    }

    /// Statements run in order in one transaction; the rows each changed.
    pub(super) fn execute_all(&self, statements: &[(&str, Params<'_>)]) -> StoreResult<Vec<u64>> {
        self.run(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db_err)?;
            let mut changed = Vec::with_capacity(statements.len());
            for (sql, params) in statements {
                let statement = tx.prepare_cached(sql).await.map_err(db_err)?;
                changed.push(tx.execute(&statement, params).await.map_err(db_err)?);
            }
            tx.commit().await.map_err(db_err)?;
            Ok(changed)
        })
    }

    /// The JSON record in the first column of the first row, if any.
    pub(super) fn record<T: for<'de> Deserialize<'de>>(
        &self,
        table: &'static str,
        sql: &str,
        params: Params<'_>,
    ) -> StoreResult<Option<T>> {
        self.query(sql, params)?
            .first()
            .map(|r| from_json(table, r.get(0)))
            .transpose()
    }

    /// The JSON records in the first column of every row.
    pub(super) fn records<T: for<'de> Deserialize<'de>>(
        &self,
        table: &'static str,
        sql: &str,
        params: Params<'_>,
    ) -> StoreResult<Vec<T>> {
        self.query(sql, params)?
            .iter()
            .map(|r| from_json(table, r.get(0)))
            .collect()
    }

    /// Does the query return a row?
    pub(super) fn exists(&self, sql: &str, params: Params<'_>) -> StoreResult<bool> {
        Ok(!self.query(sql, params)?.is_empty())
    }

    /// The bigint in the first column of the first row (a count), 0 if none.
    pub(super) fn count(&self, sql: &str, params: Params<'_>) -> StoreResult<u64> {
        Ok(self
            .query(sql, params)?
            .first()
            .map_or(0, |r| u64_of(r.get(0))))
    }

    /// Does the database hold any principal (a deployment's data)?
    pub fn has_deployment(&self) -> StoreResult<bool> {
        self.exists("SELECT 1 FROM principals LIMIT 1", &[])
    }
}

impl MetaRepo for PgStore {
    fn schema_version(&self) -> StoreResult<Option<u32>> {
        let rows = self.query("SELECT max(version) FROM schema_migrations", &[])?;
        let v: Option<i32> = rows.first().and_then(|r| r.get(0));
        Ok(v.and_then(|v| u32::try_from(v).ok()))
    }
    fn set_schema_version(&self, v: u32) -> StoreResult<()> {
        // Migrations set it; only a matching value is accepted.
        match self.schema_version()? {
            Some(found) if found == v => Ok(()),
            found => Err(StoreError::Schema {
                found: found.unwrap_or(0),
                expected: v,
            }),
        }
    }
    fn flush(&self) -> StoreResult<()> {
        // Every write is committed (and so durable) before it returns.
        Ok(())
    }
}

/// An advisory lock's key: the first 8 bytes of SHA-256 of its name.
fn lock_key(name: &str) -> i64 {
    use sha2::{Digest as _, Sha256};
    let d = Sha256::digest(format!("onboard-lock/{name}").as_bytes());
    i64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// A session advisory lock held on its own pooled connection; dropping it
/// unlocks, or closes the connection (which unlocks too) when that fails.
struct PgLock {
    client: Option<Object>,
    key: i64,
    runtime: tokio::runtime::Handle,
}

impl Drop for PgLock {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let _context = self.runtime.enter();
        let unlocked = futures_executor::block_on(
            client.query_one("SELECT pg_advisory_unlock($1)", &[&self.key]),
        )
        .map(|row| row.get::<_, bool>(0));
        if !matches!(unlocked, Ok(true)) {
            // Not back to the pool: closing the session frees its locks.
            drop(Object::take(client));
        }
    }
}

impl LockHold for PgLock {
    fn is_held(&self) -> bool {
        self.client.as_ref().is_some_and(|c| !c.is_closed())
    }
}

impl PgStore {
    fn held(&self, client: Object, key: i64) -> StoreResult<HeldLock> {
        let runtime = self
            .runtime
            .as_ref()
            .map(|rt| rt.handle().clone())
            .ok_or_else(|| StoreError::Unavailable("the store is closing".into()))?;
        Ok(HeldLock::held_by(Box::new(PgLock {
            client: Some(client),
            key,
            runtime,
        })))
    }
}

impl LockRepo for PgStore {
    fn lock(&self, name: &str) -> StoreResult<HeldLock> {
        let key = lock_key(name);
        let client = self.run(async {
            let client = self.client().await?;
            client
                .execute("SELECT pg_advisory_lock($1)", &[&key])
                .await
                .map_err(db_err)?;
            Ok(client)
        })?;
        self.held(client, key)
    }
    fn try_lock(&self, name: &str) -> StoreResult<Option<HeldLock>> {
        let key = lock_key(name);
        let taken = self.run(async {
            let client = self.client().await?;
            let row = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                .await
                .map_err(db_err)?;
            Ok(row.get::<_, bool>(0).then_some(client))
        })?;
        taken.map(|client| self.held(client, key)).transpose()
    }
}
