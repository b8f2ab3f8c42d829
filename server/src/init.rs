//! `init`: create the data dir, the server key `b`, the pepper, the audit
//! key, the first admin API key and optionally development TLS material;
//! `keys add-audit-key`: give a data dir of an older build its audit key.

use crate::keyfiles::{
    pepper_file_string, write_private, AUDIT_KEY_FILE, PEPPER_FILE, SERVER_KEY_FILE,
};
use crate::services::audit::{self, AuditKey};
use crate::storage::Role;
use anyhow::Context as _;
use onboard_protocol::SecretKey;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// What `init` should do.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Data directory (created).
    pub data_dir: PathBuf,
    /// Also create a development CA and certificate.
    pub dev_tls: bool,
    /// Write the admin key to this file (0600) instead of only returning it.
    pub admin_key_out: Option<PathBuf>,
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
    let key = SecretKey::generate(&mut rand::rngs::OsRng);
    write_private(&dir.join(SERVER_KEY_FILE), key.to_file_string().as_bytes())?;
    let mut pepper = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(pepper.as_mut());
    write_private(
        &dir.join(PEPPER_FILE),
        pepper_file_string(&pepper).as_bytes(),
    )?;
    let audit_key = AuditKey::generate();
    write_private(
        &dir.join(AUDIT_KEY_FILE),
        audit_key.to_file_string().as_bytes(),
    )?;
    let repo = crate::storage::open(dir).context("cannot create the database")?;
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
pub fn add_audit_key(data_dir: &Path) -> anyhow::Result<AuditKeyAdded> {
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
    let repo = crate::storage::open(data_dir)
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
