//! The command line's arguments (clap): `run`, `check`, `demo`,
//! `cert {ca,issue,revoke,inspect}` and `init` (its arguments live with it).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{ConfigDuration, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    about = "A per-pod mTLS sidecar proxy with SPIFFE identities"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a sidecar from a config file.
    Run(RunArgs),
    /// Validate a config file and the files it names (or just a policy file), without starting.
    Check {
        #[arg(long, short, required_unless_present = "policy")]
        config: Option<PathBuf>,
        /// A policy file to validate on its own.
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Run a complete mTLS demo on loopback: a dev CA, an echo app and two sidecars.
    Demo {
        /// Exit after showing the results instead of waiting for Ctrl-C.
        #[arg(long)]
        once: bool,
    },
    /// Development PKI: make a CA, issue SVIDs, revoke them, inspect certificates.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Set the pod's netfilter rules that send its TCP through the sidecar (the init container).
    Init(super::init::InitArgs),
    /// Add the sidecar to Kubernetes YAML (Pods, Deployments, ...), from a file or stdin, to stdout.
    Inject(super::inject::InjectArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[arg(long, short)]
    pub config: PathBuf,
    /// Worker threads (default: from the config, else the container's CPU limit).
    #[arg(long)]
    pub worker_threads: Option<usize>,
    /// Log format (default: from the config, else text).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormatArg>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(f: LogFormatArg) -> Self {
        match f {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

fn duration(s: &str) -> Result<ConfigDuration, String> {
    ConfigDuration::parse(s)
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Make a self-signed dev CA for a trust domain.
    Ca {
        /// The trust domain, e.g. prod.example.org.
        #[arg(long)]
        trust_domain: String,
        /// CA certificate output file.
        #[arg(long, default_value = "ca.pem")]
        out: PathBuf,
        /// CA private key output file (written with mode 0600).
        #[arg(long, default_value = "ca-key.pem")]
        key_out: PathBuf,
        /// How long the CA is valid.
        #[arg(long, default_value = "365d", value_parser = duration)]
        validity: ConfigDuration,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue an X.509-SVID (EC P-256, random serial) for a SPIFFE ID.
    Issue {
        #[arg(long, default_value = "ca.pem")]
        ca: PathBuf,
        #[arg(long, default_value = "ca-key.pem")]
        ca_key: PathBuf,
        /// The SPIFFE ID, e.g. spiffe://prod.example.org/ns/pay/sa/payments.
        #[arg(long)]
        id: String,
        /// How long the SVID is valid.
        #[arg(long, default_value = "24h", value_parser = duration)]
        ttl: ConfigDuration,
        /// Certificate chain output file (leaf, then the CA if it is an intermediate).
        #[arg(long, default_value = "svid.pem")]
        out: PathBuf,
        /// Private key output file (written with mode 0600).
        #[arg(long, default_value = "svid-key.pem")]
        key_out: PathBuf,
        /// Also put this DNS name in the SAN (repeatable), for peers that
        /// check host names (nginx, HAProxy with verifyhost).
        #[arg(long = "dns", value_name = "NAME")]
        dns_names: Vec<String>,
        /// Issue even when the ID's trust domain is not the CA's.
        #[arg(long)]
        allow_foreign_trust_domain: bool,
        #[arg(long)]
        force: bool,
    },
    /// Add a certificate's serial to a CRL signed by the CA (creating the CRL if needed).
    Revoke {
        #[arg(long, default_value = "ca.pem")]
        ca: PathBuf,
        #[arg(long, default_value = "ca-key.pem")]
        ca_key: PathBuf,
        /// The CRL file to update or create.
        #[arg(long, default_value = "ca.crl")]
        crl: PathBuf,
        /// Serial number in hex (as `cert inspect` prints it).
        #[arg(long, required_unless_present = "cert", conflicts_with = "cert")]
        serial: Option<String>,
        /// Revoke the leaf certificate in this file.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// When the CRL's nextUpdate falls.
        #[arg(long, default_value = "7d", value_parser = duration)]
        next_update: ConfigDuration,
    },
    /// Print certificates' SPIFFE ID, serial, issuer and validity, or a CRL's entries.
    Inspect {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}
