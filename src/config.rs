//! Settings from the environment, validated all at once.
//!
//! `envy` reads every variable as an optional string; validation then parses
//! and bounds each one, collecting *every* problem so that an operator fixes
//! a broken deployment in one round instead of one variable per restart.
//! Secrets (passwords inside URLs, the admin token) are wrapped in [`Secret`];
//! URLs are only ever shown rebuilt from their parsed parts, without the
//! password ([`describe_database_url`], [`describe_redis_url`]).

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use sqlx::postgres::PgConnectOptions;

/// The streams rindexer writes for the MultiVault contract on testnet.
pub const DEFAULT_STREAMS: &str = "intuition_testnet_atom_created,intuition_testnet_triple_created,intuition_testnet_deposited,intuition_testnet_redeemed,intuition_testnet_share_price_changed";

/// A value that must never be printed. `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The database URL as an operator may see it: rebuilt from its parsed
/// parts (user, host, port, database), so no password can come along —
/// whatever characters it contains.
pub fn describe_database_url(url: &str) -> String {
    match PgConnectOptions::from_str(url) {
        Ok(o) => format!(
            "postgres://{}{}@{}:{}/{}",
            o.get_username(),
            if has_password(url) { ":***" } else { "" },
            o.get_host(),
            o.get_port(),
            o.get_database().unwrap_or("")
        ),
        Err(_) => "(invalid)".to_owned(),
    }
}

/// The Redis URL as an operator may see it, rebuilt from its parsed parts.
pub fn describe_redis_url(url: &str) -> String {
    match redis::IntoConnectionInfo::into_connection_info(url) {
        Ok(info) => {
            let settings = info.redis_settings();
            let user = settings.username().unwrap_or("");
            let secret = if settings.password().is_some() {
                ":***@"
            } else if user.is_empty() {
                ""
            } else {
                "@"
            };
            format!("redis://{user}{secret}{}/{}", info.addr(), settings.db())
        }
        Err(_) => "(invalid)".to_owned(),
    }
}

/// Whether a URL's user info carries a password (only used to show `:***`).
fn has_password(url: &str) -> bool {
    url.split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
        || url.contains("password=")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: Secret,
    pub schema: String,
    pub pool_size: u32,
    pub acquire_timeout: Duration,
    /// Zero disables the server-side statement timeout.
    pub statement_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: Secret,
    pub streams: Vec<String>,
    pub group: String,
    pub consumer: String,
    pub batch_size: usize,
    /// How long one `XREADGROUP` blocks; short, so shutdown is prompt.
    pub block: Duration,
    /// Pending entries idle this long belong to a dead consumer and are reclaimed.
    pub claim_idle: Duration,
    pub claim_interval: Duration,
    pub max_deliveries: u32,
}

#[derive(Debug, Clone)]
pub struct RetryConfig {
    /// Consecutive failed attempts (of any batch) before the circuit opens
    /// and a failing batch is retried in smaller transactions.
    pub max_retries: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

#[derive(Debug, Clone)]
pub struct AnalyticsConfig {
    pub batch_size: usize,
    pub channel_capacity: usize,
    /// Terms recomputed per second, at most.
    pub max_terms_per_second: u32,
    pub min_batch_interval: Duration,
    /// How often the worker looks for dirty terms that no message announced.
    pub sweep_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// Stream lag (entries not yet delivered) above which /health is degraded.
    pub max_stream_lag: u64,
    /// Dirty terms above which /health is degraded.
    pub max_analytics_backlog: u64,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub workers: usize,
    pub http_addr: SocketAddr,
    pub admin_token: Option<Secret>,
    pub retry: RetryConfig,
    pub analytics: AnalyticsConfig,
    pub health: HealthConfig,
    pub shutdown_timeout: Duration,
    /// How often a progress line is logged while anything happens.
    pub progress_interval: Duration,
    pub log_format: LogFormat,
    pub log_level: String,
}

/// Every variable the writer reads, as the environment gives it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Raw {
    database_url: Option<String>,
    database_schema: Option<String>,
    database_pool_size: Option<String>,
    database_acquire_timeout_ms: Option<String>,
    database_statement_timeout_ms: Option<String>,
    redis_url: Option<String>,
    redis_streams: Option<String>,
    consumer_group: Option<String>,
    consumer_name: Option<String>,
    batch_size: Option<String>,
    batch_timeout_ms: Option<String>,
    workers: Option<String>,
    http_host: Option<String>,
    http_port: Option<String>,
    admin_token: Option<String>,
    max_retries: Option<String>,
    retry_base_delay_ms: Option<String>,
    retry_max_delay_ms: Option<String>,
    max_deliveries: Option<String>,
    claim_idle_ms: Option<String>,
    claim_interval_ms: Option<String>,
    analytics_batch_size: Option<String>,
    analytics_channel_capacity: Option<String>,
    max_messages_per_second: Option<String>,
    min_batch_interval_ms: Option<String>,
    analytics_sweep_interval_ms: Option<String>,
    health_max_stream_lag: Option<String>,
    health_max_analytics_backlog: Option<String>,
    shutdown_timeout_ms: Option<String>,
    progress_log_interval_ms: Option<String>,
    log_format: Option<String>,
    log_level: Option<String>,
}

/// Documentation of every setting: name, default, meaning. The README's
/// configuration table is checked against this list by a test.
pub const SETTINGS: &[(&str, &str, &str)] = &[
    (
        "DATABASE_URL",
        "(required)",
        "PostgreSQL URL, `postgres://user:password@host:port/db`",
    ),
    (
        "DATABASE_SCHEMA",
        "public",
        "schema holding every table; one database can hold several networks",
    ),
    (
        "DATABASE_POOL_SIZE",
        "10",
        "Postgres connections (2–256); at least WORKERS + 2",
    ),
    (
        "DATABASE_ACQUIRE_TIMEOUT_MS",
        "5000",
        "wait for a pooled connection before the attempt counts as failed",
    ),
    (
        "DATABASE_STATEMENT_TIMEOUT_MS",
        "30000",
        "server-side statement timeout; 0 disables it",
    ),
    (
        "REDIS_URL",
        "(required)",
        "Redis URL, `redis://[:password@]host:port[/db]`",
    ),
    (
        "REDIS_STREAMS",
        DEFAULT_STREAMS,
        "comma-separated streams to consume",
    ),
    (
        "CONSUMER_GROUP",
        "writer",
        "Redis consumer group shared by all writer processes",
    ),
    (
        "CONSUMER_NAME",
        "(host name)",
        "this process's consumer name; unique per process, stable across restarts",
    ),
    (
        "BATCH_SIZE",
        "500",
        "entries read per XREADGROUP and applied per transaction (1–10000)",
    ),
    (
        "BATCH_TIMEOUT_MS",
        "100",
        "XREADGROUP BLOCK time: how long a read waits for entries (1–10000)",
    ),
    ("WORKERS", "2", "concurrent apply tasks (1–64)"),
    ("HTTP_HOST", "0.0.0.0", "address the HTTP server binds"),
    (
        "HTTP_PORT",
        "8080",
        "HTTP port for /health and /metrics; 0 picks a free port",
    ),
    (
        "ADMIN_TOKEN",
        "(unset)",
        "bearer token for admin endpoints (16+ characters); unset disables them",
    ),
    (
        "MAX_RETRIES",
        "5",
        "consecutive failed attempts (any batch) before the circuit breaker opens and a failing batch is retried in smaller transactions (0–100)",
    ),
    (
        "RETRY_BASE_DELAY_MS",
        "100",
        "first backoff delay; doubles per attempt, with full jitter",
    ),
    ("RETRY_MAX_DELAY_MS", "10000", "backoff ceiling"),
    (
        "MAX_DELIVERIES",
        "5",
        "deliveries of one entry before it is dead-lettered (1–1000)",
    ),
    (
        "CLAIM_IDLE_MS",
        "60000",
        "idle time after which another consumer's pending entry is reclaimed",
    ),
    (
        "CLAIM_INTERVAL_MS",
        "5000",
        "how often pending entries of dead consumers are looked for",
    ),
    (
        "ANALYTICS_BATCH_SIZE",
        "2000",
        "triples recomputed per analytics transaction, at most (1–100000); larger batches recompute hot pairs less often",
    ),
    (
        "ANALYTICS_CHANNEL_CAPACITY",
        "1024",
        "committed batches queued for the analytics worker before messages are dropped (dirty marks keep them)",
    ),
    (
        "MAX_MESSAGES_PER_SECOND",
        "100000",
        "triples the analytics worker recomputes per second, at most (the older writer's analytics message rate)",
    ),
    (
        "MIN_BATCH_INTERVAL_MS",
        "250",
        "minimum time between analytics batches (0–60000): how often hot pairs are recomputed under load, and so how stale analytics may get",
    ),
    (
        "ANALYTICS_SWEEP_INTERVAL_MS",
        "1000",
        "how often the analytics worker scans for dirty terms",
    ),
    (
        "HEALTH_MAX_STREAM_LAG",
        "10000",
        "undelivered entries above which /health reports degraded",
    ),
    (
        "HEALTH_MAX_ANALYTICS_BACKLOG",
        "10000",
        "dirty terms above which /health reports degraded",
    ),
    (
        "SHUTDOWN_TIMEOUT_MS",
        "30000",
        "how long a graceful shutdown may take before the process exits",
    ),
    (
        "PROGRESS_LOG_INTERVAL_MS",
        "10000",
        "how often an info line reports progress (events applied and rate, entries acknowledged, lag, analytics backlog, dead letters) while anything happens; nothing is logged while idle (100–3600000)",
    ),
    ("LOG_FORMAT", "text", "`text` or `json`"),
    (
        "LOG_LEVEL",
        "info",
        "tracing filter, e.g. `info` or `info,writer=debug`",
    ),
];

/// The documented default of a numeric setting: [`SETTINGS`] is the one
/// place defaults are written down, so the README table cannot drift from
/// what the code does.
fn default_of<T: FromStr>(var: &str) -> T {
    SETTINGS
        .iter()
        .find(|(name, _, _)| *name == var)
        .and_then(|(_, default, _)| default.parse().ok())
        .unwrap_or_else(|| panic!("{var} needs a numeric default in SETTINGS"))
}

/// All configuration problems, one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problems):", self.0.len())?;
        for problem in &self.0 {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects problems while settings are parsed.
struct Check {
    problems: Vec<String>,
}

impl Check {
    fn fail(&mut self, var: &str, problem: impl fmt::Display) {
        self.problems.push(format!("{var}: {problem}"));
    }

    /// A whole number in `min..=max`; its documented default (in
    /// [`SETTINGS`]) when unset or empty.
    fn number<T>(&mut self, var: &str, value: &Option<String>, min: T, max: T) -> T
    where
        T: FromStr + PartialOrd + fmt::Display + Copy,
    {
        let default = default_of::<T>(var);
        let Some(text) = value.as_deref().map(str::trim).filter(|s| !s.is_empty()) else {
            return default;
        };
        match text.parse::<T>() {
            Ok(v) if v >= min && v <= max => v,
            Ok(_) => {
                self.fail(var, format!("{text} is out of range {min}..={max}"));
                default
            }
            Err(_) => {
                self.fail(var, format!("`{text}` is not a whole number"));
                default
            }
        }
    }

    fn millis(&mut self, var: &str, value: &Option<String>, min: u64, max: u64) -> Duration {
        Duration::from_millis(self.number(var, value, min, max))
    }

    fn name(&mut self, var: &str, value: &Option<String>, default: &str) -> String {
        let v = value.as_deref().map(str::trim).unwrap_or("");
        if v.is_empty() {
            return default.to_owned();
        }
        if v.len() > 200 || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.fail(
                var,
                "must be 1–200 characters without spaces or control characters",
            );
        }
        v.to_owned()
    }
}

fn default_consumer_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "writer".to_owned())
}

/// Whether `schema` is a plain lowercase SQL identifier, safe to quote into DDL.
pub fn is_valid_schema(schema: &str) -> bool {
    let mut chars = schema.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && schema.len() <= 63
        && !schema.starts_with("pg_")
}

impl Config {
    /// Reads and validates the process environment.
    pub fn from_env() -> Result<Config, ConfigErrors> {
        Config::from_vars(std::env::vars_os().map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.into_string().map_err(|_| ()),
            )
        }))
    }

    /// Validates settings given as `(name, value)` pairs; a value that is not
    /// UTF-8 is `Err(())`.
    pub fn from_vars<I>(vars: I) -> Result<Config, ConfigErrors>
    where
        I: IntoIterator<Item = (String, Result<String, ()>)>,
    {
        let known: HashSet<&str> = SETTINGS.iter().map(|(n, _, _)| *n).collect();
        let mut check = Check {
            problems: Vec::new(),
        };
        let mut utf8 = Vec::new();
        for (name, value) in vars {
            match value {
                Ok(v) => utf8.push((name, v)),
                Err(()) if known.contains(name.as_str()) => check.fail(&name, "is not valid UTF-8"),
                Err(()) => {}
            }
        }
        let raw: Raw =
            envy::from_iter(utf8.into_iter().filter(|(k, _)| known.contains(k.as_str())))
                .map_err(|e| ConfigErrors(vec![e.to_string()]))?;
        Config::validate(raw, check)
    }

    fn validate(raw: Raw, mut check: Check) -> Result<Config, ConfigErrors> {
        let c = &mut check;

        let database_url = match raw.database_url.as_deref().map(str::trim) {
            None | Some("") => {
                c.fail(
                    "DATABASE_URL",
                    "is required (postgres://user:password@host:port/db)",
                );
                String::new()
            }
            Some(url) => {
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
                    || PgConnectOptions::from_str(url).is_err()
                {
                    c.fail(
                        "DATABASE_URL",
                        "is not a valid postgres:// URL (the value is not shown: a malformed URL cannot be redacted reliably)",
                    );
                }
                url.to_owned()
            }
        };
        let schema = raw
            .database_schema
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .unwrap_or("public")
            .to_owned();
        if !is_valid_schema(&schema) {
            c.fail("DATABASE_SCHEMA", format!("`{schema}` must be a lowercase identifier ([a-z_][a-z0-9_]*, at most 63 characters, not starting with pg_)"));
        }
        let pool_size = c.number("DATABASE_POOL_SIZE", &raw.database_pool_size, 2, 256);
        let acquire_timeout = c.millis(
            "DATABASE_ACQUIRE_TIMEOUT_MS",
            &raw.database_acquire_timeout_ms,
            100,
            120_000,
        );
        let statement_timeout = c.millis(
            "DATABASE_STATEMENT_TIMEOUT_MS",
            &raw.database_statement_timeout_ms,
            0,
            3_600_000,
        );

        let redis_url = match raw.redis_url.as_deref().map(str::trim) {
            None | Some("") => {
                c.fail(
                    "REDIS_URL",
                    "is required (redis://[:password@]host:port[/db])",
                );
                String::new()
            }
            Some(url) => {
                if url.starts_with("rediss://") {
                    c.fail(
                        "REDIS_URL",
                        "TLS (rediss://) is not supported by this build; use redis://",
                    );
                } else if !url.starts_with("redis://") || redis::Client::open(url).is_err() {
                    c.fail(
                        "REDIS_URL",
                        "is not a valid redis:// URL (the value is not shown: a malformed URL cannot be redacted reliably)",
                    );
                }
                url.to_owned()
            }
        };
        let streams_text = raw
            .redis_streams
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .unwrap_or(DEFAULT_STREAMS);
        let streams: Vec<String> = streams_text
            .split(',')
            .map(|s| s.trim().to_owned())
            .collect();
        if streams
            .iter()
            .any(|s| s.is_empty() || s.chars().any(char::is_whitespace))
        {
            c.fail(
                "REDIS_STREAMS",
                "stream names must be non-empty and contain no spaces",
            );
        }
        let unique: HashSet<&String> = streams.iter().collect();
        if unique.len() != streams.len() {
            c.fail("REDIS_STREAMS", "lists a stream twice");
        }
        let group = c.name("CONSUMER_GROUP", &raw.consumer_group, "writer");
        let consumer = c.name(
            "CONSUMER_NAME",
            &raw.consumer_name,
            &default_consumer_name(),
        );
        let batch_size = c.number("BATCH_SIZE", &raw.batch_size, 1, 10_000);
        let block = c.millis("BATCH_TIMEOUT_MS", &raw.batch_timeout_ms, 1, 10_000);
        let workers = c.number("WORKERS", &raw.workers, 1, 64);
        let pool_size_set = raw
            .database_pool_size
            .as_deref()
            .is_some_and(|s| !s.trim().is_empty());
        if pool_size_set && (pool_size as usize) < workers + 2 {
            c.fail("DATABASE_POOL_SIZE", format!("{pool_size} is below WORKERS + 2 = {} (one connection per worker, plus analytics and health)", workers + 2));
        }
        let pool_size = pool_size.max(workers as u32 + 2);

        let host = raw
            .http_host
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .unwrap_or("0.0.0.0");
        let ip = match host.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => {
                c.fail("HTTP_HOST", format!("`{host}` is not an IP address"));
                IpAddr::from([0, 0, 0, 0])
            }
        };
        let port = c.number("HTTP_PORT", &raw.http_port, 0, 65535);
        let admin_token = match raw.admin_token.as_deref() {
            None | Some("") => None,
            Some(t)
                if t.len() < 16 || t.chars().any(|ch| ch.is_whitespace() || ch.is_control()) =>
            {
                c.fail(
                    "ADMIN_TOKEN",
                    "must be at least 16 characters without spaces (value not shown)",
                );
                None
            }
            Some(t) => Some(Secret::new(t)),
        };

        let max_retries = c.number("MAX_RETRIES", &raw.max_retries, 0, 100);
        let base_delay = c.millis("RETRY_BASE_DELAY_MS", &raw.retry_base_delay_ms, 1, 60_000);
        let max_delay = c.millis("RETRY_MAX_DELAY_MS", &raw.retry_max_delay_ms, 1, 600_000);
        if max_delay < base_delay {
            c.fail(
                "RETRY_MAX_DELAY_MS",
                format!(
                    "{} is below RETRY_BASE_DELAY_MS ({})",
                    max_delay.as_millis(),
                    base_delay.as_millis()
                ),
            );
        }
        let max_deliveries = c.number("MAX_DELIVERIES", &raw.max_deliveries, 1, 1000);
        let claim_idle = c.millis("CLAIM_IDLE_MS", &raw.claim_idle_ms, 100, 86_400_000);
        let claim_interval = c.millis("CLAIM_INTERVAL_MS", &raw.claim_interval_ms, 100, 3_600_000);

        let analytics = AnalyticsConfig {
            batch_size: c.number(
                "ANALYTICS_BATCH_SIZE",
                &raw.analytics_batch_size,
                1,
                100_000,
            ),
            channel_capacity: c.number(
                "ANALYTICS_CHANNEL_CAPACITY",
                &raw.analytics_channel_capacity,
                1,
                1_000_000,
            ),
            max_terms_per_second: c.number(
                "MAX_MESSAGES_PER_SECOND",
                &raw.max_messages_per_second,
                1,
                100_000_000,
            ),
            min_batch_interval: c.millis(
                "MIN_BATCH_INTERVAL_MS",
                &raw.min_batch_interval_ms,
                0,
                60_000,
            ),
            sweep_interval: c.millis(
                "ANALYTICS_SWEEP_INTERVAL_MS",
                &raw.analytics_sweep_interval_ms,
                10,
                3_600_000,
            ),
        };
        let health = HealthConfig {
            max_stream_lag: c.number(
                "HEALTH_MAX_STREAM_LAG",
                &raw.health_max_stream_lag,
                1,
                u64::MAX,
            ),
            max_analytics_backlog: c.number(
                "HEALTH_MAX_ANALYTICS_BACKLOG",
                &raw.health_max_analytics_backlog,
                1,
                u64::MAX,
            ),
        };
        let shutdown_timeout = c.millis(
            "SHUTDOWN_TIMEOUT_MS",
            &raw.shutdown_timeout_ms,
            100,
            600_000,
        );
        let progress_interval = c.millis(
            "PROGRESS_LOG_INTERVAL_MS",
            &raw.progress_log_interval_ms,
            100,
            3_600_000,
        );
        let log_format = match raw.log_format.as_deref().map(str::trim) {
            None | Some("") | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                c.fail("LOG_FORMAT", format!("`{other}` is not `text` or `json`"));
                LogFormat::Text
            }
        };
        let log_level = raw
            .log_level
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .unwrap_or("info")
            .to_owned();
        if log_level
            .parse::<tracing_subscriber::filter::Targets>()
            .is_err()
        {
            c.fail(
                "LOG_LEVEL",
                format!("`{log_level}` is not a filter such as `info` or `info,writer=debug`"),
            );
        }

        if !check.problems.is_empty() {
            return Err(ConfigErrors(check.problems));
        }
        Ok(Config {
            database: DatabaseConfig {
                url: Secret::new(database_url),
                schema,
                pool_size,
                acquire_timeout,
                statement_timeout,
            },
            redis: RedisConfig {
                url: Secret::new(redis_url),
                streams,
                group,
                consumer,
                batch_size,
                block,
                claim_idle,
                claim_interval,
                max_deliveries,
            },
            workers,
            http_addr: SocketAddr::new(ip, port),
            admin_token,
            retry: RetryConfig {
                max_retries,
                base_delay,
                max_delay,
            },
            analytics,
            health,
            shutdown_timeout,
            progress_interval,
            log_format,
            log_level,
        })
    }

    /// The effective settings as `NAME=value` lines, secrets redacted.
    pub fn redacted(&self) -> Vec<(&'static str, String)> {
        let ms = |d: Duration| d.as_millis().to_string();
        vec![
            (
                "DATABASE_URL",
                describe_database_url(self.database.url.expose()),
            ),
            ("DATABASE_SCHEMA", self.database.schema.clone()),
            ("DATABASE_POOL_SIZE", self.database.pool_size.to_string()),
            (
                "DATABASE_ACQUIRE_TIMEOUT_MS",
                ms(self.database.acquire_timeout),
            ),
            (
                "DATABASE_STATEMENT_TIMEOUT_MS",
                ms(self.database.statement_timeout),
            ),
            ("REDIS_URL", describe_redis_url(self.redis.url.expose())),
            ("REDIS_STREAMS", self.redis.streams.join(",")),
            ("CONSUMER_GROUP", self.redis.group.clone()),
            ("CONSUMER_NAME", self.redis.consumer.clone()),
            ("BATCH_SIZE", self.redis.batch_size.to_string()),
            ("BATCH_TIMEOUT_MS", ms(self.redis.block)),
            ("WORKERS", self.workers.to_string()),
            ("HTTP_HOST", self.http_addr.ip().to_string()),
            ("HTTP_PORT", self.http_addr.port().to_string()),
            (
                "ADMIN_TOKEN",
                if self.admin_token.is_some() {
                    "***"
                } else {
                    "(unset)"
                }
                .to_owned(),
            ),
            ("MAX_RETRIES", self.retry.max_retries.to_string()),
            ("RETRY_BASE_DELAY_MS", ms(self.retry.base_delay)),
            ("RETRY_MAX_DELAY_MS", ms(self.retry.max_delay)),
            ("MAX_DELIVERIES", self.redis.max_deliveries.to_string()),
            ("CLAIM_IDLE_MS", ms(self.redis.claim_idle)),
            ("CLAIM_INTERVAL_MS", ms(self.redis.claim_interval)),
            (
                "ANALYTICS_BATCH_SIZE",
                self.analytics.batch_size.to_string(),
            ),
            (
                "ANALYTICS_CHANNEL_CAPACITY",
                self.analytics.channel_capacity.to_string(),
            ),
            (
                "MAX_MESSAGES_PER_SECOND",
                self.analytics.max_terms_per_second.to_string(),
            ),
            (
                "MIN_BATCH_INTERVAL_MS",
                ms(self.analytics.min_batch_interval),
            ),
            (
                "ANALYTICS_SWEEP_INTERVAL_MS",
                ms(self.analytics.sweep_interval),
            ),
            (
                "HEALTH_MAX_STREAM_LAG",
                self.health.max_stream_lag.to_string(),
            ),
            (
                "HEALTH_MAX_ANALYTICS_BACKLOG",
                self.health.max_analytics_backlog.to_string(),
            ),
            ("SHUTDOWN_TIMEOUT_MS", ms(self.shutdown_timeout)),
            ("PROGRESS_LOG_INTERVAL_MS", ms(self.progress_interval)),
            (
                "LOG_FORMAT",
                match self.log_format {
                    LogFormat::Text => "text",
                    LogFormat::Json => "json",
                }
                .to_owned(),
            ),
            ("LOG_LEVEL", self.log_level.clone()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, Result<String, ()>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Ok(v.to_string())))
            .collect()
    }

    const MINIMAL: [(&str, &str); 2] = [
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"),
        ("REDIS_URL", "redis://127.0.0.1:6379"),
    ];

    #[test]
    fn defaults() {
        let c = Config::from_vars(vars(&MINIMAL)).unwrap();
        assert_eq!(c.database.schema, "public");
        assert_eq!(c.redis.streams.len(), 5);
        assert_eq!(c.redis.batch_size, 500);
        assert_eq!(c.http_addr.port(), 8080);
        assert_eq!(c.redacted().len(), SETTINGS.len());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let e = Config::from_vars(vars(&[
            ("DATABASE_URL", "mysql://root:hunter2secret@x/y"),
            ("BATCH_SIZE", "0"),
            ("WORKERS", "many"),
            ("DATABASE_SCHEMA", "Bad-Schema"),
            ("LOG_FORMAT", "xml"),
            ("ADMIN_TOKEN", "short"),
            ("RETRY_BASE_DELAY_MS", "500"),
            ("RETRY_MAX_DELAY_MS", "100"),
        ]))
        .unwrap_err();
        let text = e.to_string();
        for var in [
            "DATABASE_URL",
            "REDIS_URL",
            "BATCH_SIZE",
            "WORKERS",
            "DATABASE_SCHEMA",
            "LOG_FORMAT",
            "ADMIN_TOKEN",
            "RETRY_MAX_DELAY_MS",
        ] {
            assert!(
                text.contains(&format!("{var}: ")),
                "{var} missing from {text}"
            );
        }
        assert_eq!(e.0.len(), 8, "{text}");
        assert!(!text.contains("hunter2secret"), "{text}");
        assert!(!text.contains("short"), "{text}");
    }

    #[test]
    fn malformed_urls_are_never_echoed() {
        for url in [
            "host=db user=u password=pw-in-dsn",
            "postgres://u:pw#with?specials@h/db x",
            "postgres://u:pw-in-url@[::1",
        ] {
            let e =
                Config::from_vars(vars(&[("DATABASE_URL", url), ("REDIS_URL", url)])).unwrap_err();
            assert!(!e.to_string().contains("pw"), "{e}");
        }
    }

    #[test]
    fn non_utf8_values_are_reported() {
        let mut v = vars(&MINIMAL);
        v.push(("CONSUMER_NAME".into(), Err(())));
        let e = Config::from_vars(v).unwrap_err();
        assert_eq!(e.0, ["CONSUMER_NAME: is not valid UTF-8"]);
    }

    #[test]
    fn urls_are_described_without_passwords() {
        assert_eq!(
            describe_database_url("postgres://u:secret@h:5432/db?sslmode=disable"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            describe_database_url("postgres://u@h/db"),
            "postgres://u@h:5432/db"
        );
        assert_eq!(
            describe_redis_url("redis://:pw@h:6379/2"),
            "redis://:***@h:6379/2"
        );
        assert_eq!(describe_redis_url("redis://h:6379"), "redis://h:6379/0");
        let c = Config::from_vars(vars(&[
            (
                "DATABASE_URL",
                "postgres://u:topsecret1@h/db?password=topsecret1",
            ),
            ("REDIS_URL", "redis://:topsecret2@h:6379"),
            ("ADMIN_TOKEN", "topsecret3-topsecret3"),
        ]))
        .unwrap();
        let shown = format!("{:?} {:?}", c.redacted(), c);
        assert!(!shown.contains("topsecret"), "{shown}");
    }

    #[test]
    fn pool_must_cover_workers() {
        let mut v = vars(&MINIMAL);
        v.extend(vars(&[("WORKERS", "8"), ("DATABASE_POOL_SIZE", "4")]));
        let e = Config::from_vars(v).unwrap_err();
        assert!(e.0[0].starts_with("DATABASE_POOL_SIZE: 4 is below WORKERS + 2"));
    }

    #[test]
    fn schema_names() {
        assert!(is_valid_schema("public"));
        assert!(is_valid_schema("intuition_mainnet_2"));
        assert!(!is_valid_schema("pg_catalog"));
        assert!(!is_valid_schema("a\"b"));
        assert!(!is_valid_schema("1abc"));
        assert!(!is_valid_schema(""));
    }
}
