//! The YAML as written, with places kept for validation errors, and its
//! validation into [`Config`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use super::{
    AdminConfig, AuditConfig, Config, ConfigDuration, ConfigError, ConnectionsConfig, Endpoint,
    HttpConfig, IdentityConfig, InboundConfig, LogConfig, LogFormat, OutboundConfig, ProbeConfig,
    Protocol, ReloadConfig, RevocationConfig, RuntimeConfig, Timeouts, UpstreamConfig,
};
use crate::identity::{SpiffeId, TrustDomain};
use crate::policy::AuditSink;

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
    admin: Option<RawAdmin>,
    timeouts: Option<RawTimeouts>,
    connections: Option<RawConnections>,
    http: Option<RawHttp>,
    revocation: Option<RawRevocation>,
    runtime: Option<RawRuntime>,
    log: Option<RawLog>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    /// stdout | stderr | off | a file path
    sink: Option<Spanned<String>>,
    #[serde(default)]
    log_allows: bool,
    max_per_second: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReload {
    watch: Option<bool>,
    debounce: Option<ConfigDuration>,
    interval: Option<Spanned<ConfigDuration>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbes {
    listen: SocketAddr,
    forward: SocketAddr,
    paths: Spanned<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    cert: Spanned<PathBuf>,
    key: Spanned<PathBuf>,
    trust_bundle: Spanned<PathBuf>,
    trust_domain: Option<TrustDomain>,
    #[serde(default)]
    trust_bundles: Pairs<TrustDomain, Spanned<PathBuf>>,
    expiry_warning_fraction: Option<Spanned<f64>>,
    key_pair_grace: Option<ConfigDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRevocation {
    #[serde(default)]
    crls: Vec<Spanned<PathBuf>>,
    /// Fetch the CRLs named by our chain's and the roots' distribution points.
    #[serde(default)]
    fetch_distribution_points: bool,
    ocsp: Option<RawOcsp>,
    /// chain | leaf
    #[serde(default)]
    check: RevocationDepth,
    /// unknown | ignore: what a CRL past its nextUpdate means.
    #[serde(default)]
    expired_crl: ExpiredCrl,
    /// closed | open: what an unknown status means.
    #[serde(default)]
    failure: FailurePolicy,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOcsp {
    mode: Spanned<crate::revocation::OcspMode>,
    responder: Option<Spanned<String>>,
    timeout: Option<ConfigDuration>,
    max_age: Option<ConfigDuration>,
    cache_size: Option<Spanned<usize>>,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RevocationDepth {
    #[default]
    Chain,
    Leaf,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum ExpiredCrl {
    #[default]
    Unknown,
    Ignore,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum FailurePolicy {
    #[default]
    Closed,
    Open,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnections {
    #[serde(default)]
    close_on_peer_expiry: bool,
    max_lifetime: Option<Spanned<ConfigDuration>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    max_header_bytes: Option<Spanned<usize>>,
    max_headers: Option<Spanned<usize>>,
    max_request_body: Option<Spanned<u64>>,
    request_timeout: Option<Spanned<ConfigDuration>>,
    header_read_timeout: Option<Spanned<ConfigDuration>>,
    detect_timeout: Option<Spanned<ConfigDuration>>,
    #[serde(default)]
    forward_client_cert: bool,
    max_concurrent_streams: Option<Spanned<u32>>,
    pool_idle_timeout: Option<Spanned<ConfigDuration>>,
    /// stdout | stderr | off | a file path
    access_log: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInbound {
    name: Spanned<String>,
    listen: Spanned<SocketAddr>,
    forward: SocketAddr,
    #[serde(default = "tcp")]
    protocol: Protocol,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutbound {
    name: Spanned<String>,
    listen: Spanned<SocketAddr>,
    endpoints: Spanned<Vec<Spanned<String>>>,
    identity: SpiffeId,
    #[serde(default = "tcp")]
    protocol: Protocol,
    circuit_breaker: Option<RawBreaker>,
    limits: Option<RawLimits>,
    /// Percent of requests that retries may add.
    retry_budget: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    consecutive_failures: Option<Spanned<u32>>,
    /// Percent.
    failure_rate: Option<Spanned<u32>>,
    minimum_calls: Option<Spanned<u32>>,
    window: Option<Spanned<u32>>,
    slow_call_duration: Option<Spanned<ConfigDuration>>,
    /// Percent.
    slow_call_rate: Option<Spanned<u32>>,
    open_duration: Option<Spanned<ConfigDuration>>,
    max_open_duration: Option<Spanned<ConfigDuration>>,
    half_open_max_calls: Option<Spanned<u32>>,
    success_threshold: Option<Spanned<u32>>,
    failure_statuses: Option<Spanned<Vec<Spanned<u16>>>>,
    max_ejection_percent: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<Spanned<usize>>,
    max_pending_requests: Option<Spanned<usize>>,
    max_requests: Option<Spanned<usize>>,
}

fn upstream_config(
    v: &Validator<'_>,
    breaker: Option<RawBreaker>,
    limits: Option<RawLimits>,
    retry_budget: Option<Spanned<u32>>,
) -> Result<UpstreamConfig, ConfigError> {
    let mut u = UpstreamConfig::default();
    let count = |n: Option<Spanned<u32>>, name: &str, min: u32, max: u32, slot: &mut u32| {
        if let Some(n) = n {
            if !(min..=max).contains(&n.value) {
                return Err(v.at(
                    n.referenced,
                    format!("{name} must be between {min} and {max}"),
                ));
            }
            *slot = n.value;
        }
        Ok(())
    };
    let percent = |n: Option<Spanned<u32>>, name: &str, slot: &mut f64| {
        if let Some(n) = n {
            if !(1..=100).contains(&n.value) {
                return Err(v.at(
                    n.referenced,
                    format!("{name} is a percentage: between 1 and 100"),
                ));
            }
            *slot = f64::from(n.value) / 100.0;
        }
        Ok(())
    };
    let duration =
        |d: Option<Spanned<ConfigDuration>>, name: &str, slot: &mut std::time::Duration| {
            if let Some(d) = d {
                if d.value.0.is_zero() {
                    return Err(v.at(d.referenced, format!("{name} must be more than 0")));
                }
                *slot = d.value.0;
            }
            Ok(())
        };
    if let Some(b) = breaker {
        let c = &mut u.breaker;
        count(
            b.consecutive_failures,
            "circuit_breaker.consecutive_failures",
            1,
            1_000_000,
            &mut c.consecutive_failures,
        )?;
        percent(
            b.failure_rate,
            "circuit_breaker.failure_rate",
            &mut c.failure_rate,
        )?;
        percent(
            b.slow_call_rate,
            "circuit_breaker.slow_call_rate",
            &mut c.slow_call_rate,
        )?;
        count(
            b.window,
            "circuit_breaker.window",
            1,
            100_000,
            &mut c.window,
        )?;
        let minimum_at = b.minimum_calls.as_ref().map(|m| m.referenced);
        count(
            b.minimum_calls,
            "circuit_breaker.minimum_calls",
            1,
            100_000,
            &mut c.minimum_calls,
        )?;
        count(
            b.half_open_max_calls,
            "circuit_breaker.half_open_max_calls",
            1,
            1000,
            &mut c.half_open_max_calls,
        )?;
        if let Some(s) = &b.success_threshold
            && s.value > c.half_open_max_calls
        {
            return Err(v.at(
                s.referenced,
                "circuit_breaker.success_threshold cannot be more than half_open_max_calls",
            ));
        }
        count(
            b.success_threshold,
            "circuit_breaker.success_threshold",
            1,
            1000,
            &mut c.success_threshold,
        )?;
        duration(
            b.slow_call_duration,
            "circuit_breaker.slow_call_duration",
            &mut c.slow_call_duration,
        )?;
        duration(
            b.open_duration,
            "circuit_breaker.open_duration",
            &mut c.open_duration,
        )?;
        duration(
            b.max_open_duration,
            "circuit_breaker.max_open_duration",
            &mut c.max_open_duration,
        )?;
        if c.max_open_duration < c.open_duration {
            // The cap is at least the first open period.
            c.max_open_duration = c.open_duration;
        }
        if let Some(at) = minimum_at
            && c.minimum_calls > c.window
        {
            return Err(v.at(
                at,
                "circuit_breaker.minimum_calls cannot be more than the window",
            ));
        }
        if let Some(list) = b.failure_statuses {
            let mut statuses = Vec::with_capacity(list.value.len());
            for s in list.value {
                if !(500..=599).contains(&s.value) {
                    return Err(v.at(
                        s.referenced,
                        format!("failure status {} is not a 5xx status", s.value),
                    ));
                }
                statuses.push(s.value);
            }
            u.failure_statuses = statuses;
        }
        if let Some(m) = b.max_ejection_percent {
            if m.value > 100 {
                return Err(v.at(
                    m.referenced,
                    "circuit_breaker.max_ejection_percent is a percentage: between 0 and 100",
                ));
            }
            u.max_ejection_percent = m.value;
        }
    }
    if let Some(l) = limits {
        for (n, name, slot) in [
            (
                l.max_connections,
                "limits.max_connections",
                &mut u.max_connections,
            ),
            (
                l.max_pending_requests,
                "limits.max_pending_requests",
                &mut u.max_pending_requests,
            ),
            (l.max_requests, "limits.max_requests", &mut u.max_requests),
        ] {
            if let Some(n) = n {
                if n.value == 0 {
                    return Err(v.at(n.referenced, format!("{name} must be at least 1")));
                }
                *slot = n.value;
            }
        }
    }
    if let Some(r) = retry_budget {
        if r.value > 100 {
            return Err(v.at(
                r.referenced,
                "retry_budget is a percentage of requests: between 0 and 100",
            ));
        }
        u.retry_budget_percent = r.value;
    }
    Ok(u)
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Spanned<SocketAddr>,
    /// Admin binds to loopback unless this is set: it exposes config and
    /// reload, which must not be reachable from the network by accident.
    #[serde(default)]
    allow_non_loopback: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    connect: Option<Spanned<ConfigDuration>>,
    handshake: Option<Spanned<ConfigDuration>>,
    idle: Option<Spanned<ConfigDuration>>,
    drain: Option<ConfigDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    worker_threads: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
    format: Option<LogFormat>,
}

fn http_config(v: &Validator<'_>, h: RawHttp, base: &Path) -> Result<HttpConfig, ConfigError> {
    let mut http = HttpConfig::default();
    if let Some(n) = h.max_header_bytes {
        // hyper's HTTP/1 reader needs room for at least one 8 KiB buffer.
        if !(8192..=1 << 20).contains(&n.value) {
            return Err(v.at(
                n.referenced,
                "http.max_header_bytes must be between 8192 and 1048576",
            ));
        }
        http.max_header_bytes = n.value;
    }
    if let Some(n) = h.max_headers {
        if !(1..=10_000).contains(&n.value) {
            return Err(v.at(n.referenced, "http.max_headers must be between 1 and 10000"));
        }
        http.max_headers = n.value;
    }
    if let Some(n) = h.max_request_body {
        if n.value == 0 {
            return Err(v.at(
                n.referenced,
                "http.max_request_body must be more than 0 (leave it out for no limit)",
            ));
        }
        http.max_request_body = Some(n.value);
    }
    if let Some(n) = h.max_concurrent_streams {
        if n.value == 0 {
            return Err(v.at(
                n.referenced,
                "http.max_concurrent_streams must be at least 1",
            ));
        }
        http.max_concurrent_streams = n.value;
    }
    let positive = |d: Option<Spanned<ConfigDuration>>, name: &str, slot: &mut ConfigDuration| {
        if let Some(d) = d {
            if d.value.0.is_zero() {
                return Err(v.at(d.referenced, format!("http.{name} must be more than 0")));
            }
            *slot = d.value;
        }
        Ok(())
    };
    positive(
        h.request_timeout,
        "request_timeout",
        &mut http.request_timeout,
    )?;
    positive(
        h.header_read_timeout,
        "header_read_timeout",
        &mut http.header_read_timeout,
    )?;
    positive(h.detect_timeout, "detect_timeout", &mut http.detect_timeout)?;
    positive(
        h.pool_idle_timeout,
        "pool_idle_timeout",
        &mut http.pool_idle_timeout,
    )?;
    http.forward_client_cert = h.forward_client_cert;
    if let Some(sink) = h.access_log {
        if sink.value.is_empty() {
            return Err(v.at(
                sink.referenced,
                "http.access_log must be stdout, stderr, off or a file path",
            ));
        }
        http.access_log = AuditSink::parse(&sink.value, base);
    }
    Ok(http)
}

/// A YAML mapping read in order as pairs, keeping each value's place
/// (serde's maps lose order, and keys cannot carry places).
pub(crate) struct Pairs<K, V>(pub Vec<(K, V)>);

impl<K, V> Default for Pairs<K, V> {
    fn default() -> Self {
        Pairs(Vec::new())
    }
}

impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for Pairs<K, V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<K, V>(std::marker::PhantomData<(K, V)>);
        impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<K, V> {
            type Value = Pairs<K, V>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<K, V>()? {
                    out.push(entry);
                }
                Ok(Pairs(out))
            }
        }
        d.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

/// Validation state: the file name and the first error found.
struct Validator<'a> {
    file: &'a Path,
}

impl Validator<'_> {
    fn at(&self, loc: Location, reason: impl Into<String>) -> ConfigError {
        let known = loc != Location::UNKNOWN;
        ConfigError {
            file: self.file.to_path_buf(),
            line: known.then(|| loc.line()),
            column: known.then(|| loc.column()),
            reason: reason.into(),
        }
    }
}

pub(super) fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| yaml_error(&e, file))?;
    let v = Validator { file };
    let base = file.parent().unwrap_or_else(|| Path::new("."));
    let resolve = |p: &Spanned<PathBuf>| -> Result<PathBuf, ConfigError> {
        if p.value.as_os_str().is_empty() {
            return Err(v.at(p.referenced, "path must not be empty"));
        }
        Ok(if p.value.is_absolute() {
            p.value.clone()
        } else {
            base.join(&p.value)
        })
    };
    let identity = IdentityConfig {
        cert: resolve(&raw.identity.cert)?,
        key: resolve(&raw.identity.key)?,
        trust_bundle: resolve(&raw.identity.trust_bundle)?,
        trust_domain: raw.identity.trust_domain,
        trust_bundles: Vec::with_capacity(raw.identity.trust_bundles.0.len()),
        expiry_warning_fraction: 1.0 / 3.0,
        key_pair_grace: ConfigDuration(std::time::Duration::from_secs(10)),
    };
    let mut identity = identity;
    for (td, path) in &raw.identity.trust_bundles.0 {
        if identity.trust_bundles.iter().any(|(t, _)| t == td)
            || identity.trust_domain.as_ref() == Some(td)
        {
            return Err(v.at(
                path.referenced,
                format!("trust domain {td} has more than one bundle"),
            ));
        }
        identity.trust_bundles.push((td.clone(), resolve(path)?));
    }
    if let Some(f) = raw.identity.expiry_warning_fraction {
        if !(f.value > 0.0 && f.value < 1.0) {
            return Err(v.at(
                f.referenced,
                "identity.expiry_warning_fraction must be between 0 and 1 (e.g. 0.33)",
            ));
        }
        identity.expiry_warning_fraction = f.value;
    }
    if let Some(g) = raw.identity.key_pair_grace {
        identity.key_pair_grace = g;
    }
    let revocation = match raw.revocation {
        None => None,
        Some(r) => {
            let mut crls = Vec::with_capacity(r.crls.len());
            for c in &r.crls {
                crls.push(resolve(c)?);
            }
            let ocsp = match r.ocsp {
                None => None,
                Some(o) => {
                    if let Some(u) = &o.responder
                        && !u.value.starts_with("http://")
                    {
                        return Err(v.at(
                            u.referenced,
                            "revocation.ocsp.responder must be an http:// URL (OCSP answers are signed; they need no TLS)",
                        ));
                    }
                    let cache_size = match o.cache_size {
                        Some(c) if c.value == 0 => {
                            return Err(v.at(
                                c.referenced,
                                "revocation.ocsp.cache_size must be at least 1",
                            ));
                        }
                        Some(c) => c.value,
                        None => 10_000,
                    };
                    (o.mode.value != crate::revocation::OcspMode::Off).then(|| {
                        crate::revocation::OcspConfig {
                            mode: o.mode.value,
                            responder: o.responder.map(|u| u.value),
                            timeout: o
                                .timeout
                                .map(|t| t.0)
                                .unwrap_or(std::time::Duration::from_secs(2)),
                            max_age: o
                                .max_age
                                .map(|t| t.0)
                                .unwrap_or(std::time::Duration::from_secs(3600)),
                            cache_size,
                        }
                    })
                }
            };
            if crls.is_empty() && ocsp.is_none() && !r.fetch_distribution_points {
                return Err(ConfigError {
                    file: file.to_path_buf(),
                    line: None,
                    column: None,
                    reason: "revocation needs `crls`, `fetch_distribution_points: true`, or `ocsp.mode: prefer | require`".into(),
                });
            }
            Some(RevocationConfig {
                crls,
                ocsp,
                policy: crate::revocation::RevocationPolicy {
                    whole_chain: r.check == RevocationDepth::Chain,
                    expired_is_unknown: r.expired_crl == ExpiredCrl::Unknown,
                    fail_open: r.failure == FailurePolicy::Open,
                    fetch_distribution_points: r.fetch_distribution_points,
                },
            })
        }
    };
    let mut connections = ConnectionsConfig::default();
    if let Some(c) = raw.connections {
        connections.close_on_peer_expiry = c.close_on_peer_expiry;
        if let Some(m) = c.max_lifetime {
            if m.value.0.is_zero() {
                return Err(v.at(m.referenced, "connections.max_lifetime must be more than 0"));
            }
            connections.max_lifetime = Some(m.value);
        }
    }
    let policy = raw.policy.as_ref().map(&resolve).transpose()?;

    let mut audit = AuditConfig::default();
    if let Some(a) = raw.audit {
        if let Some(sink) = a.sink {
            if sink.value.is_empty() {
                return Err(v.at(
                    sink.referenced,
                    "audit.sink must be stdout, stderr, off or a file path",
                ));
            }
            audit.sink = AuditSink::parse(&sink.value, base);
        }
        audit.log_allows = a.log_allows;
        if let Some(m) = a.max_per_second {
            if m.value == 0 {
                return Err(v.at(m.referenced, "audit.max_per_second must be at least 1"));
            }
            audit.max_per_second = m.value;
        }
    }

    let mut reload = ReloadConfig::default();
    if let Some(r) = raw.reload {
        if let Some(d) = r.debounce {
            reload.debounce = d;
        }
        if let Some(w) = r.watch {
            reload.watch = w;
        }
        if let Some(i) = r.interval {
            if i.value.0 < std::time::Duration::from_secs(1) {
                return Err(v.at(i.referenced, "reload.interval must be at least 1s"));
            }
            reload.interval = i.value;
        }
    }

    let probes = match raw.probes {
        None => None,
        Some(p) => {
            if p.paths.value.is_empty() {
                return Err(v.at(
                    p.paths.referenced,
                    "probes.paths must list at least one path",
                ));
            }
            let mut paths = Vec::with_capacity(p.paths.value.len());
            for path in p.paths.value {
                let ok = path.value.starts_with('/')
                    && !path
                        .value
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#');
                if !ok {
                    return Err(v.at(
                        path.referenced,
                        format!(
                            "probe path {:?} must be a plain path starting with '/'",
                            path.value
                        ),
                    ));
                }
                paths.push(path.value);
            }
            Some(ProbeConfig {
                listen: p.listen,
                forward: p.forward,
                paths,
            })
        }
    };

    let mut names: HashMap<String, Location> = HashMap::new();
    let mut listens: HashMap<SocketAddr, Location> = HashMap::new();
    let mut check_listener =
        |name: &Spanned<String>, listen: &Spanned<SocketAddr>| -> Result<(), ConfigError> {
            check_name(&v, name)?;
            if let Some(prev) = names.insert(name.value.clone(), name.referenced) {
                return Err(v.at(
                    name.referenced,
                    format!(
                        "listener name {:?} is already used at line {}",
                        name.value,
                        prev.line()
                    ),
                ));
            }
            if listen.value.port() != 0
                && let Some(prev) = listens.insert(listen.value, listen.referenced)
            {
                return Err(v.at(
                    listen.referenced,
                    format!(
                        "listen address {} is already used at line {}",
                        listen.value,
                        prev.line()
                    ),
                ));
            }
            Ok(())
        };

    let mut inbound = Vec::with_capacity(raw.inbound.len());
    for l in raw.inbound {
        check_listener(&l.name, &l.listen)?;
        inbound.push(InboundConfig {
            name: l.name.value,
            listen: l.listen.value,
            forward: l.forward,
            protocol: l.protocol,
        });
    }

    let mut outbound = Vec::with_capacity(raw.outbound.len());
    for l in raw.outbound {
        check_listener(&l.name, &l.listen)?;
        if !l.listen.value.ip().is_loopback() {
            return Err(v.at(
                l.listen.referenced,
                format!(
                    "outbound listener {:?} must listen on loopback (it originates mTLS with this \
                     pod's identity, so anyone who can reach it can act as this pod)",
                    l.name.value
                ),
            ));
        }
        if l.endpoints.value.is_empty() {
            return Err(v.at(
                l.endpoints.referenced,
                format!(
                    "outbound listener {:?} needs at least one endpoint",
                    l.name.value
                ),
            ));
        }
        let mut endpoints = Vec::with_capacity(l.endpoints.value.len());
        for e in &l.endpoints.value {
            endpoints.push(Endpoint::parse(&e.value).map_err(|why| v.at(e.referenced, why))?);
        }
        let upstream = upstream_config(&v, l.circuit_breaker, l.limits, l.retry_budget)?;
        outbound.push(OutboundConfig {
            name: l.name.value,
            listen: l.listen.value,
            endpoints,
            identity: l.identity,
            protocol: l.protocol,
            upstream,
        });
    }

    let admin = match raw.admin {
        None => AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 15000)),
        },
        Some(a) => {
            if !a.listen.value.ip().is_loopback() && !a.allow_non_loopback {
                return Err(v.at(
                    a.listen.referenced,
                    format!(
                        "admin.listen {} is not a loopback address; the admin server exposes \
                         config and reload, so set admin.allow_non_loopback: true to mean it",
                        a.listen.value
                    ),
                ));
            }
            AdminConfig {
                listen: a.listen.value,
            }
        }
    };

    let mut timeouts = Timeouts::default();
    if let Some(t) = raw.timeouts {
        let positive = |d: Option<Spanned<ConfigDuration>>,
                        name: &str,
                        slot: &mut ConfigDuration| {
            if let Some(d) = d {
                if d.value.0.is_zero() {
                    return Err(v.at(d.referenced, format!("timeouts.{name} must be more than 0")));
                }
                *slot = d.value;
            }
            Ok(())
        };
        positive(t.connect, "connect", &mut timeouts.connect)?;
        positive(t.handshake, "handshake", &mut timeouts.handshake)?;
        positive(t.idle, "idle", &mut timeouts.idle)?;
        if let Some(d) = t.drain {
            timeouts.drain = d;
        }
    }

    let http = match raw.http {
        None => HttpConfig::default(),
        Some(h) => http_config(&v, h, base)?,
    };

    let mut runtime = RuntimeConfig::default();
    if let Some(r) = raw.runtime
        && let Some(n) = r.worker_threads
    {
        if n.value == 0 || n.value > 1024 {
            return Err(v.at(
                n.referenced,
                "runtime.worker_threads must be between 1 and 1024",
            ));
        }
        runtime.worker_threads = Some(n.value);
    }

    let mut log = LogConfig::default();
    if let Some(l) = raw.log {
        if let Some(level) = l.level {
            log.level = level;
        }
        if let Some(format) = l.format {
            log.format = format;
        }
    }

    Ok(Config {
        source: file.to_path_buf(),
        identity,
        policy,
        audit,
        reload,
        probes,
        inbound,
        outbound,
        admin,
        timeouts,
        connections,
        http,
        revocation,
        runtime,
        log,
    })
}

/// Listener names become metric labels and policy keys: keep them tame.
fn check_name(v: &Validator<'_>, name: &Spanned<String>) -> Result<(), ConfigError> {
    let n = &name.value;
    if super::valid_listener_name(n) {
        Ok(())
    } else {
        Err(v.at(
            name.referenced,
            format!(
                "listener name {n:?} must be 1-63 characters of a-z, 0-9, '-' and '_', \
                 starting with a letter or digit"
            ),
        ))
    }
}

pub(crate) fn yaml_error(e: &serde_saphyr::Error, file: &Path) -> ConfigError {
    let plain = e.without_snippet().to_string();
    let (line, column) = match e.location() {
        Some(loc) if loc != Location::UNKNOWN => (Some(loc.line()), Some(loc.column())),
        _ => (None, None),
    };
    // The library appends the place to its message; we print it in front.
    let reason = match plain.rfind(" at line ") {
        Some(i) if line.is_some() => plain[..i].to_string(),
        _ => plain,
    };
    ConfigError {
        file: file.to_path_buf(),
        line,
        column,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(c.identity.cert, Path::new("/etc/portcullis/svid.pem"));
        assert_eq!(c.identity.key, Path::new("/abs/svid-key.pem"));
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
            AuditSink::File("/etc/portcullis/access.log".into())
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
