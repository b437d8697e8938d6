//! The config file as a whole: its top-level sections, reading it, and
//! validating each section in turn into a [`Config`] the rest of the proxy
//! can trust. Unknown keys are errors; every error names the file, the
//! line and column, and the reason.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::check::{Check, ConfigError};
use super::http::{HttpConfig, RawHttp};
use super::identity::{IdentityConfig, RawIdentity};
use super::limits::{ConnectionsConfig, RawConnections, RawTimeouts, Timeouts};
use super::listeners::{
    AdminConfig, CaptureConfig, InboundConfig, Listeners, OutboundConfig, ProbeConfig, RawAdmin,
    RawCapture, RawInbound, RawOutbound, RawProbes,
};
use super::logging::{AuditConfig, LogConfig, RawAudit, RawLog};
use super::revocation::{RawRevocation, RevocationConfig};
use super::runtime::{RawReload, RawRuntime, ReloadConfig, RuntimeConfig};
use super::yaml::yaml_error;

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
    /// Where redirected (captured) traffic arrives, if `portcullis init`
    /// is used.
    pub capture: CaptureConfig,
    pub admin: AdminConfig,
    pub timeouts: Timeouts,
    pub connections: ConnectionsConfig,
    pub http: HttpConfig,
    /// Revocation checking; `None`: no revocation checks.
    pub revocation: Option<RevocationConfig>,
    pub runtime: RuntimeConfig,
    pub log: LogConfig,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::file(path, format!("cannot read: {e}")))?;
        Self::from_yaml(&text, path)
    }

    /// Parses and validates YAML text as if it were read from `path`.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        parse(text, path)
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

/// The file as written: one field per top-level section.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    identity: RawIdentity,
    policy: Option<Spanned<PathBuf>>,
    audit: Option<RawAudit>,
    reload: Option<RawReload>,
    probes: Option<RawProbes>,
    #[serde(default)]
    inbound: Vec<RawInbound>,
    #[serde(default)]
    outbound: Vec<RawOutbound>,
    capture: Option<RawCapture>,
    admin: Option<RawAdmin>,
    timeouts: Option<RawTimeouts>,
    connections: Option<RawConnections>,
    http: Option<RawHttp>,
    revocation: Option<RawRevocation>,
    runtime: Option<RawRuntime>,
    log: Option<RawLog>,
}

fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| yaml_error(&e, file))?;
    let c = Check::new(file);
    let identity = raw.identity.validate(&c)?;
    let revocation = raw.revocation.map(|r| r.validate(&c)).transpose()?;
    let connections = match raw.connections {
        Some(s) => s.validate(&c)?,
        None => ConnectionsConfig::default(),
    };
    let policy = raw.policy.as_ref().map(|p| c.path(p)).transpose()?;
    let audit = match raw.audit {
        Some(s) => s.validate(&c)?,
        None => AuditConfig::default(),
    };
    let reload = match raw.reload {
        Some(s) => s.validate(&c)?,
        None => ReloadConfig::default(),
    };
    let probes = raw.probes.map(|p| p.validate(&c)).transpose()?;
    let mut listeners = Listeners::default();
    let mut inbound = Vec::with_capacity(raw.inbound.len());
    for l in raw.inbound {
        inbound.push(listeners.inbound(&c, l)?);
    }
    let mut outbound = Vec::with_capacity(raw.outbound.len());
    for l in raw.outbound {
        outbound.push(listeners.outbound(&c, l)?);
    }
    let capture = match raw.capture {
        Some(s) => s.validate(&c, &mut listeners, &inbound)?,
        None => CaptureConfig {
            inbound: None,
            outbound: None,
            unmatched: Default::default(),
            max_passthrough: 10_000,
        },
    };
    if capture.outbound.is_none()
        && let Some(l) = outbound.iter().find(|l| l.listen.is_none())
    {
        return Err(ConfigError::file(
            file,
            format!(
                "outbound listener {:?} has only `destinations`, which need `capture.outbound` \
                 (where `portcullis init` sends the app's outbound TCP)",
                l.name
            ),
        ));
    }
    if capture.inbound.is_none()
        && let Some(l) = inbound.iter().find(|l| l.listen.is_none())
    {
        return Err(ConfigError::file(
            file,
            format!(
                "inbound listener {:?} has only a `port`, which needs `capture.inbound` (where \
                 `portcullis init` sends the pod's inbound TCP)",
                l.name
            ),
        ));
    }
    let admin = match raw.admin {
        Some(s) => s.validate(&c)?,
        None => AdminConfig::default(),
    };
    let timeouts = match raw.timeouts {
        Some(s) => s.validate(&c)?,
        None => Timeouts::default(),
    };
    let http = match raw.http {
        Some(s) => s.validate(&c)?,
        None => HttpConfig::default(),
    };
    let runtime = match raw.runtime {
        Some(s) => s.validate(&c)?,
        None => RuntimeConfig::default(),
    };
    let log = raw.log.map(RawLog::validate).unwrap_or_default();
    Ok(Config {
        source: file.to_path_buf(),
        identity,
        policy,
        audit,
        reload,
        probes,
        inbound,
        outbound,
        capture,
        admin,
        timeouts,
        connections,
        http,
        revocation,
        runtime,
        log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LogFormat, LogSink, Protocol, UpstreamConfig};

    const GOOD: &str = "\
identity:
  cert: svid.pem
  key: /abs/svid-key.pem
  trust_bundle: bundle.pem
inbound:
  - name: orders
    listen: 0.0.0.0:15006
    forward: 127.0.0.1:8080
    protocol: tcp
outbound:
  - name: payments
    listen: 127.0.0.1:15001
    endpoints: [127.0.0.1:16006, payments.svc:16006]
    identity: spiffe://prod.example.org/ns/pay/sa/payments
    protocol: tcp
admin:
  listen: 127.0.0.1:15000
timeouts:
  connect: 2s
  idle: 10m
runtime:
  worker_threads: 2
log:
  level: debug
  format: json
";

    fn parse_at(text: &str) -> Result<Config, ConfigError> {
        parse(text, Path::new("/etc/portcullis/portcullis.yaml"))
    }

    fn err(text: &str) -> ConfigError {
        parse_at(text).expect_err("config should be refused")
    }

    #[test]
    fn full_config_parses_and_resolves_paths() {
        let c = parse_at(GOOD).unwrap();
        let files = c.identity.files_source().unwrap();
        assert_eq!(files.cert, Path::new("/etc/portcullis/svid.pem"));
        assert_eq!(files.key, Path::new("/abs/svid-key.pem"));
        assert_eq!(c.inbound[0].name, "orders");
        assert_eq!(c.outbound[0].endpoints.len(), 2);
        assert_eq!(c.outbound[0].endpoints[1].host(), "payments.svc");
        assert_eq!(c.timeouts.connect.0.as_secs(), 2);
        assert_eq!(c.timeouts.handshake, Timeouts::default().handshake);
        assert_eq!(c.runtime.worker_threads, Some(2));
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn errors_name_file_line_column_and_reason() {
        let e = err(&GOOD.replace("    protocol: tcp\noutbound", "    protocl: tcp\noutbound"));
        assert_eq!(e.line, Some(9), "{e}");
        assert!(e.reason.contains("unknown field `protocl`"), "{e}");
        assert!(
            e.to_string()
                .starts_with("/etc/portcullis/portcullis.yaml:9:5: "),
            "{e}"
        );

        let e = err(&GOOD.replace(
            "spiffe://prod.example.org/ns/pay/sa/payments",
            "spiffe://prod.example.org/ns//x",
        ));
        assert_eq!(e.line, Some(14), "{e}");
        assert!(e.reason.contains("empty segment"), "{e}");

        let e = err(&GOOD.replace("0.0.0.0:15006", "0.0.0.0:99999"));
        assert_eq!(e.line, Some(7), "{e}");

        let e = err(&GOOD.replace("connect: 2s", "connect: 2 parsecs"));
        assert_eq!(e.line, Some(19), "{e}");
        assert!(e.reason.contains("unit"), "{e}");
    }

    #[test]
    fn destinations_and_blocks() {
        use crate::config::{Cidr, Destination};
        let b = Cidr::parse("10.96.0.0/12").unwrap();
        assert!(b.contains("10.96.0.10".parse().unwrap()));
        assert!(b.contains("10.111.255.255".parse().unwrap()));
        assert!(!b.contains("10.112.0.0".parse().unwrap()));
        assert!(
            !b.contains("::ffff:10.96.0.10".parse().unwrap()),
            "families apart"
        );
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(
            v6.contains("fd12::1".parse().unwrap()) && !v6.contains("fe80::1".parse().unwrap())
        );
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(matches!(
            Destination::parse("10.0.0.1:80"),
            Ok(Destination::Addr(_))
        ));
        assert!(matches!(
            Destination::parse("10.1.0.0/16:80"),
            Ok(Destination::Block(_, 80))
        ));
        assert!(matches!(
            Destination::parse("[fd00::/8]:443"),
            Ok(Destination::Block(_, 443))
        ));
        assert!(matches!(
            Destination::parse("orders.svc:8080"),
            Ok(Destination::Name(_))
        ));
        assert!(Destination::parse("orders.svc").is_err());
        assert!(Destination::parse("10.1.0.0/40:80").is_err());
        let e = err(&GOOD.replace(
            "    protocol: tcp\noutbound",
            "    protocol: tcp\ncapture:\n  outbound: 0.0.0.0:15001\noutbound",
        ));
        assert!(
            e.reason.contains("capture.outbound must be on loopback"),
            "{e}"
        );
    }

    #[test]
    fn app_protocol_is_for_http_listeners() {
        let e = err(&GOOD.replace(
            "    protocol: tcp\noutbound",
            "    protocol: tcp\n    app_protocol: http1\noutbound",
        ));
        assert!(
            e.reason
                .contains("app_protocol applies to protocol: http or auto"),
            "{e}"
        );
        let c = parse_at(&GOOD.replace(
            "    protocol: tcp\noutbound",
            "    protocol: http\n    app_protocol: http2\noutbound",
        ))
        .unwrap();
        assert_eq!(c.inbound[0].app_protocol, crate::config::AppProtocol::Http2);
    }

    #[test]
    fn semantic_errors_have_places() {
        let e = err(&GOOD.replace("name: payments", "name: orders"));
        assert_eq!(e.line, Some(11), "{e}");
        assert!(e.reason.contains("already used at line 6"), "{e}");

        let e = err(&GOOD.replace("127.0.0.1:15001", "0.0.0.0:15006"));
        assert_eq!(e.line, Some(12), "{e}");

        let e = err(&GOOD.replace("127.0.0.1:15001", "0.0.0.0:15001"));
        assert!(e.reason.contains("loopback"), "{e}");

        let e = err(&GOOD.replace("listen: 127.0.0.1:15000", "listen: 0.0.0.0:15000"));
        assert_eq!(e.line, Some(17), "{e}");
        assert!(e.reason.contains("allow_non_loopback"), "{e}");

        let e = err(&GOOD.replace("name: orders", "name: Orders!"));
        assert_eq!(e.line, Some(6), "{e}");

        let e = err(&GOOD.replace("[127.0.0.1:16006, payments.svc:16006]", "[]"));
        assert!(e.reason.contains("at least one endpoint"), "{e}");

        let e = err(&GOOD.replace("payments.svc:16006", "payments.svc"));
        assert_eq!(e.line, Some(13), "{e}");

        let e = err(&GOOD.replace("worker_threads: 2", "worker_threads: 0"));
        assert_eq!(e.line, Some(22), "{e}");

        let e = err(&GOOD.replace("idle: 10m", "idle: 0s"));
        assert!(e.reason.contains("more than 0"), "{e}");
    }

    #[test]
    fn missing_sections_and_bad_yaml_are_refused() {
        let e = err("inbound: []\n");
        assert!(e.reason.contains("identity"), "{e}");
        let e = err("identity: [\n");
        assert!(e.line.is_some(), "{e}");
        let e = err(&GOOD.replace("protocol: tcp\noutbound", "protocol: sctp\noutbound"));
        assert!(e.reason.contains("sctp"), "{e}");
    }

    #[test]
    fn http_section_defaults_values_and_protocols() {
        let c = parse_at(GOOD).unwrap();
        assert_eq!(c.http.max_header_bytes, 64 * 1024);
        assert_eq!(c.http.request_timeout.0.as_secs(), 60);
        assert!(c.http.max_request_body.is_none());
        let text = GOOD
            .replace(
                "    protocol: tcp\noutbound",
                "    protocol: http\noutbound",
            )
            .replace("    protocol: tcp\nadmin", "    protocol: auto\nadmin")
            + "http:\n  max_request_body: 1000\n  request_timeout: 3s\n  forward_client_cert: true\n  access_log: access.log\n";
        let c = parse_at(&text).unwrap();
        assert_eq!(c.inbound[0].protocol, Protocol::Http);
        assert_eq!(c.outbound[0].protocol, Protocol::Auto);
        assert_eq!(c.http.max_request_body, Some(1000));
        assert_eq!(c.http.request_timeout.0.as_secs(), 3);
        assert!(c.http.forward_client_cert);
        assert_eq!(
            c.http.access_log,
            LogSink::File("/etc/portcullis/access.log".into())
        );
    }

    #[test]
    fn bad_http_values_are_refused_with_their_place() {
        for (yaml, want) in [
            ("http:\n  max_header_bytes: 100\n", "between 8192"),
            ("http:\n  max_headers: 0\n", "max_headers"),
            (
                "http:\n  max_request_body: 0\n",
                "max_request_body must be more than 0",
            ),
            (
                "http:\n  request_timeout: 0s\n",
                "request_timeout must be more than 0",
            ),
            (
                "http:\n  max_concurrent_streams: 0\n",
                "max_concurrent_streams",
            ),
            ("http:\n  access_log: \"\"\n", "access_log"),
            ("http:\n  max_body: 10\n", "unknown field `max_body`"),
        ] {
            let e = err(&format!("{GOOD}{yaml}"));
            assert_eq!(e.line, Some(27), "{yaml}: {e}");
            assert!(e.reason.contains(want), "{yaml}: {e}");
        }
        let e = err(&GOOD.replace("protocol: tcp\noutbound", "protocol: grpc\noutbound"));
        assert!(e.reason.contains("grpc"), "{e}");
    }

    #[test]
    fn upstream_settings_parse_with_defaults_and_places() {
        let c = parse_at(GOOD).unwrap();
        assert_eq!(c.outbound[0].upstream, UpstreamConfig::default());
        let text = GOOD.replace(
            "    protocol: tcp\nadmin",
            "    protocol: tcp\n    circuit_breaker: { consecutive_failures: 3, failure_rate: 25, open_duration: 5s, failure_statuses: [503] }\n    limits: { max_requests: 7 }\n    retry_budget: 10\nadmin",
        );
        let u = &parse_at(&text).unwrap().outbound[0].upstream;
        assert_eq!(u.breaker.consecutive_failures, 3);
        assert_eq!(u.breaker.failure_rate, 0.25);
        assert_eq!(u.breaker.open_duration.as_secs(), 5);
        assert_eq!(u.failure_statuses, [503]);
        assert_eq!(u.max_requests, 7);
        assert_eq!(u.max_connections, 1024);
        assert_eq!(u.retry_budget_percent, 10);
        for (yaml, want) in [
            ("circuit_breaker: { failure_rate: 150 }", "percentage"),
            ("circuit_breaker: { consecutive_failures: 0 }", "between 1"),
            ("circuit_breaker: { failure_statuses: [404] }", "not a 5xx"),
            ("circuit_breaker: { open_duration: 0s }", "more than 0"),
            (
                "circuit_breaker: { minimum_calls: 500, window: 100 }",
                "cannot be more than the window",
            ),
            (
                "circuit_breaker: { success_threshold: 5 }",
                "half_open_max_calls",
            ),
            ("limits: { max_connections: 0 }", "at least 1"),
            ("retry_budget: 101", "between 0 and 100"),
            ("circuit_breaker: { tripwire: 1 }", "unknown field"),
        ] {
            let e = err(&GOOD.replace(
                "    protocol: tcp\nadmin",
                &format!("    protocol: tcp\n    {yaml}\nadmin"),
            ));
            assert_eq!(e.line, Some(16), "{yaml}: {e}");
            assert!(e.reason.contains(want), "{yaml}: {e}");
        }
    }
}
