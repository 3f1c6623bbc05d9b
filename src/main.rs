//! The `y-redis` binary: parses the subcommand and configuration, sets up
//! logging, and runs the chosen process.

// The server's top-level future nests deeply (actix, the Redis client's TLS and
// Sentinel connection futures); computing its layout needs more than 128 levels.
#![recursion_limit = "256"]

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;
use y_redis::config::{Config, Source};
use y_redis::service::{self, Roles};
use y_redis::storage::{self, StorageConfig};

const USAGE: &str = "\
Usage: y-redis <command>

Commands:
  server    websocket server on ws://HOST:PORT/{room}
  worker    persistence worker: moves documents from Redis to storage
  all       server and worker in one process
  migrate   prepare the storage and exit: create or update the Postgres table
            (under an advisory lock, so any number may run at once), or create
            the S3 bucket or the STORAGE_DIR folder
  variables print the name of every configuration variable
  keygen    print a new AUTH_PUBLIC_KEY / AUTH_PRIVATE_KEY pair (lib0 JWK format)
            as .env lines (single-quoted: y-redis keygen >> .env)
  auth-example
            example auth backend on AUTH_EXAMPLE_PORT (default 5173), signing
            tokens with AUTH_PRIVATE_KEY
  help      print this text

Configuration comes from environment variables and a .env file;
see README.md for every variable and its default.";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Command {
    Server,
    Worker,
    All,
    Migrate,
    AuthExample,
}

fn main() -> ExitCode {
    // The document engine's helper process: started by servers and workers,
    // not by hand (no configuration, no logging set-up, nothing secret).
    if let Some(exit) = service::serve_doc_helper_if_asked() {
        return exit;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    storage::skip_s3_location_constraint();
    let command = match args.first().map(String::as_str) {
        Some("server") => Command::Server,
        Some("worker") => Command::Worker,
        Some("all") => Command::All,
        Some("migrate") => Command::Migrate,
        Some("auth-example") => Command::AuthExample,
        Some("variables") => {
            y_redis::config::VARIABLES
                .iter()
                .for_each(|v| println!("{v}"));
            return ExitCode::SUCCESS;
        }
        Some("keygen") => {
            return match y_redis::auth::generate_keypair() {
                Ok(pair) => {
                    println!("{}", pair.env_lines());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("y-redis: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some("help" | "-h" | "--help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        None => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
        Some(other) => {
            eprintln!("y-redis: unknown command {other:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.iter().skip(1).any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }

    let config = Source::from_env()
        .and_then(|src| Config::load(&src))
        .and_then(|config| {
            if matches!(command, Command::Server | Command::All) {
                config.require_auth()?;
            }
            Ok(config)
        });
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            eprintln!("y-redis: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    // y-redis's .env template says LOG=*; read it as "everything".
    let filter = if config.log.trim() == "*" {
        "debug"
    } else {
        config.log.as_str()
    };
    match EnvFilter::try_new(filter) {
        Ok(filter) => {
            let logs = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
            if config.log_json {
                logs.json().flatten_event(true).init();
            } else {
                logs.init();
            }
        }
        Err(e) => {
            eprintln!("y-redis: invalid configuration: LOG: {e}");
            return ExitCode::from(2);
        }
    }

    match actix_web::rt::System::new().block_on(run(command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "y-redis stopped");
            eprintln!("y-redis: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> Result<(), Box<dyn std::error::Error>> {
    if command == Command::Migrate {
        // Opening a backend prepares it (Postgres table, S3 bucket, folder),
        // so one `migrate` step fits every storage a deployment may pick.
        storage::open(&config.storage).await?;
        match &config.storage {
            StorageConfig::Postgres { .. } => tracing::info!("postgres schema is up to date"),
            other => {
                tracing::info!(storage = %other.describe(), "storage ready, no schema to migrate")
            }
        }
        return Ok(());
    }
    if command == Command::AuthExample {
        let Some(private_key) = &config.auth.private_key else {
            return Err(
                "AUTH_PRIVATE_KEY: required by auth-example (y-redis keygen prints one)".into(),
            );
        };
        return Ok(y_redis::example_auth::run(&private_key.0, config.auth_example_port).await?);
    }
    let storage = storage::open(&config.storage).await?;
    tracing::info!(storage = %config.storage.describe(), "storage ready");
    let roles = match command {
        Command::Server => Roles::Server,
        Command::Worker => Roles::Worker,
        _ => Roles::All,
    };
    service::run(roles, config, storage, y_redis::shutdown::wait_for_signal()).await?;
    Ok(())
}
