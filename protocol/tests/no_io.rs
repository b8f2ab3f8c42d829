//! Architecture invariant: the protocol crate is pure. Nothing that does
//! network or disk I/O, or an async runtime, may enter its dependency tree.

#[test]
fn protocol_has_no_io_dependencies() {
    // The paths as `cargo test` gives them now, not as they were at build
    // time: a reused test binary may come from a checkout since moved.
    let runtime = |name: &str, built: &str| std::env::var(name).unwrap_or_else(|_| built.into());
    let output = std::process::Command::new(runtime("CARGO", env!("CARGO")))
        .args([
            "tree",
            "-p",
            "onboard-protocol",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(runtime("CARGO_MANIFEST_DIR", env!("CARGO_MANIFEST_DIR")))
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8_lossy(&output.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        crates.contains(&"curve25519-dalek"),
        "the tree was read: {crates:?}"
    );
    for forbidden in [
        "tokio",
        "actix-web",
        "reqwest",
        "sled",
        "hyper",
        "mio",
        "rustls",
    ] {
        assert!(
            !crates.contains(&forbidden),
            "onboard-protocol must not depend on {forbidden}"
        );
    }
}
