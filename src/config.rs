//! Settings from the environment: each declared once, all validated at once.
//!
//! # One declaration per setting
//!
//! [`SETTINGS`] has one row per environment variable: its name, its [`Kind`]
//! (type, bounds, and the [`Config`] field the value goes to), its default,
//! whether it is secret, and the sentence that documents it. Everything
//! else is derived from those rows:
//!
//! - **parsing**: the environment (SPEC §4) is read as strings, and
//!   [`Config::from_vars`] checks each row's value by its kind. There is no
//!   serde step on purpose: serde stops at the first field it cannot parse,
//!   and an operator should see *every* problem in one run, not one per
//!   restart.
//! - **validation**: bounds come from the kind; the few rules that relate
//!   two settings are in [`Config::cross_checks`]. Every row is read even
//!   after another failed, so all problems are reported together, each
//!   naming its variable.
//! - **redaction** and `writer check-config`: [`Config::redacted`] lists each
//!   row's effective value; secrets show as `***`, URLs without password.
//! - **the README's configuration table**: [`readme_table`]; the test
//!   `readme_table_is_current` fails when README.md differs from it.
//!
//! # Adding a setting
//!
//! Add one row to [`SETTINGS`] (and the [`Config`] field it fills, if new):
//!
//! ```text
//! Setting::new(
//!     "BATCH_SIZE",
//!     Kind::count(1..=10_000, |c, n| c.redis.batch_size = fits(n)),
//!     "entries read per XREADGROUP and applied per transaction",
//! )
//! .default("500"),
//! ```
//!
//! `.secret()` (or `.url(describe)`) for a value that is never shown,
//! `.or_file("NAME_FILE", …)` to accept it from a file too (container
//! secrets). Then `UPDATE_README=1 cargo test --lib readme_table`
//! regenerates the README table. Tests check that every default passes its
//! own bounds and that no secret is ever echoed in an error.

use crate::schema::Schema;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

/// The streams rindexer writes for the MultiVault contract on testnet.
pub const DEFAULT_STREAMS: &str = "intuition_testnet_atom_created,intuition_testnet_triple_created,intuition_testnet_deposited,intuition_testnet_redeemed,intuition_testnet_share_price_changed";

/// A value that must never be printed. `Debug` and `Display` show `***`.
#[derive(Clone, Default, PartialEq, Eq)]
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
            let scheme = match info.addr() {
                redis::ConnectionAddr::TcpTls { .. } => "rediss",
                _ => "redis",
            };
            format!("{scheme}://{user}{secret}{}/{}", info.addr(), settings.db())
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Default)]
pub struct DatabaseConfig {
    /// DATABASE_URL, or the content of DATABASE_URL_FILE when the writer
    /// started ([`DatabaseConfig::current_url`] reads the file again).
    pub url: Secret,
    /// DATABASE_URL_FILE: the URL is read from here again whenever it may
    /// have changed (a rotated password).
    pub url_file: Option<PathBuf>,
    pub schema: Schema,
    pub pool_size: u32,
    pub acquire_timeout: Duration,
    /// Zero disables the server-side statement timeout.
    pub statement_timeout: Duration,
    /// Statements slower than this are logged with their duration; zero
    /// logs none.
    pub slow_statement: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct RedisConfig {
    /// REDIS_URL, or the content of REDIS_URL_FILE when the writer started
    /// ([`RedisConfig::current_url`] reads the file again).
    pub url: Secret,
    pub url_file: Option<PathBuf>,
    pub tls: RedisTls,
    pub streams: Vec<String>,
    pub group: String,
    pub consumer: String,
    pub batch_size: usize,
    /// Payload bytes per transaction, at most: what bounds a batch's memory
    /// when entries carry many events each.
    pub batch_max_bytes: usize,
    /// How long one `XREADGROUP` blocks; short, so shutdown is prompt.
    pub block: Duration,
    /// Pending entries idle this long belong to a dead consumer and are reclaimed.
    pub claim_idle: Duration,
    pub claim_interval: Duration,
    pub max_deliveries: u32,
}

/// Certificate files for `rediss://` connections, read again whenever a
/// connection is made (so rotated files are picked up).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// REDIS_CA_CERT: the CA(s) the server's certificate must be signed by;
    /// unset, the system's root CAs.
    pub ca_cert: Option<PathBuf>,
    /// REDIS_CLIENT_CERT and REDIS_CLIENT_KEY, for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl RedisTls {
    pub fn is_set(&self) -> bool {
        self.ca_cert.is_some() || self.client_cert.is_some() || self.client_key.is_some()
    }
}

impl RedisConfig {
    /// The URL to connect with now: the content of REDIS_URL_FILE, read
    /// again, or REDIS_URL.
    pub fn current_url(&self) -> Result<Secret, String> {
        current_url(&self.url, self.url_file.as_deref())
    }
}

/// The URL to connect with now: the content of `file` (an X_FILE setting),
/// read again so that a rotated secret is picked up, or `url` (X).
pub fn current_url(url: &Secret, file: Option<&Path>) -> Result<Secret, String> {
    match file {
        Some(path) => read_secret_file(path),
        None => Ok(url.clone()),
    }
}

/// The setting a URL came from, as an error names it: `name`, or
/// `name_FILE (path)`.
pub fn url_setting(name: &str, file: Option<&Path>) -> String {
    match file {
        Some(path) => format!("{name}_FILE ({})", path.display()),
        None => name.to_owned(),
    }
}

/// A secret kept in a file (the container-secret convention): its content
/// without surrounding whitespace (the final newline editors add).
pub fn read_secret_file(path: &Path) -> Result<Secret, String> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Err(format!("{} is empty", path.display())),
        Ok(text) => Ok(Secret::new(text.trim())),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

#[derive(Debug, Clone, Default)]
pub struct RetryConfig {
    /// Consecutive failed attempts (of any batch) before the circuit opens
    /// and a failing batch is retried in smaller transactions.
    pub max_retries: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct AnalyticsConfig {
    pub batch_size: usize,
    pub channel_capacity: usize,
    /// Terms recomputed per second, at most.
    pub max_terms_per_second: u32,
    pub min_batch_interval: Duration,
    /// How often the worker looks for dirty terms that no message announced.
    pub sweep_interval: Duration,
    /// While the writers are behind the streams, how long the worker
    /// gathers dirty triples before recomputing them (0: never defers).
    pub catch_up_delay: Duration,
}

#[derive(Debug, Clone, Default)]
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
    /// APPLY_PARTITIONS: transactions per large batch, each its own
    /// connection.
    pub partitions: usize,
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
    /// Every setting's effective value as shown to operators (secrets
    /// redacted), in [`SETTINGS`] order; see [`Config::redacted`].
    effective: Vec<(&'static str, String)>,
}

/// DATABASE_POOL_SIZE at most: connections are Postgres processes, and
/// several writers share one server's `max_connections`.
const MAX_POOL: u64 = 256;

impl Default for Config {
    /// The empty configuration the rows of [`SETTINGS`] fill in.
    fn default() -> Config {
        Config {
            database: DatabaseConfig::default(),
            redis: RedisConfig::default(),
            workers: 0,
            partitions: 0,
            http_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin_token: None,
            retry: RetryConfig::default(),
            analytics: AnalyticsConfig::default(),
            health: HealthConfig::default(),
            shutdown_timeout: Duration::ZERO,
            progress_interval: Duration::ZERO,
            log_format: LogFormat::default(),
            log_level: String::new(),
            effective: Vec::new(),
        }
    }
}

/// One environment variable: everything the writer knows about it.
#[derive(Clone, Copy)]
pub struct Setting {
    pub name: &'static str,
    /// How the value is parsed and bounded, and where it goes.
    pub kind: Kind,
    /// What applies when the variable is unset or empty.
    pub default: DefaultValue,
    pub secrecy: Secrecy,
    /// The value may instead be the content of the file `NAME_FILE` names
    /// (the container-secret convention).
    pub file: Option<SecretFile>,
    /// The README's description (bounds are appended from `kind`).
    pub doc: &'static str,
}

/// The `NAME_FILE` variant of a setting; `set` records the path, so that
/// connections can read the file again (a rotated password).
#[derive(Clone, Copy)]
pub struct SecretFile {
    pub name: &'static str,
    pub set: fn(&mut Config, PathBuf),
}

/// How a setting's text becomes part of [`Config`].
#[derive(Clone, Copy)]
pub enum Kind {
    /// A whole number in `min..=max`, given to `set`.
    Count {
        min: u64,
        max: u64,
        set: fn(&mut Config, u64),
    },
    /// A duration in whole milliseconds, `min..=max`, given to `set`.
    Millis {
        min: u64,
        max: u64,
        set: fn(&mut Config, Duration),
    },
    /// A PEM file's path, given to `set` once `read` found the file holds
    /// what it should: connections read it again (a rotated certificate).
    Pem {
        read: fn(&Path) -> Result<Vec<u8>, String>,
        set: fn(&mut Config, PathBuf),
    },
    /// Anything else: `apply` parses the (trimmed) text and stores it, or
    /// says what is wrong — without repeating the value if it is secret.
    Text {
        apply: fn(&mut Config, &str) -> Result<(), String>,
    },
}

impl Kind {
    const fn count(bounds: RangeInclusive<u64>, set: fn(&mut Config, u64)) -> Kind {
        Kind::Count {
            min: *bounds.start(),
            max: *bounds.end(),
            set,
        }
    }

    const fn millis(bounds: RangeInclusive<u64>, set: fn(&mut Config, Duration)) -> Kind {
        Kind::Millis {
            min: *bounds.start(),
            max: *bounds.end(),
            set,
        }
    }
}

/// What a setting is when the variable is unset or empty.
#[derive(Clone, Copy)]
pub enum DefaultValue {
    /// It must be given.
    Required,
    /// This text, parsed like a given value (a test checks that it passes).
    Value(&'static str),
    /// Computed at start; `shown` is what the README says.
    Computed {
        shown: &'static str,
        value: fn() -> String,
    },
    /// Nothing: the feature it configures is off.
    Off,
}

/// How a setting's value may be shown.
#[derive(Clone, Copy)]
pub enum Secrecy {
    /// As given.
    Plain,
    /// Never: `***` when set.
    Secret,
    /// A URL that may carry a password: shown rebuilt from its parts
    /// without it.
    Url(fn(&str) -> String),
}

impl Setting {
    const fn new(name: &'static str, kind: Kind, doc: &'static str) -> Setting {
        Setting {
            name,
            kind,
            default: DefaultValue::Off,
            secrecy: Secrecy::Plain,
            file: None,
            doc,
        }
    }

    const fn default(self, value: &'static str) -> Setting {
        Setting {
            default: DefaultValue::Value(value),
            ..self
        }
    }

    const fn required(self) -> Setting {
        Setting {
            default: DefaultValue::Required,
            ..self
        }
    }

    const fn computed(self, shown: &'static str, value: fn() -> String) -> Setting {
        Setting {
            default: DefaultValue::Computed { shown, value },
            ..self
        }
    }

    const fn secret(self) -> Setting {
        Setting {
            secrecy: Secrecy::Secret,
            ..self
        }
    }

    const fn url(self, describe: fn(&str) -> String) -> Setting {
        Setting {
            secrecy: Secrecy::Url(describe),
            ..self
        }
    }

    const fn or_file(self, name: &'static str, set: fn(&mut Config, PathBuf)) -> Setting {
        Setting {
            file: Some(SecretFile { name, set }),
            ..self
        }
    }

    pub fn is_secret(&self) -> bool {
        !matches!(self.secrecy, Secrecy::Plain)
    }

    /// Parses `text` into `config`; returns the value as it may be shown.
    fn read(&self, config: &mut Config, text: &str) -> Result<String, String> {
        let shown = match self.kind {
            Kind::Count { min, max, set } => {
                let n = bounded(text, min, max)?;
                set(config, n);
                n.to_string()
            }
            Kind::Millis { min, max, set } => {
                let n = bounded(text, min, max)?;
                set(config, Duration::from_millis(n));
                n.to_string()
            }
            Kind::Pem { read, set } => {
                read(Path::new(text))?;
                set(config, text.into());
                text.to_owned()
            }
            Kind::Text { apply } => {
                apply(config, text)?;
                text.to_owned()
            }
        };
        Ok(match self.secrecy {
            Secrecy::Plain => shown,
            Secrecy::Secret => "***".to_owned(),
            Secrecy::Url(describe) => describe(text),
        })
    }

    /// The README's "meaning" column: the doc, then the bounds.
    pub fn meaning(&self) -> String {
        match self.kind {
            Kind::Count { min, max, .. } => format!("{} ({})", self.doc, range(min, max, "")),
            Kind::Millis { min, max, .. } => format!("{} ({})", self.doc, range(min, max, " ms")),
            Kind::Pem { .. } | Kind::Text { .. } => self.doc.to_owned(),
        }
    }
}

/// Bounds as the README shows them.
fn range(min: u64, max: u64, unit: &str) -> String {
    if max == u64::MAX {
        format!("at least {min}{unit}")
    } else {
        format!("{min}–{max}{unit}")
    }
}

/// A whole number in `min..=max`.
fn bounded(text: &str, min: u64, max: u64) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        Ok(_) => Err(format!("{text} is out of range {min}..={max}")),
        Err(_) => Err(format!("`{text}` is not a whole number")),
    }
}

/// `usize`/`u32` fields get numbers whose bounds fit them: the conversion
/// cannot fail for a value that passed its row's bounds.
fn fits<T: TryFrom<u64>>(n: u64) -> T {
    T::try_from(n).unwrap_or_else(|_| panic!("{n}: a row's bounds exceed its field's type"))
}

/// Every setting the writer reads. The one place a setting is declared
/// (see the module documentation).
pub const SETTINGS: &[Setting] = &[
    Setting::new(
        "DATABASE_URL",
        Kind::Text {
            apply: |c, url| {
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
                    || PgConnectOptions::from_str(url).is_err()
                {
                    return Err("is not a valid postgres:// URL (the value is not shown: a malformed URL cannot be redacted reliably)".to_owned());
                }
                crate::db::PgTls::from_url(url)?;
                c.database.url = Secret::new(url);
                Ok(())
            },
        },
        "PostgreSQL URL, `postgres://user:password@host:port/db`; TLS as in libpq: `?sslmode=verify-full&sslrootcert=/ca.pem` (see Connecting to managed services)",
    )
    .required()
    .url(describe_database_url)
    .or_file("DATABASE_URL_FILE", |c, path| c.database.url_file = Some(path)),
    Setting::new(
        "DATABASE_SCHEMA",
        Kind::Text {
            apply: |c, schema| {
                c.database.schema = Schema::parse(schema).map_err(|e| e.to_string())?;
                Ok(())
            },
        },
        "schema holding every table; one database can hold several networks",
    )
    .default("public"),
    Setting::new(
        "DATABASE_POOL_SIZE",
        Kind::count(2..=MAX_POOL, |c, n| c.database.pool_size = fits(n)),
        "Postgres connections, at least WORKERS × APPLY_PARTITIONS + 2; raised to that when unset (set alone, APPLY_PARTITIONS is lowered to fit it)",
    )
    .default("10"),
    Setting::new(
        "DATABASE_ACQUIRE_TIMEOUT_MS",
        Kind::millis(100..=120_000, |c, d| c.database.acquire_timeout = d),
        "wait for a pooled connection before the attempt counts as failed",
    )
    .default("5000"),
    Setting::new(
        "DATABASE_STATEMENT_TIMEOUT_MS",
        Kind::millis(0..=3_600_000, |c, d| c.database.statement_timeout = d),
        "server-side statement timeout; 0 disables it",
    )
    .default("30000"),
    Setting::new(
        "DATABASE_SLOW_STATEMENT_MS",
        Kind::millis(0..=3_600_000, |c, d| c.database.slow_statement = d),
        "statements slower than this are logged (warn, target `sqlx::query`) with their duration; 0 logs none",
    )
    .default("1000"),
    Setting::new(
        "REDIS_URL",
        Kind::Text {
            apply: |c, url| {
                crate::redis_client::check_url(url)?;
                c.redis.url = Secret::new(url);
                Ok(())
            },
        },
        "Redis URL, `redis://[[user]:password@]host:port[/db]`; `rediss://` for TLS",
    )
    .required()
    .url(describe_redis_url)
    .or_file("REDIS_URL_FILE", |c, path| c.redis.url_file = Some(path)),
    Setting::new(
        "REDIS_CA_CERT",
        Kind::Pem {
            read: crate::tls::read_certificates,
            set: |c, path| c.redis.tls.ca_cert = Some(path),
        },
        "PEM file of the CA(s) that signed the Redis server's certificate (`rediss://`); unset: the system's root CAs",
    ),
    Setting::new(
        "REDIS_CLIENT_CERT",
        Kind::Pem {
            read: crate::tls::read_certificates,
            set: |c, path| c.redis.tls.client_cert = Some(path),
        },
        "PEM file of the client certificate (chain) for mutual TLS with Redis; with REDIS_CLIENT_KEY",
    ),
    Setting::new(
        "REDIS_CLIENT_KEY",
        Kind::Pem {
            read: crate::tls::read_private_key,
            set: |c, path| c.redis.tls.client_key = Some(path),
        },
        "PEM file of REDIS_CLIENT_CERT's private key",
    ),
    Setting::new(
        "REDIS_STREAMS",
        Kind::Text {
            apply: |c, text| {
                let streams: Vec<String> = text.split(',').map(|s| s.trim().to_owned()).collect();
                if streams
                    .iter()
                    .any(|s| s.is_empty() || s.chars().any(char::is_whitespace))
                {
                    return Err("stream names must be non-empty and contain no spaces".to_owned());
                }
                if streams.iter().collect::<HashSet<_>>().len() != streams.len() {
                    return Err("lists a stream twice".to_owned());
                }
                c.redis.streams = streams;
                Ok(())
            },
        },
        "comma-separated streams to consume",
    )
    .default(DEFAULT_STREAMS),
    Setting::new(
        "CONSUMER_GROUP",
        Kind::Text {
            apply: |c, name| {
                c.redis.group = redis_name(name)?;
                Ok(())
            },
        },
        "Redis consumer group shared by all writer processes",
    )
    .default("writer"),
    Setting::new(
        "CONSUMER_NAME",
        Kind::Text {
            apply: |c, name| {
                c.redis.consumer = redis_name(name)?;
                Ok(())
            },
        },
        "this process's consumer name; unique per process, stable across restarts",
    )
    .computed("(host name)", default_consumer_name),
    Setting::new(
        "BATCH_SIZE",
        Kind::count(1..=10_000, |c, n| c.redis.batch_size = fits(n)),
        "entries read per XREADGROUP and applied per transaction",
    )
    .default("500"),
    Setting::new(
        "BATCH_MAX_BYTES",
        Kind::count(1_024..=268_435_456, |c, n| c.redis.batch_max_bytes = fits(n)),
        "payload bytes applied per transaction, at most: bounds the memory of batches whose entries carry many events (a larger entry is a batch of its own)",
    )
    .default("2097152"),
    Setting::new(
        "BATCH_TIMEOUT_MS",
        Kind::millis(1..=10_000, |c, d| c.redis.block = d),
        "XREADGROUP BLOCK time: how long a read waits for entries",
    )
    .default("100"),
    Setting::new(
        "WORKERS",
        Kind::count(1..=64, |c, n| c.workers = fits(n)),
        "concurrent apply tasks",
    )
    .default("2"),
    Setting::new(
        "APPLY_PARTITIONS",
        Kind::count(1..=16, |c, n| c.partitions = fits(n)),
        "transactions a batch of 256 events or more is split into, by term, applied at once (ADR 0016); 1 never splits",
    )
    .default("2"),
    Setting::new(
        "HTTP_HOST",
        Kind::Text {
            apply: |c, host| {
                let ip: IpAddr = host
                    .parse()
                    .map_err(|_| format!("`{host}` is not an IP address"))?;
                c.http_addr.set_ip(ip);
                Ok(())
            },
        },
        "address the HTTP server binds",
    )
    .default("0.0.0.0"),
    Setting::new(
        "HTTP_PORT",
        Kind::count(0..=65_535, |c, n| c.http_addr.set_port(fits(n))),
        "HTTP port for /health and /metrics; 0 picks a free port",
    )
    .default("8080"),
    Setting::new(
        "ADMIN_TOKEN",
        Kind::Text {
            apply: |c, token| {
                if token.len() < 16 || token.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                    return Err(
                        "must be at least 16 characters without spaces (value not shown)".to_owned(),
                    );
                }
                c.admin_token = Some(Secret::new(token));
                Ok(())
            },
        },
        "bearer token for admin endpoints (16+ characters); unset disables them",
    )
    .secret(),
    Setting::new(
        "MAX_RETRIES",
        Kind::count(0..=100, |c, n| c.retry.max_retries = fits(n)),
        "consecutive failed attempts (any batch) before the circuit breaker opens and a failing batch is retried in smaller transactions",
    )
    .default("5"),
    Setting::new(
        "RETRY_BASE_DELAY_MS",
        Kind::millis(1..=60_000, |c, d| c.retry.base_delay = d),
        "first backoff delay; doubles per attempt, with full jitter",
    )
    .default("100"),
    Setting::new(
        "RETRY_MAX_DELAY_MS",
        Kind::millis(1..=600_000, |c, d| c.retry.max_delay = d),
        "backoff ceiling; at least RETRY_BASE_DELAY_MS",
    )
    .default("10000"),
    Setting::new(
        "MAX_DELIVERIES",
        Kind::count(1..=1000, |c, n| c.redis.max_deliveries = fits(n)),
        "deliveries of one entry before it is dead-lettered",
    )
    .default("5"),
    Setting::new(
        "CLAIM_IDLE_MS",
        Kind::millis(100..=86_400_000, |c, d| c.redis.claim_idle = d),
        "idle time after which another consumer's pending entry is reclaimed",
    )
    .default("60000"),
    Setting::new(
        "CLAIM_INTERVAL_MS",
        Kind::millis(100..=3_600_000, |c, d| c.redis.claim_interval = d),
        "how often pending entries of dead consumers are looked for",
    )
    .default("5000"),
    Setting::new(
        "ANALYTICS_BATCH_SIZE",
        Kind::count(1..=100_000, |c, n| c.analytics.batch_size = fits(n)),
        "triples recomputed per analytics transaction, at most; larger batches recompute hot pairs less often",
    )
    .default("2000"),
    Setting::new(
        "ANALYTICS_CHANNEL_CAPACITY",
        Kind::count(1..=1_000_000, |c, n| c.analytics.channel_capacity = fits(n)),
        "committed batches queued for the analytics worker before messages are dropped (dirty marks keep them; each message holds its batch's triple ids, so this bounds memory)",
    )
    .default("128"),
    Setting::new(
        "MAX_MESSAGES_PER_SECOND",
        Kind::count(1..=100_000_000, |c, n| c.analytics.max_terms_per_second = fits(n)),
        "triples the analytics worker recomputes per second, at most (the older writer's analytics message rate)",
    )
    .default("100000"),
    Setting::new(
        "MIN_BATCH_INTERVAL_MS",
        Kind::millis(0..=60_000, |c, d| c.analytics.min_batch_interval = d),
        "minimum time between the analytics worker's passes over announced triples (those announced meanwhile are recomputed together; the chunks of one pass run back to back): how often hot pairs are recomputed under load, and so how stale analytics may get",
    )
    .default("250"),
    Setting::new(
        "ANALYTICS_SWEEP_INTERVAL_MS",
        Kind::millis(10..=3_600_000, |c, d| c.analytics.sweep_interval = d),
        "how often the analytics worker scans for dirty terms (while the writers catch up on a backlog, at most once per ANALYTICS_CATCH_UP_DELAY_MS)",
    )
    .default("1000"),
    Setting::new(
        "ANALYTICS_CATCH_UP_DELAY_MS",
        Kind::millis(0..=600_000, |c, d| c.analytics.catch_up_delay = d),
        "while the writers are behind the streams (a backlog, a re-index), how long the analytics worker gathers dirty triples before recomputing them: how stale analytics may get during a catch-up, up to one and a half delays plus a pass (a pass while the writers are still behind leaves triples dirty for less than half the delay to the next; ADR 0013); 0: recompute as during steady load",
    )
    .default("10000"),
    Setting::new(
        "HEALTH_MAX_STREAM_LAG",
        Kind::count(1..=u64::MAX, |c, n| c.health.max_stream_lag = n),
        "undelivered entries above which /health reports degraded",
    )
    .default("10000"),
    Setting::new(
        "HEALTH_MAX_ANALYTICS_BACKLOG",
        Kind::count(1..=u64::MAX, |c, n| c.health.max_analytics_backlog = n),
        "dirty terms above which /health reports degraded",
    )
    .default("10000"),
    Setting::new(
        "SHUTDOWN_TIMEOUT_MS",
        Kind::millis(100..=600_000, |c, d| c.shutdown_timeout = d),
        "how long a graceful shutdown may take before the process exits",
    )
    .default("30000"),
    Setting::new(
        "PROGRESS_LOG_INTERVAL_MS",
        Kind::millis(100..=3_600_000, |c, d| c.progress_interval = d),
        "how often an info line reports progress (events applied and rate, entries acknowledged, lag, analytics backlog, dead letters) while anything happens; nothing is logged while idle",
    )
    .default("10000"),
    Setting::new(
        "LOG_FORMAT",
        Kind::Text {
            apply: |c, format| {
                c.log_format = match format {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    other => return Err(format!("`{other}` is not `text` or `json`")),
                };
                Ok(())
            },
        },
        "`text` or `json`",
    )
    .default("text"),
    Setting::new(
        "LOG_LEVEL",
        Kind::Text {
            apply: |c, level| {
                if level
                    .parse::<tracing_subscriber::filter::Targets>()
                    .is_err()
                {
                    return Err(format!(
                        "`{level}` is not a filter such as `info` or `info,writer=debug`"
                    ));
                }
                c.log_level = level.to_owned();
                Ok(())
            },
        },
        "tracing filter, e.g. `info` or `info,writer=debug`",
    )
    .default("info"),
];

/// A consumer group or consumer name.
fn redis_name(name: &str) -> Result<String, String> {
    if name.len() > 200 || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must be 1–200 characters without spaces or control characters".to_owned());
    }
    Ok(name.to_owned())
}

fn default_consumer_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "writer".to_owned())
}

/// The README's configuration table, generated from [`SETTINGS`]. Defaults
/// too long for a table cell become numbered notes under it.
pub fn readme_table() -> String {
    let mut table = String::from("| variable | default | meaning |\n|---|---|---|\n");
    let mut notes = Vec::new();
    for s in SETTINGS {
        let default = match s.default {
            DefaultValue::Required => "(required)".to_owned(),
            DefaultValue::Off => "(unset)".to_owned(),
            DefaultValue::Computed { shown, .. } => shown.to_owned(),
            DefaultValue::Value(v) if v.len() > 40 => {
                notes.push(format!("`{v}`"));
                format!("see note {}", notes.len())
            }
            DefaultValue::Value(v) => format!("`{v}`"),
        };
        table.push_str(&format!("| `{}` | {default} | {} |\n", s.name, s.meaning()));
        if let Some(SecretFile { name: file, .. }) = s.file {
            table.push_str(&format!(
                "| `{file}` | (unset) | a file holding {name}, read again when a connection is re-established (a rotated password needs no restart); set {name} or {file}, not both |\n",
                name = s.name
            ));
        }
    }
    for (i, note) in notes.iter().enumerate() {
        table.push_str(&format!("\nNote {}: {note}.\n", i + 1));
    }
    table
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

/// The variables as given: names as declared, values trimmed, empty ones
/// dropped (an empty variable means "use the default").
struct Given(BTreeMap<String, String>);

impl Given {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
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
        let known: HashSet<&str> = SETTINGS
            .iter()
            .flat_map(|s| std::iter::once(s.name).chain(s.file.map(|f| f.name)))
            .collect();
        let mut problems = Vec::new();
        let mut utf8 = Vec::new();
        for (name, value) in vars {
            if !known.contains(name.as_str()) {
                continue;
            }
            match value {
                Ok(v) if v.trim().is_empty() => {}
                Ok(v) => utf8.push((name, v.trim().to_owned())),
                Err(()) => problems.push(format!("{name}: is not valid UTF-8")),
            }
        }
        let given = Given(utf8.into_iter().collect());

        let mut config = Config::default();
        for setting in SETTINGS {
            let name = setting.name;
            let file = setting.file.map(|f| (f.name, f.set, given.get(f.name)));
            let shown = match (given.get(name), file) {
                (Some(_), Some((file, _, Some(_)))) => {
                    Err(format!("{file}: set {name} or {file}, not both"))
                }
                (None, Some((file, set, Some(path)))) => {
                    set(&mut config, PathBuf::from(path));
                    read_secret_file(Path::new(path))
                        .and_then(|text| {
                            setting
                                .read(&mut config, text.expose())
                                .map_err(|problem| format!("in {path}: {problem}"))
                        })
                        .map_err(|problem| format!("{file}: {problem}"))
                }
                (Some(text), _) => setting
                    .read(&mut config, text)
                    .map_err(|problem| format!("{name}: {problem}")),
                (None, _) => match setting.default {
                    DefaultValue::Value(text) => setting.read(&mut config, text),
                    DefaultValue::Computed { value, .. } => setting.read(&mut config, &value()),
                    DefaultValue::Off => Ok("(unset)".to_owned()),
                    DefaultValue::Required => Err(match file {
                        Some((file, ..)) => format!("is required (or {file}): {}", setting.doc),
                        None => format!("is required: {}", setting.doc),
                    }),
                }
                .map_err(|problem| format!("{name}: {problem}")),
            };
            match shown {
                Ok(shown) => config.effective.push((name, shown)),
                Err(problem) => {
                    problems.push(problem);
                    config.effective.push((name, "(invalid)".to_owned()));
                }
            }
            if let Some((file, _, path)) = file {
                config
                    .effective
                    .push((file, path.unwrap_or("(unset)").to_owned()));
            }
        }
        config.cross_checks(&given, &mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(problems))
        }
    }

    /// The rules that relate two settings (each row is checked on its own
    /// by its kind).
    fn cross_checks(&mut self, given: &Given, problems: &mut Vec<String>) {
        // A connection per part of each worker's batch, plus analytics and
        // health. A pool set without APPLY_PARTITIONS (a configuration
        // older than it) keeps working with as many parts as it fits.
        let pool = self.database.pool_size as usize;
        let needed = self.workers * self.partitions + 2;
        if pool < needed && given.has("DATABASE_POOL_SIZE") {
            if given.has("APPLY_PARTITIONS") {
                problems.push(format!("DATABASE_POOL_SIZE: {pool} is below WORKERS × APPLY_PARTITIONS + 2 = {needed} (a connection per part of each worker's batch, plus analytics and health)"));
            } else if pool < self.workers + 2 {
                problems.push(format!("DATABASE_POOL_SIZE: {pool} is below WORKERS + 2 = {} (a connection per worker, plus analytics and health)", self.workers + 2));
            } else {
                self.partitions = (pool - 2) / self.workers.max(1);
                self.show("APPLY_PARTITIONS", self.partitions.to_string());
            }
        } else if pool < needed && needed > MAX_POOL as usize {
            problems.push(format!("WORKERS × APPLY_PARTITIONS + 2 = {needed} connections is more than DATABASE_POOL_SIZE allows ({MAX_POOL})"));
        } else if pool < needed {
            self.database.pool_size = needed as u32;
            self.show("DATABASE_POOL_SIZE", needed.to_string());
        }
        if given.has("REDIS_CLIENT_CERT") != given.has("REDIS_CLIENT_KEY") {
            problems.push(
                "REDIS_CLIENT_CERT, REDIS_CLIENT_KEY: a client certificate needs both".to_owned(),
            );
        }
        let tls_files = ["REDIS_CA_CERT", "REDIS_CLIENT_CERT", "REDIS_CLIENT_KEY"];
        let url = self.redis.url.expose();
        if tls_files.iter().any(|f| given.has(f))
            && !url.is_empty()
            && !crate::redis_client::is_tls_url(url)
        {
            problems.push("REDIS_CA_CERT, REDIS_CLIENT_CERT, REDIS_CLIENT_KEY: set, but REDIS_URL is not rediss://, so the connection would not use TLS".to_owned());
        }
        if self.retry.max_delay < self.retry.base_delay {
            problems.push(format!(
                "RETRY_MAX_DELAY_MS: {} is below RETRY_BASE_DELAY_MS ({})",
                self.retry.max_delay.as_millis(),
                self.retry.base_delay.as_millis()
            ));
        }
    }

    /// Replaces the shown value of a setting a cross-check adjusted.
    fn show(&mut self, name: &str, value: String) {
        if let Some((_, shown)) = self.effective.iter_mut().find(|(n, _)| *n == name) {
            *shown = value;
        }
    }

    /// The TLS each connection uses, as `(server, description)`: what
    /// `check-config` shows below the settings.
    pub fn connections(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "postgres",
                crate::db::describe_tls(self.database.url.expose()),
            ),
            (
                "redis",
                crate::redis_client::describe_tls(self.redis.url.expose(), &self.redis.tls),
            ),
        ]
    }

    /// The effective settings as `(NAME, value)`, in [`SETTINGS`] order,
    /// secrets redacted.
    pub fn redacted(&self) -> Vec<(&'static str, String)> {
        self.effective.clone()
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
        assert_eq!(c.database.schema.as_str(), "public");
        assert_eq!(c.database.pool_size, 10);
        assert_eq!(c.database.acquire_timeout, Duration::from_secs(5));
        assert_eq!(c.redis.streams.len(), 5);
        assert_eq!(c.redis.batch_size, 500);
        assert_eq!(c.redis.batch_max_bytes, 2 << 20);
        assert_eq!(c.redis.group, "writer");
        assert!(!c.redis.consumer.is_empty());
        assert_eq!(c.http_addr, SocketAddr::from(([0, 0, 0, 0], 8080)));
        assert_eq!(c.workers, 2);
        assert_eq!(c.retry.max_delay, Duration::from_secs(10));
        assert_eq!(c.health.max_stream_lag, 10_000);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.log_level, "info");
        assert!(c.admin_token.is_none());
        let shown = c.redacted();
        let declared: Vec<&str> = SETTINGS
            .iter()
            .flat_map(|s| std::iter::once(s.name).chain(s.file.map(|f| f.name)))
            .collect();
        assert_eq!(shown.iter().map(|(n, _)| *n).collect::<Vec<_>>(), declared);
        assert!(shown.contains(&("DATABASE_URL_FILE", "(unset)".to_owned())));
        assert_eq!(c.database.slow_statement, Duration::from_secs(1));
        assert_eq!(c.redis.tls, RedisTls::default());
        assert!(shown.contains(&("ADMIN_TOKEN", "(unset)".to_owned())));
    }

    /// Every row is well formed: a unique upper-case name, a default that
    /// passes its own bounds, documentation.
    #[test]
    fn every_row_is_well_formed() {
        let mut names = HashSet::new();
        for s in SETTINGS {
            assert!(names.insert(s.name), "{} declared twice", s.name);
            assert!(
                s.name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit()),
                "{}",
                s.name
            );
            assert!(!s.doc.is_empty(), "{} has no documentation", s.name);
            if let Some(file) = s.file {
                assert_eq!(file.name, format!("{}_FILE", s.name));
                assert!(s.is_secret(), "{}: only secrets come from files", s.name);
            }
            if let DefaultValue::Value(text) = s.default {
                let mut c = Config::default();
                assert!(s.read(&mut c, text).is_ok(), "{}: bad default", s.name);
            }
        }
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

    /// A bad value of a secret setting is never repeated in its error.
    #[test]
    fn secrets_are_never_echoed() {
        let bad = "pw-in-value x#?@[::1";
        for s in SETTINGS.iter().filter(|s| s.is_secret()) {
            let mut c = Config::default();
            let error = s.read(&mut c, bad).unwrap_err();
            assert!(!error.contains("pw-in-value"), "{}: {error}", s.name);
        }
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
        assert!(c.redacted().contains(&("ADMIN_TOKEN", "***".to_owned())));
    }

    /// Settings given to one case of a table-driven test.
    type Pairs<'a> = &'a [(&'a str, &'a str)];

    /// MINIMAL plus `pairs`, parsed.
    fn parse_with(pairs: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        let mut v = vars(&MINIMAL);
        v.extend(vars(pairs));
        Config::from_vars(v)
    }

    #[test]
    fn pool_must_cover_workers() {
        // Refused: the settings, and how the problem begins.
        let refused: [(Pairs, &str); 3] = [
            (
                &[("WORKERS", "8"), ("DATABASE_POOL_SIZE", "4")],
                "DATABASE_POOL_SIZE: 4 is below WORKERS + 2 = 10",
            ),
            // Both set: both must fit.
            (
                &[
                    ("WORKERS", "2"),
                    ("DATABASE_POOL_SIZE", "5"),
                    ("APPLY_PARTITIONS", "2"),
                ],
                "DATABASE_POOL_SIZE: 5 is below WORKERS × APPLY_PARTITIONS + 2 = 6",
            ),
            // Raised when unset, but never past its own bound.
            (
                &[("WORKERS", "64"), ("APPLY_PARTITIONS", "16")],
                "WORKERS × APPLY_PARTITIONS + 2 = 1026 connections",
            ),
        ];
        for (pairs, problem) in refused {
            let e = parse_with(pairs).unwrap_err();
            assert!(e.0[0].starts_with(problem), "{pairs:?}: {e:?}");
        }
        // Accepted: the settings, the parts and pool in effect, and the
        // setting shown changed.
        let accepted: [(Pairs, usize, u32, (&str, &str)); 2] = [
            // The pool set alone (a configuration older than
            // APPLY_PARTITIONS) keeps working with the parts it fits.
            (
                &[("WORKERS", "2"), ("DATABASE_POOL_SIZE", "5")],
                1,
                5,
                ("APPLY_PARTITIONS", "1"),
            ),
            // Unset, it is raised to what the workers need.
            (
                &[("WORKERS", "16"), ("APPLY_PARTITIONS", "3")],
                3,
                50,
                ("DATABASE_POOL_SIZE", "50"),
            ),
        ];
        for (pairs, partitions, pool, (name, shown)) in accepted {
            let c = parse_with(pairs).unwrap();
            assert_eq!((c.partitions, c.database.pool_size), (partitions, pool));
            assert!(
                c.redacted().contains(&(name, shown.to_owned())),
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn apply_partitions_doc_names_the_threshold_in_force() {
        // The description is a literal; the threshold lives in `apply`.
        let doc = SETTINGS
            .iter()
            .find(|s| s.name == "APPLY_PARTITIONS")
            .unwrap()
            .doc;
        let threshold = crate::apply::PARTITION_MIN_EVENTS.to_string();
        assert!(doc.contains(&format!("{threshold} events")), "{doc}");
    }

    #[test]
    fn empty_means_default_and_values_are_trimmed() {
        let c = parse_with(&[("BATCH_SIZE", ""), ("WORKERS", " 3 ")]).unwrap();
        assert_eq!(c.redis.batch_size, 500);
        assert_eq!(c.workers, 3);
    }

    /// A scratch directory for one test.
    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("writer-config-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn urls_from_files() {
        let dir = scratch("files");
        let file = dir.join("database-url");
        std::fs::write(&file, "postgres://u:file-secret-1@db:5432/x\n").unwrap();
        let mut v = vars(&MINIMAL[1..]);
        v.extend(vars(&[("DATABASE_URL_FILE", file.to_str().unwrap())]));
        let c = Config::from_vars(v).unwrap();
        assert_eq!(
            c.database.url.expose(),
            "postgres://u:file-secret-1@db:5432/x"
        );
        assert_eq!(c.database.url_file.as_deref(), Some(file.as_path()));
        let shown = c.redacted();
        assert!(shown.contains(&("DATABASE_URL", "postgres://u:***@db:5432/x".to_owned())));
        assert!(shown.contains(&("DATABASE_URL_FILE", file.display().to_string())));

        // Both, a missing file, a file with a bad URL: each named, no
        // secret shown.
        std::fs::write(dir.join("bad"), "postgres://u:file-secret-2@db x").unwrap();
        let e = Config::from_vars(vars(&[
            ("DATABASE_URL", "postgres://u:env-secret@db/x"),
            ("DATABASE_URL_FILE", file.to_str().unwrap()),
            ("REDIS_URL_FILE", dir.join("missing").to_str().unwrap()),
        ]))
        .unwrap_err();
        assert_eq!(e.0.len(), 2, "{e}");
        assert!(
            e.0[0]
                .starts_with("DATABASE_URL_FILE: set DATABASE_URL or DATABASE_URL_FILE, not both"),
            "{e}"
        );
        assert!(e.0[1].starts_with("REDIS_URL_FILE: cannot read "), "{e}");
        let e = Config::from_vars(vars(&[
            ("DATABASE_URL_FILE", dir.join("bad").to_str().unwrap()),
            ("REDIS_URL", "redis://h"),
        ]))
        .unwrap_err();
        assert!(e.0[0].starts_with("DATABASE_URL_FILE: in "), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
        let e = Config::from_vars(vars(&[("REDIS_URL", "redis://h")])).unwrap_err();
        assert!(
            e.0[0].starts_with("DATABASE_URL: is required (or DATABASE_URL_FILE)"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn redis_tls_files() {
        let dir = scratch("redis-tls");
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "nothing").unwrap();
        let mut v = vars(&MINIMAL);
        v.extend(vars(&[
            ("REDIS_CA_CERT", dir.join("missing.pem").to_str().unwrap()),
            ("REDIS_CLIENT_KEY", not_pem.to_str().unwrap()),
        ]));
        let e = Config::from_vars(v).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("REDIS_CA_CERT: cannot read "), "{text}");
        assert!(
            text.contains("REDIS_CLIENT_KEY: ") && text.contains("holds no PEM private key"),
            "{text}"
        );
        assert!(
            text.contains("REDIS_CLIENT_CERT, REDIS_CLIENT_KEY: a client certificate needs both"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// README.md's configuration table is [`readme_table`], between two
    /// markers. `UPDATE_README=1` rewrites it instead of failing.
    #[test]
    fn readme_table_is_current() {
        const BEGIN: &str = "<!-- settings table: generated from src/config.rs SETTINGS -->\n";
        const END: &str = "<!-- end of settings table -->\n";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        let readme = std::fs::read_to_string(path).unwrap();
        let start = readme.find(BEGIN).expect("README.md has the begin marker") + BEGIN.len();
        let end = start
            + readme[start..]
                .find(END)
                .expect("README.md has the end marker");
        let expected = readme_table();
        if readme[start..end] == expected {
            return;
        }
        if std::env::var_os("UPDATE_README").is_some() {
            let updated = format!("{}{expected}{}", &readme[..start], &readme[end..]);
            std::fs::write(path, updated).unwrap();
            return;
        }
        panic!(
            "README.md's settings table differs from SETTINGS; run `UPDATE_README=1 cargo test --lib readme_table` to regenerate it"
        );
    }
}
