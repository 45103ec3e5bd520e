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
