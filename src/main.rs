//! `onboard-suite`: the whole product on one machine.
//!
//! - `demo`: a temporary onboarder, advertiser and destinations, the whole flow
//!   over TLS on 127.0.0.1, and a check of every audience against the ground truth.
//! - `bench`: the scale benchmark of the design (§7).
//! - `server …` / `client …` (hidden): the exact entry points of the
//!   `onboard-server` and `onboard` binaries, so the end-to-end tests in `tests/`
//!   drive the real command lines from one built binary.

use clap::{Parser, Subcommand};
use onboard_suite::{bench, demo, load};
use std::ffi::OsString;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "onboard-suite",
    version,
    about = "onboard: demo and scale benchmark of the privacy-preserving CRM onboarding service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole flow on synthetic data and check it against the ground truth.
    Demo(demo::DemoArgs),
    /// The scale benchmark: the whole flow over TLS, timed per phase, as a ratio to the primitive bound.
    Bench(bench::BenchArgs),
    /// A bounded load benchmark: concurrent jobs and destination pulls for at most 60 s.
    Load(load::LoadArgs),
    /// `onboard-server …`, for the end-to-end tests.
    #[command(hide = true)]
    Server {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// `onboard …`, for the end-to-end tests.
    #[command(hide = true)]
    Client {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Server { args } => {
            return onboard_server::main_with_args(prefixed("onboard-server", args))
        }
        Command::Client { args } => {
            return onboard_client::main_with_args(prefixed("onboard", args))
        }
        Command::Demo(args) => demo::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Load(args) => load::run(&args),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn prefixed(argv0: &str, args: Vec<OsString>) -> Vec<OsString> {
    std::iter::once(OsString::from(argv0)).chain(args).collect()
}
