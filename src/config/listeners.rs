//! `inbound`, `outbound`, `probes` and `admin`: what the sidecar listens
//! on, where each listener forwards, and the rules that keep names and
//! addresses unique and the sensitive listeners on loopback.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;

use rustls_pki_types::ServerName;

use super::duration::ConfigDuration;
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use super::check::{Check, ConfigError, valid_name};
use super::upstream::{self, RawBreaker, RawLimits, UpstreamConfig};
use crate::identity::SpiffeId;

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

/// What the app behind an inbound HTTP listener speaks (`app_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// Whatever the request came as: HTTP/1.1 from an HTTP/1.1 client
    /// (marked across the hop), HTTP/2 (prior knowledge) otherwise.
    #[default]
    Auto,
    /// Only HTTP/1.1: HTTP/2 requests are sent to it as HTTP/1.1.
    Http1,
    /// Only HTTP/2 (prior knowledge): HTTP/1.1 requests are sent to it
    /// as HTTP/2. Upgrades still go as HTTP/1.1.
    Http2,
}

impl Protocol {
    /// Whether connections may be served as HTTP.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Auto)
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct InboundConfig {
    pub name: String,
    /// Where peers connect explicitly; `None` for a listener reached only
    /// through capture (`port`).
    pub listen: Option<SocketAddr>,
    /// The pod port this listener serves when inbound traffic is captured
    /// (`capture.inbound`): a connection whose original destination is this
    /// port is served here.
    pub port: Option<u16>,
    pub forward: SocketAddr,
    pub protocol: Protocol,
    pub limits: InboundLimits,
    pub app_protocol: AppProtocol,
}

/// What one inbound listener holds at most. Past a limit a new
/// connection is closed at once (an HTTP request is answered 503), and
/// counted: the sidecar stays up and keeps serving the others.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct InboundLimits {
    /// Open connections, in any state.
    pub max_connections: usize,
    /// TLS handshakes in progress (counted from the first byte the client
    /// sends: a silent connection holds only a connection place).
    pub max_handshakes: usize,
    /// Open connections from one client address, so one hostile pod cannot
    /// take the listener's every place.
    pub max_connections_per_client: usize,
    /// Handshakes in progress from one client address.
    pub max_handshakes_per_client: usize,
    /// HTTP: connections to the local app. A request that needs one waits
    /// up to `timeouts.connect`, then gets 503 `overloaded`.
    pub max_app_connections: usize,
}

impl Default for InboundLimits {
    fn default() -> Self {
        InboundLimits {
            max_connections: 10_000,
            max_handshakes: 256,
            max_connections_per_client: 1000,
            max_handshakes_per_client: 64,
            max_app_connections: 1024,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct OutboundConfig {
    pub name: String,
    /// Where the app connects explicitly; `None` for a listener reached
    /// only through capture (`destinations`).
    pub listen: Option<SocketAddr>,
    /// With `capture.outbound`: the app's connections to these go to this
    /// listener as if made to it.
    pub destinations: Vec<Destination>,
    pub endpoints: Vec<Endpoint>,
    pub identity: SpiffeId,
    pub protocol: Protocol,
    pub upstream: UpstreamConfig,
    /// How often endpoints given by name are resolved again (getaddrinfo
    /// gives no TTL); every address a name resolves to is used.
    pub dns_refresh: ConfigDuration,
}

/// A plaintext listener that forwards only the listed GET/HEAD paths to the
/// app, so kubelet probes work under default deny.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProbeConfig {
    pub listen: SocketAddr,
    pub forward: SocketAddr,
    pub paths: Vec<String>,
}

/// Where the traffic `portcullis init` redirects arrives.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaptureConfig {
    /// Inbound TCP to the pod, redirected here; each connection is served
    /// by the inbound listener whose `port` is its original destination
    /// port, and refused when there is none.
    pub inbound: Option<SocketAddr>,
    /// The app's outbound TCP, redirected here; each connection is served
    /// by the outbound listener one of whose `destinations` it was headed
    /// for, else as `unmatched` says.
    pub outbound: Option<SocketAddr>,
    pub unmatched: Unmatched,
    /// Passed-through connections open at once; over it a new one is
    /// refused (they hold two sockets each and no listener's limits).
    pub max_passthrough: usize,
}

/// What a captured outbound connection no listener claims gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    /// Plain TCP to where it was going, counted (as Istio's ALLOW_ANY).
    #[default]
    Passthrough,
    /// Closed at once, counted.
    Deny,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 15000)),
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

/// An address block, `10.0.0.0/8` or `fd00::/8` (a bare address is /32
/// or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix must be 0 to {max}"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let bits = |ip: std::net::IpAddr| match ip {
            std::net::IpAddr::V4(a) => (u128::from(u32::from(a)) << 96, true),
            std::net::IpAddr::V6(a) => (u128::from(a), false),
        };
        let ((net, v4), (x, xv4)) = (bits(self.addr), bits(ip));
        if v4 != xv4 {
            return false;
        }
        // An IPv4 address sits in the top 32 bits, so its prefix counts
        // from the top as an IPv6 one does.
        let len = u32::from(self.prefix);
        let mask = if len == 0 {
            0
        } else {
            u128::MAX << (128 - len)
        };
        (net & mask) == (x & mask)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Where a captured outbound connection may be headed for an outbound
/// listener to take it: an address and port, a block and a port, or a
/// host name and port (resolved again every `dns_refresh`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Destination {
    Addr(SocketAddr),
    Block(Cidr, u16),
    Name(Endpoint),
}

impl Destination {
    pub fn parse(s: &str) -> Result<Destination, String> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(Destination::Addr(a));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| {
            format!("destination {s:?} must be address:port, cidr:port or host:port")
        })?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("destination {s:?} has an invalid port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.contains('/') {
            return Ok(Destination::Block(Cidr::parse(host)?, port));
        }
        Ok(Destination::Name(Endpoint::parse(&format!(
            "{host}:{port}"
        ))?))
    }
}

impl From<Endpoint> for String {
    fn from(e: Endpoint) -> String {
        e.to_string()
    }
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInbound {
    name: Spanned<String>,
    listen: Option<Spanned<SocketAddr>>,
    port: Option<Spanned<u16>>,
    /// Defaults to 127.0.0.1:`port`.
    forward: Option<SocketAddr>,
    #[serde(default = "tcp")]
    protocol: Protocol,
    limits: Option<RawInboundLimits>,
    app_protocol: Option<Spanned<AppProtocol>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInboundLimits {
    max_connections: Option<Spanned<usize>>,
    max_handshakes: Option<Spanned<usize>>,
    max_connections_per_client: Option<Spanned<usize>>,
    max_handshakes_per_client: Option<Spanned<usize>>,
    max_app_connections: Option<Spanned<usize>>,
}

impl RawInboundLimits {
    fn validate(self, c: &Check<'_>) -> Result<InboundLimits, ConfigError> {
        let mut l = InboundLimits::default();
        c.set(
            self.max_connections,
            "limits.max_connections",
            1..,
            &mut l.max_connections,
        )?;
        c.set(
            self.max_handshakes,
            "limits.max_handshakes",
            1..,
            &mut l.max_handshakes,
        )?;
        c.set(
            self.max_connections_per_client,
            "limits.max_connections_per_client",
            1..,
            &mut l.max_connections_per_client,
        )?;
        c.set(
            self.max_handshakes_per_client,
            "limits.max_handshakes_per_client",
            1..,
            &mut l.max_handshakes_per_client,
        )?;
        c.set(
            self.max_app_connections,
            "limits.max_app_connections",
            1..,
            &mut l.max_app_connections,
        )?;
        Ok(l)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutbound {
    name: Spanned<String>,
    listen: Option<Spanned<SocketAddr>>,
    destinations: Option<Spanned<Vec<Spanned<String>>>>,
    endpoints: Spanned<Vec<Spanned<String>>>,
    identity: SpiffeId,
    #[serde(default = "tcp")]
    protocol: Protocol,
    circuit_breaker: Option<RawBreaker>,
    limits: Option<RawLimits>,
    /// Percent of requests that retries may add.
    retry_budget: Option<Spanned<u32>>,
    dns_refresh: Option<Spanned<ConfigDuration>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProbes {
    listen: SocketAddr,
    forward: SocketAddr,
    paths: Spanned<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCapture {
    inbound: Option<Spanned<SocketAddr>>,
    outbound: Option<Spanned<SocketAddr>>,
    unmatched: Option<Unmatched>,
    max_passthrough: Option<Spanned<usize>>,
}

impl RawCapture {
    /// Checks the capture section against the inbound listeners: a
    /// listener's `port` means something only with `capture.inbound`.
    pub(super) fn validate(
        self,
        c: &Check<'_>,
        listeners: &mut Listeners,
        inbound: &[InboundConfig],
    ) -> Result<CaptureConfig, ConfigError> {
        if let Some(listen) = &self.inbound {
            listeners.check_listen(c, listen)?;
            if !inbound.iter().any(|l| l.port.is_some()) {
                return Err(c.at(
                    listen.referenced,
                    "capture.inbound: no inbound listener has a `port` to serve captured connections",
                ));
            }
        }
        if let Some(listen) = &self.outbound {
            listeners.check_listen(c, listen)?;
            if !listen.value.ip().is_loopback() {
                return Err(c.at(
                    listen.referenced,
                    "capture.outbound must be on loopback (netfilter redirects the app's \
                     connections there, and it acts with this pod's identity)",
                ));
            }
        }
        let mut max_passthrough = 10_000;
        c.set(
            self.max_passthrough,
            "capture.max_passthrough",
            1..,
            &mut max_passthrough,
        )?;
        Ok(CaptureConfig {
            max_passthrough,
            inbound: self.inbound.map(|l| l.value),
            outbound: self.outbound.map(|l| l.value),
            unmatched: self.unmatched.unwrap_or_default(),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    listen: Spanned<SocketAddr>,
    /// Admin binds to loopback unless this is set: it exposes config and
    /// reload, which must not be reachable from the network by accident.
    #[serde(default)]
    allow_non_loopback: bool,
}

/// Names and listen addresses seen so far: each may be used once.
#[derive(Default)]
pub(super) struct Listeners {
    names: HashMap<String, Location>,
    listens: HashMap<SocketAddr, Location>,
    ports: HashMap<u16, Location>,
}

impl Listeners {
    fn check(
        &mut self,
        c: &Check<'_>,
        name: &Spanned<String>,
        listen: Option<&Spanned<SocketAddr>>,
    ) -> Result<(), ConfigError> {
        let n = &name.value;
        if !valid_name(n) {
            // Listener names become metric labels and policy keys.
            return Err(c.at(
                name.referenced,
                format!(
                    "listener name {n:?} must be 1-63 characters of a-z, 0-9, '-' and '_', \
                     starting with a letter or digit"
                ),
            ));
        }
        if let Some(prev) = self.names.insert(n.clone(), name.referenced) {
            return Err(c.at(
                name.referenced,
                format!(
                    "listener name {n:?} is already used at line {}",
                    prev.line()
                ),
            ));
        }
        match listen {
            Some(listen) => self.check_listen(c, listen),
            None => Ok(()),
        }
    }

    fn check_listen(
        &mut self,
        c: &Check<'_>,
        listen: &Spanned<SocketAddr>,
    ) -> Result<(), ConfigError> {
        if listen.value.port() != 0
            && let Some(prev) = self.listens.insert(listen.value, listen.referenced)
        {
            return Err(c.at(
                listen.referenced,
                format!(
                    "listen address {} is already used at line {}",
                    listen.value,
                    prev.line()
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn inbound(
        &mut self,
        c: &Check<'_>,
        l: RawInbound,
    ) -> Result<InboundConfig, ConfigError> {
        self.check(c, &l.name, l.listen.as_ref())?;
        if l.listen.is_none() && l.port.is_none() {
            return Err(c.at(
                l.name.referenced,
                format!(
                    "inbound listener {:?} needs `listen` (where peers connect), `port` (the pod \
                     port it serves when inbound traffic is captured), or both",
                    l.name.value
                ),
            ));
        }
        if let Some(port) = &l.port {
            if port.value == 0 {
                return Err(c.at(port.referenced, "port must not be 0"));
            }
            if let Some(prev) = self.ports.insert(port.value, port.referenced) {
                return Err(c.at(
                    port.referenced,
                    format!(
                        "port {} is already served at line {}",
                        port.value,
                        prev.line()
                    ),
                ));
            }
        }
        let forward = match (l.forward, &l.port) {
            (Some(f), _) => f,
            (None, Some(port)) => SocketAddr::from(([127, 0, 0, 1], port.value)),
            (None, None) => {
                return Err(c.at(
                    l.name.referenced,
                    format!("inbound listener {:?} needs `forward`", l.name.value),
                ));
            }
        };
        let limits = match l.limits {
            Some(raw) => raw.validate(c)?,
            None => InboundLimits::default(),
        };
        let app_protocol = match l.app_protocol {
            Some(a) if !l.protocol.is_http() => {
                return Err(c.at(
                    a.referenced,
                    format!(
                        "inbound listener {:?}: app_protocol applies to protocol: http or auto",
                        l.name.value
                    ),
                ));
            }
            Some(a) => a.value,
            None => AppProtocol::Auto,
        };
        Ok(InboundConfig {
            name: l.name.value,
            listen: l.listen.map(|l| l.value),
            port: l.port.map(|p| p.value),
            forward,
            protocol: l.protocol,
            limits,
            app_protocol,
        })
    }

    pub(super) fn outbound(
        &mut self,
        c: &Check<'_>,
        l: RawOutbound,
    ) -> Result<OutboundConfig, ConfigError> {
        self.check(c, &l.name, l.listen.as_ref())?;
        if let Some(listen) = &l.listen
            && !listen.value.ip().is_loopback()
        {
            return Err(c.at(
                listen.referenced,
                format!(
                    "outbound listener {:?} must listen on loopback (it originates mTLS with this \
                     pod's identity, so anyone who can reach it can act as this pod)",
                    l.name.value
                ),
            ));
        }
        let mut destinations = Vec::new();
        if let Some(list) = &l.destinations {
            for d in &list.value {
                destinations
                    .push(Destination::parse(&d.value).map_err(|why| c.at(d.referenced, why))?);
            }
        }
        if l.listen.is_none() && destinations.is_empty() {
            return Err(c.at(
                l.name.referenced,
                format!(
                    "outbound listener {:?} needs `listen` (where the app connects), \
                     `destinations` (what the app's captured connections go to), or both",
                    l.name.value
                ),
            ));
        }
        if l.endpoints.value.is_empty() {
            return Err(c.at(
                l.endpoints.referenced,
                format!(
                    "outbound listener {:?} needs at least one endpoint",
                    l.name.value
                ),
            ));
        }
        let mut endpoints = Vec::with_capacity(l.endpoints.value.len());
        for e in &l.endpoints.value {
            endpoints.push(Endpoint::parse(&e.value).map_err(|why| c.at(e.referenced, why))?);
        }
        let mut dns_refresh = ConfigDuration(std::time::Duration::from_secs(5));
        c.set_positive(l.dns_refresh, "dns_refresh", &mut dns_refresh)?;
        Ok(OutboundConfig {
            dns_refresh,
            upstream: upstream::validate(c, l.circuit_breaker, l.limits, l.retry_budget)?,
            name: l.name.value,
            listen: l.listen.map(|l| l.value),
            destinations,
            endpoints,
            identity: l.identity,
            protocol: l.protocol,
        })
    }
}

impl RawProbes {
    pub(super) fn validate(self, c: &Check<'_>) -> Result<ProbeConfig, ConfigError> {
        if self.paths.value.is_empty() {
            return Err(c.at(
                self.paths.referenced,
                "probes.paths must list at least one path",
            ));
        }
        let mut paths = Vec::with_capacity(self.paths.value.len());
        for path in self.paths.value {
            let ok = path.value.starts_with('/')
                && !path
                    .value
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#');
            if !ok {
                return Err(c.at(
                    path.referenced,
                    format!(
                        "probe path {:?} must be a plain path starting with '/'",
                        path.value
                    ),
                ));
            }
            paths.push(path.value);
        }
        Ok(ProbeConfig {
            listen: self.listen,
            forward: self.forward,
            paths,
        })
    }
}

impl RawAdmin {
    pub(super) fn validate(self, c: &Check<'_>) -> Result<AdminConfig, ConfigError> {
        if !self.listen.value.ip().is_loopback() && !self.allow_non_loopback {
            return Err(c.at(
                self.listen.referenced,
                format!(
                    "admin.listen {} is not a loopback address; the admin server exposes \
                     config and reload, so set admin.allow_non_loopback: true to mean it",
                    self.listen.value
                ),
            ));
        }
        Ok(AdminConfig {
            listen: self.listen.value,
        })
    }
}
