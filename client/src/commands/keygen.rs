//! `onboard keygen --out FILE`.

use super::Context;
use crate::cli::KeygenArgs;
use crate::keyfile::generate_key_file;
use anyhow::Result;

pub(super) fn run(ctx: &Context, args: &KeygenArgs) -> Result<()> {
    let key = generate_key_file(&args.out)?;
    ctx.note(format!(
        "wrote a new secret key to {} (mode 0600); keep it safe, it never leaves this machine",
        args.out.display()
    ));
    println!("fingerprint: {}", key.fingerprint());
    Ok(())
}
