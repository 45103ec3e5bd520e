//! `writer check-config`: all problems at once, passwords never printed.

use crate::support::CleanEnv;
use std::process::Command;

fn writer() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_writer"));
    cmd.clean_env()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd
}

#[test]
fn lists_every_bad_variable_and_no_password() {
    let out = writer()
        .arg("check-config")
        .env(
            "DATABASE_URL",
            "postgres://writer:s3cr3t-db-pass@db:5432/x?password=s3cr3t-db-pass",
        )
        .env("REDIS_URL", "http://:s3cr3t-redis-pass@redis")
        .env("BATCH_SIZE", "0")
        .env("WORKERS", "lots")
        .env("HTTP_PORT", "70000")
        .env("DATABASE_SCHEMA", "Not A Schema")
        .env("LOG_FORMAT", "yaml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for var in [
        "REDIS_URL",
        "BATCH_SIZE",
        "WORKERS",
        "HTTP_PORT",
        "DATABASE_SCHEMA",
        "LOG_FORMAT",
    ] {
        assert!(
            text.contains(&format!("{var}: ")),
            "{var} not reported:\n{text}"
        );
    }
    assert!(!text.contains("s3cr3t"), "a password was printed:\n{text}");
}

#[test]
fn prints_the_effective_config_redacted() {
    let out = writer()
        .arg("check-config")
        .env("DATABASE_URL", "postgres://writer:s3cr3t-db-pass@db:5432/x")
        .env("REDIS_URL", "redis://:s3cr3t-redis-pass@redis:6379")
        .env("ADMIN_TOKEN", "s3cr3t-admin-token-123")
        .env("BATCH_SIZE", "250")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("DATABASE_URL=postgres://writer:***@db:5432/x"),
        "{text}"
    );
    assert!(text.contains("REDIS_URL=redis://:***@redis:6379"), "{text}");
    assert!(text.contains("BATCH_SIZE=250"), "{text}");
    assert!(text.contains("ADMIN_TOKEN=***"), "{text}");
    assert!(!text.contains("s3cr3t"), "{text}");
}

/// A scratch file holding `content`, removed with its directory at the end.
struct SecretFile(std::path::PathBuf);

impl SecretFile {
    fn new(content: &str) -> SecretFile {
        let dir = std::env::temp_dir().join(crate::support::private::unique_name("check"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, format!("{content}\n")).unwrap();
        SecretFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// URL files and TLS files are checked with everything else: a variable
/// set twice (X and X_FILE), an unreadable CA, a CA for a plaintext URL are
/// listed with the other problems, and no password is shown.
#[test]
fn files_and_tls_settings_are_checked_with_the_rest() {
    let file = SecretFile::new("postgres://writer:s3cr3t-file-pass@db:5432/x");
    let out = writer()
        .arg("check-config")
        .env("DATABASE_URL", "postgres://writer:s3cr3t-db-pass@db:5432/x")
        .env("DATABASE_URL_FILE", file.path())
        .env("REDIS_URL", "redis://:s3cr3t-redis-pass@redis:6379")
        .env("REDIS_CA_CERT", "/nonexistent/ca.pem")
        .env("BATCH_SIZE", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    for problem in [
        "DATABASE_URL_FILE: set DATABASE_URL or DATABASE_URL_FILE, not both",
        "REDIS_CA_CERT: cannot read /nonexistent/ca.pem",
        "REDIS_URL is not rediss://",
        "BATCH_SIZE: ",
    ] {
        assert!(text.contains(problem), "{problem} not reported:\n{text}");
    }
    assert!(!text.contains("s3cr3t"), "a password was printed:\n{text}");
}

/// check-config shows a URL read from its file (without the password), the
/// file's path, and the TLS each connection will use.
#[test]
fn shows_urls_from_files_and_the_tls_of_each_connection() {
    let file = SecretFile::new(
        "postgres://writer:s3cr3t-file-pass@db.example:5432/x?sslmode=verify-full&sslrootcert=system",
    );
    let out = writer()
        .arg("check-config")
        .env("DATABASE_URL_FILE", file.path())
        .env(
            "REDIS_URL",
            "rediss://:s3cr3t-redis-pass@redis.example:6380",
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "DATABASE_URL=postgres://writer:***@db.example:5432/x\n".to_owned(),
        format!("DATABASE_URL_FILE={}\n", file.path()),
        "REDIS_URL=rediss://:***@redis.example:6380/0\n".to_owned(),
        "# postgres TLS: verify-full: TLS; the server's certificate must be signed by a public root CA".to_owned(),
        "(Mozilla's list, built in) and name `db.example`".to_owned(),
        "# redis TLS: rediss://: TLS; the server's certificate must be signed by the system's root CAs (REDIS_CA_CERT unset) and name `redis.example`".to_owned(),
    ] {
        assert!(text.contains(&line), "{line} not shown:\n{text}");
    }
    assert!(!text.contains("s3cr3t"), "{text}");
}
