//! The two secrets a user holds, for the CLI and for programs using the
//! library (the Python package): a new advertiser key file, written once
//! with mode 0600, and the API client built from an API key file (or the
//! `ONBOARD_API_KEY` environment variable).

use crate::api::ApiClient;
use crate::error::ClientError;
use onboard_protocol::SecretKey;
use std::io::Write;
use std::path::Path;
use zeroize::Zeroizing;

/// Environment variable holding the API key when no key file is named.
pub const API_KEY_ENV: &str = "ONBOARD_API_KEY";

/// Generate a new advertiser secret key and write it to `path`: created
/// with mode 0600, never over an existing file, synced before returning.
pub fn generate_key_file(path: &Path) -> Result<SecretKey, ClientError> {
    let key = SecretKey::generate(&mut rand::rngs::OsRng);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            ClientError::BadInput {
                path: path.to_owned(),
                message: "exists already; refusing to overwrite a key file".into(),
            }
        } else {
            ClientError::File {
                action: "cannot create",
                path: path.to_owned(),
                source: e,
            }
        }
    })?;
    file.write_all(key.to_file_string().as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|source| ClientError::File {
            action: "cannot write",
            path: path.to_owned(),
            source,
        })?;
    Ok(key)
}

/// The API key from `ONBOARD_API_KEY`, when it is set and not blank.
pub fn api_key_from_env() -> Option<Zeroizing<String>> {
    std::env::var(API_KEY_ENV)
        .ok()
        .filter(|k| !k.trim().is_empty())
        .map(Zeroizing::new)
}

/// What to do when no API key is given.
pub const NO_API_KEY: &str = "no API key: pass --api-key-file FILE or set ONBOARD_API_KEY";

/// A client of `server` with the API key from `api_key_file` (refused
/// unless a regular file of ours, mode 0600: [`crate::secret_file`]) or,
/// without one, from `ONBOARD_API_KEY`.
pub fn api_client(
    server: &str,
    ca: Option<&Path>,
    api_key_file: Option<&Path>,
) -> Result<ApiClient, ClientError> {
    let key = match api_key_file {
        Some(path) => crate::secret_file::read_key_file(path)?,
        None => api_key_from_env().ok_or_else(|| ClientError::Usage(NO_API_KEY.into()))?,
    };
    ApiClient::new(server, ca, key.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_new_key_file_is_private_loadable_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let key = generate_key_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = crate::matching::load_key(&path).unwrap();
        assert_eq!(loaded.fingerprint(), key.fingerprint());
        let again = generate_key_file(&path).unwrap_err();
        assert!(
            again.to_string().contains("refusing to overwrite"),
            "{again}"
        );
        assert_eq!(
            crate::matching::load_key(&path).unwrap().fingerprint(),
            key.fingerprint()
        );
    }
}
