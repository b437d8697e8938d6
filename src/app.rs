//! Wiring and lifecycle of one sidecar: load and check identity material,
//! bind the admin server and every listener, report ready, and on SIGTERM
//! stop accepting, report not ready, and let open connections drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::identity::Role;
use crate::metrics::{Direction, Metrics};
use crate::proxy::{InboundListener, OutboundListener, accept_loop};
use crate::tls::{
    LoadError, LoadedIdentity, SvidVerifier, TlsContext, TrustStore, load_bundle, load_identity,
};

/// What the admin server and listeners share.
pub struct State {
    pub config: Config,
    pub metrics: Metrics,
    pub tls: Arc<TlsContext>,
    ready: AtomicBool,
}

impl State {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
        self.metrics.set_ready(ready);
    }

    /// The effective config and identity, for `/config_dump`. Paths only:
    /// never key material.
    pub fn config_dump(&self) -> serde_json::Value {
        let id = self.tls.identity().current();
        serde_json::json!({
            "config": &self.config,
            "identity": {
                "spiffe_id": id.leaf.id.as_str(),
                "serial": id.leaf.serial,
                "not_after": id.leaf.not_after,
            },
        })
    }

    /// Every loaded certificate, for `/certs`.
    pub fn certs_dump(&self) -> serde_json::Value {
        let id = self.tls.identity().current();
        let trust = self.tls.trust();
        let mut bundles: Vec<_> = trust
            .bundles()
            .map(|b| serde_json::json!({ "trust_domain": b.trust_domain.as_str(), "roots": &b.roots }))
            .collect();
        bundles.sort_by(|a, b| a["trust_domain"].as_str().cmp(&b["trust_domain"].as_str()));
        serde_json::json!({ "identity": &id.chain, "trust_bundles": bundles })
    }
}

/// Why a sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Load(#[from] LoadError),
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot build TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Loads our SVID, key and trust bundle as the config names them, and checks
/// that our own chain verifies against the bundle for every role we play.
pub fn load_tls(config: &Config) -> Result<(LoadedIdentity, TrustStore), LoadError> {
    let ic = &config.identity;
    let identity = load_identity(&ic.cert, &ic.key)?;
    let td = ic
        .trust_domain
        .clone()
        .unwrap_or_else(|| identity.leaf.id.trust_domain());
    let bundle = load_bundle(&ic.trust_bundle, &td)?;
    let trust = TrustStore::new([bundle]);

    let verifier = SvidVerifier::new(Arc::new(trust.clone()));
    let chain = &identity.certified.cert;
    let mut roles = Vec::new();
    if !config.inbound.is_empty() {
        roles.push(Role::Server);
    }
    if !config.outbound.is_empty() {
        roles.push(Role::Client);
    }
    for role in roles {
        verifier
            .verify(
                &chain[0],
                &chain[1..],
                rustls_pki_types::UnixTime::now(),
                role,
            )
            .map_err(|e| {
                LoadError::new(
                    &ic.cert,
                    format!(
                        "our SVID does not verify against the trust bundle {} as a TLS {}: {e}",
                        ic.trust_bundle.display(),
                        if role == Role::Server {
                            "server"
                        } else {
                            "client"
                        }
                    ),
                )
            })?;
    }
    Ok((identity, trust))
}

/// A running sidecar.
pub struct Sidecar {
    state: Arc<State>,
    admin_addr: SocketAddr,
    inbound: Vec<(String, SocketAddr)>,
    outbound: Vec<(String, SocketAddr)>,
    /// Stops the accept loops.
    stop_accepting: CancellationToken,
    /// Stops the admin server, after draining.
    stop_admin: CancellationToken,
    connections: TaskTracker,
}

async fn bind(what: String, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// Starts a sidecar: everything is bound and serving when this returns.
pub async fn start(config: Config) -> Result<Sidecar, StartError> {
    let loaded = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || load_tls(&config))
            .await
            .map_err(|e| LoadError::new(&PathBuf::from("<loader>"), e.to_string()))??
    };
    let (identity, trust) = loaded;
    let metrics = Metrics::new();
    metrics.set_certificates(
        identity
            .chain
            .iter()
            .chain(trust.bundles().flat_map(|b| b.roots.iter())),
    );
    tracing::info!(
        spiffe_id = %identity.leaf.id,
        serial = %identity.leaf.serial,
        not_after = %crate::tls::fmt_time(identity.leaf.not_after),
        "identity loaded"
    );
    let tls = Arc::new(TlsContext::new(identity, trust)?);
    let state = Arc::new(State {
        config: config.clone(),
        metrics,
        tls: tls.clone(),
        ready: AtomicBool::new(false),
    });

    let stop_accepting = CancellationToken::new();
    let stop_admin = CancellationToken::new();
    let connections = TaskTracker::new();

    let admin_listener = bind("the admin server".into(), config.admin.listen).await?;
    let admin_addr = admin_listener.local_addr().unwrap_or(config.admin.listen);

    // Bind everything before serving anything, so a port clash fails the
    // start instead of leaving a half-running sidecar.
    let mut inbound_listeners = Vec::with_capacity(config.inbound.len());
    for l in &config.inbound {
        inbound_listeners.push(bind(format!("inbound listener {:?}", l.name), l.listen).await?);
    }
    let mut outbound_listeners = Vec::with_capacity(config.outbound.len());
    for l in &config.outbound {
        outbound_listeners.push(bind(format!("outbound listener {:?}", l.name), l.listen).await?);
    }

    tokio::spawn(crate::admin::serve(
        admin_listener,
        state.clone(),
        stop_admin.clone(),
    ));

    let mut inbound = Vec::with_capacity(config.inbound.len());
    for (l, listener) in config.inbound.iter().zip(inbound_listeners) {
        inbound.push((l.name.clone(), listener.local_addr().unwrap_or(l.listen)));
        let handler = Arc::new(InboundListener::new(
            l.name.clone(),
            l.forward,
            tls.clone(),
            state.metrics.listener(Direction::Inbound, &l.name),
            config.timeouts,
        ));
        tokio::spawn(accept_loop(
            l.name.clone(),
            listener,
            stop_accepting.clone(),
            connections.clone(),
            move |s, a| handler.clone().serve(s, a),
        ));
    }
    let mut outbound = Vec::with_capacity(config.outbound.len());
    for (l, listener) in config.outbound.iter().zip(outbound_listeners) {
        outbound.push((l.name.clone(), listener.local_addr().unwrap_or(l.listen)));
        let handler = Arc::new(OutboundListener::new(
            l.name.clone(),
            l.endpoints.clone(),
            tls.clone(),
            tls.outbound(l.identity.clone())?,
            state.metrics.listener(Direction::Outbound, &l.name),
            config.timeouts,
        ));
        tokio::spawn(accept_loop(
            l.name.clone(),
            listener,
            stop_accepting.clone(),
            connections.clone(),
            move |s, a| handler.clone().serve(s, a),
        ));
    }

    state.set_ready(true);
    Ok(Sidecar {
        state,
        admin_addr,
        inbound,
        outbound,
        stop_accepting,
        stop_admin,
        connections,
    })
}

impl Sidecar {
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    pub fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The bound address of the inbound listener called `name`.
    pub fn inbound_addr(&self, name: &str) -> Option<SocketAddr> {
        self.inbound
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// The bound address of the outbound listener called `name`.
    pub fn outbound_addr(&self, name: &str) -> Option<SocketAddr> {
        self.outbound
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// Connections currently open.
    pub fn open_connections(&self) -> usize {
        self.connections.len()
    }

    /// Starts draining: `/ready` turns false and every listener stops
    /// accepting (its socket closes, so new connections are refused).
    pub fn begin_drain(&self) {
        self.state.set_ready(false);
        self.stop_accepting.cancel();
        self.connections.close();
    }

    /// Drains and stops: waits up to `timeout` for open connections to
    /// finish, then stops the admin server. Returns how many were still
    /// open when the wait ended; they end when the runtime shuts down.
    pub async fn shutdown(self, timeout: Duration) -> usize {
        self.begin_drain();
        let _ = tokio::time::timeout(timeout, self.connections.wait()).await;
        self.stop_admin.cancel();
        self.connections.len()
    }
}

/// Runs a sidecar until SIGTERM or SIGINT, then drains it.
pub async fn run(config: Config) -> Result<(), StartError> {
    use tokio::signal::unix::{SignalKind, signal};
    let signal_error =
        |e: std::io::Error| LoadError::new(&PathBuf::from("<signals>"), e.to_string());
    let mut term = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut int = signal(SignalKind::interrupt()).map_err(signal_error)?;
    // SIGHUP's default action is to terminate; an operator who sends it
    // expects a reload, never an outage.
    let mut hup = signal(SignalKind::hangup()).map_err(signal_error)?;
    let drain = config.timeouts.drain.0;

    let sidecar = start(config).await?;
    tracing::info!(
        admin = %sidecar.admin_addr,
        inbound = ?sidecar.inbound,
        outbound = ?sidecar.outbound,
        "portcullis ready"
    );
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received"); break; }
            _ = int.recv() => { tracing::info!("SIGINT received"); break; }
            _ = hup.recv() => {
                tracing::info!("SIGHUP received; this build has no live-reloadable files yet, nothing changed");
            }
        }
    }
    sidecar.begin_drain();
    tracing::info!(open = sidecar.open_connections(), timeout = ?drain, "draining: no longer accepting");
    let left = sidecar.shutdown(drain).await;
    if left == 0 {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!(
            open = left,
            "drain timeout reached; closing remaining connections"
        );
    }
    Ok(())
}
