//! # onboard-server
//!
//! The onboarder's side of onboard: a blinded identity graph (`b·P(y)` only),
//! the double-blind match of an advertiser's CRM against it, and audiences
//! released to destinations under the privacy rules of the design (§4, §6).
//!
//! Layers, outermost first:
//! - [`http`]: thin actix-web handlers, one route table, one error mapping;
//! - [`console`]: the operators' web console (server-rendered HTML) over the services;
//! - [`services`]: auth, graph, jobs, audiences, privacy, audit;
//! - [`storage`]: narrow repository traits; `storage/sled.rs` is the only
//!   file that knows sled, so another backend can be added beside it.
#![forbid(unsafe_code)]

pub mod backup;
pub mod cli;
pub mod config;
pub mod console;
pub mod error;
mod faults;
pub mod http;
pub mod init;
pub mod keyfiles;
pub mod logging;
pub mod server;
pub mod services;
pub mod storage;
pub mod tls;
pub mod uniform;

pub use cli::main_with_args;
pub use config::{Config, ConfigError};
pub use error::ApiError;
pub use init::{init, InitOptions, InitOutput};
pub use server::{start, ServerHandle};
