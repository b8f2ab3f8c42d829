//! The Python package's pytest suite (`python/tests`), run with the Python
//! of the virtual environment `ONBOARD_TEST_PYTHON` names, where `.ci/run`
//! has built the `onboard` extension (`maturin develop`). The suite drives
//! this build's `onboard-suite` binary: the real server and CLI.
//!
//! Without `ONBOARD_TEST_PYTHON` the test prints one line and passes,
//! except under `CI=true`, where a missing Python set-up is a failure.

mod common;

use std::process::Command;

#[test]
fn python_package_pytest_suite() {
    let Some(python) = std::env::var_os("ONBOARD_TEST_PYTHON") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but ONBOARD_TEST_PYTHON is unset: .ci/run must build the Python package"
        );
        println!(
            "skipped: set ONBOARD_TEST_PYTHON to a virtual environment's python with the onboard package built (python/README.md)"
        );
        return;
    };
    let out = Command::new(&python)
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "python/tests",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("ONBOARD_SUITE", common::SUITE)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.to_string_lossy()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pytest failed ({:?}):\n{stdout}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    // pytest exits 5 when it collected nothing: a success here means tests ran.
    println!("{}", stdout.lines().last().unwrap_or_default());
}
