//! The `y-redis` binary: parses the subcommand and configuration, sets up
//! logging, and runs the chosen process.

// The server's top-level future nests deeply (actix, the Redis client's TLS and
// Sentinel connection futures); computing its layout needs more than 128 levels.
#![recursion_limit = "256"]

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;
use y_redis::config::{Config, Source};
use y_redis::document::engine;
use y_redis::document::helper::{EngineCommand, EnginePool};
use y_redis::document::Documents;
use y_redis::redis::RedisStore;
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
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The document engine's helper process: started by servers and workers,
    // not by hand (no configuration, no logging set-up, nothing secret).
    if args.first().map(String::as_str) == Some("doc-helper") {
        return doc_helper(&args[1..]);
    }
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

fn doc_helper(args: &[String]) -> ExitCode {
    if let [flag, mb] = args {
        match (flag.as_str(), mb.parse::<u64>()) {
            ("--memory-mb", Ok(0)) => {}
            ("--memory-mb", Ok(mb)) => engine::limit_memory(mb << 20),
            _ => {
                eprintln!("y-redis doc-helper: expected --memory-mb <MiB>");
                return ExitCode::from(2);
            }
        }
    }
    match engine::serve_stdio() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("y-redis doc-helper: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The engine helpers of this process (one pool for server and worker).
fn documents(config: &Config) -> Result<std::sync::Arc<Documents>, Box<dyn std::error::Error>> {
    let command = EngineCommand::current_exe(config.doc_helper_memory_mb)?;
    let pool = EnginePool::new(command, config.doc_helpers, config.doc_helper_timeout);
    let reaper = pool.clone();
    actix::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(30));
        loop {
            every.tick().await;
            reaper.reap_idle();
        }
    });
    Ok(Documents::new(pool))
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
    let documents = documents(&config)?;
    let worker = if matches!(command, Command::Worker | Command::All) {
        let redis = RedisStore::for_config(&config).await?;
        let worker = y_redis::worker::start(
            &config.worker,
            redis.clone(),
            storage.clone(),
            documents.clone(),
        );
        tracing::info!(actors = worker.actors(), prefix = %config.redis_prefix, "y-redis worker running");
        if command == Command::Worker {
            let draining = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let probes = y_redis::health::Probes {
                redis,
                storage,
                draining: draining.clone(),
            };
            let endpoints = y_redis::health::serve(&config.host, config.worker_port, probes)?;
            let handle = endpoints.handle();
            tokio::select! {
                served = endpoints => served?,
                _ = y_redis::shutdown::wait_for_signal() => {
                    draining.store(true, std::sync::atomic::Ordering::Relaxed);
                    worker.shutdown(config.shutdown_grace).await;
                    handle.stop(true).await;
                }
            }
            return Ok(());
        }
        Some(worker)
    } else {
        None
    };
    let grace = config.shutdown_grace;
    let listeners = y_redis::server::Listeners::bind(&config)?;
    y_redis::server::run(
        config,
        storage,
        documents,
        listeners,
        y_redis::shutdown::wait_for_signal(),
    )
    .await?;
    if let Some(worker) = worker {
        worker.shutdown(grace).await;
    }
    Ok(())
}
