//! Start-up and the run loop: load and check the identity material, bind
//! the admin server and every listener before serving anything, wire the
//! control plane's tasks, report ready; on SIGTERM stop accepting, report
//! not ready, and let open connections drain. SIGHUP reloads.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::control::ControlPlane;
use super::credentials::{Fetched, load};
use super::source::{OwnSource, Streamed};
use super::workload_api;
use super::{admin, federation, tasks, watch};
use crate::config::Config;
use crate::files::LoadError;
use crate::metrics::Metrics;
use crate::policy::{AuditLog, Authorizer, PolicyStore};
use crate::proxy::capture::{CaptureInbound, CaptureOutbound, OutboundCounters};
use crate::proxy::http::AccessLog;
use crate::proxy::registry::ConnRegistry;
use crate::proxy::{
    Direction, InboundListener, InboundParts, ListenerMetrics, ListenerParts, OutboundListener,
    OutboundParts, ProbeListener, accept_loop,
};
use crate::revocation::OcspMetrics;
use crate::tls::{RevocationCounters, TlsContext};
use crate::upstream::UpstreamMetrics;

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
    #[error("invalid policy: {0}")]
    Policy(#[from] crate::config::ConfigError),
    #[error("cannot open the audit log: {0}")]
    Audit(std::io::Error),
}

/// A running sidecar.
pub struct Sidecar {
    plane: Arc<ControlPlane>,
    admin_addr: SocketAddr,
    probe_addr: Option<SocketAddr>,
    capture_addr: Option<SocketAddr>,
    inbound: Vec<(String, SocketAddr)>,
    outbound: Vec<(String, SocketAddr)>,
    /// Stops the accept loops.
    stop_accepting: CancellationToken,
    /// Stops the admin server and the control plane's tasks, after draining.
    stop_admin: CancellationToken,
    connections: TaskTracker,
}

async fn bind(what: String, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// Starts a sidecar: everything is bound and serving when this returns.
/// With identity from the Workload API, the admin server answers (not
/// ready) while the first valid SVID is awaited.
pub async fn start(config: Config) -> Result<Sidecar, StartError> {
    let policy = {
        let path = config.policy.clone();
        tokio::task::spawn_blocking(move || PolicyStore::open(path.as_deref()))
            .await
            .map_err(|e| LoadError::new(&PathBuf::from("<loader>"), e.to_string()))??
    };
    let metrics = Arc::new(Metrics::new());
    {
        let active = policy.active();
        metrics
            .policy
            .active(active.sha256.as_deref(), active.loaded_at);
        match &active.sha256 {
            Some(sha) => tracing::info!(file = ?config.policy, sha256 = %sha, "policy loaded"),
            None if !config.inbound.is_empty() => tracing::warn!(
                "no policy file configured: every authenticated peer of a trusted trust domain is admitted"
            ),
            None => {}
        }
    }
    let stop_accepting = CancellationToken::new();
    let stop_admin = CancellationToken::new();
    // The admin server is bound first: while the first SVID is awaited it
    // already answers /live and /ready (false).
    let admin_listener = bind("the admin server".into(), config.admin.listen).await?;
    let admin_addr = admin_listener.local_addr().unwrap_or(config.admin.listen);
    let (source, (identity, trust), hashes, updates) = match config.identity.workload_api() {
        None => {
            let source = Arc::new(
                super::credentials::file_source(&config)
                    .ok_or_else(|| LoadError::new(&config.source, "identity names no source"))?,
            );
            let (config, s) = (config.clone(), source.clone());
            let (loaded, hashes) = tokio::task::spawn_blocking(move || {
                load(&config, &s, &Fetched::default(), None).map_err(|(e, _)| e)
            })
            .await
            .map_err(|e| LoadError::new(&PathBuf::from("<loader>"), e.to_string()))??;
            (source, loaded, hashes, None)
        }
        Some(w) => {
            let streamed = Arc::new(Streamed::new(w.clone()));
            let (arrived, updates) = tokio::sync::watch::channel(0u64);
            tokio::spawn(workload_api::run(
                streamed.clone(),
                arrived,
                metrics.clone(),
                stop_admin.clone(),
            ));
            let source = Arc::new(OwnSource::WorkloadApi(streamed));
            let waiting = serve_while_waiting(&admin_listener, &metrics, &w.socket)?;
            let first = first_svid(&config, &source, updates.clone(), &metrics).await;
            waiting.cancel();
            let (loaded, hashes) = first?;
            (source, loaded, hashes, Some(updates))
        }
    };
    let audit = AuditLog::start(
        &config.audit.sink,
        config.audit.log_allows,
        config.audit.max_per_second,
        metrics.policy.audit_suppressed.clone(),
        metrics.policy.audit_dropped.clone(),
    )
    .map_err(StartError::Audit)?;
    let authorizer = Arc::new(Authorizer::new(Arc::new(policy), audit, &metrics.policy));
    let registry = Arc::new(ConnRegistry::default());
    tracing::info!(
        spiffe_id = %identity.leaf.id,
        serial = %identity.leaf.serial,
        not_after = %crate::clock::fmt_time(identity.leaf.not_after),
        "identity loaded"
    );
    let revocation = config.revocation.as_ref();
    let counters = revocation
        .filter(|r| !r.crls.is_empty() || r.policy.fetch_distribution_points)
        .map(|_| RevocationCounters::new(&metrics.revocation));
    let ocsp = revocation.and_then(|r| r.ocsp.clone()).map(|o| {
        Arc::new(crate::revocation::OcspChecker::new(
            o,
            OcspMetrics::new(&metrics.revocation),
        ))
    });
    let fail_open = revocation.is_some_and(|r| r.policy.fail_open);
    let tls = Arc::new(TlsContext::with_revocation(
        identity, trust, counters, ocsp, fail_open,
    )?);
    let plane = Arc::new(ControlPlane::new(
        config.clone(),
        metrics.clone(),
        tls.clone(),
        (source, hashes),
        authorizer.clone(),
        registry.clone(),
    ));
    let connections = TaskTracker::new();

    // Bind everything before serving anything, so a port clash fails the
    // start instead of leaving a half-running sidecar.
    let mut inbound_listeners = Vec::with_capacity(config.inbound.len());
    for l in &config.inbound {
        inbound_listeners.push(match l.listen {
            Some(addr) => Some(bind(format!("inbound listener {:?}", l.name), addr).await?),
            None => None,
        });
    }
    let capture_listener = match config.capture.inbound {
        Some(addr) => Some(bind("the inbound capture listener".into(), addr).await?),
        None => None,
    };
    let mut outbound_listeners = Vec::with_capacity(config.outbound.len());
    for l in &config.outbound {
        outbound_listeners.push(match l.listen {
            Some(addr) => Some(bind(format!("outbound listener {:?}", l.name), addr).await?),
            None => None,
        });
    }
    let capture_outbound_listener = match config.capture.outbound {
        Some(addr) => Some(bind("the outbound capture listener".into(), addr).await?),
        None => None,
    };
    let probe_listener = match &config.probes {
        Some(p) => Some(bind("the probe listener".into(), p.listen).await?),
        None => None,
    };

    tokio::spawn(admin::serve(
        admin_listener,
        plane.clone(),
        stop_admin.clone(),
    ));
    let mut probe_addr = None;
    if let (Some(p), Some(listener)) = (&config.probes, probe_listener) {
        probe_addr = listener.local_addr().ok();
        let probe = Arc::new(ProbeListener {
            forward: p.forward,
            paths: p.paths.clone(),
            refusals: crate::proxy::plaintext::Refusals::new(
                metrics.connections.plaintext_refused.clone(),
                "probe",
            ),
        });
        // Probes answer until the process exits: kubelet keeps asking
        // while the pod drains.
        tokio::spawn(probe.serve(listener, stop_admin.clone()));
    }

    let access_log = Arc::new(
        AccessLog::start(
            &config.http.access_log,
            metrics.http.access_log_dropped.clone(),
        )
        .map_err(StartError::Audit)?,
    );
    let parts = |direction, name: &str| ListenerParts {
        tls: tls.clone(),
        metrics: ListenerMetrics::new(&metrics, direction, name),
        timeouts: config.timeouts,
        connections: config.connections,
        http: config.http.clone(),
        access_log: access_log.clone(),
        drain: stop_accepting.clone(),
        tasks: connections.clone(),
        registry: registry.clone(),
    };
    let mut inbound = Vec::with_capacity(config.inbound.len());
    let mut captured = std::collections::HashMap::new();
    for (l, listener) in config.inbound.iter().zip(inbound_listeners) {
        let handler = Arc::new(InboundListener::new(
            l,
            InboundParts {
                common: parts(Direction::Inbound, &l.name),
                authz: Arc::new(authorizer.for_service(&l.name)),
            },
        ));
        if let Some(port) = l.port {
            captured.insert(port, handler.clone());
        }
        let Some(listener) = listener else { continue };
        if let Ok(addr) = listener.local_addr() {
            inbound.push((l.name.clone(), addr));
        }
        tokio::spawn(accept_loop(
            l.name.clone(),
            listener,
            stop_accepting.clone(),
            connections.clone(),
            move |s, a| handler.clone().serve(s, a),
        ));
    }
    let mut capture_addr = None;
    if let Some(listener) = capture_listener {
        capture_addr = listener.local_addr().ok();
        let capture = Arc::new(CaptureInbound::new(
            captured,
            &metrics.connections.capture_refused,
        ));
        tokio::spawn(accept_loop(
            "capture-inbound".into(),
            listener,
            stop_accepting.clone(),
            connections.clone(),
            move |s, a| capture.clone().serve(s, a),
        ));
    }
    let mut outbound = Vec::with_capacity(config.outbound.len());
    let mut upstreams = Vec::with_capacity(config.outbound.len());
    let mut routes = Vec::new();
    for (l, listener) in config.outbound.iter().zip(outbound_listeners) {
        let endpoints: Vec<String> = l.endpoints.iter().map(|e| e.to_string()).collect();
        let handler = Arc::new(OutboundListener::new(
            l,
            OutboundParts {
                common: parts(Direction::Outbound, &l.name),
                upstream: tls.outbound(l.identity.clone())?,
                upstream_metrics: UpstreamMetrics::new(&metrics.upstream, &l.name, &endpoints),
            },
        ));
        upstreams.push(handler.upstream_set().clone());
        if !l.destinations.is_empty() {
            routes.push((l, handler.clone()));
        }
        let Some(listener) = listener else { continue };
        if let Ok(addr) = listener.local_addr() {
            outbound.push((l.name.clone(), addr));
        }
        tokio::spawn(accept_loop(
            l.name.clone(),
            listener,
            stop_accepting.clone(),
            connections.clone(),
            move |s, a| handler.clone().serve(s, a),
        ));
    }
    if let Some(listener) = capture_outbound_listener {
        let capture = Arc::new(CaptureOutbound::new(
            routes,
            config.capture.unmatched,
            config.capture.max_passthrough,
            OutboundCounters {
                refused: &metrics.connections.capture_refused,
                passthrough: &metrics.connections.capture_passthrough,
                bytes: &metrics.connections.capture_passthrough_bytes,
            },
            &config.timeouts,
        ));
        tokio::spawn(accept_loop(
            "capture-outbound".into(),
            listener,
            stop_accepting.clone(),
            connections.clone(),
            move |s, a| capture.clone().serve(s, a),
        ));
    }
    let _ = plane.upstreams.set(upstreams);

    // The control plane's tasks.
    watch::spawn(
        config.watched_files(),
        config.reload.watch,
        config.reload.debounce.0,
        config.reload.interval.0,
        plane.clone(),
        stop_admin.clone(),
    );
    tokio::spawn(tasks::readiness(plane.clone(), stop_admin.clone()));
    if let Some(updates) = updates {
        tokio::spawn(apply_updates(plane.clone(), updates, stop_admin.clone()));
    }
    federation::spawn(&plane, &stop_admin);
    tasks::ocsp(&plane, stop_admin.clone());
    // Pooled upstream connections close when their peer expires whatever
    // `close_on_peer_expiry` says; the task sleeps until the next expiry.
    let pools = config
        .outbound
        .iter()
        .any(|l| l.protocol != crate::config::Protocol::Tcp);
    if config.connections.close_on_peer_expiry || pools {
        tokio::spawn(tasks::expiry(plane.clone(), stop_admin.clone()));
    }
    if let Some(ocsp) = revocation.and_then(|r| r.ocsp.clone())
        && !config.inbound.is_empty()
    {
        tokio::spawn(tasks::staple(
            tls.clone(),
            ocsp,
            metrics.revocation.ocsp_staple_next_update.clone(),
            stop_admin.clone(),
        ));
    }
    if revocation.is_some_and(|r| r.policy.fetch_distribution_points) {
        tokio::spawn(tasks::fetch_crls(plane.clone(), stop_admin.clone()));
    }

    plane.set_started();
    Ok(Sidecar {
        plane,
        admin_addr,
        probe_addr,
        capture_addr,
        inbound,
        outbound,
        stop_accepting,
        stop_admin,
        connections,
    })
}

impl Sidecar {
    /// The control plane: what reloads, the registry, the metrics.
    pub fn control(&self) -> &Arc<ControlPlane> {
        &self.plane
    }

    pub fn metrics(&self) -> &Metrics {
        &self.plane.metrics
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The bound address of the probe listener, if configured.
    pub fn probe_addr(&self) -> Option<SocketAddr> {
        self.probe_addr
    }

    /// The bound address of the inbound capture listener, if configured.
    pub fn capture_addr(&self) -> Option<SocketAddr> {
        self.capture_addr
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
        self.plane.set_draining();
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

/// Serves the admin API's waiting answers on a second handle of
/// `listener` until the returned token is cancelled; the listener itself
/// stays bound for the full admin server.
fn serve_while_waiting(
    listener: &TcpListener,
    metrics: &Arc<Metrics>,
    socket: &str,
) -> Result<CancellationToken, StartError> {
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        what: "the admin server".into(),
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        source,
    })?;
    let again = socket2::SockRef::from(listener)
        .try_clone()
        .and_then(|s| {
            let std: std::net::TcpListener = s.into();
            std.set_nonblocking(true)?;
            TcpListener::from_std(std)
        })
        .map_err(|source| StartError::Bind {
            what: "the admin server".into(),
            addr,
            source,
        })?;
    let waiting = CancellationToken::new();
    tokio::spawn(admin::serve_waiting(
        again,
        metrics.clone(),
        format!("waiting for the first valid SVID from the Workload API at {socket}\n"),
        waiting.clone(),
    ));
    Ok(waiting)
}

/// Waits for the first Workload API update that validates whole; every
/// one refused before it is counted and logged.
async fn first_svid(
    config: &Config,
    source: &Arc<OwnSource>,
    mut updates: tokio::sync::watch::Receiver<u64>,
    metrics: &Metrics,
) -> Result<
    (
        (crate::tls::LoadedIdentity, crate::tls::TrustStore),
        (String, String),
    ),
    StartError,
> {
    let counter = |r: &str| {
        metrics
            .identity
            .workload_api_updates
            .with_label_values(&[r])
            .inc()
    };
    loop {
        if updates.changed().await.is_err() {
            return Err(
                LoadError::new(&source.cert_place(), "the Workload API stream stopped").into(),
            );
        }
        let (c, s) = (config.clone(), source.clone());
        let loaded = tokio::task::spawn_blocking(move || load(&c, &s, &Fetched::default(), None))
            .await
            .map_err(|e| LoadError::new(&PathBuf::from("<loader>"), e.to_string()))?;
        match loaded {
            Ok(l) => {
                counter("applied");
                return Ok(l);
            }
            Err((e, _)) => {
                counter("refused");
                metrics.identity.cert_reload("identity", "error");
                tracing::error!(error = %e, "Workload API update refused; still waiting for a valid SVID");
            }
        }
    }
}

/// Puts each Workload API update through the same validate-then-swap as
/// a file change, and counts what became of it.
async fn apply_updates(
    plane: Arc<ControlPlane>,
    mut updates: tokio::sync::watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = updates.changed() => if changed.is_err() { return },
        }
        let outcome = plane.reload_identity("Workload API update").await;
        let result = match outcome {
            super::Outcome::Applied(_) => "applied",
            super::Outcome::Unchanged(_) => "unchanged",
            _ => "refused",
        };
        plane
            .metrics
            .identity
            .workload_api_updates
            .with_label_values(&[result])
            .inc();
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

    // Waiting for a first SVID can take long: a signal must still stop it.
    let sidecar = tokio::select! {
        s = start(config) => s?,
        _ = term.recv() => { tracing::info!("SIGTERM received before start-up finished"); return Ok(()); }
        _ = int.recv() => { tracing::info!("SIGINT received before start-up finished"); return Ok(()); }
    };
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
                sidecar.plane.reload("SIGHUP").await;
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
