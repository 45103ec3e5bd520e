//! Redis connections: [`open`] is the one place a `redis::Client` is made
//! (by the writer, its tests, benches and loadgen), so TLS and the URL file
//! work the same everywhere; [`Connections`] are the consumer's; and
//! [`misconfiguration`] says what an operator must change when Redis
//! refuses the writer.
//!
//! TLS: a `rediss://` URL is verified against `REDIS_CA_CERT` (a PEM file)
//! or, when it is unset, the system's root CAs; `REDIS_CLIENT_CERT` and
//! `REDIS_CLIENT_KEY` give a client certificate for mutual TLS (ADR 0006).

use std::path::Path;
use std::sync::RwLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::io::tcp::TcpSettings;
use redis::{
    AsyncConnectionConfig, ClientTlsConfig, ConnectionAddr, ErrorKind, IntoConnectionInfo,
    RedisError, RedisResult, TlsCertificates,
};
use sha2::{Digest, Sha256};

use crate::config::{RedisConfig, RedisTls, Secret};
use crate::tls::{self, Refusal};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client for `url`, with `tls`'s certificate files read now (so a client
/// made later picks up rotated files). Plain `redis://` URLs take no TLS
/// files.
pub fn open(url: &str, tls: &RedisTls) -> RedisResult<redis::Client> {
    // Without TCP_NODELAY, a write larger than one TLS record (16 KB) —
    // an XADD pipeline, a big XACK — waits for the server's delayed ACK.
    let info = url
        .into_connection_info()?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
    let is_tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
    if !is_tls {
        if tls.is_set() {
            return Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "REDIS_CA_CERT, REDIS_CLIENT_CERT and REDIS_CLIENT_KEY need a rediss:// URL",
            )));
        }
        return redis::Client::open(info);
    }
    tls::install_provider();
    if !tls.is_set() {
        // Verified against the system's root CAs.
        return redis::Client::open(info);
    }
    let read = |path: &Path, what: fn(&Path) -> Result<Vec<u8>, String>| {
        what(path).map_err(|e| {
            RedisError::from((ErrorKind::InvalidClientConfig, "cannot read a TLS file", e))
        })
    };
    let root_cert = match &tls.ca_cert {
        Some(path) => Some(read(path, tls::read_certificates)?),
        None => None,
    };
    let client_tls = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read(cert, tls::read_certificates)?,
            client_key: read(key, tls::read_private_key)?,
        }),
        (None, None) => None,
        _ => {
            return Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "REDIS_CLIENT_CERT and REDIS_CLIENT_KEY go together",
            )));
        }
    };
    redis::Client::build_with_tls(
        info,
        TlsCertificates {
            client_tls,
            root_cert,
        },
    )
}

/// Checks a `REDIS_URL` value; the error never repeats it.
pub fn check_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err("is not a redis:// or rediss:// URL (the value is not shown: a malformed URL cannot be redacted reliably)".to_owned());
    }
    match url.into_connection_info() {
        Ok(info) => match info.addr() {
            ConnectionAddr::TcpTls { insecure: true, .. } => Err(
                "asks for TLS without certificate verification (#insecure), which the writer does not do: give the server's CA in REDIS_CA_CERT instead".to_owned(),
            ),
            _ => Ok(()),
        },
        Err(_) => Err("is not a valid redis:// or rediss:// URL (the value is not shown: a malformed URL cannot be redacted reliably)".to_owned()),
    }
}

/// Whether `url` asks for TLS.
pub fn is_tls_url(url: &str) -> bool {
    url.starts_with("rediss://")
}

/// What the connection's TLS protects, for `check-config`.
pub fn describe_tls(url: &str, tls: &RedisTls) -> String {
    if !is_tls_url(url) {
        return "off: redis:// is plaintext (rediss:// for TLS)".to_owned();
    }
    let roots = match &tls.ca_cert {
        Some(path) => format!("REDIS_CA_CERT ({})", path.display()),
        None => "the system's root CAs (REDIS_CA_CERT unset)".to_owned(),
    };
    let host = url
        .into_connection_info()
        .map(|i| match i.addr() {
            ConnectionAddr::TcpTls { host, .. } => host.clone(),
            _ => String::new(),
        })
        .unwrap_or_default();
    let mut text = format!(
        "rediss://: TLS; the server's certificate must be signed by {roots} and name `{host}`"
    );
    if let Some(cert) = &tls.client_cert {
        text.push_str(&format!(
            "; client certificate REDIS_CLIENT_CERT ({})",
            cert.display()
        ));
    }
    text
}

/// The consumer's Redis connections, made from the current `REDIS_URL` (or
/// the content of `REDIS_URL_FILE`) and certificate files.
pub struct Connections {
    config: RedisConfig,
    commands: RwLock<Commands>,
}

/// The shared connection, and the fingerprint of the URL and files it was
/// made from.
struct Commands {
    manager: ConnectionManager,
    made_from: Option<[u8; 32]>,
}

impl Connections {
    pub fn new(config: &RedisConfig) -> RedisResult<Connections> {
        let commands = Commands::make(config)?;
        Ok(Connections {
            config: config.clone(),
            commands: RwLock::new(commands),
        })
    }

    /// The shared, multiplexed connection for XACK, XAUTOCLAIM, XPENDING,
    /// XINFO: never for blocking reads, which would hold up every command
    /// queued behind them. It reconnects by itself.
    pub fn commands(&self) -> ConnectionManager {
        self.commands
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .manager
            .clone()
    }

    /// A dedicated connection for blocking `XREADGROUP`, with a response
    /// timeout longer than `BLOCK` (a blocked read is not a dead server).
    /// Made anew, files read again, each time the reader must reconnect.
    pub async fn reader(&self) -> RedisResult<MultiplexedConnection> {
        let url = current_url(&self.config)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(self.config.block + Duration::from_secs(5)));
        open(url.expose(), &self.config.tls)?
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// After a failed command: when `REDIS_URL_FILE` or a certificate file
    /// changed since the shared connection was made — a rotated password —
    /// makes it again from their current content. (The connection manager
    /// reconnects by itself, but only ever with what it was made with.)
    pub fn refresh(&self) {
        if self.config.url_file.is_none() && !self.config.tls.is_set() {
            return;
        }
        let now = fingerprint(&self.config);
        if now.is_none()
            || now
                == self
                    .commands
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .made_from
        {
            return;
        }
        match Commands::make(&self.config) {
            Ok(commands) => {
                *self.commands.write().unwrap_or_else(|p| p.into_inner()) = commands;
                tracing::info!(
                    "Redis URL or certificate files changed: the shared connection is made again from them"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot make the Redis connection from the changed URL or certificate files")
            }
        }
    }
}

impl Commands {
    fn make(config: &RedisConfig) -> RedisResult<Commands> {
        let made_from = fingerprint(config);
        let url = current_url(config)?;
        let manager = ConnectionManager::new_lazy_with_config(
            open(url.expose(), &config.tls)?,
            ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(Duration::from_secs(10)))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(2)),
        )?;
        Ok(Commands { manager, made_from })
    }
}

fn current_url(config: &RedisConfig) -> RedisResult<Secret> {
    config
        .current_url()
        .map_err(|e| RedisError::from((ErrorKind::InvalidClientConfig, "REDIS_URL_FILE", e)))
}

/// A digest of everything a connection is made from (None if a file cannot
/// be read right now).
fn fingerprint(config: &RedisConfig) -> Option<[u8; 32]> {
    let mut digest = Sha256::new();
    digest.update(config.current_url().ok()?.expose());
    for path in [
        &config.tls.ca_cert,
        &config.tls.client_cert,
        &config.tls.client_key,
    ]
    .into_iter()
    .flatten()
    {
        digest.update([0]);
        digest.update(std::fs::read(path).ok()?);
    }
    Some(digest.finalize().into())
}

/// Connects once and PINGs, so that `writer run` can stop at start with a
/// clear message when the settings are wrong, instead of retrying forever.
pub async fn probe(config: &RedisConfig) -> RedisResult<()> {
    let url = current_url(config)?;
    let connection = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(CONNECT_TIMEOUT));
    let mut conn = open(url.expose(), &config.tls)?
        .get_multiplexed_async_connection_with_config(&connection)
        .await?;
    redis::cmd("PING").query_async::<()>(&mut conn).await
}

/// Why Redis refused the writer, when the cause is in the settings — a CA
/// that did not sign the server's certificate, a host name it does not
/// list, a missing or refused client certificate, a refused password, a
/// TLS URL for a plaintext port — said once, naming the setting to change,
/// never the password. `None` when it is not the settings' fault.
pub fn misconfiguration(error: &RedisError, config: &RedisConfig) -> Option<String> {
    let url = current_url(config).unwrap_or_else(|_| config.url.clone());
    let info = url.expose().into_connection_info().ok()?;
    let server = format!("Redis at {}", info.addr());
    let url_setting = crate::config::url_setting("REDIS_URL", config.url_file.as_deref());
    if error.kind() == ErrorKind::InvalidClientConfig {
        return Some(format!("{server}: {error}"));
    }
    if let Some(refusal) = tls::refusal(error) {
        let host = match info.addr() {
            ConnectionAddr::TcpTls { host, .. } => host.clone(),
            other => other.to_string(),
        };
        return Some(match refusal {
            Refusal::UnknownIssuer => match &config.tls.ca_cert {
                Some(path) => format!(
                    "{server} presented a TLS certificate that REDIS_CA_CERT ({}) did not sign: set REDIS_CA_CERT to the PEM file of the CA that signed the server's certificate",
                    path.display()
                ),
                None => format!(
                    "{server} presented a TLS certificate that no system root CA signed: set REDIS_CA_CERT to the PEM file of the CA that signed it"
                ),
            },
            Refusal::WrongName => format!(
                "{server} presented a TLS certificate that does not name `{host}`: connect by a name the certificate lists, in {url_setting}"
            ),
            Refusal::Expired => {
                format!("{server} presented a TLS certificate that has expired or is not valid yet")
            }
            Refusal::ClientCertificateRequired => format!(
                "{server} requires a client certificate: set REDIS_CLIENT_CERT and REDIS_CLIENT_KEY"
            ),
            Refusal::ClientCertificateRejected => format!(
                "{server} refused the client certificate REDIS_CLIENT_CERT: it must be signed by a CA the server trusts (tls-ca-cert-file)"
            ),
            Refusal::NotTls => format!(
                "{server} did not answer in TLS: is it a TLS port? ({url_setting} is rediss://; use redis:// for a plaintext port)"
            ),
            Refusal::Other(e) => format!("TLS with {server} failed: {e}"),
        });
    }
    let refused = error.kind() == ErrorKind::AuthenticationFailed
        || matches!(
            error.code(),
            Some("NOAUTH" | "WRONGPASS" | "WRONGTYPE_AUTH")
        );
    refused.then(|| {
        format!(
            "{server} refused the credentials in {url_setting}: correct the user or password (not shown here)"
        )
    })
}

/// A Redis error as the logs should show it: what to change when the
/// settings are at fault, the error itself otherwise.
pub fn describe_error(error: &RedisError, config: &RedisConfig) -> String {
    misconfiguration(error, config).unwrap_or_else(|| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(check_url("redis://h:6379").is_ok());
        assert!(check_url("rediss://:pw@h:6380/1").is_ok());
        let e = check_url("rediss://:pw-x@h:6380/#insecure").unwrap_err();
        assert!(e.contains("REDIS_CA_CERT") && !e.contains("pw-x"), "{e}");
        let e = check_url("http://:pw-y@h").unwrap_err();
        assert!(!e.contains("pw-y"), "{e}");
    }

    #[test]
    fn tls_files_need_a_tls_url() {
        let tls = RedisTls {
            ca_cert: Some("/ca.pem".into()),
            ..RedisTls::default()
        };
        let e = open("redis://127.0.0.1:6379", &tls).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidClientConfig);
        assert!(describe_tls("redis://h:1", &RedisTls::default()).starts_with("off"));
        assert!(describe_tls("rediss://h:1", &tls).contains("REDIS_CA_CERT (/ca.pem)"));
    }
}
