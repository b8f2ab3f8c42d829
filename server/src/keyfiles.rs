//! Secret files: the server scalar `b`, the API-key pepper, the sealing
//! key, the identity key, the audit key and the TLS key. Written 0600 (`O_EXCL`, never over an existing file). Read
//! through one handle opened without following a symlink (`O_NOFOLLOW`);
//! the checks — a regular file, owned by the user the server runs as, no
//! access for group or others — are made on that handle (`fstat`), so the
//! file checked is the file read.

use crate::services::audit::AuditKey;
use onboard_protocol::SecretKey;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use thiserror::Error;
use zeroize::Zeroizing;

/// The server's blinding key file, relative to the data dir.
pub const SERVER_KEY_FILE: &str = "server.key";
/// The next server key while a rotation runs (see `services::rotation`).
pub const SERVER_KEY_NEXT_FILE: &str = "server.key.next";
/// The API-key pepper file, relative to the data dir.
pub const PEPPER_FILE: &str = "pepper.key";
/// The new pepper while `keys rotate --pepper` switches files.
pub const PEPPER_NEXT_FILE: &str = "pepper.key.next";
/// The previous pepper, kept to verify keys issued before a pepper
/// rotation until `keys rotate --pepper --finish` (see `services::secrets`).
pub const PEPPER_OLD_FILE: &str = "pepper.key.old";
/// The sealing key file (cookie IDs, members cursors, webhook secrets).
pub const SEAL_KEY_FILE: &str = "seal.key";
/// The next sealing key while a `keys rotate --seal-key` runs.
pub const SEAL_KEY_NEXT_FILE: &str = "seal.key.next";
/// The identity key file: person pseudonyms, cookie tags, audit pseudonyms.
/// Never rotated: its values are identities in stored data.
pub const IDENTITY_KEY_FILE: &str = "identity.key";
/// Header of the sealing key file.
pub const SEAL_LABEL: &str = "onboard-seal-v1";
/// Header of the identity key file.
pub const IDENTITY_LABEL: &str = "onboard-identity-v1";
/// The audit chain's HMAC key file, relative to the data dir.
pub const AUDIT_KEY_FILE: &str = "audit.key";
/// Header of the pepper file.
pub const PEPPER_LABEL: &str = "onboard-pepper-v1";
/// Every secret file of a data dir (the TLS key aside): none is in a backup.
pub const KEY_FILES: [&str; 5] = [
    SERVER_KEY_FILE,
    PEPPER_FILE,
    SEAL_KEY_FILE,
    IDENTITY_KEY_FILE,
    AUDIT_KEY_FILE,
];
/// No key file is this large; a bigger one is refused before it is read.
const MAX_KEY_FILE: u64 = 1 << 20;

/// A secret file that cannot be used. Each message names the file and the fix.
#[derive(Debug, Error)]
pub enum KeyFileError {
    /// Cannot read or write.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Not there.
    #[error("{path} does not exist: is this a data dir made by `onboard-server init`?")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// A data dir made before the keyed audit chain.
    #[error("{path} does not exist: this data dir was made by an older build; with the server stopped, run `onboard-server keys add-audit-key --data-dir {dir}`")]
    NoAuditKey {
        /// The file.
        path: PathBuf,
        /// Its data dir.
        dir: PathBuf,
    },
    /// A symbolic link where a key file must be.
    #[error("{path} is a symbolic link; key files are read only from regular files: replace the link with the file it points to (mode 0600)")]
    Symlink {
        /// The file.
        path: PathBuf,
    },
    /// A directory, device, FIFO or socket.
    #[error("{path} is not a regular file; put the key file itself there (mode 0600)")]
    NotRegular {
        /// The file.
        path: PathBuf,
    },
    /// Owned by another user.
    #[error("{path} is owned by uid {owner}, not by the user the server runs as (uid {user}){also}; run `chown {user} {path}`, or run the server as the file's owner")]
    Owner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The effective uid of this process.
        user: u32,
        /// Other accepted owners, as text.
        also: &'static str,
    },
    /// Readable or writable by group or others.
    #[error("{path} is accessible by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// An operator-managed TLS key open to others, or writable by its group.
    #[error("{path} is accessible by others or writable by its group (mode {mode:o}); run `chmod 640 {path}` (or 600)")]
    SharedPermissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// Not a valid key file.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn io(path: &Path, e: std::io::Error) -> KeyFileError {
    KeyFileError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn format_error(path: &Path, reason: impl Into<String>) -> KeyFileError {
    KeyFileError::Format {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Who may own a secret file and who else may reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Our own key files (and any secret inside the data dir): no symlink,
    /// owned by the running user, mode 0600 or stricter.
    OwnerOnly,
    /// An operator-managed TLS key outside the data dir: symlinks followed
    /// (certbot's `live/` paths are links), owned by the running user or
    /// root, readable by its group (e.g. `ssl-cert`), nothing for others.
    OperatorManaged,
}

/// Write a file readable only by its owner, refusing to overwrite (and so
/// to follow a symlink: `O_EXCL`).
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), KeyFileError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io(path, e))?;
    f.write_all(contents).map_err(|e| io(path, e))?;
    f.sync_all().map_err(|e| io(path, e))
}

/// Open a secret file for reading; under [`Policy::OwnerOnly`] a symlink is
/// refused. Non-blocking, so a FIFO put in its place cannot hang the start.
fn open_secret(path: &Path, policy: Policy) -> Result<File, KeyFileError> {
    let mut flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    if policy == Policy::OwnerOnly {
        flags |= OFlags::NOFOLLOW;
    }
    match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => Ok(File::from(fd)),
        Err(Errno::NOENT) => Err(KeyFileError::Missing {
            path: path.to_path_buf(),
        }),
        // ELOOP from O_NOFOLLOW: the last component is a link (confirmed
        // by lstat, as a loop in the directories gives the same error).
        Err(Errno::LOOP)
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) =>
        {
            Err(KeyFileError::Symlink {
                path: path.to_path_buf(),
            })
        }
        Err(e) => Err(io(path, e.into())),
    }
}

/// The checks of `policy`, made on the opened handle.
fn check_opened(file: &File, path: &Path, policy: Policy) -> Result<u64, KeyFileError> {
    let meta = file.metadata().map_err(|e| io(path, e))?;
    if !meta.file_type().is_file() {
        return Err(KeyFileError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    let user = rustix::process::geteuid().as_raw();
    let owner = meta.uid();
    let mode = meta.mode() & 0o777;
    let path = path.to_path_buf();
    match policy {
        Policy::OwnerOnly if owner != user => Err(KeyFileError::Owner {
            path,
            owner,
            user,
            also: "",
        }),
        Policy::OperatorManaged if owner != user && owner != 0 => Err(KeyFileError::Owner {
            path,
            owner,
            user,
            also: " or root",
        }),
        Policy::OwnerOnly if mode & 0o077 != 0 => Err(KeyFileError::Permissions { path, mode }),
        Policy::OperatorManaged if mode & 0o027 != 0 => {
            Err(KeyFileError::SharedPermissions { path, mode })
        }
        _ => Ok(meta.len()),
    }
}

/// Read a secret file under `policy`: opened once, checked on the handle,
/// read from the same handle.
pub fn read_secret(path: &Path, policy: Policy) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    let file = open_secret(path, policy)?;
    let len = check_opened(&file, path, policy)?;
    if len > MAX_KEY_FILE {
        return Err(format_error(
            path,
            format!("{len} bytes: larger than any key file ({MAX_KEY_FILE} bytes at most)"),
        ));
    }
    // Capacity for the whole file (and the EOF probe), so the buffer never
    // moves and leaves an unzeroised copy behind.
    let mut buf = Zeroizing::new(Vec::with_capacity(len as usize + 64));
    (&file)
        .take(MAX_KEY_FILE)
        .read_to_end(&mut buf)
        .map_err(|e| io(path, e))?;
    Ok(buf)
}

/// Read a secret file of ours as UTF-8 text.
fn read_text(path: &Path) -> Result<Zeroizing<String>, KeyFileError> {
    let bytes = read_secret(path, Policy::OwnerOnly)?;
    match std::str::from_utf8(&bytes) {
        Ok(text) => Ok(Zeroizing::new(text.to_string())),
        Err(_) => Err(format_error(path, "not UTF-8 text")),
    }
}

/// Read the server key.
pub fn read_server_key(data_dir: &Path) -> Result<SecretKey, KeyFileError> {
    read_server_key_file(data_dir, SERVER_KEY_FILE)
}

/// Read a server key file of the data dir (`server.key` or `server.key.next`).
pub fn read_server_key_file(data_dir: &Path, name: &str) -> Result<SecretKey, KeyFileError> {
    let path = data_dir.join(name);
    let text = read_text(&path)?;
    SecretKey::from_file_string(&text).map_err(|e| format_error(&path, e.to_string()))
}

/// Read the pepper.
pub fn read_pepper(data_dir: &Path) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
    read_symmetric(data_dir, PEPPER_FILE, PEPPER_LABEL)
}

/// Read a 32-byte key file of the data dir: `<label> <64 hex>`.
pub fn read_symmetric(
    data_dir: &Path,
    name: &str,
    label: &str,
) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
    let path = data_dir.join(name);
    let text = read_text(&path)?;
    let bad = || format_error(&path, format!("expected `{label} <64 hex>`"));
    let hex_part = text.trim().strip_prefix(label).ok_or_else(bad)?.trim();
    let mut out = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(hex_part, out.as_mut()).map_err(|_| bad())?;
    Ok(out)
}

/// Read a 32-byte key file that may be absent (`None`).
pub fn read_symmetric_if_present(
    data_dir: &Path,
    name: &str,
    label: &str,
) -> Result<Option<Zeroizing<[u8; 32]>>, KeyFileError> {
    match read_symmetric(data_dir, name, label) {
        Ok(k) => Ok(Some(k)),
        Err(KeyFileError::Missing { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The text of a 32-byte key file.
pub fn symmetric_file_string(label: &str, key: &[u8; 32]) -> Zeroizing<String> {
    Zeroizing::new(format!("{label} {}\n", hex::encode(key)))
}

/// A fresh random 32-byte key.
pub fn random_symmetric() -> Zeroizing<[u8; 32]> {
    use rand::RngCore as _;
    let mut key = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(key.as_mut());
    key
}

/// Data dirs made before the split of the pepper used one pepper for
/// everything. Give them `identity.key` and `seal.key` holding the pepper's
/// bytes, so every person pseudonym, cookie tag and sealed value stays
/// what it was, and the pepper can then rotate alone. Returns the files
/// written. Must run before any pepper rotation (a server runs it at start,
/// before it can rotate anything).
pub fn split_legacy_pepper(data_dir: &Path) -> Result<Vec<&'static str>, KeyFileError> {
    let mut written = Vec::new();
    for (name, label) in [
        (IDENTITY_KEY_FILE, IDENTITY_LABEL),
        (SEAL_KEY_FILE, SEAL_LABEL),
    ] {
        if std::fs::symlink_metadata(data_dir.join(name)).is_ok() {
            continue;
        }
        let pepper = read_pepper(data_dir)?;
        write_private(
            &data_dir.join(name),
            symmetric_file_string(label, &pepper).as_bytes(),
        )?;
        written.push(name);
    }
    if !written.is_empty() {
        sync_dir(data_dir);
    }
    Ok(written)
}

/// Finish a pepper switch a crash interrupted: while `pepper.key.next`
/// exists, link `pepper.key` to `pepper.key.old` (unless done) and rename
/// the next over `pepper.key` (see [`switch_pepper`]).
pub fn finish_pepper_switch(data_dir: &Path) -> Result<bool, KeyFileError> {
    let next = data_dir.join(PEPPER_NEXT_FILE);
    if std::fs::symlink_metadata(&next).is_err() {
        return Ok(false);
    }
    read_symmetric(data_dir, PEPPER_NEXT_FILE, PEPPER_LABEL)?;
    let current = data_dir.join(PEPPER_FILE);
    let old = data_dir.join(PEPPER_OLD_FILE);
    if std::fs::symlink_metadata(&old).is_err() {
        std::fs::hard_link(&current, &old).map_err(|e| io(&old, e))?;
    }
    std::fs::rename(&next, &current).map_err(|e| io(&next, e))?;
    sync_dir(data_dir);
    Ok(true)
}

/// Replace the pepper by `new`, keeping the current one as
/// `pepper.key.old`; refused while an old pepper is kept. Each step is a
/// file operation that [`finish_pepper_switch`] completes after a crash.
pub fn switch_pepper(data_dir: &Path, new: &[u8; 32]) -> Result<(), KeyFileError> {
    let old = data_dir.join(PEPPER_OLD_FILE);
    if std::fs::symlink_metadata(&old).is_ok() {
        return Err(format_error(
            &old,
            "a previous pepper rotation is not finished (`keys rotate --pepper --finish`)",
        ));
    }
    write_private(
        &data_dir.join(PEPPER_NEXT_FILE),
        pepper_file_string(new).as_bytes(),
    )?;
    sync_dir(data_dir);
    finish_pepper_switch(data_dir).map(|_| ())
}

/// Make a rename or a new file in `dir` durable (best effort: not every
/// file system syncs directories).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Read the audit key; a data dir without one gets the upgrade command.
pub fn read_audit_key(data_dir: &Path) -> Result<AuditKey, KeyFileError> {
    let path = data_dir.join(AUDIT_KEY_FILE);
    let text = match read_text(&path) {
        Err(KeyFileError::Missing { path }) => {
            return Err(KeyFileError::NoAuditKey {
                path,
                dir: data_dir.to_path_buf(),
            })
        }
        other => other?,
    };
    AuditKey::from_file_string(&text).map_err(|reason| format_error(&path, reason))
}

/// The pepper file's text.
pub fn pepper_file_string(pepper: &[u8; 32]) -> Zeroizing<String> {
    symmetric_file_string(PEPPER_LABEL, pepper)
}

/// Every secret a running server holds, loaded together so that a new one
/// changes this struct, not every caller. `Debug` shows none of them.
pub struct ServerSecrets {
    /// The blinding scalar `b`.
    pub key: SecretKey,
    /// HMAC pepper for API keys.
    pub pepper: Zeroizing<[u8; 32]>,
    /// The pepper before a pepper rotation, until it is finished.
    pub old_pepper: Option<Zeroizing<[u8; 32]>>,
    /// Key of everything sealed at rest (cookie IDs, cursors, webhook secrets).
    pub seal: Zeroizing<[u8; 32]>,
    /// Key of person pseudonyms, cookie tags and audit pseudonyms.
    pub identity: Zeroizing<[u8; 32]>,
    /// The audit chain's HMAC key.
    pub audit_key: AuditKey,
}

impl std::fmt::Debug for ServerSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSecrets { <redacted> }")
    }
}

impl ServerSecrets {
    /// Read the data dir's key files, each checked on its opened handle,
    /// after finishing an interrupted pepper switch and splitting the pepper
    /// of an older data dir ([`split_legacy_pepper`]).
    pub fn load(data_dir: &Path) -> Result<Self, KeyFileError> {
        if finish_pepper_switch(data_dir)? {
            tracing::warn!("finished a pepper rotation's file switch that a stop interrupted");
        }
        for name in split_legacy_pepper(data_dir)? {
            tracing::info!(
                file = name,
                "wrote from the pepper (older data dir): the pepper now keys API keys only"
            );
        }
        Ok(Self {
            key: read_server_key(data_dir)?,
            pepper: read_pepper(data_dir)?,
            old_pepper: read_symmetric_if_present(data_dir, PEPPER_OLD_FILE, PEPPER_LABEL)?,
            seal: read_symmetric(data_dir, SEAL_KEY_FILE, SEAL_LABEL)?,
            identity: read_symmetric(data_dir, IDENTITY_KEY_FILE, IDENTITY_LABEL)?,
            audit_key: read_audit_key(data_dir)?,
        })
    }

    /// Fixed secrets derived from `label`, for tests and benchmarks.
    pub fn derive_for_tests(label: &str) -> Self {
        use sha2::{Digest as _, Sha256};
        let derive = |what: &str| -> Zeroizing<[u8; 32]> {
            Zeroizing::new(
                Sha256::new()
                    .chain_update(label.as_bytes())
                    .chain_update([0])
                    .chain_update(what.as_bytes())
                    .finalize()
                    .into(),
            )
        };
        Self {
            key: SecretKey::derive_for_tests(label),
            pepper: derive("pepper"),
            old_pepper: None,
            seal: derive("seal"),
            identity: derive("identity"),
            audit_key: AuditKey::from_bytes(derive("audit")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn private_file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        write_private(&path, text.as_bytes()).unwrap();
        path
    }

    #[test]
    fn reads_a_private_file_from_the_handle_it_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = private_file(dir.path(), "k", "secret\n");
        assert_eq!(
            read_secret(&path, Policy::OwnerOnly).unwrap().as_slice(),
            b"secret\n"
        );
        assert_eq!(
            read_secret(&path, Policy::OperatorManaged)
                .unwrap()
                .as_slice(),
            b"secret\n"
        );
    }

    #[test]
    fn refuses_symlinks_for_own_keys_and_follows_them_for_operator_keys() {
        let dir = tempfile::tempdir().unwrap();
        let target = private_file(dir.path(), "real", "secret\n");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = read_secret(&link, Policy::OwnerOnly).unwrap_err();
        assert!(matches!(err, KeyFileError::Symlink { .. }), "{err}");
        assert!(err.to_string().contains("link"), "{err}");
        assert!(read_secret(&link, Policy::OperatorManaged).is_ok());
    }

    #[test]
    fn refuses_modes_by_policy() {
        let dir = tempfile::tempdir().unwrap();
        let path = private_file(dir.path(), "k", "secret\n");
        let set = |mode| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode));
        set(0o640).unwrap();
        let err = read_secret(&path, Policy::OwnerOnly).unwrap_err();
        assert!(
            matches!(err, KeyFileError::Permissions { mode: 0o640, .. }),
            "{err}"
        );
        assert!(read_secret(&path, Policy::OperatorManaged).is_ok());
        for mode in [0o604, 0o660, 0o644] {
            set(mode).unwrap();
            assert!(read_secret(&path, Policy::OwnerOnly).is_err(), "{mode:o}");
            assert!(
                matches!(
                    read_secret(&path, Policy::OperatorManaged),
                    Err(KeyFileError::SharedPermissions { .. })
                ),
                "{mode:o}"
            );
        }
        set(0o400).unwrap();
        assert!(read_secret(&path, Policy::OwnerOnly).is_ok());
    }

    #[test]
    fn refuses_directories_fifos_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("d");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(matches!(
            read_secret(&sub, Policy::OwnerOnly),
            Err(KeyFileError::NotRegular { .. })
        ));
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // Would block forever without O_NONBLOCK.
        assert!(matches!(
            read_secret(&fifo, Policy::OwnerOnly),
            Err(KeyFileError::NotRegular { .. })
        ));
        let err = read_secret(&dir.path().join("none"), Policy::OwnerOnly).unwrap_err();
        assert!(matches!(err, KeyFileError::Missing { .. }), "{err}");
        let err = read_audit_key(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("keys add-audit-key"),
            "the fix is named: {err}"
        );
    }

    #[test]
    fn refuses_a_file_of_another_user() {
        if rustix::process::geteuid().as_raw() != 0 {
            println!("skipped: changing a file's owner needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = private_file(dir.path(), "k", "secret\n");
        rustix::fs::chown(&path, Some(rustix::fs::Uid::from_raw(65534)), None).unwrap();
        let err = read_secret(&path, Policy::OwnerOnly).unwrap_err();
        assert!(
            matches!(err, KeyFileError::Owner { owner: 65534, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chown"), "{err}");
        assert!(read_secret(&path, Policy::OperatorManaged).is_err());
    }

    fn pepper_in(dir: &Path) -> [u8; 32] {
        *read_pepper(dir).unwrap()
    }

    #[test]
    fn an_older_data_dir_gets_identity_and_seal_keys_from_its_pepper_once() {
        let dir = tempfile::tempdir().unwrap();
        let pepper = [5u8; 32];
        private_file(dir.path(), PEPPER_FILE, &pepper_file_string(&pepper));
        assert_eq!(
            split_legacy_pepper(dir.path()).unwrap(),
            vec![IDENTITY_KEY_FILE, SEAL_KEY_FILE]
        );
        for (name, label) in [
            (IDENTITY_KEY_FILE, IDENTITY_LABEL),
            (SEAL_KEY_FILE, SEAL_LABEL),
        ] {
            assert_eq!(*read_symmetric(dir.path(), name, label).unwrap(), pepper);
        }
        // Later starts leave them alone, whatever the pepper becomes.
        switch_pepper(dir.path(), &[6u8; 32]).unwrap();
        assert!(split_legacy_pepper(dir.path()).unwrap().is_empty());
        let identity = read_symmetric(dir.path(), IDENTITY_KEY_FILE, IDENTITY_LABEL).unwrap();
        assert_eq!(*identity, pepper);
    }

    #[test]
    fn a_pepper_switch_cut_short_is_finished_at_the_next_load() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        private_file(d, PEPPER_FILE, &pepper_file_string(&[1u8; 32]));
        // Cut after the new pepper was written: nothing linked yet.
        private_file(d, PEPPER_NEXT_FILE, &pepper_file_string(&[2u8; 32]));
        assert!(finish_pepper_switch(d).unwrap());
        assert_eq!(pepper_in(d), [2u8; 32]);
        let old = read_symmetric(d, PEPPER_OLD_FILE, PEPPER_LABEL).unwrap();
        assert_eq!(*old, [1u8; 32]);
        assert!(!d.join(PEPPER_NEXT_FILE).exists());
        assert!(!finish_pepper_switch(d).unwrap());
        // Cut after the link: the rename alone is left.
        std::fs::remove_file(d.join(PEPPER_OLD_FILE)).unwrap();
        std::fs::hard_link(d.join(PEPPER_FILE), d.join(PEPPER_OLD_FILE)).unwrap();
        private_file(d, PEPPER_NEXT_FILE, &pepper_file_string(&[3u8; 32]));
        assert!(finish_pepper_switch(d).unwrap());
        assert_eq!(pepper_in(d), [3u8; 32]);
        assert_eq!(
            *read_symmetric(d, PEPPER_OLD_FILE, PEPPER_LABEL).unwrap(),
            [2u8; 32]
        );
        // A second rotation is refused while the old pepper is kept.
        assert!(switch_pepper(d, &[4u8; 32]).is_err());
        assert_eq!(pepper_in(d), [3u8; 32]);
    }

    #[test]
    fn secrets_debug_shows_no_key() {
        let s = ServerSecrets::derive_for_tests("debug");
        let shown = format!("{s:?} {:?}", s.audit_key);
        assert!(!shown.contains(&hex::encode(*s.pepper)));
        let audit_hex = s.audit_key.to_file_string();
        let audit_hex = audit_hex.split_whitespace().nth(1).unwrap();
        assert!(!shown.contains(audit_hex), "{shown}");
    }
}
