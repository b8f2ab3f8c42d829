//! The `onboard-server` command line: `init`, `serve`, `backup`, `restore`,
//! `audit verify`, `audit head`, `keys add-audit-key`, `keys rotate`
//! (`--seal-key`, `--pepper [--finish]`, `--status`),
//! `operator add|remove|reset-2fa`.

use crate::config::Config;
use crate::init::{init, InitOptions};
use crate::storage::StorageConfig;
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

/// onboard's server: blinded identity graph, double-blind matching, audiences.
#[derive(Debug, Parser)]
#[command(name = "onboard-server", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a data dir: server key, pepper, audit key, first admin API key, optional dev TLS.
    Init {
        /// Data directory to create.
        #[arg(long)]
        data_dir: PathBuf,
        /// Also create a self-signed development certificate for localhost and 127.0.0.1.
        #[arg(long)]
        dev_tls: bool,
        /// Write the admin API key to this file (mode 0600) instead of stdout.
        #[arg(long)]
        admin_key_out: Option<PathBuf>,
        /// Keep the state in this PostgreSQL database
        /// (postgres://USER:PASSWORD@HOST:PORT/DB), recorded in DIR/onboard.toml
        /// (mode 0600). Refused if the database already holds a deployment:
        /// add a server by copying an existing data dir's key files instead.
        #[arg(long, env = "ONBOARD_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
    /// Serve the HTTPS API.
    Serve {
        /// Data directory made by `init`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Address to listen on (default 127.0.0.1:8443).
        #[arg(long)]
        listen: Option<String>,
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Minimum audience size (floor 50).
        #[arg(long)]
        k: Option<usize>,
        /// Minimum rows per job.
        #[arg(long)]
        min_job_rows: Option<usize>,
        /// PostgreSQL database (postgres://USER:PASSWORD@HOST:PORT/DB); default:
        /// the data dir's onboard.toml, then ONBOARD_DATABASE_URL.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Write a point-in-time copy of the store to FILE (mode 0600), also
    /// while `serve` runs (through the data dir's owner-only control socket).
    ///
    /// The key files server.key, pepper.key and audit.key are NOT in the
    /// backup: back them up separately; a restored store needs the same ones.
    Backup {
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Backup file to write (replaced atomically).
        #[arg(long)]
        out: PathBuf,
        /// PostgreSQL database (postgres://USER:PASSWORD@HOST:PORT/DB); default:
        /// the data dir's onboard.toml, then ONBOARD_DATABASE_URL.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Replace the store of a stopped server's data dir with a backup.
    ///
    /// The checksum and versions are verified before anything is written; the
    /// new store is built beside the old one and swapped in by rename. Key
    /// files (server.key, pepper.key, audit.key) are not in backups: copy the
    /// source's into DIR yourself.
    Restore {
        /// Data directory whose store to replace (its server must be stopped).
        #[arg(long)]
        data_dir: PathBuf,
        /// Backup file made by `backup`.
        #[arg(long)]
        from: PathBuf,
        /// Replace a store that already holds data.
        #[arg(long)]
        force: bool,
        /// PostgreSQL database (postgres://USER:PASSWORD@HOST:PORT/DB); default:
        /// the data dir's onboard.toml, then ONBOARD_DATABASE_URL.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Key file tools.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Operators of the web console (https://HOST:PORT/console/). On sled
    /// the server must be stopped; on PostgreSQL it may run.
    Operator {
        #[command(subcommand)]
        command: OperatorCommand,
    },
}

/// The data dir (and database) an operator command works on.
#[derive(Debug, clap::Args)]
struct OperatorTarget {
    /// The operator's name (1-64 of letters, digits, '.', '_', '-').
    name: String,
    /// Data directory.
    #[arg(long)]
    data_dir: PathBuf,
    /// PostgreSQL database (postgres://USER:PASSWORD@HOST:PORT/DB); default:
    /// the data dir's onboard.toml, then ONBOARD_DATABASE_URL.
    #[arg(long)]
    database_url: Option<String>,
}

#[derive(Debug, Subcommand)]
enum OperatorCommand {
    /// Create a console operator. Prints, once, its random password and its
    /// otpauth://totp/ URI (for an authenticator app: SHA-1, 6 digits, 30 s),
    /// each alone on a line.
    Add(OperatorTarget),
    /// Delete an operator; its sessions end.
    Remove(OperatorTarget),
    /// Give an operator a new TOTP secret (printed once as an otpauth:// URI);
    /// the password stays, its sessions end.
    #[command(name = "reset-2fa")]
    Reset2fa(OperatorTarget),
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the chain under DIR/audit.key (HMAC-SHA256): a changed entry,
    /// or a chain recomputed without the key, fails. Reports the first bad
    /// entry and exits 1.
    Verify {
        /// Data directory (the server must be stopped).
        #[arg(long)]
        data_dir: PathBuf,
        /// A head printed earlier by `audit head` (SEQ:HASH) that the chain
        /// must still reach with the same hash; catches a cut tail. Repeatable.
        #[arg(long, value_name = "SEQ:HASH")]
        expect_head: Vec<crate::services::audit::Anchor>,
        /// PostgreSQL database (postgres://USER:PASSWORD@HOST:PORT/DB); default:
        /// the data dir's onboard.toml, then ONBOARD_DATABASE_URL.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Print the chain's last entry (SEQ:HASH TIME), to keep off this host
    /// and pass later to `audit verify --expect-head`. Works while `serve`
    /// runs (through the control socket).
    Head {
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Print `{"seq","hash","time"}`.
        #[arg(long)]
        json: bool,
        /// PostgreSQL database (postgres://USER:PASSWORD@HOST:PORT/DB); default:
        /// the data dir's onboard.toml, then ONBOARD_DATABASE_URL.
        #[arg(long)]
        database_url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create DIR/audit.key for a data dir made by an older build (server
    /// stopped). The existing unkeyed chain must verify; its head is pinned
    /// in the key file and later entries are chained under the key.
    AddAuditKey {
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// PostgreSQL database (postgres://USER:PASSWORD@HOST:PORT/DB); default:
        /// the data dir's onboard.toml, then ONBOARD_DATABASE_URL.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Rotate a key of the running server (through the control socket).
    /// By default the server key `b`: new jobs and imports wait, open ones
    /// finish, then every stored point is moved to the new key and the old
    /// key is destroyed. Prints the progress until it ends.
    Rotate {
        /// Data directory of the running server.
        #[arg(long)]
        data_dir: PathBuf,
        /// Rotate the sealing key instead: every sealed cookie ID and webhook
        /// secret is sealed again under a new key (pulls go on meanwhile).
        #[arg(long, conflicts_with = "pepper")]
        seal_key: bool,
        /// Rotate the API-key pepper instead: keys issued before stay valid
        /// and move to the new pepper on their next use.
        #[arg(long)]
        pepper: bool,
        /// With --pepper: remove the old pepper (refused while live keys
        /// still need it).
        #[arg(long, requires = "pepper", conflicts_with_all = ["status", "no_wait"])]
        finish: bool,
        /// Only print how the current (or last) rotation goes.
        #[arg(long)]
        status: bool,
        /// Start it and return at once.
        #[arg(long, conflicts_with = "status")]
        no_wait: bool,
        /// On PostgreSQL: every other server of the database is stopped, so
        /// this one may rotate; copy the new key files to the others before
        /// they start again (see "Rotating keys on PostgreSQL" in
        /// docs/operations.md).
        #[arg(long)]
        other_servers_stopped: bool,
    },
}

/// Parse `args` (including the program name) and run; the exit code is 0 on
/// success, 1 when the operation failed, 2 on usage errors.
pub fn main_with_args<I: IntoIterator<Item = OsString>>(args: I) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // `serve` installs its logger once its configuration (`log_format`) is loaded.
    if !matches!(cli.command, Command::Serve { .. }) {
        crate::logging::init(crate::logging::format_from_env());
    }
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Wait for SIGINT or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Init {
            data_dir,
            dev_tls,
            admin_key_out,
            database_url,
        } => {
            let to_file = admin_key_out.is_some();
            let database_url = database_url
                .map(|u| u.parse::<crate::storage::postgres::DatabaseUrl>())
                .transpose()?;
            let out = init(&InitOptions {
                data_dir: data_dir.clone(),
                dev_tls,
                admin_key_out,
                database_url,
            })?;
            println!("initialised {}", data_dir.display());
            if let Some(ca) = &out.ca_cert {
                println!(
                    "development CA certificate (pass it to clients as --ca): {}",
                    ca.display()
                );
            }
            if !to_file {
                println!("first admin API key (shown once):");
                println!("{}", out.admin_api_key);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve {
            data_dir,
            listen,
            config,
            k,
            min_job_rows,
            database_url,
        } => {
            let mut flags = Vec::new();
            if let Some(d) = data_dir {
                flags.push(("data_dir", d.to_string_lossy().into_owned()));
            }
            if let Some(l) = listen {
                flags.push(("listen", l));
            }
            if let Some(k) = k {
                flags.push(("k", k.to_string()));
            }
            if let Some(m) = min_job_rows {
                flags.push(("min_job_rows", m.to_string()));
            }
            if let Some(url) = database_url {
                flags.push(("database_url", url));
            }
            let config = Config::load(config.as_deref(), std::env::vars(), &flags)?;
            crate::logging::init(config.log_format);
            let log_format = config.log_format;
            // Test builds only: crash points configured by `FAILPOINTS` (see faults.rs).
            #[cfg(feature = "failpoints")]
            let _faults = fail::FailScenario::setup();
            let listener = std::net::TcpListener::bind(config.listen)
                .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
            let handle = crate::server::start(config, listener)?;
            let ready = format!("onboard-server listening on https://{}", handle.addr);
            match log_format {
                crate::logging::LogFormat::Text => eprintln!("{ready}"),
                crate::logging::LogFormat::Json => tracing::info!("{ready}"),
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(shutdown_signal())?;
            tracing::info!("stopping");
            handle.stop();
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup {
            data_dir,
            out,
            database_url,
        } => {
            refuse_on_postgres(&data_dir, database_url.as_deref(), "backup")?;
            let bytes = crate::backup::backup(&data_dir, &out)?;
            println!("backup written to {} ({bytes} bytes)", out.display());
            println!(
                "note: the key files ({}) are not in the backup; back them up separately",
                crate::keyfiles::KEY_FILES.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore {
            data_dir,
            from,
            force,
            database_url,
        } => {
            refuse_on_postgres(&data_dir, database_url.as_deref(), "restore")?;
            let r = crate::backup::restore(&data_dir, &from, force)?;
            println!(
                "restored {} entries into {}{}",
                r.entries,
                data_dir.display(),
                if r.replaced {
                    " (previous store replaced)"
                } else {
                    ""
                }
            );
            for f in crate::keyfiles::KEY_FILES {
                if !data_dir.join(f).exists() {
                    println!(
                        "note: {f} is missing: copy the source data dir's key files before serving"
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    data_dir,
                    expect_head,
                    database_url,
                },
        } => audit_verify(
            &data_dir,
            &storage_of(&data_dir, database_url.as_deref())?,
            &expect_head,
        ),
        Command::Audit {
            command:
                AuditCommand::Head {
                    data_dir,
                    json,
                    database_url,
                },
        } => audit_head(
            &data_dir,
            &storage_of(&data_dir, database_url.as_deref())?,
            json,
        ),
        Command::Operator { command } => operator(command),
        Command::Keys {
            command:
                KeysCommand::Rotate {
                    data_dir,
                    seal_key,
                    pepper,
                    finish,
                    status,
                    no_wait,
                    other_servers_stopped,
                },
        } => {
            use crate::backup::RotationRequest as R;
            // Asking how a rotation goes is harmless everywhere.
            if !other_servers_stopped && !status {
                refuse_rotation_on_postgres(&data_dir)?;
            }
            match (pepper, finish, status) {
                (true, true, _) => print_reply(&data_dir, R::PepperFinish),
                (true, _, true) => print_reply(&data_dir, R::PepperStatus),
                (true, _, _) => print_reply(&data_dir, R::Pepper),
                (_, _, true) => print_reply(&data_dir, R::Status),
                _ if seal_key => follow_rotation(&data_dir, R::SealKey, no_wait),
                _ => follow_rotation(&data_dir, R::ServerKey, no_wait),
            }
        }
        Command::Keys {
            command:
                KeysCommand::AddAuditKey {
                    data_dir,
                    database_url,
                },
        } => {
            let storage = storage_of(&data_dir, database_url.as_deref())?;
            let added = crate::init::add_audit_key(&data_dir, &storage)?;
            println!(
                "created {}",
                data_dir.join(crate::keyfiles::AUDIT_KEY_FILE).display()
            );
            if added.legacy_entries > 0 {
                println!(
                    "the existing unkeyed chain (entries 1-{}) verified and is pinned in it; later entries are keyed",
                    added.legacy_entries
                );
            }
            println!("back it up with server.key and pepper.key: `audit verify` needs it");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `operator add|remove|reset-2fa`, on the data dir's backend.
fn operator(command: OperatorCommand) -> anyhow::Result<ExitCode> {
    use crate::console::auth;
    let (OperatorCommand::Add(t) | OperatorCommand::Remove(t) | OperatorCommand::Reset2fa(t)) =
        &command;
    let storage = storage_of(&t.data_dir, t.database_url.as_deref())?;
    // TOTP secrets are sealed under the identity key, which no rotation
    // changes (a suspected leak is answered with `operator reset-2fa`).
    let secrets = crate::keyfiles::ServerSecrets::load(&t.data_dir)?;
    let (identity, audit_key) = (&secrets.identity, &secrets.audit_key);
    let repo = crate::storage::open(&t.data_dir, &storage)?;
    let credentials = match &command {
        OperatorCommand::Add(t) => auth::add_operator(repo.as_ref(), identity, audit_key, &t.name)?,
        OperatorCommand::Remove(t) => {
            auth::remove_operator(repo.as_ref(), audit_key, &t.name)?;
            println!("operator {} removed", t.name);
            return Ok(ExitCode::SUCCESS);
        }
        OperatorCommand::Reset2fa(t) => {
            auth::reset_second_factor(repo.as_ref(), identity, audit_key, &t.name)?
        }
    };
    repo.flush()?;
    if let Some(password) = &credentials.password {
        println!("{}", password.as_str());
    }
    println!("{}", credentials.otpauth_uri.as_str());
    Ok(ExitCode::SUCCESS)
}

/// The backend of a data dir: its onboard.toml, ONBOARD_*, `--database-url`.
fn storage_of(
    data_dir: &std::path::Path,
    database_url: Option<&str>,
) -> anyhow::Result<StorageConfig> {
    Ok(Config::for_data_dir(data_dir, database_url)?.storage_config()?)
}

/// `backup` and `restore` copy sled stores; a PostgreSQL deployment is
/// backed up with PostgreSQL's own tools.
fn refuse_on_postgres(
    data_dir: &std::path::Path,
    database_url: Option<&str>,
    command: &str,
) -> anyhow::Result<()> {
    if let StorageConfig::Postgres(url) = storage_of(data_dir, database_url)? {
        anyhow::bail!(
            "`{command}` copies sled stores; this data dir's state is in the PostgreSQL \
             database {url}: use pg_dump / pg_restore as described in \"Backups on \
             PostgreSQL\" in docs/operations.md (and keep the data dir's key files with it)"
        );
    }
    Ok(())
}

fn audit_verify(
    data_dir: &std::path::Path,
    storage: &StorageConfig,
    anchors: &[crate::services::audit::Anchor],
) -> anyhow::Result<ExitCode> {
    let key = crate::keyfiles::read_audit_key(data_dir)?;
    let repo = crate::storage::open(data_dir, storage)?;
    match crate::services::audit::verify(repo.as_ref(), &key, anchors)? {
        Ok(n) => {
            println!(
                "audit chain intact: {n} entries{}",
                if anchors.is_empty() {
                    String::new()
                } else {
                    format!(", reaching {} anchored head(s)", anchors.len())
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(b) => {
            eprintln!("audit chain broken at entry {}: {}", b.seq, b.reason);
            Ok(ExitCode::from(1))
        }
    }
}

/// Servers sharing a database each hold the key files: rotating a key
/// under one of them would leave the others on the old one.
fn refuse_rotation_on_postgres(data_dir: &std::path::Path) -> anyhow::Result<()> {
    if let StorageConfig::Postgres(url) = storage_of(data_dir, None)? {
        anyhow::bail!(
            "this data dir's state is in the PostgreSQL database {url}, which several servers \
             may share, each with its own copy of the key files: stop every other server, run \
             this again with --other-servers-stopped, then copy the new key files to them (see \
             \"Rotating keys on PostgreSQL\" in docs/operations.md)"
        );
    }
    Ok(())
}

/// Send one rotation request and print the server's reply.
fn print_reply(
    data_dir: &std::path::Path,
    request: crate::backup::RotationRequest,
) -> anyhow::Result<ExitCode> {
    println!("{}", crate::backup::rotate_key(data_dir, request)?);
    Ok(ExitCode::SUCCESS)
}

/// `keys rotate [--seal-key]`: start, then follow the status line until
/// the rotation ends (unless `no_wait`).
fn follow_rotation(
    data_dir: &std::path::Path,
    start: crate::backup::RotationRequest,
    no_wait: bool,
) -> anyhow::Result<ExitCode> {
    use crate::backup::{rotate_key, RotationRequest};
    rotate_key(data_dir, start)?;
    println!("key rotation started");
    if no_wait {
        return Ok(ExitCode::SUCCESS);
    }
    let mut line = String::new();
    loop {
        let now = rotate_key(data_dir, RotationRequest::Status)?;
        if now != line {
            println!("{now}");
        }
        if let Some(end) = now.strip_prefix("idle ") {
            return Ok(if end.starts_with("finished") {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        line = now;
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

fn audit_head(
    data_dir: &std::path::Path,
    storage: &StorageConfig,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let head = match storage {
        StorageConfig::Sled => crate::backup::audit_head(data_dir)?,
        // Servers share the database: read it directly.
        StorageConfig::Postgres(_) => {
            let repo = crate::storage::open(data_dir, storage)?;
            crate::storage::AuditRepo::last_audit(repo.as_ref())?
                .as_ref()
                .map(crate::backup::AuditHead::of)
        }
    };
    let Some(head) = head else {
        anyhow::bail!("the audit log of {} is empty", data_dir.display());
    };
    if json {
        println!("{}", serde_json::to_string(&head)?);
    } else {
        println!("{}:{} {}", head.seq, head.hash, head.time);
    }
    Ok(ExitCode::SUCCESS)
}
