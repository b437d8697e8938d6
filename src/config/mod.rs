//! The sidecar's configuration: the YAML model, loading, and validation.
//!
//! A file is read in two steps. `raw` holds serde types that mirror the YAML
//! (unknown keys are errors, places are remembered); validation turns them
//! into [`Config`], whose values the rest of the proxy can trust. Every
//! error names the file, the line and column, and the reason.

mod duration;
mod raw;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use duration::ConfigDuration;
pub(crate) use raw::{Pairs, yaml_error};

/// Listener and service names become metric labels and policy keys:
/// 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit.
pub(crate) fn valid_listener_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

use rustls_pki_types::ServerName;

use crate::identity::{SpiffeId, TrustDomain};

/// A validated sidecar configuration.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Config {
    /// The file this was read from; relative paths in it are resolved
    /// against its directory.
    pub source: PathBuf,
    pub identity: IdentityConfig,
    /// The policy file; without one every authenticated peer of a trusted
    /// trust domain is admitted.
    pub policy: Option<PathBuf>,
    pub audit: AuditConfig,
    pub reload: ReloadConfig,
    /// The plaintext listener for kubelet probes, if any.
    pub probes: Option<ProbeConfig>,
    pub inbound: Vec<InboundConfig>,
    pub outbound: Vec<OutboundConfig>,
    pub admin: AdminConfig,
    pub timeouts: Timeouts,
    pub connections: ConnectionsConfig,
    pub http: HttpConfig,
    /// Revocation checking; `None`: no revocation checks.
    pub revocation: Option<RevocationConfig>,
    pub runtime: RuntimeConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct IdentityConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub trust_bundle: PathBuf,
    /// The trust domain the bundle is for; defaults to our own SVID's.
    pub trust_domain: Option<TrustDomain>,
    /// Federation: the bundles of other trust domains. A peer is verified
    /// only against the bundle of its own trust domain.
    pub trust_bundles: Vec<(TrustDomain, PathBuf)>,
    /// Warn when our leaf has less than this share of its lifetime left.
    pub expiry_warning_fraction: f64,
    /// How long a new certificate may wait for its matching key (issuers
    /// write the two files at different moments) before it is an error.
    pub key_pair_grace: ConfigDuration,
}

impl IdentityConfig {
    /// Every file the identity and trust are made of, for watching.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![
            self.cert.clone(),
            self.key.clone(),
            self.trust_bundle.clone(),
        ];
        files.extend(self.trust_bundles.iter().map(|(_, p)| p.clone()));
        files
    }
}

/// Certificate revocation lists and how they are applied.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RevocationConfig {
    /// CRL files (PEM or DER), one or more per CA; reloaded like certificates.
    pub crls: Vec<PathBuf>,
    /// Live OCSP for peers, when enabled.
    pub ocsp: Option<crate::revocation::OcspConfig>,
    pub policy: crate::revocation::RevocationPolicy,
}

/// Limits on how long one connection may live.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ConnectionsConfig {
    /// Close a connection when its peer's certificate expires (off by
    /// default: TLS checks validity at the handshake only).
    pub close_on_peer_expiry: bool,
    /// Close any connection after this long, whatever it is doing.
    pub max_lifetime: Option<ConfigDuration>,
}

/// The authorization audit log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditConfig {
    pub sink: crate::policy::AuditSink,
    /// Also log allowed decisions (denials are always logged).
    pub log_allows: bool,
    /// Lines per second at most; the rest are counted, not written.
    pub max_per_second: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            sink: crate::policy::AuditSink::Stdout,
            log_allows: false,
            max_per_second: 100,
        }
    }
}

/// How file changes are picked up.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ReloadConfig {
    /// Quiet time after a file event before re-reading (writers often
    /// touch several files).
    pub debounce: ConfigDuration,
    /// Re-read everything this often even without events, as a safety net.
    pub interval: ConfigDuration,
    /// Watch the files' directories for changes; off leaves SIGHUP,
    /// `POST /reload` and the periodic re-read.
    pub watch: bool,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            debounce: ConfigDuration(Duration::from_millis(200)),
            interval: ConfigDuration(Duration::from_secs(60)),
            watch: true,
        }
    }
}

/// A plaintext listener that forwards only the listed GET/HEAD paths to the
/// app, so kubelet probes work under default deny.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProbeConfig {
    pub listen: SocketAddr,
    pub forward: SocketAddr,
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Opaque bytes, copied both ways.
    Tcp,
    /// HTTP/1.1 or HTTP/2, proxied request by request.
    Http,
    /// Looks at the first bytes: HTTP/1.x and HTTP/2 are proxied as
    /// `http`, anything else (or silence) as `tcp`.
    Auto,
}

impl Protocol {
    /// Whether connections may be served as HTTP.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Auto)
    }
}

/// How HTTP listeners (`protocol: http | auto`) treat requests.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HttpConfig {
    /// Largest request head (request line and headers) in bytes; larger
    /// is answered 431.
    pub max_header_bytes: usize,
    /// Most header fields in one request; more is answered 431.
    pub max_headers: usize,
    /// Largest request body in bytes; larger is answered 413. `None`:
    /// unlimited (bodies stream, so size costs no memory).
    pub max_request_body: Option<u64>,
    /// From a request's body having been sent whole to its response
    /// headers arriving; longer is answered 504.
    pub request_timeout: ConfigDuration,
    /// A client must send a whole request head within this (slowloris).
    pub header_read_timeout: ConfigDuration,
    /// `protocol: auto` waits this long for the first bytes before deciding
    /// the connection is opaque TCP (server-speaks-first protocols).
    pub detect_timeout: ConfigDuration,
    /// Add `x-forwarded-client-cert` (peer SPIFFE ID and certificate hash)
    /// to requests forwarded to the app.
    pub forward_client_cert: bool,
    /// Concurrent HTTP/2 streams per downstream connection.
    pub max_concurrent_streams: u32,
    /// Pooled upstream connections unused this long are closed.
    pub pool_idle_timeout: ConfigDuration,
    /// One JSON line per request, when set.
    pub access_log: crate::policy::AuditSink,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_request_body: None,
            request_timeout: ConfigDuration(Duration::from_secs(60)),
            header_read_timeout: ConfigDuration(Duration::from_secs(10)),
            detect_timeout: ConfigDuration(Duration::from_millis(500)),
            forward_client_cert: false,
            max_concurrent_streams: 256,
            pool_idle_timeout: ConfigDuration(Duration::from_secs(90)),
            access_log: crate::policy::AuditSink::Off,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct InboundConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub forward: SocketAddr,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct OutboundConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub endpoints: Vec<Endpoint>,
    pub identity: SpiffeId,
    pub protocol: Protocol,
    pub upstream: UpstreamConfig,
}

/// How an outbound upstream is protected: breakers, limits, retries.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UpstreamConfig {
    pub breaker: crate::upstream::BreakerConfig,
    /// HTTP statuses from the upstream that count as failures.
    pub failure_statuses: Vec<u16>,
    /// At most this share (percent) of endpoints may be out of use for an
    /// open breaker; past it, breakers are ignored for choosing.
    pub max_ejection_percent: u32,
    /// Open connections to the upstream (L4: app connections; HTTP: hop
    /// connections).
    pub max_connections: usize,
    /// HTTP requests waiting for a connection to the upstream.
    pub max_pending_requests: usize,
    /// HTTP requests in flight to the upstream.
    pub max_requests: usize,
    /// Retries may add at most this share (percent) of requests.
    pub retry_budget_percent: u32,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            breaker: crate::upstream::BreakerConfig::default(),
            failure_statuses: vec![502, 503, 504],
            max_ejection_percent: 100,
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            retry_budget_percent: 20,
        }
    }
}

/// An upstream endpoint: `ip:port`, or `host:port` resolved at connect time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(into = "String")]
pub struct Endpoint {
    host: String,
    port: u16,
    addr: Option<SocketAddr>,
    /// The TLS server name, computed once: an IP literal sends no SNI.
    server_name: ServerName<'static>,
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Endpoint {
                host: addr.ip().to_string(),
                port: addr.port(),
                addr: Some(addr),
                server_name: ServerName::IpAddress(addr.ip().into()),
            });
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("endpoint {s:?} must be host:port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("endpoint {s:?} has an invalid port"))?;
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|_| format!("endpoint {s:?}: {host:?} is not a valid host name"))?;
        if port == 0 {
            return Err(format!("endpoint {s:?} must not use port 0"));
        }
        Ok(Endpoint {
            host: host.to_string(),
            port,
            addr: None,
            server_name,
        })
    }

    /// The address when the endpoint was written as an IP literal.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            Some(a) => write!(f, "{a}"),
            None => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

impl From<Endpoint> for String {
    fn from(e: Endpoint) -> String {
        e.to_string()
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Timeouts {
    /// TCP connect to the local app or an upstream endpoint.
    pub connect: ConfigDuration,
    /// A TLS handshake, either direction.
    pub handshake: ConfigDuration,
    /// A connection with no bytes in either direction for this long is closed.
    pub idle: ConfigDuration,
    /// How long SIGTERM waits for open connections before exiting.
    pub drain: ConfigDuration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: ConfigDuration(Duration::from_secs(5)),
            handshake: ConfigDuration(Duration::from_secs(10)),
            idle: ConfigDuration(Duration::from_secs(3600)),
            drain: ConfigDuration(Duration::from_secs(30)),
        }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RuntimeConfig {
    /// Worker threads; when unset, derived from the container's CPU quota.
    pub worker_threads: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LogConfig {
    /// A tracing filter (`info`, `portcullis=debug,warn`); `RUST_LOG` wins.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Why a config file was refused: the file, where in it, and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column, when the problem has a place in the file.
    pub line: Option<u64>,
    pub column: Option<u64>,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            column: None,
            reason: format!("cannot read: {e}"),
        })?;
        Self::from_yaml(&text, path)
    }

    /// Parses and validates YAML text as if it were read from `path`.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        raw::parse(text, path)
    }

    /// Every file whose change should trigger a reload.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = self.identity.files();
        if let Some(r) = &self.revocation {
            files.extend(r.crls.iter().cloned());
        }
        files.extend(self.policy.iter().cloned());
        // Upstream settings (breakers, limits, retries) reload live.
        if !self.outbound.is_empty() {
            files.push(self.source.clone());
        }
        files
    }

    /// Inbound listener and outbound listener names, for lookups.
    pub fn listener_names(&self) -> impl Iterator<Item = &str> {
        self.inbound
            .iter()
            .map(|l| l.name.as_str())
            .chain(self.outbound.iter().map(|l| l.name.as_str()))
    }
}
