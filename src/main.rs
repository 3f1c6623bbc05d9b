//! The `y-redis` binary: parses the subcommand and configuration, sets up
//! logging, and runs the chosen process.

use std::process::ExitCode;
use std::sync::Arc;

use tracing_subscriber::EnvFilter;
use y_redis::config::{Config, Source};
use y_redis::storage::MemoryStorage;

const USAGE: &str = "\
Usage: y-redis <command>

Commands:
  server    websocket server on ws://HOST:PORT/{room}
  help      print this text

Configuration comes from environment variables and a .env file;
see README.md for every variable and its default.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map(String::as_str);
    match command {
        Some("server") => {}
        None | Some("help" | "-h" | "--help") => {
            println!("{USAGE}");
            return if command.is_none() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
        Some(other) => {
            eprintln!("y-redis: unknown command {other:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    if args.iter().skip(1).any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }

    let config = match Source::from_env().and_then(|src| Config::load(&src)) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("y-redis: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    // y-redis's .env template says LOG=*; read it as "everything".
    let filter = if config.log.trim() == "*" { "debug" } else { config.log.as_str() };
    match EnvFilter::try_new(filter) {
        Ok(filter) => tracing_subscriber::fmt().with_env_filter(filter).init(),
        Err(e) => {
            eprintln!("y-redis: invalid configuration: LOG: {e}");
            return ExitCode::from(2);
        }
    }

    let result = actix_web::rt::System::new().block_on(y_redis::server::run(config, Arc::new(MemoryStorage::default())));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "y-redis server failed");
            eprintln!("y-redis: {e}");
            ExitCode::FAILURE
        }
    }
}
