//! `writer check-config`: all problems at once, passwords never printed.

use crate::support::service::{SecretFile, writer_once};

#[test]
fn lists_every_bad_variable_and_no_password() {
    let out = writer_once(
        &["check-config"],
        [
            (
                "DATABASE_URL",
                "postgres://writer:s3cr3t-db-pass@db:5432/x?password=s3cr3t-db-pass",
            ),
            ("REDIS_URL", "http://:s3cr3t-redis-pass@redis"),
            ("BATCH_SIZE", "0"),
            ("WORKERS", "lots"),
            ("HTTP_PORT", "70000"),
            ("DATABASE_SCHEMA", "Not A Schema"),
            ("LOG_FORMAT", "yaml"),
        ],
    );
    assert_eq!(out.code, Some(2));
    let text = out.text();
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
    let out = writer_once(
        &["check-config"],
        [
            ("DATABASE_URL", "postgres://writer:s3cr3t-db-pass@db:5432/x"),
            ("REDIS_URL", "redis://:s3cr3t-redis-pass@redis:6379"),
            ("ADMIN_TOKEN", "s3cr3t-admin-token-123"),
            ("BATCH_SIZE", "250"),
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.text());
    for line in [
        "DATABASE_URL=postgres://writer:***@db:5432/x",
        "REDIS_URL=redis://:***@redis:6379",
        "BATCH_SIZE=250",
        "ADMIN_TOKEN=***",
    ] {
        assert!(
            out.stdout.contains(line),
            "{line} not shown:\n{}",
            out.stdout
        );
    }
    assert!(!out.stdout.contains("s3cr3t"), "{}", out.stdout);
}

/// URL files and TLS files are checked with everything else: a variable
/// set twice (X and X_FILE), an unreadable CA, a CA for a plaintext URL are
/// listed with the other problems, and no password is shown.
#[test]
fn files_and_tls_settings_are_checked_with_the_rest() {
    let file = SecretFile::new("postgres://writer:s3cr3t-file-pass@db:5432/x");
    let out = writer_once(
        &["check-config"],
        [
            ("DATABASE_URL", "postgres://writer:s3cr3t-db-pass@db:5432/x"),
            ("DATABASE_URL_FILE", file.path()),
            ("REDIS_URL", "redis://:s3cr3t-redis-pass@redis:6379"),
            ("REDIS_CA_CERT", "/nonexistent/ca.pem"),
            ("BATCH_SIZE", "0"),
        ],
    );
    assert_eq!(out.code, Some(2));
    for problem in [
        "DATABASE_URL_FILE: set DATABASE_URL or DATABASE_URL_FILE, not both",
        "REDIS_CA_CERT: cannot read /nonexistent/ca.pem",
        "REDIS_URL is not rediss://",
        "BATCH_SIZE: ",
    ] {
        assert!(
            out.stderr.contains(problem),
            "{problem} not reported:\n{}",
            out.stderr
        );
    }
    assert!(
        !out.stderr.contains("s3cr3t"),
        "a password was printed:\n{}",
        out.stderr
    );
}

/// check-config shows a URL read from its file (without the password), the
/// file's path, and the TLS each connection will use.
#[test]
fn shows_urls_from_files_and_the_tls_of_each_connection() {
    let file = SecretFile::new(
        "postgres://writer:s3cr3t-file-pass@db.example:5432/x?sslmode=verify-full&sslrootcert=system",
    );
    let out = writer_once(
        &["check-config"],
        [
            ("DATABASE_URL_FILE", file.path()),
            (
                "REDIS_URL",
                "rediss://:s3cr3t-redis-pass@redis.example:6380",
            ),
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.text());
    for line in [
        "DATABASE_URL=postgres://writer:***@db.example:5432/x\n".to_owned(),
        format!("DATABASE_URL_FILE={}\n", file.path()),
        "REDIS_URL=rediss://:***@redis.example:6380/0\n".to_owned(),
        "# postgres TLS: verify-full: TLS; the server's certificate must be signed by a public root CA".to_owned(),
        "(Mozilla's list, built in) and name `db.example`".to_owned(),
        "# redis TLS: rediss://: TLS; the server's certificate must be signed by the system's root CAs (REDIS_CA_CERT unset) and name `redis.example`".to_owned(),
    ] {
        assert!(out.stdout.contains(&line), "{line} not shown:\n{}", out.stdout);
    }
    assert!(!out.stdout.contains("s3cr3t"), "{}", out.stdout);
}
