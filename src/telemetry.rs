//! Logging with `tracing`: human-readable or JSON lines, filtered by
//! `LOG_LEVEL`. Nothing logged anywhere includes a password: URLs are only
//! ever logged rebuilt from their parsed parts (`config::describe_database_url`,
//! `config::describe_redis_url`), and secrets are `Secret`s.

use std::io::IsTerminal;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// Installs the global subscriber. Logs go to stderr; stdout is left to
/// command output (`check-config`, `dead-letters list`, backfill progress).
pub fn init(format: LogFormat, level: &str) {
    let filter: Targets = level
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .with_current_span(false),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .try_init(),
    };
    // Already installed (tests call init more than once): keep the first.
    let _ = result;
}
