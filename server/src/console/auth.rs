//! Console operators and their sessions: an Argon2id password and a TOTP
//! second factor (RFC 6238: SHA-1, 6 digits, 30 s, ±1 step, each step
//! accepted once), random session IDs stored only as a keyed hash, and CSRF
//! tokens derived from the cookie they protect (so a page's forms need no
//! stored state). The TOTP secret is sealed under the server's sealing key,
//! bound to the operator's name.

use crate::error::ApiError;
use crate::services::audit::{self, AuditKey};
use crate::services::auth::{hmac_with, valid_name, Caller};
use crate::services::{rfc3339, seal, unix_now, Services};
use crate::storage::{ConsoleSession, Operator, Repo, Role, StoreError};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine as _;
use rand::RngCore;
use subtle::ConstantTimeEq;
use thiserror::Error;
use totp_rs::{Algorithm, TOTP};
use zeroize::Zeroizing;

/// The issuer shown by authenticator apps.
pub const ISSUER: &str = "onboard";
/// TOTP time step, seconds (RFC 6238's default, what every app assumes).
pub const TOTP_STEP: u64 = 30;
/// Bytes of a TOTP secret (160 bits, RFC 4226's recommendation).
const TOTP_SECRET_BYTES: usize = 20;
/// Sealing label of TOTP secrets.
const TOTP_LABEL: &[u8] = b"console-totp";
/// Random bytes of a password (shown as 20 base64url characters).
const PASSWORD_BYTES: usize = 15;
/// Random bytes of a session ID or a login nonce.
const COOKIE_BYTES: usize = 32;
/// The audit actor of the `onboard-server operator …` commands.
const CLI_ACTOR: &str = "cli";

/// What an operator command failed on.
#[derive(Debug, Error)]
pub enum OperatorError {
    /// The name is not 1–64 of `[A-Za-z0-9._-]`.
    #[error("operator name: 1 to 64 characters of letters, digits, '.', '_' or '-'")]
    InvalidName,
    /// `add` of an existing name.
    #[error("operator {0} exists already")]
    Exists(String),
    /// `remove` or `reset-2fa` of an unknown name.
    #[error("no operator named {0}")]
    NotFound(String),
    /// Hashing, sealing or the TOTP set-up failed.
    #[error("{0}")]
    Crypto(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A new operator's credentials, shown once.
pub struct Credentials {
    /// The password (absent after `reset-2fa`, which keeps it).
    pub password: Option<Zeroizing<String>>,
    /// `otpauth://totp/onboard:NAME?secret=…&issuer=onboard`.
    pub otpauth_uri: Zeroizing<String>,
}

/// `n` random bytes as base64url.
fn random_token(n: usize) -> Zeroizing<String> {
    let mut raw = Zeroizing::new(vec![0u8; n]);
    rand::rngs::OsRng.fill_bytes(&mut raw);
    Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&*raw))
}

fn hash_password(password: &str) -> Result<String, OperatorError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| OperatorError::Crypto(format!("password hash: {e}")))
}

fn totp_of(secret: Vec<u8>, name: &str) -> Result<TOTP, OperatorError> {
    TOTP::new(
        Algorithm::SHA1,
        6,
        1,
        TOTP_STEP,
        secret,
        Some(ISSUER.into()),
        name.into(),
    )
    .map_err(|e| OperatorError::Crypto(format!("TOTP: {e}")))
}

/// A fresh TOTP secret: its sealed form and its `otpauth://` URI.
fn new_second_factor(
    identity: &[u8; 32],
    name: &str,
) -> Result<(Vec<u8>, Zeroizing<String>), OperatorError> {
    let mut secret = Zeroizing::new(vec![0u8; TOTP_SECRET_BYTES]);
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let sealed = seal::seal_bytes(identity, TOTP_LABEL, name.as_bytes(), &secret)
        .ok_or_else(|| OperatorError::Crypto("sealing the TOTP secret failed".into()))?;
    let uri = Zeroizing::new(totp_of(secret.to_vec(), name)?.get_url());
    Ok((sealed, uri))
}

/// Append an operator command's entry under the store's audit lock.
fn audit_cli(
    repo: &dyn Repo,
    key: &AuditKey,
    action: &str,
    name: &str,
) -> Result<(), OperatorError> {
    let _lock = repo.lock("audit")?;
    audit::append(repo, key, CLI_ACTOR, action, name, "ok")?;
    Ok(())
}

/// `operator add`: a new operator with a random password and TOTP secret.
pub fn add_operator(
    repo: &dyn Repo,
    identity: &[u8; 32],
    audit_key: &AuditKey,
    name: &str,
) -> Result<Credentials, OperatorError> {
    if !valid_name(name) {
        return Err(OperatorError::InvalidName);
    }
    let password = random_token(PASSWORD_BYTES);
    let (totp_sealed, otpauth_uri) = new_second_factor(identity, name)?;
    let op = Operator {
        name: name.into(),
        password_hash: hash_password(&password)?,
        totp_sealed,
        totp_last_step: 0,
        created: rfc3339(unix_now()),
    };
    if repo.create_operator(&op)?.is_err() {
        return Err(OperatorError::Exists(name.into()));
    }
    audit_cli(repo, audit_key, "operator.add", name)?;
    Ok(Credentials {
        password: Some(password),
        otpauth_uri,
    })
}

/// `operator remove`: the operator and its sessions.
pub fn remove_operator(
    repo: &dyn Repo,
    audit_key: &AuditKey,
    name: &str,
) -> Result<(), OperatorError> {
    if !repo.delete_operator(name)? {
        return Err(OperatorError::NotFound(name.into()));
    }
    audit_cli(repo, audit_key, "operator.remove", name)
}

/// `operator reset-2fa`: a new TOTP secret (the password stays); the
/// operator's sessions end.
pub fn reset_second_factor(
    repo: &dyn Repo,
    identity: &[u8; 32],
    audit_key: &AuditKey,
    name: &str,
) -> Result<Credentials, OperatorError> {
    let mut op = repo
        .operator(name)?
        .ok_or_else(|| OperatorError::NotFound(name.into()))?;
    let (totp_sealed, otpauth_uri) = new_second_factor(identity, name)?;
    op.totp_sealed = totp_sealed;
    op.totp_last_step = 0;
    if !repo.reset_operator(&op)? {
        return Err(OperatorError::NotFound(name.into()));
    }
    audit_cli(repo, audit_key, "operator.reset-2fa", name)?;
    Ok(Credentials {
        password: None,
        otpauth_uri,
    })
}

/// Why a login was refused (for the audit log; the page says only that it failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Unknown name or wrong password.
    Password,
    /// The code matches no step of the window.
    Code,
    /// The code's step was already used.
    ReplayedCode,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::Password => "wrong-password",
            Refusal::Code => "wrong-code",
            Refusal::ReplayedCode => "replayed-code",
        }
    }
}

/// A logged-in operator, for one request.
#[derive(Debug, Clone)]
pub struct OperatorSession {
    /// The operator's name.
    pub name: String,
    /// The token every form of this session carries.
    pub csrf: String,
}

impl OperatorSession {
    /// The caller the services see: audited as `operator:NAME`.
    pub fn caller(&self) -> Caller {
        Caller {
            name: format!("operator:{}", self.name),
            role: Role::Admin,
            key_id: "console".into(),
        }
    }
}

/// A hash that costs what a real verification costs, for unknown names.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password(&random_token(PASSWORD_BYTES)).unwrap_or_default())
}

fn password_matches(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// The step of the window (now −1, now, now +1) whose code is `code`,
/// comparing all three in constant time.
fn matching_step(totp: &TOTP, code: &str, now: u64) -> Option<u64> {
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let current = now / TOTP_STEP;
    let mut found = None;
    for step in current.saturating_sub(1)..=current + 1 {
        let expected = totp.generate(step * TOTP_STEP);
        if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) {
            found = Some(step);
        }
    }
    found
}

/// The CSRF token of the forms protected by the cookie `value`.
pub(crate) fn csrf_token(key: &[u8; 32], value: &str) -> String {
    hex::encode(&hmac_with(key, b"console-csrf", value.as_bytes())[..16])
}

/// Whether `token` is the CSRF token of the cookie `value` (constant time).
pub(crate) fn csrf_matches(key: &[u8; 32], value: &str, token: &str) -> bool {
    let expected = csrf_token(key, value);
    expected.len() == token.len() && bool::from(expected.as_bytes().ct_eq(token.as_bytes()))
}

/// A fresh random cookie value (session ID or login nonce).
pub(crate) fn new_cookie_value() -> Zeroizing<String> {
    random_token(COOKIE_BYTES)
}

impl Services {
    fn session_hash(&self, id: &str) -> [u8; 32] {
        self.hmac(b"console-session", id.as_bytes())
    }

    /// Check a login; on success open a session and return its ID (the
    /// cookie value). Every attempt is audited, as `operator:NAME` when the
    /// name is well-formed.
    pub fn console_login(
        &self,
        name: &str,
        password: &str,
        code: &str,
    ) -> Result<Result<Zeroizing<String>, Refusal>, ApiError> {
        let outcome = self.check_login(name, password, code)?;
        let actor = if valid_name(name) {
            format!("operator:{name}")
        } else {
            "console".into()
        };
        match outcome {
            Ok(()) => {
                let id = new_cookie_value();
                let now = unix_now();
                self.repo.put_session(&ConsoleSession {
                    id_hash: self.session_hash(&id),
                    operator: name.into(),
                    created: now,
                    last_seen: now,
                })?;
                self.prune_console_sessions()?;
                self.audit(&actor, "console.login", "session", "ok")?;
                Ok(Ok(id))
            }
            Err(refusal) => {
                self.audit(&actor, "console.login", refusal.as_str(), "refused")?;
                Ok(Err(refusal))
            }
        }
    }

    fn check_login(
        &self,
        name: &str,
        password: &str,
        code: &str,
    ) -> Result<Result<(), Refusal>, ApiError> {
        let op = if valid_name(name) {
            self.repo.operator(name)?
        } else {
            None
        };
        let hash = op
            .as_ref()
            .map_or(decoy_hash(), |o| o.password_hash.as_str());
        let password_ok = password_matches(hash, password);
        let Some(op) = op.filter(|_| password_ok) else {
            return Ok(Err(Refusal::Password));
        };
        let secret = seal::open_bytes(
            self.identity_key(),
            TOTP_LABEL,
            name.as_bytes(),
            &op.totp_sealed,
        )
        .map(Zeroizing::new)
        .ok_or_else(|| ApiError::Internal("the operator's TOTP secret does not open".into()))?;
        let totp = totp_of(secret.to_vec(), name).map_err(|e| ApiError::Internal(e.to_string()))?;
        let Some(step) = matching_step(&totp, code, unix_now()) else {
            return Ok(Err(Refusal::Code));
        };
        if !self.repo.accept_totp_step(name, step)? {
            return Ok(Err(Refusal::ReplayedCode));
        }
        Ok(Ok(()))
    }

    /// The live session of the cookie `id`, its last-seen time moved;
    /// `None` (and the session deleted) past the idle or absolute limit.
    pub fn console_session(&self, id: &str) -> Result<Option<OperatorSession>, ApiError> {
        let hash = self.session_hash(id);
        let Some(mut s) = self.repo.session(&hash)? else {
            return Ok(None);
        };
        let now = unix_now();
        let idle = self.config.console_idle_timeout.as_secs();
        let lifetime = self.config.console_session_lifetime.as_secs();
        if now.saturating_sub(s.last_seen) > idle || now.saturating_sub(s.created) > lifetime {
            self.repo.delete_session(&hash)?;
            return Ok(None);
        }
        if s.last_seen != now {
            s.last_seen = now;
            self.repo.put_session(&s)?;
        }
        Ok(Some(OperatorSession {
            csrf: csrf_token(self.identity_key(), id),
            name: s.operator,
        }))
    }

    /// End a session (logout), and forget every expired one.
    pub fn console_logout(&self, id: &str, operator: &OperatorSession) -> Result<(), ApiError> {
        self.repo.delete_session(&self.session_hash(id))?;
        self.prune_console_sessions()?;
        self.audit(&operator.caller().name, "console.logout", "session", "ok")?;
        Ok(())
    }

    /// Forget the sessions past their idle or absolute limit (at every login
    /// and logout: sessions are few, and an expired one never comes back).
    fn prune_console_sessions(&self) -> Result<usize, ApiError> {
        let now = unix_now();
        Ok(self.repo.prune_sessions(
            now.saturating_sub(self.config.console_idle_timeout.as_secs()),
            now.saturating_sub(self.config.console_session_lifetime.as_secs()),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_accepts_one_step_either_side_and_nothing_else() {
        let totp = totp_of(vec![7u8; TOTP_SECRET_BYTES], "ana").unwrap();
        let now = 1_000_000 * TOTP_STEP + 5;
        for (offset, expected) in [(-1i64, true), (0, true), (1, true), (-2, false), (2, false)] {
            let step = (now / TOTP_STEP) as i64 + offset;
            let code = totp.generate(step as u64 * TOTP_STEP);
            let found = matching_step(&totp, &code, now);
            // Another step of the window may share the code by chance (10^-6).
            assert_eq!(found == Some(step as u64), expected, "offset {offset}");
        }
        assert_eq!(matching_step(&totp, "12345", now), None);
        assert_eq!(matching_step(&totp, "abcdef", now), None);
    }

    #[test]
    fn the_uri_is_rfc6238_sha1_six_digits_thirty_seconds() {
        let (sealed, uri) = new_second_factor(&[1; 32], "ana").unwrap();
        assert!(
            uri.starts_with("otpauth://totp/onboard:ana?secret="),
            "{}",
            *uri
        );
        assert!(uri.contains("issuer=onboard"));
        assert!(
            !uri.contains("algorithm=") && !uri.contains("digits=") && !uri.contains("period=")
        );
        let secret = seal::open_bytes(&[1; 32], TOTP_LABEL, b"ana", &sealed).unwrap();
        assert_eq!(secret.len(), TOTP_SECRET_BYTES);
        // Bound to the name.
        assert!(seal::open_bytes(&[1; 32], TOTP_LABEL, b"bob", &sealed).is_none());
        let parsed = TOTP::from_url(&*uri).unwrap();
        assert_eq!(parsed.secret, secret);
    }

    #[test]
    fn passwords_verify_only_themselves() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(password_matches(&h, "correct horse"));
        assert!(!password_matches(&h, "correct hors"));
        assert!(!password_matches("not a hash", "x"));
    }

    #[test]
    fn csrf_tokens_belong_to_their_cookie() {
        let t = csrf_token(&[2; 32], "cookie-a");
        assert!(csrf_matches(&[2; 32], "cookie-a", &t));
        assert!(!csrf_matches(&[2; 32], "cookie-b", &t));
        assert!(!csrf_matches(&[3; 32], "cookie-a", &t));
        assert!(!csrf_matches(&[2; 32], "cookie-a", ""));
    }
}
