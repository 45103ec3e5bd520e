//! The Postgres pool, and what a failure means for the caller.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::config::DatabaseConfig;

/// Builds the pool. Every connection starts with `search_path` set to the
/// configured schema (so no SQL in the writer names a schema) and with the
/// configured statement timeout, both as startup parameters: no extra round
/// trip per connection.
///
/// The pool connects lazily, so the writer starts (and reports unhealthy)
/// while Postgres is still down, instead of failing to start.
pub fn pool(config: &DatabaseConfig) -> Result<PgPool, sqlx::Error> {
    let mut options = PgConnectOptions::from_str(config.url.expose())?
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
    Ok(PgPoolOptions::new()
        .max_connections(config.pool_size)
        .min_connections(0)
        .acquire_timeout(config.acquire_timeout)
        .test_before_acquire(false)
        .connect_lazy_with(options))
}

/// How a failed database operation should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Postgres cannot be reached (connection refused or lost, pool timeout,
    /// server shutting down) or is not the database the writer expects
    /// (missing table, privileges): wait, with the circuit breaker open.
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
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => Failure::Unavailable,
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // connection_exception class; admin/crash shutdown, cannot connect now.
            Some(code) if code.starts_with("08") => Failure::Unavailable,
            Some("57P01" | "57P02" | "57P03") => Failure::Unavailable,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_and_pool_errors_mean_unavailable() {
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), Failure::Unavailable);
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(classify(&io), Failure::Unavailable);
        assert_eq!(classify(&sqlx::Error::RowNotFound), Failure::Permanent);
    }
}
