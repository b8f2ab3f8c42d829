//! Settings, layered: defaults → TOML file → `ONBOARD_…` environment → flags
//! actually passed. Every key is a flat snake_case name; its environment
//! variable is `ONBOARD_` + the upper-cased key (e.g. `k` → `ONBOARD_K`).
//! Invalid values are refused at start with an error naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// The smallest `k` the server accepts; lower values are refused at start.
pub const K_FLOOR: u64 = 50;

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
    /// ε spent by one noisy report.
    pub epsilon: f64,
    /// Total ε an advertiser may spend per budget window.
    pub privacy_budget: f64,
    /// The privacy budget window (30 days).
    pub budget_window: Duration,
    /// Largest JSON body accepted.
    pub max_json_body: usize,
    /// Largest binary frame accepted.
    pub max_frame_body: usize,
    /// Most open jobs per advertiser.
    pub max_open_jobs: usize,
    /// Points per graph-pass page.
    pub page_size: usize,
    /// Open jobs untouched for longer than this are failed and deleted.
    pub abandoned_job_ttl: Duration,
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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("onboard-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            k: 100,
            min_job_rows: 1000,
            audience_ttl: Duration::from_secs(30 * 86_400),
            epsilon: 0.5,
            privacy_budget: 10.0,
            budget_window: Duration::from_secs(30 * 86_400),
            max_json_body: 16 * 1024 * 1024,
            max_frame_body: 48 * 1024 * 1024,
            max_open_jobs: 4,
            page_size: 8192,
            abandoned_job_ttl: Duration::from_secs(86_400),
            cleanup_interval: Duration::from_secs(300),
            workers: 2,
            members_page_limit: 10_000,
            client_request_timeout: Duration::from_secs(10),
            client_disconnect_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(5),
            tls_cert: None,
            tls_key: None,
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
    "max_json_body",
    "max_frame_body",
    "max_open_jobs",
    "page_size",
    "abandoned_job_ttl",
    "cleanup_interval",
    "workers",
    "members_page_limit",
    "client_request_timeout",
    "client_disconnect_timeout",
    "keep_alive",
    "tls_handshake_timeout",
    "tls_cert",
    "tls_key",
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
        let mut config = Config::default();
        if let Some(path) = file {
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
                    config.set(&key, &value)?;
                }
            }
        }
        for (key, value) in flags {
            config.set(key, value)?;
        }
        config.validate()?;
        Ok(config)
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
            "privacy_budget" => self.privacy_budget = parse(key, value)?,
            "budget_window" => self.budget_window = duration(key, value)?,
            "max_json_body" => self.max_json_body = parse(key, value)?,
            "max_frame_body" => self.max_frame_body = parse(key, value)?,
            "max_open_jobs" => self.max_open_jobs = parse(key, value)?,
            "page_size" => self.page_size = parse(key, value)?,
            "abandoned_job_ttl" => self.abandoned_job_ttl = duration(key, value)?,
            "cleanup_interval" => self.cleanup_interval = duration(key, value)?,
            "workers" => self.workers = parse(key, value)?,
            "members_page_limit" => self.members_page_limit = parse(key, value)?,
            "client_request_timeout" => self.client_request_timeout = duration(key, value)?,
            "client_disconnect_timeout" => self.client_disconnect_timeout = duration(key, value)?,
            "keep_alive" => self.keep_alive = duration(key, value)?,
            "tls_handshake_timeout" => self.tls_handshake_timeout = duration(key, value)?,
            "tls_cert" => self.tls_cert = Some(PathBuf::from(value)),
            "tls_key" => self.tls_key = Some(PathBuf::from(value)),
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
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return Err(bad("epsilon", "must be a positive number"));
        }
        if !(self.privacy_budget.is_finite() && self.privacy_budget > 0.0) {
            return Err(bad("privacy_budget", "must be a positive number"));
        }
        if self.page_size == 0 || self.page_size > onboard_protocol::wire::MAX_POINTS_PER_PAGE {
            return Err(bad("page_size", "must be between 1 and 65536"));
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
            ("cleanup_interval", self.cleanup_interval),
            ("client_request_timeout", self.client_request_timeout),
            ("client_disconnect_timeout", self.client_disconnect_timeout),
            ("tls_handshake_timeout", self.tls_handshake_timeout),
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
        ] {
            if d > Duration::from_secs(3600) {
                return Err(bad(key, "must be at most 1 hour"));
            }
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

fn parse<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e: T::Err| ConfigError::Invalid {
        key: key.into(),
        reason: e.to_string(),
    })
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
        assert_eq!(c.epsilon, 1.0);
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
            (c.epsilon, c.privacy_budget, c.max_frame_body),
            (d.epsilon, d.privacy_budget, d.max_frame_body)
        );
        for key in KEYS {
            let env = format!("ONBOARD_{}", key.to_ascii_uppercase());
            assert!(text.contains(&env), "{env} not documented");
        }
    }

    proptest! {
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
