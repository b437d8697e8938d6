//! The rustls configurations the proxy serves from, built from the current
//! identity and trust store and held behind `ArcSwap`s so that a reload can
//! replace them while connections keep flowing.
//!
//! Both directions are TLS 1.3 only. New configs (and so new session
//! caches, both sides) are built whenever trust or our own SVID changes: a
//! resumed session carries the certificates of the handshake that made
//! it, so one that outlived a rotation would keep showing a peer our old
//! SVID (or admit a chain the old trust accepted) for as long as traffic
//! keeps renewing its tickets.

use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use rustls::{ClientConfig, ServerConfig};

use super::material::{LoadedIdentity, TrustStore};
use super::store::IdentityStore;
use super::verifier::{InboundVerifier, OutboundVerifier, RevocationCounters};
use crate::identity::SpiffeId;
use crate::revocation::OcspChecker;

/// Everything TLS the listeners need, shared by all of them.
pub struct TlsContext {
    identity: Arc<IdentityStore>,
    trust: ArcSwap<TrustStore>,
    server: ArcSwap<ServerConfig>,
    /// The same, offering `h2` and `http/1.1` by ALPN, for HTTP listeners.
    /// Opaque TCP listeners must offer none: a peer that negotiated `h2`
    /// would send frames the app cannot read.
    server_http: ArcSwap<ServerConfig>,
    /// Outbound configs, one per expected upstream identity, rebuilt when
    /// trust changes. Touched only at setup and reload, never per connection.
    outbound: Mutex<Vec<Weak<OutboundTls>>>,
    counters: Option<RevocationCounters>,
    ocsp: Option<Arc<OcspChecker>>,
    fail_open: bool,
}

/// The ALPN protocol IDs, in our order of preference.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// What a client connection offers by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// Nothing: opaque TCP.
    None,
    /// `h2`, then `http/1.1`: the HTTP hop between sidecars.
    Http,
    /// Only `http/1.1`: upgrades (WebSocket, CONNECT) that need a
    /// connection of their own.
    Http1,
}

/// The client configs for one outbound upstream.
pub struct OutboundTls {
    expected: SpiffeId,
    config: ArcSwap<ClientConfigs>,
}

struct ClientConfigs {
    none: Arc<ClientConfig>,
    http: Arc<ClientConfig>,
    http1: Arc<ClientConfig>,
}

impl ClientConfigs {
    fn new(base: ClientConfig) -> Self {
        let with = |protocols: &[&[u8]]| {
            let mut c = base.clone();
            c.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
            Arc::new(c)
        };
        ClientConfigs {
            http: with(&[ALPN_H2, ALPN_HTTP1]),
            http1: with(&[ALPN_HTTP1]),
            none: Arc::new(base),
        }
    }
}

impl OutboundTls {
    /// The config for opaque TCP (no ALPN).
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.load().none.clone()
    }

    /// The config offering `alpn`.
    pub fn config_for(&self, alpn: Alpn) -> Arc<ClientConfig> {
        let c = self.config.load();
        match alpn {
            Alpn::None => c.none.clone(),
            Alpn::Http => c.http.clone(),
            Alpn::Http1 => c.http1.clone(),
        }
    }

    pub fn expected(&self) -> &SpiffeId {
        &self.expected
    }
}

impl TlsContext {
    pub fn new(identity: LoadedIdentity, trust: TrustStore) -> Result<Self, rustls::Error> {
        Self::with_revocation(identity, trust, None, None, false)
    }

    /// As [`TlsContext::new`], counting CRL check results and, with
    /// `ocsp`, checking upstreams' stapled OCSP answers in the handshake.
    pub fn with_revocation(
        identity: LoadedIdentity,
        trust: TrustStore,
        counters: Option<RevocationCounters>,
        ocsp: Option<Arc<OcspChecker>>,
        fail_open: bool,
    ) -> Result<Self, rustls::Error> {
        let identity = Arc::new(IdentityStore::new(identity));
        let trust = Arc::new(trust);
        let server = build_server(&identity, &trust, &counters)?;
        let server_http = with_http_alpn(&server);
        Ok(TlsContext {
            identity,
            trust: ArcSwap::new(trust),
            server: ArcSwap::from_pointee(server),
            server_http: ArcSwap::from_pointee(server_http),
            outbound: Mutex::new(Vec::new()),
            counters,
            ocsp,
            fail_open,
        })
    }

    pub fn identity(&self) -> &Arc<IdentityStore> {
        &self.identity
    }

    /// Whether unknown revocation status admits peers.
    pub fn revocation_fail_open(&self) -> bool {
        self.fail_open
    }

    /// The OCSP checker, when OCSP is enabled.
    pub fn ocsp(&self) -> Option<&Arc<OcspChecker>> {
        self.ocsp.as_ref()
    }

    pub fn trust(&self) -> Arc<TrustStore> {
        self.trust.load_full()
    }

    /// The config new inbound handshakes use.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.load_full()
    }

    /// The config new inbound handshakes on HTTP listeners use: the same,
    /// offering `h2` and `http/1.1` by ALPN.
    pub fn server_config_http(&self) -> Arc<ServerConfig> {
        self.server_http.load_full()
    }

    /// Registers an upstream identity and returns its client config holder.
    pub fn outbound(&self, expected: SpiffeId) -> Result<Arc<OutboundTls>, rustls::Error> {
        let config = build_client(
            &self.identity,
            &self.trust.load_full(),
            &expected,
            &self.counters,
            &self.ocsp,
        )?;
        let out = Arc::new(OutboundTls {
            expected,
            config: ArcSwap::from_pointee(ClientConfigs::new(config)),
        });
        let mut registry = self.outbound.lock().unwrap_or_else(|p| p.into_inner());
        registry.retain(|w| w.strong_count() > 0);
        registry.push(Arc::downgrade(&out));
        Ok(out)
    }

    /// Replaces the trust store and rebuilds every config from it. Open
    /// connections are untouched; new handshakes use the new trust at once.
    pub fn set_trust(&self, trust: TrustStore) -> Result<(), rustls::Error> {
        let trust = Arc::new(trust);
        self.rebuild(&trust)?;
        self.trust.store(trust);
        Ok(())
    }

    /// Serves `identity` from the next handshake on, with configs (and
    /// session caches) rebuilt so no session made under the previous SVID
    /// is resumed.
    pub fn set_identity(&self, identity: LoadedIdentity) -> Result<(), rustls::Error> {
        self.identity.swap(identity);
        self.rebuild(&self.trust.load_full())
    }

    /// Builds every config from `trust` and the current identity, then
    /// swaps them in; a failure changes nothing.
    fn rebuild(&self, trust: &Arc<TrustStore>) -> Result<(), rustls::Error> {
        let server = build_server(&self.identity, trust, &self.counters)?;
        let server_http = with_http_alpn(&server);
        let registry = self.outbound.lock().unwrap_or_else(|p| p.into_inner());
        let mut clients = Vec::with_capacity(registry.len());
        for out in registry.iter().filter_map(Weak::upgrade) {
            let config = build_client(
                &self.identity,
                trust,
                &out.expected,
                &self.counters,
                &self.ocsp,
            )?;
            clients.push((out, config));
        }
        self.server.store(Arc::new(server));
        self.server_http.store(Arc::new(server_http));
        for (out, config) in clients {
            out.config.store(Arc::new(ClientConfigs::new(config)));
        }
        Ok(())
    }
}

fn build_server(
    identity: &Arc<IdentityStore>,
    trust: &Arc<TrustStore>,
    counters: &Option<RevocationCounters>,
) -> Result<ServerConfig, rustls::Error> {
    let verifier = Arc::new(InboundVerifier::new(trust.clone(), counters.clone()));
    let config = ServerConfig::builder_with_provider(crate::crypto::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(identity.clone());
    Ok(config)
}

fn with_http_alpn(server: &ServerConfig) -> ServerConfig {
    let mut c = server.clone();
    c.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    c
}

fn build_client(
    identity: &Arc<IdentityStore>,
    trust: &Arc<TrustStore>,
    expected: &SpiffeId,
    counters: &Option<RevocationCounters>,
    ocsp: &Option<Arc<OcspChecker>>,
) -> Result<ClientConfig, rustls::Error> {
    let verifier = Arc::new(
        OutboundVerifier::new(trust.clone(), expected.clone(), counters.clone())
            .with_ocsp(ocsp.clone()),
    );
    let config = ClientConfig::builder_with_provider(crate::crypto::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(identity.clone());
    Ok(config)
}
