//! The end-to-end suite on PostgreSQL: the same test files as the sled run,
//! compiled again as modules of this binary, whose servers each get a
//! database of their own (`common::postgres`), plus the tests only several
//! servers on one database can run. Needs `ONBOARD_TEST_DATABASE_URL` (a role
//! that may create databases); without it the binary prints one line and
//! passes, under `CI=true` it fails.
//!
//! Sled-only, returning early on `common::postgres::on_postgres()` in its
//! file: the backup/restore round trip of `audit_and_keys.rs` (on PostgreSQL
//! `onboard-server backup` refuses; backups are `pg_dump`'s, see
//! docs/operations.md).

// Each file declares `mod common;` as it does in its own binary, so this one
// holds several copies of the harness.
#![allow(clippy::duplicate_mod)]

mod common;

#[path = "audit_and_keys.rs"]
mod audit_and_keys;
#[path = "console_http.rs"]
mod console_http;
#[path = "crash_safety.rs"]
mod crash_safety;
#[path = "end_to_end.rs"]
mod end_to_end;
#[path = "graph_updates.rs"]
mod graph_updates;
#[path = "hostile_input.rs"]
mod hostile_input;
#[path = "key_rotation.rs"]
mod key_rotation;
#[path = "privacy_attacks.rs"]
mod privacy_attacks;
#[path = "refresh.rs"]
mod refresh;
#[path = "review_attacks.rs"]
mod review_attacks;
#[path = "secret_rotation.rs"]
mod secret_rotation;
#[path = "webhooks.rs"]
mod webhooks;

#[path = "postgres/outage.rs"]
mod outage;
#[path = "postgres/two_servers.rs"]
mod two_servers;
