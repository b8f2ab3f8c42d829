//! `onboard-server`: parses the command line and dispatches (see [`onboard_server::cli`]).
fn main() -> std::process::ExitCode {
    onboard_server::main_with_args(std::env::args_os())
}
