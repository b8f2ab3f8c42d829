//! Standard Webhooks signing and verification, shared by the server (which
//! signs every push) and the reference receiver (which verifies them).
//!
//! The signed content is `"{id}.{timestamp}.{body}"`, the tag
//! `HMAC-SHA256(secret bytes, content)`, sent as `v1,<base64>` in the
//! `webhook-signature` header; several live secrets (during a rotation) give
//! several space-separated signatures. Secrets are written `whsec_` + base64.
//!
//! Verification compares each full tag in constant time (`hmac`'s
//! `verify_slice`): a bare `v1,`, an empty or a truncated signature is
//! refused, unlike a prefix comparison. Pure: the caller passes the time.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::{CryptoRng, RngCore};
use sha2::Sha256;
use thiserror::Error;
use zeroize::Zeroizing;

/// Header carrying the message ID (stable across retries).
pub const HEADER_ID: &str = "webhook-id";
/// Header carrying the Unix time of the attempt, in seconds.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Header carrying the signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// Prefix of a written secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Bytes of a secret this crate generates.
pub const SECRET_BYTES: usize = 32;
/// Fewest secret bytes accepted (the specification's own example has 24).
pub const MIN_SECRET_BYTES: usize = 24;
/// Most secret bytes accepted.
pub const MAX_SECRET_BYTES: usize = 64;
/// Default tolerance between a request's timestamp and the receiver's clock.
pub const DEFAULT_TOLERANCE_SECS: u64 = 5 * 60;
/// Most signatures read from one header (a rotation needs two).
const MAX_SIGNATURES: usize = 8;

type HmacSha256 = Hmac<Sha256>;

/// Why a secret or a request was refused. Never carries a secret or a tag.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum WebhookError {
    /// The secret is not `whsec_` + base64 of 24 to 64 bytes.
    #[error("the signing secret is not `whsec_` followed by base64 of {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes")]
    BadSecret,
    /// A required header is missing or not text.
    #[error("the `{0}` header is missing")]
    MissingHeader(&'static str),
    /// The timestamp is not a decimal number of seconds.
    #[error("the `webhook-timestamp` header is not a Unix time in seconds")]
    BadTimestamp,
    /// The timestamp is outside the tolerance.
    #[error("the `webhook-timestamp` is more than the tolerance away from now")]
    Stale,
    /// No signature matches any live secret.
    #[error("no `webhook-signature` matches")]
    NoMatch,
}

/// A signing secret's bytes (zeroised on drop).
#[derive(Clone)]
pub struct SigningSecret(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(..)")
    }
}

impl SigningSecret {
    /// A fresh random secret of [`SECRET_BYTES`].
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut bytes = Zeroizing::new(vec![0u8; SECRET_BYTES]);
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// From raw bytes (24 to 64 of them).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, WebhookError> {
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&bytes.len()) {
            return Err(WebhookError::BadSecret);
        }
        Ok(Self(Zeroizing::new(bytes.to_vec())))
    }

    /// Parse `whsec_<base64>` (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, WebhookError> {
        let b64 = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(WebhookError::BadSecret)?;
        let bytes = Zeroizing::new(STANDARD.decode(b64).map_err(|_| WebhookError::BadSecret)?);
        Self::from_bytes(&bytes)
    }

    /// The written form, `whsec_<base64>`.
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{SECRET_PREFIX}{}", STANDARD.encode(&*self.0)))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn mac(&self, id: &str, timestamp: u64, body: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length: this cannot fail.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `v1,<base64>` signature of one message under this secret.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }
}

/// The `webhook-signature` header value: one signature per live secret,
/// space-separated, in the order given.
pub fn signature_header(
    secrets: &[SigningSecret],
    id: &str,
    timestamp: u64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The three Standard Webhooks headers of a request, as received.
#[derive(Debug, Clone, Copy)]
pub struct SignedHeaders<'a> {
    /// `webhook-id`.
    pub id: Option<&'a str>,
    /// `webhook-timestamp`.
    pub timestamp: Option<&'a str>,
    /// `webhook-signature`.
    pub signature: Option<&'a str>,
}

/// Verify a request: its timestamp within `tolerance_secs` of `now` and one
/// `v1` signature matching one of `secrets`. Returns the message ID.
pub fn verify<'a>(
    secrets: &[SigningSecret],
    headers: SignedHeaders<'a>,
    body: &[u8],
    now: u64,
    tolerance_secs: u64,
) -> Result<&'a str, WebhookError> {
    let id = headers.id.ok_or(WebhookError::MissingHeader(HEADER_ID))?;
    let ts_text = headers
        .timestamp
        .ok_or(WebhookError::MissingHeader(HEADER_TIMESTAMP))?;
    let sigs = headers
        .signature
        .ok_or(WebhookError::MissingHeader(HEADER_SIGNATURE))?;
    if ts_text.is_empty() || !ts_text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(WebhookError::BadTimestamp);
    }
    let timestamp: u64 = ts_text.parse().map_err(|_| WebhookError::BadTimestamp)?;
    if now.abs_diff(timestamp) > tolerance_secs {
        return Err(WebhookError::Stale);
    }
    let tags: Vec<Vec<u8>> = sigs
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .take(MAX_SIGNATURES)
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .collect();
    for secret in secrets {
        for tag in &tags {
            // Constant time over the full 32-byte tag; shorter tags fail.
            if secret.mac(id, timestamp, body).verify_slice(tag).is_ok() {
                return Ok(id);
            }
        }
    }
    Err(WebhookError::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks specification's published test vector.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: u64 = 1_614_265_330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn headers<'a>(id: &'a str, ts: &'a str, sig: &'a str) -> SignedHeaders<'a> {
        SignedHeaders {
            id: Some(id),
            timestamp: Some(ts),
            signature: Some(sig),
        }
    }

    #[test]
    fn signing_reproduces_the_specification_vector() {
        let secret = SigningSecret::parse(SPEC_SECRET).unwrap();
        assert_eq!(
            secret.sign(SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY),
            SPEC_SIGNATURE
        );
        assert_eq!(&*secret.to_text(), SPEC_SECRET);
    }

    #[test]
    fn the_specification_vector_verifies_and_any_change_is_refused() {
        let secrets = [SigningSecret::parse(SPEC_SECRET).unwrap()];
        let ts = SPEC_TIMESTAMP.to_string();
        let ok = verify(
            &secrets,
            headers(SPEC_ID, &ts, SPEC_SIGNATURE),
            SPEC_BODY,
            SPEC_TIMESTAMP + 10,
            DEFAULT_TOLERANCE_SECS,
        );
        assert_eq!(ok, Ok(SPEC_ID));
        let refused = |id: &str, ts: &str, sig: &str, body: &[u8], now: u64| {
            verify(
                &secrets,
                headers(id, ts, sig),
                body,
                now,
                DEFAULT_TOLERANCE_SECS,
            )
            .unwrap_err()
        };
        let now = SPEC_TIMESTAMP;
        assert_eq!(
            refused(
                SPEC_ID,
                &ts,
                SPEC_SIGNATURE,
                br#"{"test": 2432232315}"#,
                now
            ),
            WebhookError::NoMatch
        );
        assert_eq!(
            refused("msg_other", &ts, SPEC_SIGNATURE, SPEC_BODY, now),
            WebhookError::NoMatch
        );
        assert_eq!(
            refused(SPEC_ID, &ts, SPEC_SIGNATURE, SPEC_BODY, now + 301),
            WebhookError::Stale
        );
        assert_eq!(
            refused(SPEC_ID, &ts, SPEC_SIGNATURE, SPEC_BODY, now - 301),
            WebhookError::Stale
        );
        assert_eq!(
            refused(SPEC_ID, "-1", SPEC_SIGNATURE, SPEC_BODY, now),
            WebhookError::BadTimestamp
        );
        // Empty, bare and truncated signatures: a prefix comparison would pass some.
        for sig in [
            "",
            "v1,",
            "v1",
            "v1,g0hM9SsE",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1O",
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ] {
            assert_eq!(
                refused(SPEC_ID, &ts, sig, SPEC_BODY, now),
                WebhookError::NoMatch,
                "{sig:?}"
            );
        }
    }

    #[test]
    fn two_live_secrets_give_two_signatures_and_either_verifies() {
        let mut rng = rand::thread_rng();
        let old = SigningSecret::generate(&mut rng);
        let new = SigningSecret::generate(&mut rng);
        let header = signature_header(&[new.clone(), old.clone()], "msg_1", 100, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], new.sign("msg_1", 100, b"{}"));
        assert_eq!(parts[1], old.sign("msg_1", 100, b"{}"));
        for only in [old, new] {
            let got = verify(
                std::slice::from_ref(&only),
                headers("msg_1", "100", &header),
                b"{}",
                100,
                DEFAULT_TOLERANCE_SECS,
            );
            assert_eq!(got, Ok("msg_1"));
        }
        let stranger = SigningSecret::generate(&mut rng);
        assert!(verify(
            &[stranger],
            headers("msg_1", "100", &header),
            b"{}",
            100,
            300
        )
        .is_err());
    }

    #[test]
    fn secrets_parse_only_in_their_written_form() {
        let s = SigningSecret::generate(&mut rand::thread_rng());
        assert_eq!(s.as_bytes().len(), SECRET_BYTES);
        let text = s.to_text();
        assert!(text.starts_with(SECRET_PREFIX));
        assert_eq!(
            SigningSecret::parse(&text).unwrap().as_bytes(),
            s.as_bytes()
        );
        for bad in [
            "",
            "whsec_",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_c2hvcnQ=",
            "whsec_!!",
        ] {
            assert_eq!(
                SigningSecret::parse(bad).unwrap_err(),
                WebhookError::BadSecret,
                "{bad}"
            );
        }
    }

    #[test]
    fn missing_headers_are_named() {
        let secrets = [SigningSecret::parse(SPEC_SECRET).unwrap()];
        let none = SignedHeaders {
            id: None,
            timestamp: Some("1"),
            signature: Some("v1,"),
        };
        assert_eq!(
            verify(&secrets, none, b"", 1, 300),
            Err(WebhookError::MissingHeader(HEADER_ID))
        );
    }
}
