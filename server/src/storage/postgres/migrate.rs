//! Versioned migrations from `server/migrations/NNNN_name.sql`, embedded in
//! the build and applied in order at start, in one transaction under an
//! advisory lock, recorded in `schema_migrations`. They only move forward;
//! a database of a newer schema than the build's is refused.

use super::{db_err, StoreError, StoreResult};
use deadpool_postgres::Object;

/// Every migration: (version, name, SQL), in increasing order.
pub(super) const MIGRATIONS: &[(u32, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../../migrations/0001_initial.sql"),
    ),
    (
        2,
        "outbox",
        include_str!("../../../migrations/0002_outbox.sql"),
    ),
    (
        3,
        "graph_partitions",
        include_str!("../../../migrations/0003_graph_partitions.sql"),
    ),
    (
        4,
        "console",
        include_str!("../../../migrations/0004_console.sql"),
    ),
    (
        5,
        "graph_history",
        include_str!("../../../migrations/0005_graph_history.sql"),
    ),
    (
        6,
        "audience_versions",
        include_str!("../../../migrations/0006_audience_versions.sql"),
    ),
    (
        7,
        "cache_runs",
        include_str!("../../../migrations/0007_cache_runs.sql"),
    ),
    (
        8,
        "uncompressed_frames",
        include_str!("../../../migrations/0008_uncompressed_frames.sql"),
    ),
];

/// The schema version this build writes: its last migration's.
pub const PG_SCHEMA_VERSION: u32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// The advisory lock serialising migrations of servers starting together.
const MIGRATION_LOCK: i64 = 0x6f6e_626f_6172_6401;

/// Apply the pending migrations, or refuse a newer schema.
pub(super) async fn migrate(client: &mut Object) -> StoreResult<()> {
    let tx = client.transaction().await.map_err(db_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db_err)?;
    // Quiet: "already exists, skipping" is the normal case.
    tx.batch_execute(
        "SET LOCAL client_min_messages = warning;
         CREATE TABLE IF NOT EXISTS schema_migrations (
             version integer PRIMARY KEY,
             name    text NOT NULL,
             applied timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(db_err)?;
    let found: Option<i32> = tx
        .query_one("SELECT max(version) FROM schema_migrations", &[])
        .await
        .map_err(db_err)?
        .get(0);
    let found = found.and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
    if found > PG_SCHEMA_VERSION {
        return Err(StoreError::Schema {
            found,
            expected: PG_SCHEMA_VERSION,
        });
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > found) {
        tx.batch_execute(sql).await.map_err(|e| {
            StoreError::Backend(format!("migration {version:04}_{name} failed: {e}"))
        })?;
        let v = i32::try_from(*version).map_err(|_| StoreError::Corrupt("schema_migrations"))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&v, name],
        )
        .await
        .map_err(db_err)?;
        tracing::info!(version, name, "database migration applied");
    }
    tx.commit().await.map_err(db_err)
}
