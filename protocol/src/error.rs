//! Error types. None of them ever carries the offending identifier, so every
//! error can be logged and shown to an operator without leaking PII.

use thiserror::Error;

/// Why a raw identifier was rejected by [`crate::normalize`].
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NormalizeError {
    /// Nothing left after trimming.
    #[error("value is empty")]
    Empty,
    /// Not exactly one `@` with text on both sides, or contains spaces/control characters.
    #[error("email is not of the form local@domain")]
    EmailShape,
    /// The domain is not a dotted name such as `example.com`.
    #[error("email domain is not a dotted domain name")]
    EmailDomain,
    /// The phone library could not read a number from the text.
    #[error("phone number could not be parsed")]
    PhoneUnparsable,
    /// Parsed, but not a valid number in its numbering plan.
    #[error("phone number is not a valid number")]
    PhoneInvalid,
    /// Not an 8-4-4-4-12 hexadecimal UUID.
    #[error("mobile ad ID is not a UUID")]
    MaidNotUuid,
    /// The all-zero ID sent by devices with limit-ad-tracking on.
    #[error("mobile ad ID is the all-zero limit-ad-tracking ID")]
    MaidZero,
    /// A pre-hashed column that is not 64 hexadecimal characters.
    #[error("pre-hashed value is not 64 hexadecimal characters")]
    NotSha256Hex,
}

impl NormalizeError {
    /// A stable kebab-case code, for reports and JSON.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::EmailShape => "email-shape",
            Self::EmailDomain => "email-domain",
            Self::PhoneUnparsable => "phone-unparsable",
            Self::PhoneInvalid => "phone-invalid",
            Self::MaidNotUuid => "maid-not-uuid",
            Self::MaidZero => "maid-zero",
            Self::NotSha256Hex => "not-sha256-hex",
        }
    }
}

/// Why 32 bytes were refused as a ristretto255 point. Non-canonical and
/// off-curve encodings are one variant on purpose: they are not an oracle.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum PointError {
    /// Not 32 bytes.
    #[error("point must be 32 bytes, got {actual}")]
    WrongLength {
        /// How many bytes were given.
        actual: usize,
    },
    /// Not the canonical encoding of a ristretto255 point.
    #[error("not a canonical ristretto255 encoding")]
    Invalid,
    /// The identity element, which would match everything or nothing.
    #[error("identity point is not allowed")]
    Identity,
}

/// A point refused inside a slice, with its position.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("point {index}: {error}")]
pub struct IndexedPointError {
    /// Position in the slice.
    pub index: usize,
    /// What was wrong.
    pub error: PointError,
}

/// A wire frame that could not be decoded. The decoders return this for
/// every malformed byte string; they never panic.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The frame ended inside `field`.
    #[error("frame truncated while reading {field}")]
    Truncated {
        /// Which field was being read.
        field: &'static str,
    },
    /// The first four bytes are not this frame type's magic.
    #[error("not a {expected} frame (wrong magic bytes)")]
    BadMagic {
        /// The frame type that was expected.
        expected: &'static str,
    },
    /// A version this build does not speak.
    #[error("unsupported wire version {found} (this build speaks {supported})")]
    UnsupportedVersion {
        /// Version byte found.
        found: u8,
        /// Version this build speaks.
        supported: u8,
    },
    /// A count over its limit.
    #[error("{field} is {actual}, more than the limit of {max}")]
    TooMany {
        /// Which count.
        field: &'static str,
        /// The limit.
        max: usize,
        /// What the frame said.
        actual: usize,
    },
    /// A count of zero where at least one is required.
    #[error("{field} must not be empty")]
    Empty {
        /// Which field.
        field: &'static str,
    },
    /// Bytes after the last record.
    #[error("{0} unexpected bytes after the end of the frame")]
    TrailingBytes(usize),
    /// A text field that is not UTF-8 (or has control characters).
    #[error("{field} {index} is not printable UTF-8")]
    BadText {
        /// Which field.
        field: &'static str,
        /// Its position.
        index: usize,
    },
    /// An identifier kind byte that is not email, phone or maid.
    #[error("record {record}: unknown identifier kind {kind}")]
    UnknownKind {
        /// Record position in the batch.
        record: usize,
        /// The byte found.
        kind: u8,
    },
    /// A segment index past the batch's label table.
    #[error("record {record}: segment index {index} is outside the label table")]
    BadSegmentIndex {
        /// Record position in the batch.
        record: usize,
        /// The index found.
        index: usize,
    },
}

/// A key file or key bytes that could not be read.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// The text is not `onboard-key-v1 <64 hex>`.
    #[error("not an onboard v1 key file (expected a line `onboard-key-v1 <64 hex digits>`)")]
    BadFormat,
    /// The bytes are not a canonical, non-zero scalar.
    #[error("key is not a valid non-zero ristretto255 scalar")]
    BadScalar,
}
