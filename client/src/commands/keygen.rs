//! `onboard keygen --out FILE`.

use super::Context;
use crate::cli::KeygenArgs;
use anyhow::{Context as _, Result};
use onboard_protocol::SecretKey;
use std::io::Write;

pub(super) fn run(ctx: &Context, args: &KeygenArgs) -> Result<()> {
    let key = SecretKey::generate(&mut rand::rngs::OsRng);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let path = &args.out;
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "{} exists already; refusing to overwrite a key file",
                path.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("cannot create {}", path.display()))
        }
    })?;
    file.write_all(key.to_file_string().as_bytes())
        .and_then(|_| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    ctx.note(format!(
        "wrote a new secret key to {} (mode 0600); keep it safe, it never leaves this machine",
        path.display()
    ));
    println!("fingerprint: {}", key.fingerprint());
    Ok(())
}
