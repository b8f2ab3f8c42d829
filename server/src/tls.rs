//! TLS: load a PEM chain and key into a rustls (ring provider) server
//! configuration; generate the development CA and certificate at `init`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Development CA certificate (what clients pass as `--ca`).
pub const DEV_CA_FILE: &str = "tls/ca.pem";
/// Development server certificate chain.
pub const DEV_CERT_FILE: &str = "tls/cert.pem";
/// Development server key.
pub const DEV_KEY_FILE: &str = "tls/key.pem";

/// A rustls server configuration from PEM files. The key is read as a
/// secret file under `key_policy` (see [`crate::keyfiles::Policy`]).
pub fn server_config(
    cert: &Path,
    key: &Path,
    key_policy: crate::keyfiles::Policy,
) -> anyhow::Result<rustls::ServerConfig> {
    use anyhow::Context as _;
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert)
            .with_context(|| format!("cannot open TLS certificate {}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("cannot parse TLS certificate {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in {}", cert.display());
    }
    let key_pem = crate::keyfiles::read_secret(key, key_policy)?;
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("cannot parse TLS key {}", key.display()))?
        .ok_or_else(|| anyhow::anyhow!("no private key in {}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key_der)
    .context("TLS certificate and key do not match")?;
    Ok(config)
}

/// The rules for the TLS key at `key`: a file inside the data dir is one of
/// ours ([`Policy::OwnerOnly`](crate::keyfiles::Policy::OwnerOnly)); one
/// elsewhere is the operator's, managed by their tools
/// ([`Policy::OperatorManaged`](crate::keyfiles::Policy::OperatorManaged)).
/// Paths are compared with their directories resolved, so `./data/tls/key.pem`
/// and its absolute spelling are the same file; when a directory cannot be
/// resolved the strict rules apply.
pub fn key_policy(data_dir: &Path, key: &Path) -> crate::keyfiles::Policy {
    use crate::keyfiles::Policy;
    let resolved_parent = |p: &Path| {
        let parent = p.parent().filter(|d| !d.as_os_str().is_empty())?;
        std::fs::canonicalize(parent).ok()
    };
    let (Ok(dir), Some(parent)) = (std::fs::canonicalize(data_dir), resolved_parent(key)) else {
        return Policy::OwnerOnly;
    };
    if parent.starts_with(&dir) {
        Policy::OwnerOnly
    } else {
        Policy::OperatorManaged
    }
}

/// Generate a development CA and a certificate for `localhost` and
/// `127.0.0.1` signed by it; returns the CA file's path.
pub fn generate_dev_tls(data_dir: &Path) -> anyhow::Result<PathBuf> {
    use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair};
    std::fs::create_dir_all(data_dir.join("tls"))?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "onboard development CA");
    ca_params.distinguished_name = dn;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let leaf_key = KeyPair::generate()?;
    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "localhost");
    leaf_params.distinguished_name = dn;
    let leaf = leaf_params.signed_by(&leaf_key, &ca_cert, &ca_key)?;
    let ca_path = data_dir.join(DEV_CA_FILE);
    std::fs::write(&ca_path, ca_cert.pem())?;
    std::fs::write(
        data_dir.join(DEV_CERT_FILE),
        format!("{}{}", leaf.pem(), ca_cert.pem()),
    )?;
    crate::keyfiles::write_private(
        &data_dir.join(DEV_KEY_FILE),
        leaf_key.serialize_pem().as_bytes(),
    )?;
    Ok(ca_path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyfiles::Policy;

    #[test]
    fn keys_inside_the_data_dir_get_the_strict_rules_however_spelled() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("tls")).unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        assert_eq!(
            key_policy(&data, &data.join("tls/key.pem")),
            Policy::OwnerOnly
        );
        let roundabout = dir.path().join("etc/../data/tls/key.pem");
        assert_eq!(key_policy(&data, &roundabout), Policy::OwnerOnly);
        assert_eq!(
            key_policy(&data, &dir.path().join("etc/key.pem")),
            Policy::OperatorManaged
        );
        // A directory that does not resolve: the strict rules.
        assert_eq!(
            key_policy(&data, &dir.path().join("none/key.pem")),
            Policy::OwnerOnly
        );
        // The data dir reached through a symlinked directory is still inside.
        let alias = dir.path().join("alias");
        std::os::unix::fs::symlink(&data, &alias).unwrap();
        assert_eq!(
            key_policy(&data, &alias.join("tls/key.pem")),
            Policy::OwnerOnly
        );
    }
}
