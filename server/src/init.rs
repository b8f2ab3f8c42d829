//! `init`: create the data dir, the server key `b`, the pepper, the first
//! admin API key and optionally development TLS material.

use crate::keyfiles::{pepper_file_string, write_private, PEPPER_FILE, SERVER_KEY_FILE};
use crate::storage::Role;
use anyhow::Context as _;
use onboard_protocol::SecretKey;
use std::path::PathBuf;
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
    let repo = crate::storage::open(dir).context("cannot create the database")?;
    let admin = crate::services::auth::create_principal_in(
        repo.as_ref(),
        &pepper,
        "admin",
        Role::Admin,
        None,
    )
    .map_err(|e| anyhow::anyhow!("cannot create the admin principal: {e}"))?;
    crate::services::audit::append(repo.as_ref(), "init", "init", "admin", "ok")?;
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
