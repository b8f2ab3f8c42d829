//! `onboard normalize --kind K [--region CC] VALUE…`.

use crate::cli::NormalizeArgs;
use anyhow::{bail, Result};
use onboard_protocol::normalize;

pub(super) fn run(args: &NormalizeArgs) -> Result<()> {
    let mut failed = 0;
    for (i, value) in args.values.iter().enumerate() {
        match normalize(args.kind, value, args.region) {
            Ok(n) => println!("{}\t{}", n.value, n.digest.to_hex()),
            Err(e) => {
                failed += 1;
                // The position and the reason, never the value.
                eprintln!(
                    "value {}: invalid {}: {} ({})",
                    i + 1,
                    args.kind,
                    e,
                    e.code()
                );
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} values are invalid", args.values.len());
    }
    Ok(())
}
