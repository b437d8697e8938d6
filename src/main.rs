//! The `portcullis` binary: parse the command line, set up logs and the
//! runtime, run the command, and turn the outcome into an exit code
//! (0 success, 1 runtime failure, 2 invalid config or input).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

use portcullis::cmd::args::{Cli, Command, RunArgs};
use portcullis::cmd::{cert, check, demo, init, inject};
use portcullis::config::{Config, LogFormat};
use portcullis::{runtime, sidecar};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args),
        Command::Check { config, policy } => {
            let mut code = ExitCode::SUCCESS;
            if let Some(config) = config {
                code = check::check_config(&config);
            }
            if let Some(policy) = policy
                && code == ExitCode::SUCCESS
            {
                code = check::check_policy(&policy);
            }
            code
        }
        Command::Demo { once } => {
            let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
            if let Err(e) = runtime::init_logging(&level, LogFormat::Text) {
                eprintln!("portcullis: {e}");
                return ExitCode::from(2);
            }
            let rt = match runtime::build(1) {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("portcullis: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(demo::run(once)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("portcullis demo: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Init(args) => match init::run(&args) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("portcullis init: {e}");
                ExitCode::from(1)
            }
        },
        Command::Inject(args) => match inject::run(&args) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("portcullis inject: {e}");
                ExitCode::from(2)
            }
        },
        Command::Cert(cmd) => match cert::run(cmd) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("portcullis cert: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn run(args: RunArgs) -> ExitCode {
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("portcullis: invalid config: {e}");
            return ExitCode::from(2);
        }
    };
    let format = args
        .log_format
        .map(LogFormat::from)
        .unwrap_or(config.log.format);
    if let Err(e) = runtime::init_logging(&config.log.level, format) {
        eprintln!("portcullis: {e}");
        return ExitCode::from(2);
    }
    let threads = runtime::worker_threads(args.worker_threads.or(config.runtime.worker_threads));
    tracing::info!(version = env!("CARGO_PKG_VERSION"), worker_threads = threads, config = %args.config.display(), "starting");
    let rt = match runtime::build(threads) {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(sidecar::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("portcullis: {e}");
            ExitCode::from(match e {
                sidecar::StartError::Load(_) => 2,
                _ => 1,
            })
        }
    }
}
