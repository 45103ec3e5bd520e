//! The Postgres pool: how the writer connects (TLS as libpq names it, the
//! URL re-read from `DATABASE_URL_FILE`), what a failed connection means
//! for the operator, and what a failure means for the caller.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};

use crate::config::{DatabaseConfig, Secret};
use crate::tls::{self, Refusal};

/// How often `DATABASE_URL_FILE` is looked at for a new URL.
const URL_FILE_CHECK: Duration = Duration::from_secs(1);

/// Builds the pool. Every connection starts with `search_path` set to the
/// configured schema (so no SQL in the writer names a schema) and with the
/// configured statement timeout, both as startup parameters: no extra round
/// trip per connection.
///
/// The pool connects lazily, so the writer starts (and reports unhealthy)
/// while Postgres is still down, instead of failing to start.
///
/// With `DATABASE_URL_FILE`, a task keeps the pool's connect options equal
/// to the file's content (see [`follow_url_file`]): connections opened after
/// the file changed — a rotated password — use the new URL, without a
/// restart.
pub fn pool(config: &DatabaseConfig) -> Result<PgPool, sqlx::Error> {
    let options = connect_options(config, config.url.expose())?;
    let server_port = Arc::new(AtomicU16::new(options.get_port()));
    let port = server_port.clone();
    let pool = PgPoolOptions::new()
        .max_connections(config.pool_size)
        .min_connections(0)
        .acquire_timeout(config.acquire_timeout)
        .test_before_acquire(false)
        .after_connect(move |_, _| {
            disable_nagle(port.load(Ordering::Relaxed));
            Box::pin(async { Ok(()) })
        })
        .connect_lazy_with(options);
    if let (Some(path), Ok(runtime)) = (&config.url_file, tokio::runtime::Handle::try_current()) {
        runtime.spawn(follow_url_file(
            pool.clone(),
            config.clone(),
            path.clone(),
            server_port,
        ));
    }
    Ok(pool)
}

/// Turns Nagle's algorithm off on the process's sockets connected to port
/// `port` (the database's): sqlx 0.9.0 leaves it on (launchbadge/sqlx#4335,
/// fixed after 0.9.0), and over TLS a statement larger than one TLS record
/// (16 KB) — every batch insert — is written record by record, each record
/// then waiting for the server's delayed ACK: 40 ms per statement, a
/// fourfold slowdown of the writer. libpq sets TCP_NODELAY on every
/// connection; until sqlx does again, this does it for the connection the
/// pool just opened (and for any other to that port, harmlessly). Remove it
/// when sqlx sets TCP_NODELAY itself.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // borrowing a descriptor by number: see the SAFETY note
fn disable_nagle(port: u16) {
    use std::os::fd::{BorrowedFd, RawFd};
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for entry in fds.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // SAFETY: the descriptor is only borrowed for three socket calls
        // (getpeername, getsockopt, setsockopt), which touch no memory of
        // ours. Should another thread close it meanwhile and the number be
        // reused, the calls apply to that socket instead, and only if it
        // is also a TCP connection to the database's port.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&fd);
        let to_database = socket
            .peer_addr()
            .ok()
            .and_then(|addr| addr.as_socket())
            .is_some_and(|addr| addr.port() == port);
        if to_database && socket.tcp_nodelay().is_ok_and(|on| !on) {
            let _ = socket.set_tcp_nodelay(true);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn disable_nagle(_port: u16) {}

/// The options one connection is opened with, from `url` (DATABASE_URL or
/// the content of DATABASE_URL_FILE).
pub fn connect_options(
    config: &DatabaseConfig,
    url: &str,
) -> Result<PgConnectOptions, sqlx::Error> {
    let tls = PgTls::from_url(url).map_err(|e| sqlx::Error::Configuration(e.into()))?;
    let mut options = PgConnectOptions::from_str(&tls.url_for_sqlx(url))?
        .ssl_mode(tls.mode.sqlx())
        .application_name("writer")
        .options([
            ("search_path", config.schema.as_str()),
            // Keep NOTICEs ("already exists, skipping") out of the logs.
            ("client_min_messages", "warning"),
        ]);
    if !config.statement_timeout.is_zero() {
        options = options.options([(
            "statement_timeout",
            format!("{}", config.statement_timeout.as_millis()),
        )]);
    }
    Ok(if config.slow_statement.is_zero() {
        options.log_slow_statements(log::LevelFilter::Off, Duration::MAX)
    } else {
        options.log_slow_statements(log::LevelFilter::Warn, config.slow_statement)
    })
}

/// Re-reads `DATABASE_URL_FILE` every [`URL_FILE_CHECK`] until the pool is
/// closed; a changed, valid URL becomes the pool's connect options. Open
/// connections are kept (Postgres keeps the sessions of a role whose
/// password changed); the pool opens new ones — after the server ended
/// them, say — with the new URL. A file that cannot be read or holds no
/// valid URL (half written) is reported once and the previous URL kept.
async fn follow_url_file(
    pool: PgPool,
    config: DatabaseConfig,
    path: PathBuf,
    server_port: Arc<AtomicU16>,
) {
    let mut current = config.url.clone();
    let mut reported = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(URL_FILE_CHECK) => {}
            _ = pool.close_event() => return,
        }
        // Parsed (certificate files read) only when the URL changed.
        let next = crate::config::read_secret_file(&path).and_then(|url| {
            if url == current {
                return Ok(None);
            }
            match connect_options(&config, url.expose()) {
                Ok(options) => Ok(Some((url, options))),
                Err(e) => Err(format!("{} does not hold a valid URL: {e}", path.display())),
            }
        });
        match next {
            Ok(None) => reported = false,
            Ok(Some((url, options))) => {
                server_port.store(options.get_port(), Ordering::Relaxed);
                pool.set_connect_options(options);
                current = url;
                reported = false;
                tracing::info!(file = %path.display(), "DATABASE_URL_FILE changed: new connections use its URL");
            }
            Err(problem) if !reported => {
                tracing::warn!(
                    "DATABASE_URL_FILE: {problem}; new connections keep the previous URL"
                );
                reported = true;
            }
            Err(_) => {}
        }
    }
}

/// The TLS parameters of a `postgres://` URL, with libpq's names and
/// meanings: `sslmode` (`disable`, `allow`, `prefer` — the default —,
/// `require`, `verify-ca`, `verify-full`), `sslrootcert` (a PEM file, or
/// `system`), `sslcert` and `sslkey`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTls {
    /// The mode connections use.
    pub mode: SslMode,
    /// `sslmode` as written in the URL, if it was.
    pub given: Option<String>,
    pub root_cert: RootCert,
    pub client_cert: Option<PathBuf>,
}

/// libpq's `sslmode`s as the writer serves them (`allow` is served as
/// `prefer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn sqlx(self) -> PgSslMode {
        match self {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        }
    }
}

/// The CAs a server's certificate is checked against (verify-ca,
/// verify-full).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// The public root CAs (Mozilla's list, built in: `webpki-roots`); what
    /// libpq's `sslrootcert=system` means on a typical system.
    System,
    /// This PEM file — in addition to the public root CAs: sqlx adds it to
    /// them rather than replacing them (ADR 0006).
    File(PathBuf),
}

impl PgTls {
    /// Reads and checks the TLS parameters of `url`; the error names what
    /// is wrong without repeating the URL.
    pub fn from_url(url: &str) -> Result<PgTls, String> {
        let parsed = url::Url::parse(url).map_err(|_| "is not a valid URL".to_owned())?;
        let (mut mode, mut given, mut root, mut cert, mut key) = (None, None, None, None, None);
        for (name, value) in parsed.query_pairs() {
            match &*name {
                "sslmode" | "ssl-mode" => {
                    mode = Some(match &*value {
                        "disable" => SslMode::Disable,
                        // libpq tries without TLS first, then with; sqlx
                        // would never try TLS. `prefer` reaches every
                        // server `allow` reaches, encrypted when it can.
                        "allow" | "prefer" => SslMode::Prefer,
                        "require" => SslMode::Require,
                        "verify-ca" => SslMode::VerifyCa,
                        "verify-full" => SslMode::VerifyFull,
                        other => {
                            return Err(format!(
                                "sslmode `{other}` is not one of disable, allow, prefer, require, verify-ca, verify-full"
                            ));
                        }
                    });
                    given = Some(value.into_owned());
                }
                "sslrootcert" | "ssl-root-cert" | "ssl-ca" => root = Some(value.into_owned()),
                "sslcert" | "ssl-cert" => cert = Some(PathBuf::from(&*value)),
                "sslkey" | "ssl-key" => key = Some(PathBuf::from(&*value)),
                _ => {}
            }
        }
        let root_cert = match root.as_deref() {
            None => RootCert::System,
            Some("system") => {
                // libpq (16+): the system's CAs, and nothing below verify-full.
                match mode {
                    None | Some(SslMode::VerifyFull) => mode = Some(SslMode::VerifyFull),
                    Some(_) => {
                        return Err(
                            "sslrootcert=system needs sslmode=verify-full (as in libpq)".to_owned()
                        );
                    }
                }
                RootCert::System
            }
            Some(path) => {
                let path = PathBuf::from(path);
                tls::read_certificates(&path).map_err(|e| format!("sslrootcert: {e}"))?;
                // libpq: "if a root CA file exists, sslmode=require
                // behaves like verify-ca".
                if mode == Some(SslMode::Require) {
                    mode = Some(SslMode::VerifyCa);
                }
                RootCert::File(path)
            }
        };
        match (&cert, &key) {
            (Some(cert), Some(key)) => {
                tls::read_certificates(cert).map_err(|e| format!("sslcert: {e}"))?;
                tls::read_private_key(key).map_err(|e| format!("sslkey: {e}"))?;
            }
            (None, None) => {}
            _ => return Err("sslcert and sslkey go together".to_owned()),
        }
        Ok(PgTls {
            mode: mode.unwrap_or(SslMode::Prefer),
            given,
            root_cert,
            client_cert: cert,
        })
    }

    /// `url` as sqlx must read it: without `sslrootcert=system`, which sqlx
    /// would take for a file name (the public roots are its default).
    fn url_for_sqlx(&self, url: &str) -> String {
        let Ok(mut parsed) = url::Url::parse(url) else {
            return url.to_owned();
        };
        let is_system = |(k, v): &(std::borrow::Cow<str>, std::borrow::Cow<str>)| {
            matches!(&**k, "sslrootcert" | "ssl-root-cert" | "ssl-ca") && v == "system"
        };
        if !parsed.query_pairs().any(|pair| is_system(&pair)) {
            return url.to_owned();
        }
        let kept: Vec<(String, String)> = parsed
            .query_pairs()
            .filter(|pair| !is_system(pair))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(kept);
        parsed.into()
    }

    /// The mode's libpq name.
    pub fn mode_name(&self) -> &'static str {
        self.mode.name()
    }

    /// What the connection's TLS protects, for `check-config`.
    pub fn describe(&self, host: &str) -> String {
        let roots = match &self.root_cert {
            RootCert::System => "a public root CA (Mozilla's list, built in)".to_owned(),
            RootCert::File(path) => {
                format!("sslrootcert {} (or a public root CA)", path.display())
            }
        };
        let mut text = match self.mode {
            SslMode::Disable => "disable: no TLS".to_owned(),
            SslMode::Prefer => "prefer: TLS if the server offers it, else plaintext; the server's certificate is not checked".to_owned(),
            SslMode::Require => "require: TLS; the server's certificate is not checked".to_owned(),
            SslMode::VerifyCa => format!("verify-ca: TLS; the server's certificate must be signed by {roots}; its host name is not checked"),
            SslMode::VerifyFull => format!("verify-full: TLS; the server's certificate must be signed by {roots} and name `{host}`"),
        };
        match self.given.as_deref() {
            Some(given) if given != self.mode_name() => {
                text.push_str(&format!(" (sslmode={given} in the URL"));
                text.push_str(match given {
                    "require" => " with sslrootcert behaves as verify-ca, as in libpq)",
                    "allow" => " is served as prefer)",
                    _ => ")",
                });
            }
            None if self.root_cert == RootCert::System && self.mode == SslMode::VerifyFull => {
                text.push_str(" (sslrootcert=system)");
            }
            None => text.push_str(" (no sslmode in the URL: libpq's default)"),
            _ => {}
        }
        if let Some(cert) = &self.client_cert {
            text.push_str(&format!("; client certificate {}", cert.display()));
        }
        text
    }
}

/// The connection's TLS as `check-config` shows it.
pub fn describe_tls(url: &str) -> String {
    let host = PgConnectOptions::from_str(url)
        .map(|o| o.get_host().to_owned())
        .unwrap_or_default();
    match PgTls::from_url(url) {
        Ok(tls) => tls.describe(&host),
        Err(e) => format!("(invalid: {e})"),
    }
}

/// Why connecting to Postgres failed, when the cause is in the settings —
/// a CA that did not sign the server's certificate, a host name it does not
/// list, TLS required but not offered, a refused password or user, a
/// missing database — said once, naming the setting to change, never the
/// password. `None` when it is not the settings' fault (the server is down,
/// the network failed): trying again may then succeed.
pub fn misconfiguration(error: &sqlx::Error, config: &DatabaseConfig) -> Option<String> {
    let url = config.current_url().unwrap_or_else(|_| config.url.clone());
    let options = PgConnectOptions::from_str(url.expose()).ok()?;
    let tls = PgTls::from_url(url.expose()).ok()?;
    let (host, port, user) = (
        options.get_host(),
        options.get_port(),
        options.get_username(),
    );
    let setting = crate::config::url_setting("DATABASE_URL", config.url_file.as_deref());
    let server = format!("Postgres at {host}:{port}");
    if let Some(refusal) = tls::refusal(error) {
        let roots = match &tls.root_cert {
            RootCert::File(path) => format!(
                "neither sslrootcert ({}) nor a public root CA",
                path.display()
            ),
            RootCert::System => "no public root CA".to_owned(),
        };
        return Some(match refusal {
            Refusal::UnknownIssuer => format!(
                "{server} presented a TLS certificate that {roots} signed (sslmode={}): give the CA that signed it as sslrootcert=<PEM file> in {setting}",
                tls.mode_name()
            ),
            Refusal::WrongName => format!(
                "{server} presented a TLS certificate that does not name `{host}` (sslmode=verify-full checks the host name): connect by a name the certificate lists, or use sslmode=verify-ca, in {setting}"
            ),
            Refusal::Expired => {
                format!("{server} presented a TLS certificate that has expired or is not valid yet")
            }
            Refusal::ClientCertificateRequired => format!(
                "{server} requires a client certificate: give sslcert and sslkey in {setting}"
            ),
            Refusal::ClientCertificateRejected => format!(
                "{server} refused the client certificate (sslcert in {setting}): it must be signed by a CA the server trusts (ssl_ca_file)"
            ),
            Refusal::NotTls => format!("{server} did not answer in TLS"),
            Refusal::Other(e) => format!("TLS with {server} failed: {e}"),
        });
    }
    match error {
        sqlx::Error::Tls(e) if e.to_string().contains("does not support TLS") => Some(format!(
            "{server} does not accept TLS connections, but sslmode={} in {setting} requires TLS: enable ssl on the server, or use sslmode=prefer",
            tls.mode_name()
        )),
        sqlx::Error::Configuration(e) => Some(format!("{setting}: {e}")),
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("28P01") => Some(format!(
                "{server} refused the password of user `{user}`: correct it in {setting} (it is not shown here)"
            )),
            Some(code) if code.starts_with("28") => {
                let message = db.message();
                let hint = if message.contains("no encryption") || message.contains("SSL off") {
                    format!(
                        ": the server accepts this user only over TLS; set sslmode=require or stricter in {setting}"
                    )
                } else {
                    format!(": check the user in {setting} and the server's pg_hba.conf")
                };
                Some(format!("{server} refused user `{user}` ({message}){hint}"))
            }
            Some("3D000") => Some(format!(
                "{server} has no database `{}` (the database in {setting})",
                options.get_database().unwrap_or("")
            )),
            _ => None,
        },
        _ => None,
    }
}

impl DatabaseConfig {
    /// The URL to connect with now: the content of DATABASE_URL_FILE, read
    /// again, or DATABASE_URL.
    pub fn current_url(&self) -> Result<Secret, String> {
        crate::config::current_url(&self.url, self.url_file.as_deref())
    }
}

/// How a failed database operation should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Postgres cannot be reached (connection refused or lost, pool timeout,
    /// server shutting down, credentials refused — say mid-rotation) or is
    /// not the database the writer expects (missing table, privileges):
    /// wait, with the circuit breaker open.
    Unavailable,
    /// The operation may succeed if tried again (deadlock, serialization
    /// failure, statement timeout, lock timeout, out of resources).
    Transient,
    /// The same input will fail the same way (a constraint or data error):
    /// isolate the event responsible and dead-letter it.
    Permanent,
}

/// Classifies an error by its kind and SQLSTATE.
pub fn classify(error: &sqlx::Error) -> Failure {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Configuration(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => Failure::Unavailable,
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // connection_exception class; admin/crash shutdown, cannot connect now.
            Some(code) if code.starts_with("08") => Failure::Unavailable,
            Some("57P01" | "57P02" | "57P03") => Failure::Unavailable,
            // invalid_authorization_specification (a refused password,
            // while a rotated one is on its way) and invalid_catalog_name:
            // no event is at fault.
            Some(code) if code.starts_with("28") || code == "3D000" => Failure::Unavailable,
            // The database is not as the writer expects (an undefined table
            // or column, missing privileges, a dropped schema — say during a
            // botched deploy): no event is at fault, so wait loudly (circuit
            // open, /health degraded) instead of dead-lettering everything.
            Some(code) if code.starts_with("42") || code.starts_with("3F") => Failure::Unavailable,
            // serialization_failure, deadlock_detected, query_canceled
            // (statement timeout), lock_not_available, insufficient_resources
            // class, too_many_connections.
            Some("40001" | "40P01" | "57014" | "55P03") => Failure::Transient,
            Some(code) if code.starts_with("53") => Failure::Transient,
            _ => Failure::Permanent,
        },
        _ => Failure::Permanent,
    }
}

/// The server settings that bound how fast a sync from the chain's start
/// runs, logged once at start: they are the operator's to change (ADR 0017),
/// and at stock values a sync is markedly slower (README, "Sync speed and
/// Postgres settings"; benches/README.md).
#[derive(Debug, sqlx::FromRow)]
pub struct ServerSettings {
    pub version: String,
    /// As Postgres shows it ("128MB"), for the operator; the byte count
    /// beside it is Postgres's own parse of that text (`pg_size_bytes`), so
    /// units need no parsing here.
    pub shared_buffers: String,
    pub shared_buffers_bytes: i64,
    pub max_wal_size: String,
    pub max_wal_size_bytes: i64,
}

/// What a sync wants, in bytes and as Postgres spells it. Measured on one
/// 2-core host: 1GB / 4GB applied a million events 29 % faster than the
/// stock 128MB / 1GB, and larger buffer pools were slower there
/// (benches/README.md, eighth session).
const SYNC_SHARED_BUFFERS: (i64, &str) = (1 << 30, "1GB");
const SYNC_MAX_WAL_SIZE: (i64, &str) = (4 << 30, "4GB");

impl ServerSettings {
    pub async fn read(pool: &PgPool) -> Result<ServerSettings, sqlx::Error> {
        sqlx::query_as(
            "SELECT current_setting('server_version') AS version,
                    current_setting('shared_buffers') AS shared_buffers,
                    pg_size_bytes(current_setting('shared_buffers')) AS shared_buffers_bytes,
                    current_setting('max_wal_size') AS max_wal_size,
                    pg_size_bytes(current_setting('max_wal_size')) AS max_wal_size_bytes",
        )
        .fetch_one(pool)
        .await
    }

    /// Which settings to raise for a faster sync, if any.
    fn sync_hint(&self) -> Option<String> {
        let low: Vec<String> = [
            (
                "shared_buffers",
                self.shared_buffers_bytes,
                SYNC_SHARED_BUFFERS,
            ),
            ("max_wal_size", self.max_wal_size_bytes, SYNC_MAX_WAL_SIZE),
        ]
        .into_iter()
        .filter(|(_, bytes, (wanted, _))| bytes < wanted)
        .map(|(name, _, (_, spelled))| format!("{name} to {spelled} or more"))
        .collect();
        (!low.is_empty()).then(|| {
            format!(
                "raise {} for a faster sync from the chain's start (README: Sync speed and Postgres settings)",
                low.join(" and ")
            )
        })
    }

    /// One info line at start, a hint included when a setting is low: info,
    /// not a warning, because nothing is wrong (development machines run
    /// stock settings); a sync is only slower.
    pub(crate) fn log(&self) {
        tracing::info!(
            version = %self.version,
            shared_buffers = %self.shared_buffers,
            max_wal_size = %self.max_wal_size,
            hint = self.sync_hint().as_deref(),
            "postgres server"
        );
    }
}

impl std::fmt::Display for ServerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Postgres {}, shared_buffers {}, max_wal_size {}",
            self.version, self.shared_buffers, self.max_wal_size
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings of these sizes (the hint reads only the byte counts).
    fn settings(shared_buffers: i64, max_wal_size: i64) -> ServerSettings {
        ServerSettings {
            version: String::new(),
            shared_buffers: String::new(),
            shared_buffers_bytes: shared_buffers,
            max_wal_size: String::new(),
            max_wal_size_bytes: max_wal_size,
        }
    }

    #[test]
    fn the_sync_hint_names_exactly_the_settings_below_their_mark() {
        let hint = |b, w| settings(b, w).sync_hint();
        let both = hint(128 << 20, 1 << 30).unwrap();
        assert!(both.contains("shared_buffers to 1GB") && both.contains("max_wal_size to 4GB"));
        let buffers = hint(128 << 20, 4 << 30).unwrap();
        assert!(buffers.contains("shared_buffers") && !buffers.contains("max_wal_size"));
        let wal = hint(1 << 30, (4 << 30) - 1).unwrap();
        assert!(!wal.contains("shared_buffers") && wal.contains("max_wal_size"));
        assert_eq!(hint(1 << 30, 4 << 30), None);
        assert_eq!(hint(8 << 30, 16 << 30), None);
    }

    #[test]
    fn io_and_pool_errors_mean_unavailable() {
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), Failure::Unavailable);
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(classify(&io), Failure::Unavailable);
        let config = sqlx::Error::Configuration("sslkey: gone".into());
        assert_eq!(classify(&config), Failure::Unavailable);
        assert_eq!(classify(&sqlx::Error::RowNotFound), Failure::Permanent);
    }

    fn tls(url: &str) -> Result<PgTls, String> {
        PgTls::from_url(url)
    }

    #[test]
    fn sslmodes_as_libpq_names_them() {
        let base = "postgres://u:pw@db.example:5432/x";
        assert_eq!(tls(base).unwrap().mode, SslMode::Prefer);
        for (given, mode) in [
            ("disable", SslMode::Disable),
            ("allow", SslMode::Prefer),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            let t = tls(&format!("{base}?sslmode={given}")).unwrap();
            assert_eq!(t.mode, mode, "{given}");
            assert!(t.describe("db.example").starts_with(t.mode_name()));
        }
        let e = tls(&format!("{base}?sslmode=sometimes")).unwrap_err();
        assert!(
            e.contains("sslmode `sometimes`") && !e.contains("pw"),
            "{e}"
        );
    }

    #[test]
    fn root_certificates() {
        let base = "postgres://u:pw@db.example/x";
        let system = tls(&format!("{base}?sslrootcert=system")).unwrap();
        assert_eq!(
            (system.mode, system.root_cert.clone()),
            (SslMode::VerifyFull, RootCert::System)
        );
        assert!(
            !system
                .url_for_sqlx(&format!("{base}?sslrootcert=system&application_name=a"))
                .contains("system")
        );
        assert!(tls(&format!("{base}?sslmode=require&sslrootcert=system")).is_err());
        let e = tls(&format!(
            "{base}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"
        ))
        .unwrap_err();
        assert!(
            e.starts_with("sslrootcert: cannot read /nonexistent/ca.pem"),
            "{e}"
        );
        assert_eq!(
            tls(&format!("{base}?sslcert=/a.pem")).unwrap_err(),
            "sslcert and sslkey go together"
        );
    }

    #[test]
    fn require_with_a_root_certificate_verifies_the_chain() {
        let dir = std::env::temp_dir().join(format!("writer-db-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        // Any certificate will do: only its PEM form is checked here.
        std::fs::write(&ca, TEST_CERTIFICATE).unwrap();
        let t = tls(&format!(
            "postgres://u@h/x?sslmode=require&sslrootcert={}",
            ca.display()
        ))
        .unwrap();
        assert_eq!(t.mode, SslMode::VerifyCa);
        assert!(
            t.describe("h").contains("behaves as verify-ca"),
            "{}",
            t.describe("h")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A self-signed certificate (CN=test), for parsing only.
    const TEST_CERTIFICATE: &str = "-----BEGIN CERTIFICATE-----
MIIBczCCARmgAwIBAgIUQvDoWP3VnrICJbcf12BgTNIotU0wCgYIKoZIzj0EAwIw
DzENMAsGA1UEAwwEdGVzdDAeFw0yNjExMzAyMzQzMjhaFw0zNjExMjcyMzQzMjha
MA8xDTALBgNVBAMMBHRlc3QwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAS++nJN
9N9IixmEMVWqQ3gYhruVfdohJunQSreqHPlGpQGciYSEaSDKPYS5ReAX5glc9c3q
iOG9Zsl+8wwwu+pyo1MwUTAdBgNVHQ4EFgQU0eZlIVniXZo6ZZtLN2HJElmHI40w
HwYDVR0jBBgwFoAU0eZlIVniXZo6ZZtLN2HJElmHI40wDwYDVR0TAQH/BAUwAwEB
/zAKBggqhkjOPQQDAgNIADBFAiB+PqC6Ys8wTaK49c/Rcap4hXtiv0l+sosZdyMF
F5BE/gIhAK2dE4BKUgSUwojLv9MBIXszu8clJtagQt7qDuhNh/qX
-----END CERTIFICATE-----
";
}
