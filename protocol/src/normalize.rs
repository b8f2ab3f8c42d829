//! Identifier normalisation, following the rules advertisers already use
//! (UID2, Google Customer Match), so that the same person gives the same
//! digest on the advertiser's side and in the onboarder's graph.

use crate::digest::Digest;
use crate::error::NormalizeError;
use std::fmt;
use std::str::FromStr;

/// The kind of an input column or graph identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdKind {
    /// An email address.
    Email,
    /// A phone number, national or international form.
    Phone,
    /// A mobile advertising ID (IDFA / AAID).
    Maid,
    /// SHA-256 of an already normalised email, 64 hex characters.
    EmailSha256,
    /// SHA-256 of an already normalised E.164 phone number, 64 hex characters.
    PhoneSha256,
}

impl IdKind {
    /// Every input kind, in a stable order.
    pub const ALL: [IdKind; 5] = [
        IdKind::Email,
        IdKind::Phone,
        IdKind::Maid,
        IdKind::EmailSha256,
        IdKind::PhoneSha256,
    ];

    /// The name used on the command line and in files.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Phone => "phone",
            Self::Maid => "maid",
            Self::EmailSha256 => "email_sha256",
            Self::PhoneSha256 => "phone_sha256",
        }
    }

    /// The kind this input matches as: pre-hashed kinds match their plain kind.
    pub fn match_kind(&self) -> MatchKind {
        match self {
            Self::Email | Self::EmailSha256 => MatchKind::Email,
            Self::Phone | Self::PhoneSha256 => MatchKind::Phone,
            Self::Maid => MatchKind::Maid,
        }
    }
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown kind name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown identifier kind `{0}` (expected email, phone, maid, email_sha256 or phone_sha256)"
)]
pub struct UnknownKind(pub String);

impl FromStr for IdKind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        IdKind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownKind(s.chars().take(32).collect()))
    }
}

/// The kind an identifier is hashed to the curve as. Each has its own
/// domain-separation tag, so an email and a phone never collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum MatchKind {
    /// Email (plain or pre-hashed).
    Email = 1,
    /// Phone (plain or pre-hashed).
    Phone = 2,
    /// Mobile ad ID.
    Maid = 3,
}

impl MatchKind {
    /// Every match kind, in wire order.
    pub const ALL: [MatchKind; 3] = [MatchKind::Email, MatchKind::Phone, MatchKind::Maid];

    /// The byte used in wire frames.
    pub fn to_byte(self) -> u8 {
        self as u8
    }

    /// Inverse of [`MatchKind::to_byte`].
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Email),
            2 => Some(Self::Phone),
            3 => Some(Self::Maid),
            _ => None,
        }
    }

    /// `email`, `phone` or `maid`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Phone => "phone",
            Self::Maid => "maid",
        }
    }
}

impl fmt::Display for MatchKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MatchKind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MatchKind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownKind(s.chars().take(32).collect()))
    }
}

/// The default region for phone numbers written without a country code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region(phonenumber::country::Id);

impl Default for Region {
    /// France, as in the design's CLI default.
    fn default() -> Self {
        Region(phonenumber::country::Id::FR)
    }
}

/// A region code that is not an ISO 3166 alpha-2 code the phone library knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown region `{0}` (expected an ISO 3166 alpha-2 code such as FR or US)")]
pub struct UnknownRegion(pub String);

impl FromStr for Region {
    type Err = UnknownRegion;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .to_ascii_uppercase()
            .parse::<phonenumber::country::Id>()
            .map(Region)
            .map_err(|_| UnknownRegion(s.chars().take(8).collect()))
    }
}

/// A normalised identifier and its digest.
#[derive(Clone, PartialEq, Eq)]
pub struct Normalized {
    /// The kind it matches as.
    pub kind: MatchKind,
    /// The normalised text (for pre-hashed kinds, the lower-case hex).
    pub value: String,
    /// `SHA-256(value)`, or the decoded pre-hashed value.
    pub digest: Digest,
}

impl fmt::Debug for Normalized {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the identifier: this type flows near logs.
        f.debug_struct("Normalized")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Normalise one raw identifier of `kind` and compute its digest.
pub fn normalize(kind: IdKind, raw: &str, region: Region) -> Result<Normalized, NormalizeError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(NormalizeError::Empty);
    }
    let (value, digest) = match kind {
        IdKind::Email => {
            let value = normalize_email(trimmed)?;
            let digest = Digest::of(&value);
            (value, digest)
        }
        IdKind::Phone => {
            let value = normalize_phone(trimmed, region)?;
            let digest = Digest::of(&value);
            (value, digest)
        }
        IdKind::Maid => {
            let value = normalize_maid(trimmed)?;
            let digest = Digest::of(&value);
            (value, digest)
        }
        IdKind::EmailSha256 | IdKind::PhoneSha256 => {
            let digest = Digest::from_hex(trimmed).ok_or(NormalizeError::NotSha256Hex)?;
            (digest.to_hex(), digest)
        }
    };
    Ok(Normalized {
        kind: kind.match_kind(),
        value,
        digest,
    })
}

/// Trim, lower-case; for Gmail drop dots and `+tags` from the local part.
fn normalize_email(trimmed: &str) -> Result<String, NormalizeError> {
    if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(NormalizeError::EmailShape);
    }
    let lower = trimmed.to_lowercase();
    let (local, domain) = lower.split_once('@').ok_or(NormalizeError::EmailShape)?;
    if local.is_empty() || domain.contains('@') {
        return Err(NormalizeError::EmailShape);
    }
    if !domain.contains('.') || domain.split('.').any(|label| label.is_empty()) {
        return Err(NormalizeError::EmailDomain);
    }
    if domain == "gmail.com" || domain == "googlemail.com" {
        let before_plus = local.split('+').next().unwrap_or_default();
        let canonical: String = before_plus.chars().filter(|&c| c != '.').collect();
        if canonical.is_empty() {
            return Err(NormalizeError::EmailShape);
        }
        return Ok(format!("{canonical}@gmail.com"));
    }
    Ok(lower)
}

/// Parse with the default region; E.164 out; invalid numbers refused.
fn normalize_phone(trimmed: &str, region: Region) -> Result<String, NormalizeError> {
    let number =
        phonenumber::parse(Some(region.0), trimmed).map_err(|_| NormalizeError::PhoneUnparsable)?;
    if !phonenumber::is_valid(&number) {
        return Err(NormalizeError::PhoneInvalid);
    }
    Ok(number.format().mode(phonenumber::Mode::E164).to_string())
}

/// Lower-case hyphenated UUID; the all-zero LAT ID is refused.
fn normalize_maid(trimmed: &str) -> Result<String, NormalizeError> {
    let lower = trimmed.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let shape_ok = bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    if !shape_ok {
        return Err(NormalizeError::MaidNotUuid);
    }
    if bytes.iter().all(|&b| b == b'0' || b == b'-') {
        return Err(NormalizeError::MaidZero);
    }
    Ok(lower)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn email(raw: &str) -> Result<String, NormalizeError> {
        normalize(IdKind::Email, raw, Region::default()).map(|n| n.value)
    }

    fn phone(raw: &str) -> Result<String, NormalizeError> {
        normalize(IdKind::Phone, raw, Region::default()).map(|n| n.value)
    }

    #[test]
    fn uid2_published_gmail_case() {
        let n = normalize(
            IdKind::Email,
            "JaneSaoirse+Work@gmail.com",
            Region::default(),
        )
        .unwrap();
        assert_eq!(n.value, "janesaoirse@gmail.com");
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(n.digest.0),
            "ku4mBX7Z3qJTXWyLFB1INzkyR2WZGW4ANSJUiW21iI8="
        );
    }

    #[test]
    fn email_rules() {
        assert_eq!(
            email("  Jane.Doe@Example.COM ").unwrap(),
            "jane.doe@example.com"
        );
        assert_eq!(
            email("j.a.n.e+x+y@googlemail.com").unwrap(),
            "jane@gmail.com"
        );
        // `+` is only special at Gmail.
        assert_eq!(email("jane+x@example.fr").unwrap(), "jane+x@example.fr");
        assert_eq!(
            email("no-at-sign.example.com"),
            Err(NormalizeError::EmailShape)
        );
        assert_eq!(email("a@b@example.com"), Err(NormalizeError::EmailShape));
        assert_eq!(email("@example.com"), Err(NormalizeError::EmailShape));
        assert_eq!(
            email("jane doe@example.com"),
            Err(NormalizeError::EmailShape)
        );
        assert_eq!(email("jane@localhost"), Err(NormalizeError::EmailDomain));
        assert_eq!(email("jane@example..com"), Err(NormalizeError::EmailDomain));
        assert_eq!(email("+tag@gmail.com"), Err(NormalizeError::EmailShape));
        assert_eq!(email("   "), Err(NormalizeError::Empty));
    }

    #[test]
    fn french_numbers_in_every_form_agree() {
        for raw in [
            "06 12 34 56 78",
            "0612345678",
            "+33 6 12 34 56 78",
            "+33612345678",
            "0033 6 12 34 56 78",
            "06.12.34.56.78",
        ] {
            assert_eq!(phone(raw).unwrap(), "+33612345678", "{raw}");
        }
        // A default region only fills in a missing country code.
        let us: Region = "us".parse().unwrap();
        let n = normalize(IdKind::Phone, "+33 6 12 34 56 78", us).unwrap();
        assert_eq!(n.value, "+33612345678");
        let n = normalize(IdKind::Phone, "(201) 555-0123", us).unwrap();
        assert_eq!(n.value, "+12015550123");
    }

    #[test]
    fn invalid_phones() {
        assert_eq!(phone("not a number"), Err(NormalizeError::PhoneUnparsable));
        assert_eq!(phone("06 12"), Err(NormalizeError::PhoneInvalid));
        assert!(matches!(
            phone("+33 0 00 00 00 00"),
            Err(NormalizeError::PhoneUnparsable | NormalizeError::PhoneInvalid)
        ));
        assert_eq!(phone("+33 6 12"), Err(NormalizeError::PhoneInvalid));
        assert!("ZZ".parse::<Region>().is_err());
    }

    #[test]
    fn maid_rules() {
        let maid = |raw| normalize(IdKind::Maid, raw, Region::default()).map(|n| n.value);
        assert_eq!(
            maid(" 6D92078A-8246-4BA4-AE5B-76104861E7DC ").unwrap(),
            "6d92078a-8246-4ba4-ae5b-76104861e7dc"
        );
        assert_eq!(
            maid("00000000-0000-0000-0000-000000000000"),
            Err(NormalizeError::MaidZero)
        );
        assert_eq!(
            maid("6d92078a82464ba4ae5b76104861e7dc"),
            Err(NormalizeError::MaidNotUuid)
        );
        assert_eq!(
            maid("6d92078a-8246-4ba4-ae5b-76104861e7dg"),
            Err(NormalizeError::MaidNotUuid)
        );
    }

    #[test]
    fn prehashed_kinds_match_their_plain_kind() {
        let plain = normalize(IdKind::Email, "janesaoirse@gmail.com", Region::default()).unwrap();
        let hashed = normalize(
            IdKind::EmailSha256,
            &plain.digest.to_hex().to_uppercase(),
            Region::default(),
        )
        .unwrap();
        assert_eq!(hashed.kind, MatchKind::Email);
        assert_eq!(hashed.digest, plain.digest);
        assert_eq!(hashed.value, plain.digest.to_hex());

        let plain = normalize(IdKind::Phone, "06 12 34 56 78", Region::default()).unwrap();
        let hashed = normalize(
            IdKind::PhoneSha256,
            &plain.digest.to_hex(),
            Region::default(),
        )
        .unwrap();
        assert_eq!(
            (hashed.kind, hashed.digest),
            (MatchKind::Phone, plain.digest)
        );

        let bad = normalize(IdKind::PhoneSha256, "abc", Region::default());
        assert_eq!(bad, Err(NormalizeError::NotSha256Hex));
    }

    #[test]
    fn errors_never_contain_the_value() {
        let secret = "secret.person@example";
        let err = normalize(IdKind::Email, secret, Region::default()).unwrap_err();
        assert!(!err.to_string().contains("secret"));
        assert!(!format!("{err:?}").contains("secret"));
        let ok = normalize(
            IdKind::Email,
            "secret.person@example.com",
            Region::default(),
        )
        .unwrap();
        assert!(!format!("{ok:?}").contains("secret"));
    }

    #[test]
    fn kind_names_round_trip() {
        for kind in IdKind::ALL {
            assert_eq!(kind.as_str().parse::<IdKind>().unwrap(), kind);
        }
        for kind in MatchKind::ALL {
            assert_eq!(MatchKind::from_byte(kind.to_byte()), Some(kind));
        }
        assert!("fax".parse::<IdKind>().is_err());
    }
}
