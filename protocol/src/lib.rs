//! # onboard-protocol
//!
//! The pure core shared by the advertiser's client and the onboarder's server:
//! identifier normalisation ([`normalize`]), SHA-256 digests ([`digest`]),
//! hash-to-ristretto255 with versioned domain separation ([`curve`]), secret
//! keys ([`keys`]), batch blinding ([`blind`]) and the binary wire formats
//! ([`wire`]). No I/O, no async: every function is a computation on values.
//!
//! One identifier through the double-blind match, end to end:
//!
//! ```
//! use onboard_protocol::{blind, keys::SecretKey, normalize::{self, IdKind, Region}};
//!
//! let region = Region::default(); // FR
//! let crm = normalize::normalize(IdKind::Email, " Jane.Doe+crm@GMail.com ", region)?;
//! let graph = normalize::normalize(IdKind::Email, "janedoe@gmail.com", region)?;
//! assert_eq!(crm.digest, graph.digest);
//!
//! let advertiser = SecretKey::generate(&mut rand::thread_rng()); // `a`, never leaves the advertiser
//! let server = SecretKey::generate(&mut rand::thread_rng());     // `b`, never leaves the server
//!
//! // Client: a·P(x). Server: b·(a·P(x)).
//! let a_px = blind::hash_and_blind(&advertiser, &[(crm.kind, crm.digest)]);
//! let ab_px = blind::reblind(&server, &a_px)?;
//! // Server: b·P(y) at import. Client: a·(b·P(y)) in the graph pass.
//! let b_py = blind::hash_and_blind(&server, &[(graph.kind, graph.digest)]);
//! let ab_py = blind::reblind(&advertiser, &b_py)?;
//! // The server joins on equality without ever holding P(x).
//! assert_eq!(ab_px, ab_py);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod blind;
pub mod curve;
pub mod digest;
pub mod endpoint;
pub mod error;
pub mod keys;
pub mod normalize;
pub mod webhook;
pub mod wire;

pub use curve::PointBytes;
pub use digest::Digest;
pub use endpoint::{check_secret_url, check_webhook_url, is_forbidden_target, EndpointError};
pub use error::{IndexedPointError, KeyError, NormalizeError, PointError, WireError};
pub use keys::{Fingerprint, SecretKey};
pub use normalize::{normalize, IdKind, MatchKind, Normalized, Region};
