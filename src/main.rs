//! `writer`: parse the command line, read the configuration, run.

use std::process::ExitCode;

use clap::Parser;
use writer::cli::{Cli, Command};
use writer::config::{Config, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(errors) => {
            eprint!("{errors}");
            return ExitCode::from(2);
        }
    };
    if let Command::CheckConfig = cli.command {
        writer::cli::print_config(&config);
        return ExitCode::SUCCESS;
    }
    writer::telemetry::init(config.log_format, &config.log_level);
    let json_logs = config.log_format == LogFormat::Json;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(writer::cli::execute(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        // Said once: as a log line where logs are JSON, else plainly.
        Err(problem) if json_logs => {
            tracing::error!("{problem}");
            ExitCode::FAILURE
        }
        Err(problem) => {
            eprintln!("error: {problem}");
            ExitCode::FAILURE
        }
    }
}
