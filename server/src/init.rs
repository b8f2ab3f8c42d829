//! `init`: create the data dir, the server key `b`, the pepper, the
//! sealing and identity keys, the audit key, the first admin API key and optionally development TLS material;
//! `keys add-audit-key`: give a data dir of an older build its audit key.

use crate::config::DATA_DIR_CONFIG;
use crate::keyfiles::{
    pepper_file_string, random_symmetric, symmetric_file_string, write_private, AUDIT_KEY_FILE,
    IDENTITY_KEY_FILE, IDENTITY_LABEL, PEPPER_FILE, SEAL_KEY_FILE, SEAL_LABEL, SERVER_KEY_FILE,
};
use crate::services::audit::{self, AuditKey};
use crate::storage::postgres::{DatabaseUrl, PgStore};
use crate::storage::{Repo, Role};
use anyhow::Context as _;
use onboard_protocol::SecretKey;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// What `init` should do.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// Data directory (created).
    pub data_dir: PathBuf,
    /// Also create a development CA and certificate.
    pub dev_tls: bool,
    /// Write the admin key to this file (0600) instead of only returning it.
    pub admin_key_out: Option<PathBuf>,
    /// Keep the state in this PostgreSQL database (recorded in the data
    /// dir's `onboard.toml`) instead of sled under the data dir.
    pub database_url: Option<DatabaseUrl>,
}

/// What `init` made.
#[derive(Debug, Clone)]
pub struct InitOutput {
    /// The first admin API key (shown once).
    pub admin_api_key: String,
    /// The dev CA certificate (what clients pass as `--ca`).
    pub ca_cert: Option<PathBuf>,
}

/// Initialise a data directory. Refuses to overwrite existing keys.
pub fn init(opts: &InitOptions) -> anyhow::Result<InitOutput> {
    use rand::RngCore;
    let dir = &opts.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    if dir.join(SERVER_KEY_FILE).exists() {
        anyhow::bail!(
            "{} exists already: this data dir is initialised",
            dir.join(SERVER_KEY_FILE).display()
        );
    }
    // Before any key is written: a database refused leaves the dir empty.
    let postgres = match &opts.database_url {
        Some(url) => Some(open_fresh_database(dir, url)?),
        None => None,
    };
    let key = SecretKey::generate(&mut rand::rngs::OsRng);
    write_private(&dir.join(SERVER_KEY_FILE), key.to_file_string().as_bytes())?;
    let mut pepper = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(pepper.as_mut());
    write_private(
        &dir.join(PEPPER_FILE),
        pepper_file_string(&pepper).as_bytes(),
    )?;
    for (name, label) in [
        (SEAL_KEY_FILE, SEAL_LABEL),
        (IDENTITY_KEY_FILE, IDENTITY_LABEL),
    ] {
        write_private(
            &dir.join(name),
            symmetric_file_string(label, &random_symmetric()).as_bytes(),
        )?;
    }
    let audit_key = AuditKey::generate();
    write_private(
        &dir.join(AUDIT_KEY_FILE),
        audit_key.to_file_string().as_bytes(),
    )?;
    let repo: std::sync::Arc<dyn Repo> = match postgres {
        Some(store) => std::sync::Arc::new(store),
        None => crate::storage::open_sled(dir).context("cannot create the database")?,
    };
    let admin = crate::services::auth::create_principal_in(
        repo.as_ref(),
        &pepper,
        "admin",
        Role::Admin,
        None,
    )
    .map_err(|e| anyhow::anyhow!("cannot create the admin principal: {e}"))?;
    audit::append(repo.as_ref(), &audit_key, "init", "init", "admin", "ok")?;
    repo.flush()?;
    drop(repo);
    if let Some(url) = &opts.database_url {
        let text = format!(
            "# Written by `onboard-server init`: this data dir's state is in PostgreSQL.\n\
             storage = \"postgres\"\ndatabase_url = {}\n",
            toml::Value::String(url.expose_secret().to_string())
        );
        write_private(&dir.join(DATA_DIR_CONFIG), text.as_bytes())?;
    }
    let ca_cert = if opts.dev_tls {
        Some(crate::tls::generate_dev_tls(dir)?)
    } else {
        None
    };
    if let Some(out) = &opts.admin_key_out {
        write_private(out, format!("{}\n", admin.api_key).as_bytes())?;
    }
    Ok(InitOutput {
        admin_api_key: admin.api_key,
        ca_cert,
    })
}

/// Connect to the database a new data dir will use, refusing one that
/// already holds a deployment: `init` makes fresh keys, which could not read
/// its API keys, cursors or sealed cookies, so it must never adopt (or wipe)
/// one. A further server of a deployment gets a copy of the first server's
/// data dir key files instead (docs/operations.md).
fn open_fresh_database(dir: &Path, url: &DatabaseUrl) -> anyhow::Result<PgStore> {
    let own_config = dir.join(DATA_DIR_CONFIG);
    if own_config.symlink_metadata().is_ok() {
        anyhow::bail!("{} exists already", own_config.display());
    }
    let store = PgStore::connect(url).with_context(|| format!("cannot open the database {url}"))?;
    if store.has_deployment()? {
        anyhow::bail!(
            "the database {url} already holds an onboard deployment; `init` would make keys \
             that do not match it. To add a server to that deployment, copy the key files \
             ({}) and {DATA_DIR_CONFIG} of an existing server's data dir into the new server's \
             data dir instead of running `init` (see \"Several servers\" in docs/operations.md)",
            crate::keyfiles::KEY_FILES.join(", ")
        );
    }
    Ok(store)
}

/// What `keys add-audit-key` did.
#[derive(Debug, Clone)]
pub struct AuditKeyAdded {
    /// Entries of the pre-key chain now pinned in the key file (0: none).
    pub legacy_entries: u64,
}

/// Give a data dir made before the keyed audit chain its `audit.key`. The
/// existing plain SHA-256 chain must verify; its head is pinned in the key
/// file (so those entries cannot be rewritten from then on) and the next
/// entries chain under the key. Needs the server stopped (the store is
/// opened exclusively).
pub fn add_audit_key(
    data_dir: &Path,
    storage: &crate::storage::StorageConfig,
) -> anyhow::Result<AuditKeyAdded> {
    let path = data_dir.join(AUDIT_KEY_FILE);
    if path.symlink_metadata().is_ok() {
        anyhow::bail!("{} exists already", path.display());
    }
    if !data_dir.join(SERVER_KEY_FILE).exists() {
        anyhow::bail!(
            "{} is not a data dir made by `onboard-server init` (no {SERVER_KEY_FILE})",
            data_dir.display()
        );
    }
    let repo = crate::storage::open(data_dir, storage)
        .context("cannot open the database (is a server running on it? stop it first)")?;
    let head = match audit::verify_legacy(repo.as_ref())? {
        Ok(head) => head,
        Err(b) => anyhow::bail!(
            "the existing audit chain is broken at entry {}: {}; no key was added (find out what changed, e.g. against a backup, before pinning this chain)",
            b.seq,
            b.reason
        ),
    };
    let legacy_entries = head.as_ref().map_or(0, |h| h.seq);
    let key = match head {
        Some(h) => AuditKey::generate().with_legacy(h),
        None => AuditKey::generate(),
    };
    write_private(&path, key.to_file_string().as_bytes())?;
    audit::append(
        repo.as_ref(),
        &key,
        "operator",
        "audit.key.add",
        AUDIT_KEY_FILE,
        "ok",
    )?;
    repo.flush()?;
    Ok(AuditKeyAdded { legacy_entries })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::postgres::test_db::TestDb;
    use crate::storage::PrincipalRepo as _;

    fn options(dir: &Path, db: &TestDb) -> InitOptions {
        InitOptions {
            data_dir: dir.to_path_buf(),
            dev_tls: false,
            admin_key_out: None,
            database_url: Some(db.url.clone()),
        }
    }

    #[test]
    fn init_on_postgres_records_the_url_and_never_adopts_a_deployment() {
        let Some(db) = TestDb::new() else { return };
        let first = tempfile::tempdir().unwrap();
        init(&options(first.path(), &db)).unwrap();
        let own = first.path().join(DATA_DIR_CONFIG);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&own).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let config = crate::config::Config::for_data_dir(first.path(), None).unwrap();
        assert_eq!(
            config.storage_config().unwrap(),
            crate::storage::StorageConfig::Postgres(db.url.clone())
        );
        // The state is in the database, not under the data dir.
        assert!(!crate::storage::db_dir(first.path()).exists());
        assert!(db.store().principal("admin").unwrap().is_some());

        let second = tempfile::tempdir().unwrap();
        let err = init(&options(second.path(), &db)).unwrap_err().to_string();
        assert!(err.contains("already holds an onboard deployment"), "{err}");
        assert!(err.contains("copy the key files"), "{err}");
        assert!(
            !second.path().join(SERVER_KEY_FILE).exists(),
            "refused before writing keys"
        );
        assert_eq!(db.store().principals().unwrap().len(), 1, "nothing wiped");
    }
}
