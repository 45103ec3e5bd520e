//! The command line: `writer <command>`.

use clap::{Parser, Subcommand};

use crate::config::Config;

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
    /// Apply pending schema migrations to DATABASE_SCHEMA and exit.
    Migrate,
    /// Print the effective configuration (secrets redacted); exit 2 listing
    /// every invalid setting.
    CheckConfig,
}

/// Prints `check-config` output.
pub fn print_config(config: &Config) {
    for (name, value) in config.redacted() {
        println!("{name}={value}");
    }
}

/// Runs a command that needs the database.
pub async fn execute(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::CheckConfig => print_config(&config),
        Command::Migrate => {
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
    }
    Ok(())
}
