//! The `portcullis` binary: parse the command line, set up logs and the
//! runtime, run the command, and turn the outcome into an exit code
//! (0 success, 1 runtime failure, 2 invalid config or input).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

use portcullis::cli::{Cli, Command, RunArgs};
use portcullis::config::{Config, LogFormat};
use portcullis::{app, cert_cmd, demo, runtime};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args),
        Command::Check { config, policy } => {
            let mut code = ExitCode::SUCCESS;
            if let Some(config) = config {
                code = check(&config);
            }
            if let Some(policy) = policy
                && code == ExitCode::SUCCESS
            {
                code = check_policy(&policy);
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
        Command::Cert(cmd) => match cert_cmd::run(cmd) {
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
    match rt.block_on(app::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("portcullis: {e}");
            ExitCode::from(match e {
                app::StartError::Load(_) => 2,
                _ => 1,
            })
        }
    }
}

fn print_policy(path: &std::path::Path, spec: &portcullis::policy::PolicySpec, sha: &str) {
    let rules: usize = spec.services.iter().map(|s| s.rules.len()).sum();
    println!(
        "  policy:     {} (sha256 {sha}): default {}, {} service(s), {rules} rule(s)",
        path.display(),
        spec.default.as_str(),
        spec.services.len()
    );
}

fn check_policy(path: &std::path::Path) -> ExitCode {
    match portcullis::policy::load_file(path) {
        Ok((spec, sha)) => {
            println!("{}: ok", path.display());
            print_policy(path, &spec, &sha);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portcullis check: {e}");
            ExitCode::from(2)
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("portcullis check: {e}");
            return ExitCode::from(2);
        }
    };
    let policy = match &config.policy {
        None => None,
        Some(p) => match portcullis::policy::load_file(p) {
            Ok(loaded) => Some(loaded),
            Err(e) => {
                eprintln!("portcullis check: {e}");
                return ExitCode::from(2);
            }
        },
    };
    match app::load_tls(&config) {
        Ok((identity, trust)) => {
            println!("{}: ok", path.display());
            println!(
                "  identity:   {} (serial {}, expires {})",
                identity.leaf.id,
                identity.leaf.serial,
                portcullis::clock::fmt_time(identity.leaf.not_after)
            );
            for b in trust.bundles() {
                println!(
                    "  trust:      {} ({} root(s))",
                    b.trust_domain,
                    b.roots.len()
                );
            }
            for l in &config.inbound {
                println!("  inbound:    {} {} -> {}", l.name, l.listen, l.forward);
            }
            for l in &config.outbound {
                let eps: Vec<String> = l.endpoints.iter().map(|e| e.to_string()).collect();
                println!(
                    "  outbound:   {} {} -> [{}] as {}",
                    l.name,
                    l.listen,
                    eps.join(", "),
                    l.identity
                );
            }
            println!("  admin:      {}", config.admin.listen);
            match (&config.policy, &policy) {
                (Some(path), Some((spec, sha))) => {
                    print_policy(path, spec, sha);
                    for l in &config.inbound {
                        if !spec.services.iter().any(|s| s.name == l.name) {
                            println!(
                                "  note:       inbound {:?} is not in the policy: it gets `default: {}`",
                                l.name,
                                spec.default.as_str()
                            );
                        }
                    }
                }
                _ => println!(
                    "  policy:     none (every authenticated peer of a trusted trust domain is admitted)"
                ),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portcullis check: {e}");
            ExitCode::from(2)
        }
    }
}
