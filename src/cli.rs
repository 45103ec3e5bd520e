//! The command line: `writer <command>`.

use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::apply::{Partitioning, ReadModel};
use crate::config::Config;
use crate::ingest::Ingest;
use crate::retry::Circuit;
use crate::service::Stopped;
use crate::stream::StreamEntry;

#[derive(Debug, Parser)]
#[command(
    name = "writer",
    version,
    about = "Intuition MultiVault events from rindexer's Redis streams into a PostgreSQL read model.\n\nSettings come from the environment; `writer check-config` shows them."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: consume the streams, apply, serve /health and /metrics.
    Run,
    /// Apply pending schema migrations to DATABASE_SCHEMA and exit.
    Migrate {
        /// Only compare the schema with this writer (applied migrations and
        /// their checksums, contract tables and columns), changing nothing:
        /// exit 0 when it matches, 1 when it differs or migrations are pending.
        #[arg(long)]
        check: bool,
    },
    /// Recompute cascade and analytics rows for every term ≥ TERM_ID.
    Backfill {
        /// Lowest term id to recompute (`0x00` for all).
        #[arg(long, value_parser = crate::backfill::parse_from_term)]
        from_term: String,
        /// Terms per batch.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        batch_size: u32,
        /// Start over instead of resuming an interrupted run.
        #[arg(long)]
        restart: bool,
    },
    /// Print the effective configuration (secrets redacted); exit 2 listing
    /// every invalid setting.
    CheckConfig,
    /// Inspect or replay dead-lettered entries.
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeadLetterAction {
    /// List dead letters, newest first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Re-submit stored payloads through the normal decode/apply path: the
    /// given ids, or every letter not yet replayed.
    Replay {
        #[arg(long = "id")]
        ids: Vec<i64>,
    },
}

/// Prints `check-config` output: the settings, then the TLS each
/// connection gets from them (as `#` comments, so the output still reads as
/// an environment file).
pub fn print_config(config: &Config) {
    for (name, value) in config.redacted() {
        println!("{name}={value}");
    }
    println!();
    for (server, tls) in config.connections() {
        println!("# {server} TLS: {tls}");
    }
}

/// Cancels `token` on SIGTERM or SIGINT; a second signal exits at once.
fn on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        let mut signals = 0;
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            signals += 1;
            if signals == 1 {
                tracing::info!(
                    "shutdown requested; finishing in-flight batches (signal again to exit at once)"
                );
                token.cancel();
            } else {
                tracing::warn!("second signal: exiting now; un-ACKed entries will be redelivered");
                std::process::exit(130);
            }
        }
    });
}

/// Runs a command that needs the database (everything but check-config).
/// A failure comes back as one message for the operator ([`report`]).
pub async fn execute(command: Command, config: Config) -> Result<(), String> {
    let settings = config.clone();
    run(command, config)
        .await
        .map_err(|e| report(&e, &settings))
}

/// An error as the operator should read it: when the settings are at fault
/// (a certificate, a password), what to change — said once, naming the
/// setting; otherwise the chain of causes, each said once (a cause whose
/// text its wrapper already includes is not repeated).
pub fn report(error: &anyhow::Error, config: &Config) -> String {
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<sqlx::Error>()
            && let Some(problem) = crate::db::misconfiguration(e, &config.database)
        {
            return problem;
        }
        if let Some(e) = cause.downcast_ref::<redis::RedisError>()
            && let Some(problem) = crate::redis_client::misconfiguration(e, &config.redis)
        {
            return problem;
        }
    }
    let mut text = String::new();
    for cause in error.chain() {
        let said = cause.to_string();
        if !text.contains(&said) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&said);
        }
    }
    text
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::CheckConfig => print_config(&config),
        Command::Run => {
            let shutdown = CancellationToken::new();
            on_signals(shutdown.clone());
            if crate::service::run(config, shutdown).await? == Stopped::TimedOut {
                anyhow::bail!(
                    "shutdown timed out; un-ACKed entries stay pending and will be redelivered"
                );
            }
        }
        Command::Migrate { check: true } => {
            let pool = crate::db::pool(&config.database)?;
            let schema = &config.database.schema;
            let report = crate::migrate::check(&pool, schema).await?;
            pool.close().await;
            for (version, name) in &report.pending {
                println!("pending: migration {version} ({name}); `writer migrate` applies it");
            }
            for drift in &report.drift {
                println!("drift: {drift}");
            }
            if !report.is_clean() {
                anyhow::bail!(
                    "schema {schema} does not match this writer: {} pending migrations, {} differences",
                    report.pending.len(),
                    report.drift.len()
                );
            }
            println!("schema {schema} matches this writer");
        }
        Command::Migrate { check: false } => {
            let pool = crate::db::pool(&config.database)?;
            let applied = crate::migrate::run(&pool, &config.database.schema).await?;
            if applied.is_empty() {
                println!("schema {} is up to date", config.database.schema);
            } else {
                println!(
                    "schema {}: applied migrations {applied:?}",
                    config.database.schema
                );
            }
            pool.close().await;
        }
        Command::Backfill {
            from_term,
            batch_size,
            restart,
        } => {
            let pool = crate::db::pool(&config.database)?;
            crate::migrate::run(&pool, &config.database.schema).await?;
            let summary = crate::backfill::run(
                &pool,
                config.database.schema.as_str(),
                &from_term,
                batch_size as usize,
                restart,
                |line| println!("{line}"),
            )
            .await?;
            println!(
                "backfill done: {} terms in {} batches",
                summary.terms, summary.batches
            );
            pool.close().await;
        }
        Command::DeadLetters { action } => {
            let pool = crate::db::pool(&config.database)?;
            match action {
                DeadLetterAction::List { limit } => list_dead_letters(&pool, limit).await?,
                DeadLetterAction::Replay { ids } => {
                    replay_dead_letters(&pool, &config, &ids).await?
                }
            }
            pool.close().await;
        }
    }
    Ok(())
}

async fn list_dead_letters(pool: &sqlx::PgPool, limit: i64) -> anyhow::Result<()> {
    let letters = crate::dead_letter::list(pool, limit.clamp(1, 100_000)).await?;
    if letters.is_empty() {
        println!("no dead letters");
    }
    for l in letters {
        let state = match (&l.replayed_at, &l.replay_error) {
            (Some(at), _) => format!("replayed {at}"),
            (None, Some(e)) => format!("replay failed: {e}"),
            (None, None) => "pending".to_owned(),
        };
        println!(
            "#{} {} {} deliveries={} last_seen={} [{}]\n    error: {}\n    payload: {}",
            l.id,
            l.stream,
            l.entry_id,
            l.delivery_count,
            l.last_seen,
            state,
            l.error,
            truncate(&String::from_utf8_lossy(&l.payload), 300)
        );
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}… ({} bytes)", &s[..i], s.len()),
        None => s.to_owned(),
    }
}

async fn replay_dead_letters(
    pool: &sqlx::PgPool,
    config: &Config,
    ids: &[i64],
) -> anyhow::Result<()> {
    let ingest = Ingest {
        read_model: ReadModel::new(pool.clone(), config.database.schema.as_str()),
        max_deliveries: config.redis.max_deliveries,
        retry: config.retry.clone(),
        circuit: Arc::new(Circuit::new(config.retry.max_retries)),
        // Replay applies one entry at a time: never split.
        split: Partitioning::NONE,
    };
    let letters = crate::dead_letter::for_replay(pool, ids).await?;
    if letters.is_empty() {
        println!("nothing to replay");
    }
    let never = CancellationToken::new();
    let (mut ok, mut failed) = (0, 0);
    for letter in letters {
        let entry = StreamEntry {
            stream: letter.stream.as_str().into(),
            id: letter.entry_id,
            fields: vec![(
                letter.payload_field.unwrap_or_else(|| "payload".to_owned()),
                letter.payload,
            )],
            // A replay is a fresh attempt: the delivery limit does not apply.
            deliveries: 0,
        };
        let Some(processed) = ingest.process(std::slice::from_ref(&entry), &never).await else {
            anyhow::bail!("replay interrupted");
        };
        if processed.dead_letters.is_empty() {
            crate::dead_letter::mark_replayed(pool, letter.id, None).await?;
            println!(
                "#{} replayed: {} events applied",
                letter.id,
                processed.applied.inserted.total()
            );
            ok += 1;
        } else {
            // One entry, so one dead letter: the reason ingest just stored.
            let reason = processed.dead_letters.join("; ");
            crate::dead_letter::mark_replayed(pool, letter.id, Some(&reason)).await?;
            println!("#{} still fails: {reason}", letter.id);
            failed += 1;
        }
    }
    println!("replay: {ok} applied, {failed} still failing");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_vars([
            (
                "DATABASE_URL".to_owned(),
                Ok("postgres://u:pw-1@db:5432/x?sslmode=require".to_owned()),
            ),
            ("REDIS_URL".to_owned(), Ok("redis://h:6379".to_owned())),
        ])
        .unwrap()
    }

    /// A cause that its wrappers repeat in their own messages is said once
    /// (it used to be printed three times in one line).
    #[test]
    fn each_cause_is_said_once() {
        let cause = sqlx::Error::Tls("the server hung up".into());
        let error = anyhow::Error::from(crate::migrate::MigrateError::Database(cause));
        let text = report(&error, &config());
        assert_eq!(text.matches("the server hung up").count(), 1, "{text}");
    }

    /// A refusal caused by the settings is explained instead, naming them.
    #[test]
    fn refusals_name_the_setting() {
        let cause = sqlx::Error::Tls("server does not support TLS".into());
        let error = anyhow::Error::from(crate::migrate::MigrateError::Database(cause));
        let text = report(&error, &config());
        assert_eq!(
            text,
            "Postgres at db:5432 does not accept TLS connections, but sslmode=require in DATABASE_URL requires TLS: enable ssl on the server, or use sslmode=prefer"
        );
    }
}
