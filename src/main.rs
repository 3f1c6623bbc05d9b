//! The `y-redis` binary: parses the subcommand and configuration, sets up
//! logging, and runs the chosen process.

// The server's top-level future nests deeply (actix, the Redis client's TLS and
// Sentinel connection futures); computing its layout needs more than 128 levels.
#![recursion_limit = "256"]

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;
use y_redis::config::{
    self, AuthExampleArgs, Cli, CliError, Command, Config, ConfigError, LogArgs, LogFormat,
};
use y_redis::service::{self, Roles};
use y_redis::storage::{self, StorageConfig};

/// What a command runs, its configuration checked.
enum Job {
    Serve(Roles, Box<Config>),
    Migrate(StorageConfig),
    AuthExample(AuthExampleArgs),
}

fn main() -> ExitCode {
    // The document engine's helper process: started by servers and workers
    // with an empty environment, not by hand. It is dispatched before
    // anything else, .env included, so nothing secret reaches it.
    if let Some(exit) = service::serve_doc_helper_if_asked() {
        return exit;
    }
    // Before any thread starts: may restart the process with glibc's
    // per-thread allocation caches off (they pin freed memory).
    y_redis::memory::without_thread_caches();
    storage::skip_s3_location_constraint();
    // Before clap reads the environment; reported only by the commands that
    // read settings.
    let dotenv = config::load_dotenv();
    let command = match Cli::parse_args(std::env::args_os()) {
        Ok(cli) => cli.command,
        Err(CliError::Invalid(e)) => return invalid(e),
        // Usage errors exit 2, --help 0.
        Err(CliError::Usage(e)) => e.exit(),
    };
    let checked = |role, settings: config::Settings| {
        let log = settings.log.clone();
        let job = settings.into_config().and_then(|config| {
            if role != Roles::Worker {
                config.require_auth()?;
            }
            Ok(Job::Serve(role, Box::new(config)))
        });
        (log, job)
    };
    let (log, job) = match command {
        Command::Variables => {
            config::variables().iter().for_each(|v| println!("{v}"));
            return ExitCode::SUCCESS;
        }
        Command::Keygen => {
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
        Command::Server(settings) => checked(Roles::Server, settings),
        Command::Worker(settings) => checked(Roles::Worker, settings),
        Command::All(settings) => checked(Roles::All, settings),
        Command::Migrate(args) => (args.log, args.storage.into_config().map(Job::Migrate)),
        Command::AuthExample(args) => (args.log.clone(), Ok(Job::AuthExample(args))),
    };
    let job = match dotenv.and(job) {
        Ok(job) => job,
        Err(e) => return invalid(e),
    };
    if let Err(e) = init_logging(&log) {
        return invalid(e);
    }
    match actix_web::rt::System::new().block_on(run(job)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "y-redis stopped");
            eprintln!("y-redis: {e}");
            ExitCode::FAILURE
        }
    }
}

fn invalid(e: ConfigError) -> ExitCode {
    eprintln!("y-redis: invalid configuration: {e}");
    ExitCode::from(2)
}

fn init_logging(log: &LogArgs) -> Result<(), ConfigError> {
    // y-redis's .env template says LOG=*; read it as "everything".
    let filter = if log.log.trim() == "*" {
        "debug"
    } else {
        log.log.as_str()
    };
    let filter = EnvFilter::try_new(filter).map_err(|e| ConfigError {
        var: "LOG".into(),
        reason: e.to_string(),
    })?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match log.log_format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        LogFormat::Text => logs.init(),
    }
    Ok(())
}

async fn run(job: Job) -> Result<(), Box<dyn std::error::Error>> {
    match job {
        Job::Migrate(storage) => {
            // Opening a backend prepares it (Postgres table, S3 bucket, folder),
            // so one `migrate` step fits every storage a deployment may pick.
            storage::open(&storage).await?;
            match &storage {
                StorageConfig::Postgres { .. } => tracing::info!("postgres schema is up to date"),
                other => {
                    tracing::info!(storage = %other.describe(), "storage ready, no schema to migrate")
                }
            }
            Ok(())
        }
        Job::AuthExample(args) => {
            let Some(private_key) = &args.auth_private_key else {
                return Err(
                    "AUTH_PRIVATE_KEY: required by auth-example (y-redis keygen prints one)".into(),
                );
            };
            Ok(y_redis::example_auth::run(&private_key.0, args.auth_example_port).await?)
        }
        Job::Serve(role, config) => serve(role, *config).await,
    }
}

async fn serve(role: Roles, config: Config) -> Result<(), Box<dyn std::error::Error>> {
    y_redis::memory::log_allocator_settings();
    let storage = storage::open(&config.storage).await?;
    tracing::info!(storage = %config.storage.describe(), "storage ready");
    service::run(role, config, storage, y_redis::shutdown::wait_for_signal()).await?;
    Ok(())
}
