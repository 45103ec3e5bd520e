//! TLS, shared by the Postgres and Redis connections (ADR 0006): one crypto
//! provider (rustls with *ring*, no OpenSSL), certificate files checked when
//! the configuration is read, and failed handshakes turned into what an
//! operator has to change.

use std::error::Error;
use std::path::Path;
use std::sync::{Arc, Once};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, CertificateError};

/// Makes *ring* the process's rustls provider. sqlx names its provider
/// itself; the redis crate takes the process default, which must not be
/// left to whichever provider features happen to be compiled in.
pub fn install_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err only if a provider is installed already: then that one stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Reads a PEM file holding at least one certificate.
pub fn read_certificates(path: &Path) -> Result<Vec<u8>, String> {
    let pem = read(path)?;
    let certificates: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    match certificates {
        Ok(c) if !c.is_empty() => Ok(pem),
        Ok(_) => Err(format!("{} holds no PEM certificate", path.display())),
        Err(e) => Err(format!(
            "{} is not a PEM certificate file: {e}",
            path.display()
        )),
    }
}

/// Reads a PEM file holding a private key (its content is never shown).
pub fn read_private_key(path: &Path) -> Result<Vec<u8>, String> {
    let pem = read(path)?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(_) => Ok(pem),
        Err(_) => Err(format!("{} holds no PEM private key", path.display())),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Why a TLS handshake failed, in the terms an operator acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The server's certificate is not signed by a trusted CA.
    UnknownIssuer,
    /// The server's certificate does not list the host name connected to.
    WrongName,
    /// The server's certificate is expired or not valid yet.
    Expired,
    /// The server wants a client certificate and none was given.
    ClientCertificateRequired,
    /// The server refused the client certificate given.
    ClientCertificateRejected,
    /// The server answered something that is not TLS.
    NotTls,
    /// Anything else, as rustls says it.
    Other(String),
}

/// The TLS failure somewhere in `error`'s chain of causes, if any. rustls
/// errors travel inside `io::Error`s (sqlx, tokio-rustls) and inside the
/// `Arc`s the redis crate wraps causes in; both are looked through.
pub fn refusal(error: &(dyn Error + 'static)) -> Option<Refusal> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(found) = rustls_error(e) {
            return Some(classify(found));
        }
        cause = e.source();
    }
    None
}

fn rustls_error<'a>(e: &'a (dyn Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        return io.get_ref().and_then(|inner| rustls_error(inner));
    }
    if let Some(shared) = e.downcast_ref::<Arc<dyn Error + Send + Sync>>() {
        return rustls_error(&**shared);
    }
    None
}

fn classify(error: &rustls::Error) -> Refusal {
    use rustls::Error::{AlertReceived, InvalidCertificate, InvalidMessage};
    match error {
        InvalidCertificate(CertificateError::UnknownIssuer) => Refusal::UnknownIssuer,
        InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => Refusal::WrongName,
        InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => Refusal::Expired,
        AlertReceived(AlertDescription::CertificateRequired) => Refusal::ClientCertificateRequired,
        AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::DecryptError
            | AlertDescription::AccessDenied,
        ) => Refusal::ClientCertificateRejected,
        InvalidMessage(_) => Refusal::NotTls,
        other => Refusal::Other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_found_through_io_and_arc_wrappers() {
        let tls = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls.clone());
        assert_eq!(refusal(&io), Some(Refusal::UnknownIssuer));
        let shared: Arc<dyn Error + Send + Sync> = Arc::new(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
        ));
        assert_eq!(refusal(&shared), Some(Refusal::ClientCertificateRequired));
        let sqlx = sqlx::Error::Io(io);
        assert_eq!(refusal(&sqlx), Some(Refusal::UnknownIssuer));
        let plain = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(refusal(&plain), None);
    }

    #[test]
    fn certificate_files_are_checked() {
        let dir = std::env::temp_dir().join(format!("writer-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        assert!(
            read_certificates(&not_pem)
                .unwrap_err()
                .contains("no PEM certificate")
        );
        assert!(
            read_private_key(&not_pem)
                .unwrap_err()
                .contains("no PEM private key")
        );
        let missing = dir.join("missing.pem");
        assert!(
            read_certificates(&missing)
                .unwrap_err()
                .starts_with("cannot read")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
