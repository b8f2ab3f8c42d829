//! Log output: plain text or one JSON object per line, on stderr, with
//! colour escape codes only when stderr is a terminal (a log file or a
//! journal gets none). The filter comes from `ONBOARD_LOG` (default `info`).

use std::fmt;
use std::io::IsTerminal as _;
use std::str::FromStr;

/// How log lines are written (`log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`).
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("must be \"text\" or \"json\"".into()),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// The format named by `ONBOARD_LOG_FORMAT`, for commands that load no
/// configuration (an invalid value falls back to text: `serve` refuses it).
pub fn format_from_env() -> LogFormat {
    std::env::var("ONBOARD_LOG_FORMAT")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_default()
}

/// Install the global subscriber; a second call does nothing.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ONBOARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
