//! Settings, layered: defaults → TOML file → `ONBOARD_…` environment → flags
//! actually passed. Every key is a flat snake_case name; its environment
//! variable is `ONBOARD_` + the upper-cased key (e.g. `k` → `ONBOARD_K`).
//! Invalid values are refused at start with an error naming the key.
//! A data dir's own `onboard.toml` (written by `init --database-url`) is the
//! first file layer, under an explicit `--config` file.

use serde::{Serialize, Serializer};
use std::cmp::Ordering;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use thiserror::Error;

/// The smallest `k` the server accepts; lower values are refused at start.
pub const K_FLOOR: u64 = 50;

/// Micro-ε per ε: the privacy budget is kept in whole micro-ε (integers, so
/// sums never drift).
pub const MICRO_PER_EPSILON: u64 = 1_000_000;

/// The smallest ε accepted, 1/1000: the noise's standard deviation is then
/// about 1,400, so reports would be meaningless (the sampler itself takes the
/// same expected time at every ε).
pub const EPSILON_MIN: Epsilon = Epsilon { num: 1, den: 1000 };

/// The largest ε accepted, 2: the noise is still non-zero in about a quarter
/// of the draws (`2e^-ε / (1 + e^-ε)`). Above it the noise is almost always
/// zero, which switches the protection off while looking configured.
pub const EPSILON_MAX: Epsilon = Epsilon { num: 2, den: 1 };

/// The largest denominator of ε (after reduction): six decimal places, or a
/// fraction such as `1/3`. Keeps the sampler's integers small.
pub const EPSILON_MAX_DENOMINATOR: u64 = MICRO_PER_EPSILON;

/// The largest privacy budget accepted, 1000 ε; more is no limit at all.
pub const PRIVACY_BUDGET_MAX_MICRO: u64 = 1000 * MICRO_PER_EPSILON;

/// The shortest budget window accepted.
pub const BUDGET_WINDOW_MIN: Duration = Duration::from_secs(86_400);

/// The longest budget window accepted (storage keeps charges this long).
pub const BUDGET_WINDOW_MAX: Duration = Duration::from_secs(crate::storage::BUDGET_HISTORY_SECS);

/// A setting that could not be used. Always names the key.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A key this build does not know.
    #[error("unknown setting `{key}`")]
    UnknownKey {
        /// The key.
        key: String,
    },
    /// A value that does not parse or is out of range.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// The key.
        key: String,
        /// Why it was refused.
        reason: String,
    },
    /// The configuration file could not be read or parsed.
    #[error("cannot read configuration file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// An amount of ε as an exact fraction `num/den` in lowest terms (so equal
/// amounts have equal fields). Parsed from `"1/2"` or a decimal such as
/// `"0.05"` (exactly 1/20); the noise sampler uses `num` and `den` directly,
/// with no floating point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epsilon {
    num: u64,
    den: u64,
}

impl Epsilon {
    /// `num/den` reduced; `None` when `den` is zero.
    pub fn new(num: u64, den: u64) -> Option<Self> {
        if den == 0 {
            return None;
        }
        let g = gcd(num, den);
        Some(Self {
            num: num / g,
            den: den / g,
        })
    }

    /// `micro` millionths of ε.
    pub fn from_micro(micro: u64) -> Self {
        let g = gcd(micro, MICRO_PER_EPSILON);
        Self {
            num: micro / g,
            den: MICRO_PER_EPSILON / g,
        }
    }

    /// The numerator (lowest terms).
    pub fn num(self) -> u64 {
        self.num
    }

    /// The denominator (lowest terms, never zero).
    pub fn den(self) -> u64 {
        self.den
    }

    /// In micro-ε, rounded up: charging `1/3` costs 333,334 micro-ε, so the
    /// budget never counts less than was spent.
    pub fn micro_ceil(self) -> u64 {
        let micro =
            (u128::from(self.num) * u128::from(MICRO_PER_EPSILON)).div_ceil(u128::from(self.den));
        u64::try_from(micro).unwrap_or(u64::MAX)
    }

    /// Whether this is a whole number of micro-ε (its denominator divides 10⁶).
    pub fn is_whole_micro(self) -> bool {
        MICRO_PER_EPSILON.is_multiple_of(self.den)
    }
}

impl Ord for Epsilon {
    fn cmp(&self, other: &Self) -> Ordering {
        let left = u128::from(self.num) * u128::from(other.den);
        let right = u128::from(other.num) * u128::from(self.den);
        left.cmp(&right)
    }
}

impl PartialOrd for Epsilon {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A decimal when the amount has one with at most six places, else `num/den`.
impl fmt::Display for Epsilon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_whole_micro() {
            let micro = (self.num % self.den) * (MICRO_PER_EPSILON / self.den);
            write_decimal(f, self.num / self.den, micro)
        } else {
            write!(f, "{}/{}", self.num, self.den)
        }
    }
}

/// `whole.micro` without trailing zeros (`25.5`, `20`, `0.001`).
fn write_decimal(f: &mut fmt::Formatter<'_>, whole: u64, micro: u64) -> fmt::Result {
    if micro == 0 {
        return write!(f, "{whole}");
    }
    let places = format!("{micro:06}");
    write!(f, "{whole}.{}", places.trim_end_matches('0'))
}

/// As a JSON number, for reports (display only; nothing computes with it).
impl Serialize for Epsilon {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.num as f64 / self.den as f64)
    }
}

/// Why a text is not an amount of ε.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseEpsilonError {
    /// Neither `digits/digits` nor a plain decimal.
    #[error("`{0}` is not a decimal (0.05) or a fraction (1/20)")]
    Syntax(String),
    /// Too many digits for 64-bit integers.
    #[error("`{0}` has too many digits")]
    TooLong(String),
    /// `n/0`.
    #[error("`{0}` has a zero denominator")]
    ZeroDenominator(String),
}

impl FromStr for Epsilon {
    type Err = ParseEpsilonError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (num, den) = match text.split_once('/') {
            Some((n, d)) => (whole(n.trim(), text)?, whole(d.trim(), text)?),
            None => decimal(text)?,
        };
        Epsilon::new(num, den).ok_or_else(|| ParseEpsilonError::ZeroDenominator(text.into()))
    }
}

/// A decimal `int.frac` as `(int·10^f + frac, 10^f)`, exactly.
fn decimal(text: &str) -> Result<(u64, u64), ParseEpsilonError> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if int.is_empty() && frac.is_empty() {
        return Err(ParseEpsilonError::Syntax(text.into()));
    }
    let too_long = || ParseEpsilonError::TooLong(text.into());
    let places = u32::try_from(frac.len()).map_err(|_| too_long())?;
    let scale = 10u64.checked_pow(places).ok_or_else(too_long)?;
    let int = if int.is_empty() { 0 } else { whole(int, text)? };
    let frac = if frac.is_empty() {
        0
    } else {
        whole(frac, text)?
    };
    let num = int
        .checked_mul(scale)
        .and_then(|n| n.checked_add(frac))
        .ok_or_else(too_long)?;
    Ok((num, scale))
}

/// A run of ASCII digits (no sign, no exponent, no separators).
fn whole(digits: &str, text: &str) -> Result<u64, ParseEpsilonError> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseEpsilonError::Syntax(text.into()));
    }
    digits
        .parse()
        .map_err(|_| ParseEpsilonError::TooLong(text.into()))
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

/// A whole number of micro-ε, shown as a decimal amount of ε (`25.5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MicroEpsilon(pub u64);

impl fmt::Display for MicroEpsilon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_decimal(f, self.0 / MICRO_PER_EPSILON, self.0 % MICRO_PER_EPSILON)
    }
}

/// All server settings. `Default` gives the design's defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory: keys, database, dev TLS material.
    pub data_dir: PathBuf,
    /// Address `serve` binds.
    pub listen: SocketAddr,
    /// Minimum distinct persons in a released audience (floor [`K_FLOOR`]).
    pub k: u64,
    /// Minimum rows a job must upload before it can finish.
    pub min_job_rows: usize,
    /// How long a released audience stays available.
    pub audience_ttl: Duration,
    /// ε of the noise on one released value, and what releasing it costs.
    pub epsilon: Epsilon,
    /// Total ε an advertiser may spend per budget window, in micro-ε.
    pub privacy_budget_micro: u64,
    /// The privacy budget window (30 days).
    pub budget_window: Duration,
    /// Most distinct segments one job may report on (each is a released value).
    pub max_segments_per_job: usize,
    /// Largest JSON body accepted.
    pub max_json_body: usize,
    /// Largest binary frame accepted.
    pub max_frame_body: usize,
    /// Most open jobs per advertiser.
    pub max_open_jobs: usize,
    /// Points per graph-pass page.
    pub page_size: usize,
    /// Graph versions kept (the current one included), for audits and
    /// `graph activate`; older ones are deleted.
    pub graph_versions_kept: usize,
    /// Open jobs untouched for longer than this are failed and deleted.
    pub abandoned_job_ttl: Duration,
    /// Finished and failed job records (with their reports) are forgotten
    /// this long after they ended, so listings and indexes do not grow with
    /// history.
    pub job_retention: Duration,
    /// How often the background clean-up runs.
    pub cleanup_interval: Duration,
    /// HTTP worker threads.
    pub workers: usize,
    /// Default and maximum members per page of an audience pull.
    pub members_page_limit: usize,
    /// Time a client has to send a request's head after connecting (or after
    /// the previous response); slower clients get 408 and are disconnected.
    pub client_request_timeout: Duration,
    /// Time a client has to acknowledge the connection's shutdown.
    pub client_disconnect_timeout: Duration,
    /// Idle time before a kept-alive connection is closed; zero disables keep-alive.
    pub keep_alive: Duration,
    /// Time a client has to finish the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// TLS certificate chain (PEM); default `<data_dir>/tls/cert.pem`.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); default `<data_dir>/tls/key.pem`.
    pub tls_key: Option<PathBuf>,
    /// Log lines as text or one JSON object per line.
    pub log_format: crate::logging::LogFormat,
    /// Plain-HTTP address serving `/metrics` alone (loopback by default);
    /// `None` (`"off"`) serves no metrics. The TLS listener never serves them.
    pub metrics_listen: Option<SocketAddr>,
    /// No pause in a request body may last longer than this, and after it
    /// the body must have kept [`Config::client_body_min_rate`] on average.
    pub client_body_timeout: Duration,
    /// Slowest average body rate accepted after `client_body_timeout`, bytes/s.
    pub client_body_min_rate: u64,
    /// Failed authentications one source address may make per minute
    /// (token bucket) before its requests get 429.
    pub auth_failures_per_minute: u32,
    /// Which backend holds the state; unset, PostgreSQL when
    /// `database_url` is set, else sled.
    pub storage: Option<StorageKind>,
    /// The PostgreSQL database (`storage = "postgres"`); shown redacted.
    pub database_url: Option<crate::storage::postgres::DatabaseUrl>,
    /// Let webhooks go to loopback, private and link-local addresses
    /// (on-premises DSPs, tests); off, such URLs are refused at registration
    /// and at every delivery.
    pub webhook_allow_private_targets: bool,
    /// Extra CA (PEM) trusted for webhook receivers, beside the system roots.
    pub webhook_ca: Option<PathBuf>,
    /// First retry delay of a webhook; later ones are multiples of it (the
    /// schedule in docs/api.md spans about a day at the default 5 s).
    pub webhook_retry_base: Duration,
    /// Time a webhook receiver has to answer one attempt.
    pub webhook_timeout: Duration,
    /// Serve the operator console at `/console/`.
    pub console: bool,
    /// A console session unused for this long ends.
    pub console_idle_timeout: Duration,
    /// A console session ends this long after its login, used or not.
    pub console_session_lifetime: Duration,
}

/// The `storage` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StorageKind {
    /// Embedded sled under the data dir (the default).
    #[default]
    Sled,
    /// A PostgreSQL database shared by several servers.
    Postgres,
}

impl FromStr for StorageKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "sled" => Ok(Self::Sled),
            "postgres" => Ok(Self::Postgres),
            _ => Err("must be \"sled\" or \"postgres\"".into()),
        }
    }
}

/// The name of a data dir's own configuration file.
pub const DATA_DIR_CONFIG: &str = "onboard.toml";

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("onboard-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            k: 100,
            min_job_rows: 1000,
            audience_ttl: Duration::from_secs(30 * 86_400),
            epsilon: Epsilon { num: 1, den: 2 },
            privacy_budget_micro: 20 * MICRO_PER_EPSILON,
            budget_window: Duration::from_secs(30 * 86_400),
            max_segments_per_job: 50,
            max_json_body: 16 * 1024 * 1024,
            max_frame_body: 48 * 1024 * 1024,
            max_open_jobs: 4,
            page_size: 8192,
            graph_versions_kept: 3,
            abandoned_job_ttl: Duration::from_secs(86_400),
            job_retention: Duration::from_secs(90 * 86_400),
            cleanup_interval: Duration::from_secs(300),
            workers: 2,
            members_page_limit: 10_000,
            client_request_timeout: Duration::from_secs(10),
            client_disconnect_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(5),
            tls_cert: None,
            tls_key: None,
            log_format: crate::logging::LogFormat::Text,
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            client_body_timeout: Duration::from_secs(30),
            client_body_min_rate: 1024,
            auth_failures_per_minute: 20,
            storage: None,
            database_url: None,
            webhook_allow_private_targets: false,
            webhook_ca: None,
            webhook_retry_base: Duration::from_secs(5),
            webhook_timeout: Duration::from_secs(10),
            console: true,
            console_idle_timeout: Duration::from_secs(30 * 60),
            console_session_lifetime: Duration::from_secs(12 * 3600),
        }
    }
}

/// Every key, for the environment scan and the documentation.
pub const KEYS: &[&str] = &[
    "data_dir",
    "listen",
    "k",
    "min_job_rows",
    "audience_ttl",
    "epsilon",
    "privacy_budget",
    "budget_window",
    "max_segments_per_job",
    "max_json_body",
    "max_frame_body",
    "max_open_jobs",
    "page_size",
    "graph_versions_kept",
    "abandoned_job_ttl",
    "job_retention",
    "cleanup_interval",
    "workers",
    "members_page_limit",
    "client_request_timeout",
    "client_disconnect_timeout",
    "keep_alive",
    "tls_handshake_timeout",
    "tls_cert",
    "tls_key",
    "log_format",
    "metrics_listen",
    "client_body_timeout",
    "client_body_min_rate",
    "auth_failures_per_minute",
    "storage",
    "database_url",
    "webhook_allow_private_targets",
    "webhook_ca",
    "webhook_retry_base",
    "webhook_timeout",
    "console",
    "console_idle_timeout",
    "console_session_lifetime",
];

impl Config {
    /// Load: defaults, then `file` (TOML), then `env` (`ONBOARD_<KEY>` pairs;
    /// pass `std::env::vars()`), then `flags` (key, value) actually given.
    pub fn load<E>(
        file: Option<&Path>,
        env: E,
        flags: &[(&str, String)],
    ) -> Result<Config, ConfigError>
    where
        E: IntoIterator<Item = (String, String)>,
    {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let config = Self::layered(&[file], &env, flags)?;
        // The data dir's own file goes under the others.
        let own = config.data_dir.join(DATA_DIR_CONFIG);
        let config = if own.is_file() && file.is_none_or(|f| f != own) {
            Self::layered(&[Some(&own), file], &env, flags)?
        } else {
            config
        };
        config.validate()?;
        Ok(config)
    }

    /// The configuration of the `onboard-server` command working on
    /// `data_dir` (its own file, then `ONBOARD_*`, then the flags).
    pub fn for_data_dir(
        data_dir: &Path,
        database_url: Option<&str>,
    ) -> Result<Config, ConfigError> {
        let mut flags = vec![("data_dir", data_dir.to_string_lossy().into_owned())];
        if let Some(url) = database_url {
            flags.push(("database_url", url.to_string()));
        }
        Self::load(None, std::env::vars(), &flags)
    }

    /// Defaults, then each file in order, then `env`, then `flags`.
    fn layered(
        files: &[Option<&Path>],
        env: &[(String, String)],
        flags: &[(&str, String)],
    ) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        for path in files.iter().flatten() {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
            config.apply_toml(&text).map_err(|e| match e {
                ConfigError::File { reason, .. } => ConfigError::File {
                    path: path.to_path_buf(),
                    reason,
                },
                other => other,
            })?;
        }
        for (name, value) in env {
            if let Some(rest) = name.strip_prefix("ONBOARD_") {
                let key = rest.to_ascii_lowercase();
                if KEYS.contains(&key.as_str()) {
                    config.set(&key, value)?;
                }
            }
        }
        for (key, value) in flags {
            config.set(key, value)?;
        }
        Ok(config)
    }

    /// The backend to open, from `storage` and `database_url`.
    pub fn storage_config(&self) -> Result<crate::storage::StorageConfig, ConfigError> {
        match (self.storage, &self.database_url) {
            (Some(StorageKind::Sled), _) | (None, None) => Ok(crate::storage::StorageConfig::Sled),
            (Some(StorageKind::Postgres) | None, Some(url)) => {
                Ok(crate::storage::StorageConfig::Postgres(url.clone()))
            }
            (Some(StorageKind::Postgres), None) => Err(ConfigError::Invalid {
                key: "database_url".into(),
                reason: "storage = \"postgres\" needs a database URL".into(),
            }),
        }
    }

    /// Apply a TOML document's keys.
    pub fn apply_toml(&mut self, text: &str) -> Result<(), ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::File {
                path: PathBuf::new(),
                reason: e.message().to_string(),
            })?;
        for (key, value) in table {
            let text = match value {
                toml::Value::String(s) => s,
                other => other.to_string(),
            };
            self.set(&key, &text)?;
        }
        Ok(())
    }

    /// Set one key from its text form.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let value = value.trim();
        match key {
            "data_dir" => self.data_dir = PathBuf::from(value),
            "listen" => self.listen = parse(key, value)?,
            "k" => self.k = parse(key, value)?,
            "min_job_rows" => self.min_job_rows = parse(key, value)?,
            "audience_ttl" => self.audience_ttl = duration(key, value)?,
            "epsilon" => self.epsilon = parse(key, value)?,
            "privacy_budget" => self.privacy_budget_micro = whole_micro(key, value)?,
            "budget_window" => self.budget_window = duration(key, value)?,
            "max_segments_per_job" => self.max_segments_per_job = parse(key, value)?,
            "max_json_body" => self.max_json_body = parse(key, value)?,
            "max_frame_body" => self.max_frame_body = parse(key, value)?,
            "max_open_jobs" => self.max_open_jobs = parse(key, value)?,
            "page_size" => self.page_size = parse(key, value)?,
            "graph_versions_kept" => self.graph_versions_kept = parse(key, value)?,
            "abandoned_job_ttl" => self.abandoned_job_ttl = duration(key, value)?,
            "job_retention" => self.job_retention = duration(key, value)?,
            "cleanup_interval" => self.cleanup_interval = duration(key, value)?,
            "workers" => self.workers = parse(key, value)?,
            "members_page_limit" => self.members_page_limit = parse(key, value)?,
            "client_request_timeout" => self.client_request_timeout = duration(key, value)?,
            "client_disconnect_timeout" => self.client_disconnect_timeout = duration(key, value)?,
            "keep_alive" => self.keep_alive = duration(key, value)?,
            "tls_handshake_timeout" => self.tls_handshake_timeout = duration(key, value)?,
            "tls_cert" => self.tls_cert = Some(PathBuf::from(value)),
            "tls_key" => self.tls_key = Some(PathBuf::from(value)),
            "log_format" => self.log_format = parse(key, value)?,
            "metrics_listen" => {
                self.metrics_listen = match value {
                    "off" => None,
                    _ => Some(parse(key, value)?),
                }
            }
            "client_body_timeout" => self.client_body_timeout = duration(key, value)?,
            "client_body_min_rate" => self.client_body_min_rate = parse(key, value)?,
            "auth_failures_per_minute" => self.auth_failures_per_minute = parse(key, value)?,
            "storage" => self.storage = Some(parse_with(key, value)?),
            "database_url" => {
                self.database_url = Some(value.parse().map_err(
                    |e: crate::storage::postgres::DatabaseUrlError| ConfigError::Invalid {
                        key: key.into(),
                        reason: e.to_string(),
                    },
                )?);
            }
            "webhook_allow_private_targets" => {
                self.webhook_allow_private_targets = parse(key, value)?
            }
            "webhook_ca" => self.webhook_ca = Some(PathBuf::from(value)),
            "webhook_retry_base" => self.webhook_retry_base = duration(key, value)?,
            "webhook_timeout" => self.webhook_timeout = duration(key, value)?,
            "console" => self.console = parse(key, value)?,
            "console_idle_timeout" => self.console_idle_timeout = duration(key, value)?,
            "console_session_lifetime" => self.console_session_lifetime = duration(key, value)?,
            _ => {
                return Err(ConfigError::UnknownKey {
                    key: key.to_string(),
                })
            }
        }
        Ok(())
    }

    /// Refuse values outside their ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: &str| ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        };
        if self.k < K_FLOOR {
            return Err(bad("k", &format!("must be at least {K_FLOOR}")));
        }
        self.validate_privacy()?;
        if self.client_body_min_rate == 0 {
            return Err(bad(
                "client_body_min_rate",
                "must be at least 1 byte per second",
            ));
        }
        if self.auth_failures_per_minute == 0 {
            return Err(bad("auth_failures_per_minute", "must be at least 1"));
        }
        self.storage_config()?;
        if self.page_size == 0 || self.page_size > onboard_protocol::wire::MAX_POINTS_PER_PAGE {
            return Err(bad("page_size", "must be between 1 and 65536"));
        }
        if !(1..=100).contains(&self.graph_versions_kept) {
            return Err(bad("graph_versions_kept", "must be between 1 and 100"));
        }
        if self.max_json_body < 1024 {
            return Err(bad("max_json_body", "must be at least 1024"));
        }
        if self.max_frame_body < 1024 {
            return Err(bad("max_frame_body", "must be at least 1024"));
        }
        if self.max_open_jobs == 0 {
            return Err(bad("max_open_jobs", "must be at least 1"));
        }
        if self.workers == 0 || self.workers > 256 {
            return Err(bad("workers", "must be between 1 and 256"));
        }
        if self.members_page_limit == 0 {
            return Err(bad("members_page_limit", "must be at least 1"));
        }
        for (key, d) in [
            ("audience_ttl", self.audience_ttl),
            ("budget_window", self.budget_window),
            ("abandoned_job_ttl", self.abandoned_job_ttl),
            ("job_retention", self.job_retention),
            ("cleanup_interval", self.cleanup_interval),
            ("client_request_timeout", self.client_request_timeout),
            ("client_disconnect_timeout", self.client_disconnect_timeout),
            ("tls_handshake_timeout", self.tls_handshake_timeout),
            ("client_body_timeout", self.client_body_timeout),
            ("webhook_retry_base", self.webhook_retry_base),
            ("webhook_timeout", self.webhook_timeout),
            ("console_idle_timeout", self.console_idle_timeout),
            ("console_session_lifetime", self.console_session_lifetime),
        ] {
            if d.is_zero() {
                return Err(bad(key, "must be longer than zero"));
            }
        }
        for (key, d) in [
            ("client_request_timeout", self.client_request_timeout),
            ("client_disconnect_timeout", self.client_disconnect_timeout),
            ("keep_alive", self.keep_alive),
            ("tls_handshake_timeout", self.tls_handshake_timeout),
            ("client_body_timeout", self.client_body_timeout),
            ("webhook_retry_base", self.webhook_retry_base),
            ("webhook_timeout", self.webhook_timeout),
        ] {
            if d > Duration::from_secs(3600) {
                return Err(bad(key, "must be at most 1 hour"));
            }
        }
        Ok(())
    }

    /// ε, the budget, its window and the segment cap within their bounds.
    fn validate_privacy(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: String| ConfigError::Invalid {
            key: key.into(),
            reason,
        };
        let eps = self.epsilon;
        if eps < EPSILON_MIN || eps > EPSILON_MAX || eps.den() > EPSILON_MAX_DENOMINATOR {
            return Err(bad(
                "epsilon",
                format!(
                    "must be between {EPSILON_MIN} and {EPSILON_MAX} with a denominator of at \
                     most {EPSILON_MAX_DENOMINATOR} (got {eps})"
                ),
            ));
        }
        let budget = self.privacy_budget_micro;
        if budget < eps.micro_ceil() || budget > PRIVACY_BUDGET_MAX_MICRO {
            return Err(bad(
                "privacy_budget",
                format!(
                    "must be at least epsilon ({eps}) and at most {} (got {})",
                    MicroEpsilon(PRIVACY_BUDGET_MAX_MICRO),
                    MicroEpsilon(budget)
                ),
            ));
        }
        if self.budget_window < BUDGET_WINDOW_MIN || self.budget_window > BUDGET_WINDOW_MAX {
            return Err(bad(
                "budget_window",
                "must be between 1 day and 366 days".into(),
            ));
        }
        let max = onboard_protocol::wire::MAX_SEGMENTS_PER_RECORD;
        if self.max_segments_per_job == 0 || self.max_segments_per_job > max {
            return Err(bad(
                "max_segments_per_job",
                format!("must be between 1 and {max}"),
            ));
        }
        Ok(())
    }

    /// The TLS certificate chain in use.
    pub fn tls_cert_path(&self) -> PathBuf {
        self.tls_cert
            .clone()
            .unwrap_or_else(|| self.data_dir.join("tls").join("cert.pem"))
    }

    /// The TLS key in use.
    pub fn tls_key_path(&self) -> PathBuf {
        self.tls_key
            .clone()
            .unwrap_or_else(|| self.data_dir.join("tls").join("key.pem"))
    }
}

/// A value whose `FromStr` error is already a reason.
fn parse_with<T: FromStr<Err = String>>(key: &str, value: &str) -> Result<T, ConfigError> {
    value.parse().map_err(|reason| ConfigError::Invalid {
        key: key.into(),
        reason,
    })
}

fn parse<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e: T::Err| ConfigError::Invalid {
        key: key.into(),
        reason: e.to_string(),
    })
}

/// An amount of ε given as a decimal or fraction, which must be a whole
/// number of micro-ε; in micro-ε.
fn whole_micro(key: &str, value: &str) -> Result<u64, ConfigError> {
    let amount: Epsilon = parse(key, value)?;
    if !amount.is_whole_micro() {
        return Err(ConfigError::Invalid {
            key: key.into(),
            reason: "must be a whole number of micro-ε (at most 6 decimal places)".into(),
        });
    }
    Ok(amount.micro_ceil())
}

fn duration(key: &str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value).map_err(|e| ConfigError::Invalid {
        key: key.into(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layers_apply_in_order_and_name_bad_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("onboard.toml");
        std::fs::write(&file, "k = 200\nepsilon = 1.0\naudience_ttl = \"7days\"\n").unwrap();
        let env = vec![
            ("ONBOARD_K".to_string(), "300".to_string()),
            ("HOME".into(), "/x".into()),
        ];
        let c = Config::load(Some(&file), env, &[("min_job_rows", "5".into())]).unwrap();
        assert_eq!(c.k, 300);
        assert_eq!(c.epsilon, Epsilon::new(1, 1).unwrap());
        assert_eq!(c.min_job_rows, 5);
        assert_eq!(c.audience_ttl, Duration::from_secs(7 * 86_400));
        let err = Config::load(None, vec![], &[("k", "49".into())]).unwrap_err();
        assert!(err.to_string().contains("`k`"), "{err}");
        let err =
            Config::load(None, vec![("ONBOARD_EPSILON".into(), "abc".into())], &[]).unwrap_err();
        assert!(err.to_string().contains("`epsilon`"), "{err}");
        std::fs::write(&file, "nonsense_key = 1\n").unwrap();
        let err = Config::load(Some(&file), vec![], &[]).unwrap_err();
        assert!(err.to_string().contains("nonsense_key"), "{err}");
    }

    #[test]
    fn example_file_documents_every_key_with_its_defaults() {
        let text = include_str!("../onboard.example.toml");
        let mut c = Config::default();
        c.apply_toml(text).unwrap();
        c.validate().unwrap();
        let d = Config::default();
        assert_eq!(
            (c.k, c.min_job_rows, c.audience_ttl, c.page_size),
            (d.k, d.min_job_rows, d.audience_ttl, d.page_size)
        );
        assert_eq!(
            (c.epsilon, c.privacy_budget_micro, c.max_frame_body),
            (d.epsilon, d.privacy_budget_micro, d.max_frame_body)
        );
        assert_eq!(
            (c.budget_window, c.max_segments_per_job),
            (d.budget_window, d.max_segments_per_job)
        );
        assert_eq!(
            (c.log_format, c.metrics_listen, c.client_body_timeout),
            (d.log_format, d.metrics_listen, d.client_body_timeout)
        );
        assert_eq!(
            (c.client_body_min_rate, c.auth_failures_per_minute),
            (d.client_body_min_rate, d.auth_failures_per_minute)
        );
        assert_eq!(
            (
                c.console,
                c.console_idle_timeout,
                c.console_session_lifetime
            ),
            (
                d.console,
                d.console_idle_timeout,
                d.console_session_lifetime
            )
        );
        assert_eq!(d.epsilon, Epsilon::new(1, 2).unwrap());
        assert_eq!(d.privacy_budget_micro, 20_000_000);
        for key in KEYS {
            let env = format!("ONBOARD_{}", key.to_ascii_uppercase());
            assert!(text.contains(&env), "{env} not documented");
        }
    }

    #[test]
    fn hardening_keys_parse_and_refuse_naming_the_key() {
        let c = Config::load(
            None,
            vec![
                ("ONBOARD_LOG_FORMAT".into(), "json".into()),
                ("ONBOARD_METRICS_LISTEN".into(), "off".into()),
                ("ONBOARD_CLIENT_BODY_TIMEOUT".into(), "2s".into()),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(c.log_format, crate::logging::LogFormat::Json);
        assert_eq!(c.metrics_listen, None);
        assert_eq!(c.client_body_timeout, Duration::from_secs(2));
        let c = load_one("metrics_listen", "127.0.0.1:0").unwrap();
        assert_eq!(
            c.metrics_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 0)))
        );
        for (key, value) in [
            ("log_format", "xml"),
            ("metrics_listen", "localhost"),
            ("client_body_timeout", "0s"),
            ("client_body_timeout", "2h"),
            ("client_body_min_rate", "0"),
            ("client_body_min_rate", "-1"),
            ("auth_failures_per_minute", "0"),
        ] {
            let err = load_one(key, value).unwrap_err();
            assert!(err.contains(&format!("`{key}`")), "{key}={value}: {err}");
        }
    }

    #[test]
    fn storage_follows_the_database_url_unless_set_and_hides_the_password() {
        use crate::storage::StorageConfig;
        let url = "postgres://onboard:hunter2@127.0.0.1:5432/onboard";
        let c = Config::load(None, vec![], &[]).unwrap();
        assert_eq!(c.storage_config().unwrap(), StorageConfig::Sled);
        let env = vec![("ONBOARD_DATABASE_URL".to_string(), url.to_string())];
        let c = Config::load(None, env.clone(), &[]).unwrap();
        assert!(matches!(
            c.storage_config().unwrap(),
            StorageConfig::Postgres(_)
        ));
        assert!(!format!("{c:?}").contains("hunter2"));
        let c = Config::load(None, env, &[("storage", "sled".into())]).unwrap();
        assert_eq!(c.storage_config().unwrap(), StorageConfig::Sled);
        let err = Config::load(None, vec![], &[("storage", "postgres".into())]).unwrap_err();
        assert!(err.to_string().contains("`database_url`"), "{err}");
        let err = Config::load(None, vec![], &[("storage", "mysql".into())]).unwrap_err();
        assert!(err.to_string().contains("`storage`"), "{err}");
        let err = Config::load(
            None,
            vec![],
            &[("database_url", "http://x:hunter2@h/db".into())],
        )
        .unwrap_err();
        assert!(err.to_string().contains("`database_url`"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn a_data_dirs_own_file_is_layered_under_the_others() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(DATA_DIR_CONFIG),
            "storage = \"postgres\"\ndatabase_url = \"postgres://u:p@127.0.0.1/db\"\nk = 150\n",
        )
        .unwrap();
        let file = dir.path().join("other.toml");
        std::fs::write(&file, "k = 200\n").unwrap();
        let flags = [("data_dir", dir.path().to_string_lossy().into_owned())];
        let c = Config::load(None, vec![], &flags).unwrap();
        assert_eq!(c.k, 150);
        assert!(matches!(
            c.storage_config().unwrap(),
            crate::storage::StorageConfig::Postgres(_)
        ));
        let c = Config::load(Some(&file), vec![], &flags).unwrap();
        assert_eq!(c.k, 200, "an explicit --config file goes above");
        assert!(c.database_url.is_some());
    }

    /// Load with one flag; the error's text when refused.
    fn load_one(key: &str, value: &str) -> Result<Config, String> {
        Config::load(None, vec![], &[(key, value.into())]).map_err(|e| e.to_string())
    }

    #[test]
    fn epsilon_within_its_bounds_is_accepted_exactly() {
        for (text, num, den) in [
            ("0.001", 1, 1000),
            ("1/1000", 1, 1000),
            ("0.5", 1, 2),
            ("1/2", 1, 2),
            (" 2/4 ", 1, 2),
            ("0.05", 1, 20),
            (".25", 1, 4),
            ("1/3", 1, 3),
            ("2", 2, 1),
            ("2.000000", 2, 1),
            ("1999999/1000000", 1_999_999, 1_000_000),
        ] {
            let c = load_one("epsilon", text).unwrap();
            assert_eq!((c.epsilon.num(), c.epsilon.den()), (num, den), "{text}");
        }
    }

    #[test]
    fn epsilon_outside_its_bounds_or_malformed_is_refused_naming_the_key() {
        for text in [
            "0",
            "0.000999",
            "1/1001",
            "2.000001",
            "3",
            "1e-3",
            "-0.5",
            "+0.5",
            "0.5.1",
            "1/0",
            "/2",
            "1/",
            ".",
            "",
            "abc",
            "0,5",
            "1_000",
            "999999/1000001",
            "99999999999999999999",
        ] {
            let err = load_one("epsilon", text).unwrap_err();
            assert!(err.contains("`epsilon`"), "{text}: {err}");
        }
    }

    #[test]
    fn epsilon_from_toml_floats_and_strings_is_exact() {
        let mut c = Config::default();
        c.apply_toml("epsilon = 0.05\n").unwrap();
        assert_eq!(c.epsilon, Epsilon::new(1, 20).unwrap());
        c.apply_toml("epsilon = \"1/3\"\n").unwrap();
        assert_eq!(c.epsilon, Epsilon::new(1, 3).unwrap());
        c.apply_toml("epsilon = 1\n").unwrap();
        assert_eq!(c.epsilon, Epsilon::new(1, 1).unwrap());
    }

    #[test]
    fn budget_window_and_segment_cap_bounds() {
        let budget = |v: &str| load_one("privacy_budget", v).map(|c| c.privacy_budget_micro);
        assert_eq!(budget("20"), Ok(20_000_000));
        assert_eq!(budget("0.5"), Ok(500_000));
        assert_eq!(budget("1/2"), Ok(500_000));
        assert_eq!(budget("1000"), Ok(1_000_000_000));
        for refused in [
            "0",
            "0.499999",
            "1000.000001",
            "0.0000001",
            "1/3",
            "-1",
            "x",
        ] {
            let err = budget(refused).unwrap_err();
            assert!(err.contains("`privacy_budget`"), "{refused}: {err}");
        }
        // The budget must pay for at least one value at the configured ε.
        let err = Config::load(
            None,
            vec![],
            &[("epsilon", "2".into()), ("privacy_budget", "1.5".into())],
        )
        .unwrap_err();
        assert!(err.to_string().contains("`privacy_budget`"), "{err}");
        for ok in ["1day", "30days", "366days"] {
            assert!(load_one("budget_window", ok).is_ok(), "{ok}");
        }
        for refused in ["0s", "23h 59m", "367days"] {
            let err = load_one("budget_window", refused).unwrap_err();
            assert!(err.contains("`budget_window`"), "{refused}: {err}");
        }
        for ok in [1, 50, 64] {
            let c = load_one("max_segments_per_job", &ok.to_string()).unwrap();
            assert_eq!(c.max_segments_per_job, ok);
        }
        for refused in ["0", "65", "-1"] {
            let err = load_one("max_segments_per_job", refused).unwrap_err();
            assert!(err.contains("`max_segments_per_job`"), "{refused}: {err}");
        }
    }

    #[test]
    fn amounts_display_as_decimals_or_fractions() {
        assert_eq!(MicroEpsilon(25_500_000).to_string(), "25.5");
        assert_eq!(MicroEpsilon(1_000).to_string(), "0.001");
        assert_eq!(MicroEpsilon(20_000_000).to_string(), "20");
        assert_eq!(MicroEpsilon(0).to_string(), "0");
        assert_eq!(Epsilon::new(1, 2).unwrap().to_string(), "0.5");
        assert_eq!(Epsilon::new(2, 6).unwrap().to_string(), "1/3");
        assert_eq!(Epsilon::new(1, 3).unwrap().micro_ceil(), 333_334);
        assert_eq!(Epsilon::new(1, 2).unwrap().micro_ceil(), 500_000);
        assert_eq!(
            Epsilon::from_micro(25_500_000),
            Epsilon::new(51, 2).unwrap()
        );
    }

    fn gcd_u128(mut a: u128, mut b: u128) -> u128 {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    }

    proptest! {
        #[test]
        fn decimals_convert_to_the_exact_reduced_fraction(
            int in 0u64..5,
            frac in "[0-9]{0,12}",
        ) {
            let text = format!("{int}.{frac}");
            let scale = 10u128.pow(frac.len() as u32);
            let value = u128::from(int) * scale + frac.parse::<u128>().unwrap_or(0);
            let e: Epsilon = text.parse().unwrap();
            // Same value (cross-multiplied), in lowest terms.
            prop_assert_eq!(u128::from(e.num()) * scale, value * u128::from(e.den()));
            prop_assert_eq!(gcd_u128(e.num().into(), e.den().into()), 1);
            // Accepted exactly when within the documented bounds.
            let in_range = value * 1000 >= scale
                && value <= 2 * scale
                && scale / gcd_u128(value, scale).max(1) <= 1_000_000;
            prop_assert_eq!(load_one("epsilon", &text).is_ok(), in_range, "{}", text);
            // Its display reads back as the same amount.
            prop_assert_eq!(e.to_string().parse::<Epsilon>().unwrap(), e);
        }

        #[test]
        fn fractions_convert_to_the_reduced_fraction(a in any::<u64>(), b in 1u64..) {
            let e: Epsilon = format!("{a}/{b}").parse().unwrap();
            prop_assert_eq!(u128::from(e.num()) * u128::from(b), u128::from(a) * u128::from(e.den()));
            prop_assert_eq!(gcd_u128(e.num().into(), e.den().into()), 1);
            prop_assert_eq!(e.to_string().parse::<Epsilon>().unwrap(), e);
        }

        #[test]
        fn set_never_panics(key in "[a-z_]{0,20}", value in "\\PC{0,30}") {
            let mut c = Config::default();
            let _ = c.set(&key, &value);
            let _ = c.validate();
        }

        #[test]
        fn k_at_or_above_floor_accepted(k in 50u64..100_000) {
            let c = Config::load(None, vec![], &[("k", k.to_string())]).unwrap();
            prop_assert_eq!(c.k, k);
        }

        #[test]
        fn k_below_floor_refused(k in 0u64..50) {
            prop_assert!(Config::load(None, vec![], &[("k", k.to_string())]).is_err());
        }
    }
}
