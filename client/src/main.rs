//! The `onboard` binary: everything is in the library.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    onboard_client::main_with_args(std::env::args_os())
}
