//! Secret files in the data dir: the server scalar `b`, the HMAC pepper and
//! the TLS key. Written 0600; `serve` refuses files readable by others.

use onboard_protocol::SecretKey;
use std::io::Write;
use std::path::{Path, PathBuf};
use thiserror::Error;
use zeroize::Zeroizing;

/// The server's blinding key file, relative to the data dir.
pub const SERVER_KEY_FILE: &str = "server.key";
/// The API-key pepper file, relative to the data dir.
pub const PEPPER_FILE: &str = "pepper.key";
/// Header of the pepper file.
pub const PEPPER_LABEL: &str = "onboard-pepper-v1";

/// A secret file that cannot be used.
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
    /// Readable or writable by group or others.
    #[error("{path} is accessible by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions {
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

/// Write a file readable only by its owner, refusing to overwrite.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), KeyFileError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| io(path, e))?;
    f.write_all(contents).map_err(|e| io(path, e))?;
    f.sync_all().map_err(|e| io(path, e))
}

/// Refuse a secret file that group or others may access.
pub fn check_private(path: &Path) -> Result<(), KeyFileError> {
    let meta = std::fs::metadata(path).map_err(|e| io(path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    Ok(())
}

/// Read the server key, checking its permissions.
pub fn read_server_key(data_dir: &Path) -> Result<SecretKey, KeyFileError> {
    let path = data_dir.join(SERVER_KEY_FILE);
    check_private(&path)?;
    let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| io(&path, e))?);
    SecretKey::from_file_string(&text).map_err(|e| KeyFileError::Format {
        path,
        reason: e.to_string(),
    })
}

/// Read the pepper, checking its permissions.
pub fn read_pepper(data_dir: &Path) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
    let path = data_dir.join(PEPPER_FILE);
    check_private(&path)?;
    let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| io(&path, e))?);
    let bad = || KeyFileError::Format {
        path: path.clone(),
        reason: format!("expected `{PEPPER_LABEL} <64 hex>`"),
    };
    let hex_part = text
        .trim()
        .strip_prefix(PEPPER_LABEL)
        .ok_or_else(bad)?
        .trim();
    let mut out = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(hex_part, out.as_mut()).map_err(|_| bad())?;
    Ok(out)
}

/// The pepper file's text.
pub fn pepper_file_string(pepper: &[u8; 32]) -> Zeroizing<String> {
    Zeroizing::new(format!("{PEPPER_LABEL} {}\n", hex::encode(pepper)))
}
