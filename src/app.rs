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
use crate::credentials::{CredOutcome, Credentials};
use crate::files::LoadError;
use crate::identity::Role;
use crate::metrics::Metrics;
use crate::policy::{AuditEvent, AuditLog, PolicyStore, ReloadOutcome};
use crate::proxy::{
    Authz, ConnRegistry, Direction, InboundListener, InboundParts, ListenerMetrics, ListenerParts,
    OutboundListener, OutboundParts, ProbeListener, StopReason, accept_loop,
};
use crate::tls::{
    LoadedIdentity, SvidVerifier, TlsContext, TrustStore, issuer_of, load_bundle, load_identity,
};

/// What the admin server and listeners share.
pub struct State {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub tls: Arc<TlsContext>,
    pub policy: Arc<PolicyStore>,
    pub registry: Arc<ConnRegistry>,
    authz: Arc<Authz>,
    pub credentials: Credentials,
    /// Every outbound upstream's breakers and limits, for `/config_dump`.
    upstreams: std::sync::OnceLock<Vec<Arc<crate::upstream::UpstreamSet>>>,
    started: AtomicBool,
    draining: AtomicBool,
    ready: AtomicBool,
}

/// What one reload did, per kind of file; the reply of `POST /reload`.
#[derive(Debug, Clone)]
pub struct ReloadReport {
    pub identity: CredOutcome,
    pub policy: ReloadOutcome,
    pub upstreams: UpstreamReload,
}

/// What re-reading the config file did to the upstreams' settings
/// (breakers, limits, retry budget): the parts of it that apply live.
#[derive(Debug, Clone)]
pub enum UpstreamReload {
    /// These upstreams got new settings.
    Applied(Vec<String>),
    Unchanged,
    Failed(crate::config::ConfigError),
}

impl UpstreamReload {
    fn to_json(&self) -> serde_json::Value {
        match self {
            UpstreamReload::Applied(names) => {
                serde_json::json!({ "result": "success", "changed": names })
            }
            UpstreamReload::Unchanged => serde_json::json!({ "result": "unchanged" }),
            UpstreamReload::Failed(e) => {
                serde_json::json!({ "result": "error", "error": e.to_string() })
            }
        }
    }
}

impl ReloadReport {
    pub fn ok(&self) -> bool {
        !matches!(self.policy, ReloadOutcome::Failed(_))
            && !matches!(self.identity, CredOutcome::Failed(_))
            && !matches!(self.upstreams, UpstreamReload::Failed(_))
    }

    pub fn to_json(&self) -> serde_json::Value {
        let policy = match &self.policy {
            ReloadOutcome::Applied { sha256 } | ReloadOutcome::Unchanged { sha256 } => {
                serde_json::json!({ "result": self.policy.label(), "sha256": sha256 })
            }
            ReloadOutcome::Failed(e) => {
                serde_json::json!({ "result": "error", "error": e.to_string() })
            }
            ReloadOutcome::NotConfigured => serde_json::json!({ "result": "not_configured" }),
        };
        serde_json::json!({
            "identity": self.identity.to_json(),
            "policy": policy,
            "upstreams": self.upstreams.to_json(),
        })
    }
}

impl State {
    /// Re-reads every reloadable file (SVID, key, bundles, policy),
    /// validates each set in full, swaps it in, and applies the policy to
    /// open connections. Invalid files are refused and the previous state
    /// keeps serving.
    pub async fn reload(self: &Arc<Self>, trigger: &str) -> ReloadReport {
        let identity = self.credentials.reload(trigger).await;
        self.after_identity_reload(&identity);
        let policy = self.reload_policy(trigger).await;
        let upstreams = self.reload_upstreams(trigger).await;
        ReloadReport {
            identity,
            policy,
            upstreams,
        }
    }

    /// Re-reads the config file and applies each outbound listener's
    /// breaker, limit and retry settings to the running upstream. An
    /// invalid file changes nothing; other changes wait for a restart.
    async fn reload_upstreams(&self, trigger: &str) -> UpstreamReload {
        let Some(sets) = self.upstreams.get().filter(|s| !s.is_empty()) else {
            return UpstreamReload::Unchanged;
        };
        let path = self.config.source.clone();
        let loaded = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .unwrap_or_else(|e| {
                Err(crate::config::ConfigError {
                    file: self.config.source.clone(),
                    line: None,
                    column: None,
                    reason: format!("reload task failed: {e}"),
                })
            });
        let new = match loaded {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(trigger, error = %e, "config reload refused; upstream settings unchanged");
                return UpstreamReload::Failed(e);
            }
        };
        let mut changed = Vec::new();
        for set in sets {
            if let Some(l) = new.outbound.iter().find(|l| l.name == set.name())
                && set.update(l.upstream.clone())
            {
                changed.push(l.name.clone());
            }
        }
        if changed.is_empty() {
            return UpstreamReload::Unchanged;
        }
        tracing::info!(trigger, upstreams = ?changed, "upstream settings reloaded");
        UpstreamReload::Applied(changed)
    }

    fn after_identity_reload(self: &Arc<Self>, outcome: &CredOutcome) {
        match outcome {
            CredOutcome::Pending(_, retry) => {
                // The other half of a cert/key pair is on its way: look again soon.
                let (state, retry) = (self.clone(), *retry);
                tokio::spawn(async move {
                    tokio::time::sleep(retry).await;
                    let outcome = state
                        .credentials
                        .reload("waiting for the matching key")
                        .await;
                    state.after_identity_reload(&outcome);
                });
            }
            CredOutcome::Applied { bundle_changed, .. } => {
                self.refresh_ready();
                if *bundle_changed {
                    self.enforce_revocation();
                }
            }
            CredOutcome::Unchanged | CredOutcome::Failed(_) => {}
        }
    }

    async fn reload_policy(&self, trigger: &str) -> ReloadOutcome {
        let store = self.policy.clone();
        let outcome = tokio::task::spawn_blocking(move || store.reload())
            .await
            .unwrap_or_else(|e| {
                ReloadOutcome::Failed(crate::config::ConfigError {
                    file: self
                        .policy
                        .path()
                        .map(|p| p.to_path_buf())
                        .unwrap_or_default(),
                    line: None,
                    column: None,
                    reason: format!("reload task failed: {e}"),
                })
            });
        if !matches!(outcome, ReloadOutcome::NotConfigured) {
            self.metrics.policy.reload(outcome.label());
        }
        match &outcome {
            ReloadOutcome::Applied { sha256 } => {
                let active = self.policy.active();
                self.metrics
                    .policy
                    .active(active.sha256.as_deref(), active.loaded_at);
                tracing::info!(trigger, sha256 = %sha256, "policy reloaded");
                self.enforce_policy();
            }
            ReloadOutcome::Unchanged { .. } => tracing::debug!(trigger, "policy unchanged"),
            ReloadOutcome::Failed(e) => {
                tracing::error!(trigger, error = %e, "policy reload refused; the previous policy keeps serving")
            }
            ReloadOutcome::NotConfigured => {}
        }
        outcome
    }

    /// Closes open connections whose peer certificate the current CRLs revoke.
    fn enforce_revocation(&self) {
        let trust = self.tls.trust();
        let Some(crls) = trust.revocation() else {
            return;
        };
        let closed = self.registry.enforce(
            StopReason::Revoked,
            |c| !crls.is_revoked(&c.issuer_raw, &c.serial_raw),
            |c| {
                tracing::warn!(service = %c.service, peer = %c.peer, src = %c.src, "closing open connection: the peer certificate is now revoked");
                self.metrics.revocation.revoked_closed.inc();
            },
        );
        if closed > 0 {
            tracing::info!(closed, "open connections closed after the CRL reload");
        }
    }

    /// Closes open connections whose peer the active policy no longer admits.
    fn enforce_policy(&self) {
        let active = self.policy.active();
        let closed = self.registry.enforce(
            StopReason::Policy,
            |c| c.per_request || active.table.decide(&c.service, &c.peer, None).admitted(),
            |c| {
                let d = active.table.decide(&c.service, &c.peer, None);
                tracing::warn!(service = %c.service, peer = %c.peer, src = %c.src, rule = %d.rule, "closing open connection: the new policy denies it");
                self.metrics.policy.closed.with_label_values(&[&c.service]).inc();
                self.authz.audit.record(&AuditEvent {
                    peer: &c.peer,
                    service: &c.service,
                    rule: &d.rule,
                    decision: d.label(),
                    mode: d.mode.as_str(),
                    src: c.src,
                    request: None,
                    cause: Some("policy_reload"),
                });
            },
        );
        if closed > 0 {
            tracing::info!(closed, "open connections closed after the policy reload");
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Ready: started, not draining, and our SVID not expired.
    pub fn refresh_ready(&self) {
        let expired = self.credentials.check_expiry();
        let ready = self.started.load(Ordering::Acquire)
            && !self.draining.load(Ordering::Acquire)
            && !expired;
        self.ready.store(ready, Ordering::Release);
        self.metrics.process.set_ready(ready);
    }

    /// The effective config and identity, for `/config_dump`. Paths only:
    /// never key material.
    pub fn config_dump(&self) -> serde_json::Value {
        let id = self.tls.identity().current();
        let policy = self.policy.active();
        serde_json::json!({
            "config": &self.config,
            "policy": {
                "file": self.policy.path(),
                "sha256": policy.sha256,
                "loaded_at": policy.loaded_at,
                "spec": policy.spec,
                "note": if policy.spec.is_none() { Some("no policy file: every authenticated peer of a trusted trust domain is admitted") } else { None },
            },
            "identity": {
                "spiffe_id": id.leaf.id.as_str(),
                "serial": id.leaf.serial,
                "not_after": id.leaf.not_after,
            },
            "upstreams": self
                .upstreams
                .get()
                .map(|u| u.iter().map(|s| s.dump()).collect::<Vec<_>>())
                .unwrap_or_default(),
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
    #[error("invalid policy: {0}")]
    Policy(#[from] crate::config::ConfigError),
    #[error("cannot open the audit log: {0}")]
    Audit(std::io::Error),
}

/// Loads our SVID, key and trust bundle as the config names them, and checks
/// that our own chain verifies against the bundle for every role we play.
pub fn load_tls(config: &Config) -> Result<(LoadedIdentity, TrustStore), LoadError> {
    load_tls_with(config, &[])
}

/// As [`load_tls`], adding CRLs fetched from distribution points.
pub fn load_tls_with(
    config: &Config,
    fetched_crls: &[(String, Vec<u8>)],
) -> Result<(LoadedIdentity, TrustStore), LoadError> {
    let ic = &config.identity;
    let identity = load_identity(&ic.cert, &ic.key)?;
    let td = ic
        .trust_domain
        .clone()
        .unwrap_or_else(|| identity.leaf.id.trust_domain());
    let mut bundles = vec![load_bundle(&ic.trust_bundle, &td)?];
    for (other_td, path) in &ic.trust_bundles {
        if *other_td == td {
            return Err(LoadError::new(
                path,
                format!("trust domain {td} already has its bundle in identity.trust_bundle"),
            ));
        }
        bundles.push(load_bundle(path, other_td)?);
    }
    let mut trust = TrustStore::new(bundles);
    // Our own chain is checked for validity only: whether it is revoked is
    // for peers to decide, and CRLs still being fetched must not stop us.
    let verifier = SvidVerifier::new(Arc::new(trust.clone()));
    if let Some(r) = &config.revocation
        && (!r.crls.is_empty() || r.policy.fetch_distribution_points)
    {
        let roots: Vec<_> = trust.bundles().flat_map(|b| b.certs.iter()).collect();
        let crls = crate::revocation::load_crls(&r.crls, fetched_crls, &roots, r.policy)?;
        trust = trust.with_revocation(crls);
    }

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

/// Fetches the CRLs named by the distribution points of our chain and the
/// trust bundle roots, validates each against its issuer before keeping it,
/// swaps them in through the credentials reload, and fetches again well
/// before each one's nextUpdate.
async fn fetch_crls(state: Arc<State>, stop: CancellationToken) {
    const RETRY: Duration = Duration::from_secs(30);
    let max_wait = state.config.reload.interval.0.max(Duration::from_secs(10));
    loop {
        let trust = state.tls.trust();
        let identity = state.tls.identity().current();
        let mut urls: Vec<String> = identity
            .certified
            .cert
            .iter()
            .chain(trust.bundles().flat_map(|b| b.certs.iter()))
            .flat_map(|c| crate::revocation::fetch::distribution_points(c))
            .collect();
        urls.sort();
        urls.dedup();
        let mut wait = max_wait;
        let mut changed = false;
        let policy = state.config.revocation.as_ref().map(|r| r.policy);
        for url in &urls {
            let fetched = crate::http_client::send(
                hyper::Method::GET,
                url,
                None,
                Vec::new(),
                32 << 20,
                Duration::from_secs(10),
            )
            .await;
            let bytes = match fetched {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(%url, error = %e, "cannot fetch CRL");
                    wait = wait.min(RETRY);
                    continue;
                }
            };
            // Validate on its own first, so a bad download never blocks reloads.
            let entry = [(url.clone(), bytes.clone())];
            let roots: Vec<_> = trust.bundles().flat_map(|b| b.certs.iter()).collect();
            if let Some(policy) = policy
                && let Err(e) = crate::revocation::load_crls(&[], &entry, &roots, policy)
            {
                tracing::warn!(%url, error = %e, "fetched CRL refused");
                state.metrics.identity.cert_reload("crl", "error");
                wait = wait.min(RETRY);
                continue;
            }
            if let Ok(ders) =
                crate::revocation::parse_crl_bytes(std::path::Path::new(url), bytes.clone())
                && let Some(der) = ders.first()
            {
                wait = wait.min(crate::revocation::fetch::refresh_in(
                    der,
                    crate::clock::unix_now(),
                    Duration::from_secs(10),
                    max_wait,
                ));
            }
            changed |= state.credentials.set_fetched_crl(url, bytes);
        }
        if changed {
            state.reload("CRL fetched").await;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// A running sidecar.
pub struct Sidecar {
    state: Arc<State>,
    admin_addr: SocketAddr,
    probe_addr: Option<SocketAddr>,
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
        tokio::task::spawn_blocking(move || -> Result<_, StartError> {
            let tls = load_tls(&config)?;
            let policy = PolicyStore::open(config.policy.as_deref())?;
            Ok((tls, policy))
        })
        .await
        .map_err(|e| LoadError::new(&PathBuf::from("<loader>"), e.to_string()))??
    };
    let ((identity, trust), policy) = loaded;
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
    let audit = AuditLog::start(
        &config.audit.sink,
        config.audit.log_allows,
        config.audit.max_per_second,
        metrics.policy.audit_suppressed.clone(),
        metrics.policy.audit_dropped.clone(),
    )
    .map_err(StartError::Audit)?;
    let policy = Arc::new(policy);
    let registry = Arc::new(ConnRegistry::default());
    let authz = Arc::new(Authz {
        policy: policy.clone(),
        registry: registry.clone(),
        audit: Arc::new(audit),
        metrics: metrics.clone(),
    });
    tracing::info!(
        spiffe_id = %identity.leaf.id,
        serial = %identity.leaf.serial,
        not_after = %crate::clock::fmt_time(identity.leaf.not_after),
        "identity loaded"
    );
    let counters = config
        .revocation
        .as_ref()
        .filter(|r| !r.crls.is_empty() || r.policy.fetch_distribution_points)
        .map(|_| crate::tls::RevocationCounters::new(&metrics.revocation));
    let ocsp = config
        .revocation
        .as_ref()
        .and_then(|r| r.ocsp.clone())
        .map(|o| {
            Arc::new(crate::revocation::OcspChecker::new(
                o,
                crate::revocation::OcspMetrics::new(&metrics.revocation),
            ))
        });
    let fail_open = config
        .revocation
        .as_ref()
        .is_some_and(|r| r.policy.fail_open);
    let tls = Arc::new(TlsContext::with_revocation(
        identity, trust, counters, ocsp, fail_open,
    )?);
    let state = Arc::new(State {
        config: config.clone(),
        metrics: metrics.clone(),
        tls: tls.clone(),
        policy,
        registry,
        authz: authz.clone(),
        credentials: Credentials::new(config.clone(), tls.clone(), metrics.clone()),
        upstreams: std::sync::OnceLock::new(),
        started: AtomicBool::new(false),
        draining: AtomicBool::new(false),
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

    let probe_listener = match &config.probes {
        Some(p) => Some(bind("the probe listener".into(), p.listen).await?),
        None => None,
    };

    tokio::spawn(crate::admin::serve(
        admin_listener,
        state.clone(),
        stop_admin.clone(),
    ));
    let mut probe_addr = None;
    if let (Some(p), Some(listener)) = (&config.probes, probe_listener) {
        probe_addr = listener.local_addr().ok();
        let probe = Arc::new(ProbeListener {
            forward: p.forward,
            paths: p.paths.clone(),
        });
        // Probes answer until the process exits: kubelet keeps asking
        // while the pod drains.
        tokio::spawn(probe.serve(listener, stop_admin.clone()));
    }

    let access_log = Arc::new(
        crate::proxy::http::AccessLog::start(
            &config.http.access_log,
            metrics.http.access_log_dropped.clone(),
        )
        .map_err(StartError::Audit)?,
    );
    let parts = |direction, name: &str| ListenerParts {
        tls: tls.clone(),
        metrics: ListenerMetrics::new(&state.metrics, direction, name),
        timeouts: config.timeouts,
        connections: config.connections,
        http: config.http.clone(),
        access_log: access_log.clone(),
        drain: stop_accepting.clone(),
        tasks: connections.clone(),
    };
    let mut inbound = Vec::with_capacity(config.inbound.len());
    for (l, listener) in config.inbound.iter().zip(inbound_listeners) {
        inbound.push((l.name.clone(), listener.local_addr().unwrap_or(l.listen)));
        let handler = Arc::new(InboundListener::new(
            l,
            InboundParts {
                common: parts(Direction::Inbound, &l.name),
                authz: authz.clone(),
            },
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
    let mut upstreams = Vec::with_capacity(config.outbound.len());
    for (l, listener) in config.outbound.iter().zip(outbound_listeners) {
        outbound.push((l.name.clone(), listener.local_addr().unwrap_or(l.listen)));
        let handler = Arc::new(OutboundListener::new(
            l,
            OutboundParts {
                common: parts(Direction::Outbound, &l.name),
                upstream: tls.outbound(l.identity.clone())?,
                upstream_metrics: crate::upstream::UpstreamMetrics::new(
                    &state.metrics.upstream,
                    &l.name,
                    &l.endpoints
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>(),
                ),
            },
        ));
        upstreams.push(handler.upstream_set().clone());
        tokio::spawn(accept_loop(
            l.name.clone(),
            listener,
            stop_accepting.clone(),
            connections.clone(),
            move |s, a| handler.clone().serve(s, a),
        ));
    }
    let _ = state.upstreams.set(upstreams);

    crate::reload::spawn(
        config.watched_files(),
        config.reload.watch,
        config.reload.debounce.0,
        config.reload.interval.0,
        state.clone(),
        stop_admin.clone(),
    );
    {
        // Readiness follows our SVID's validity: re-checked every few seconds.
        let state = state.clone();
        let stop = stop_admin.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => state.refresh_ready(),
                }
            }
        });
    }

    if let Some(checker) = tls.ocsp() {
        // A fresh answer that says "revoked" closes open connections to
        // that peer at once; a sweep keeps open connections' answers fresh.
        let (registry, metrics) = (state.registry.clone(), state.metrics.clone());
        checker.on_revoked(Box::new(move |issuer, serial| {
            let closed = registry.enforce(
                StopReason::Revoked,
                |c| !(&*c.issuer_raw == issuer && crate::revocation::same_serial(&c.serial_raw, serial)),
                |c| {
                    tracing::warn!(service = %c.service, peer = %c.peer, src = %c.src, "closing open connection: OCSP says the peer certificate is revoked");
                    metrics.revocation.revoked_closed.inc();
                },
            );
            if closed > 0 {
                tracing::info!(closed, "open connections closed after an OCSP answer");
            }
        }));
        let (checker, registry, stop) =
            (checker.clone(), state.registry.clone(), stop_admin.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(checker.recheck_interval());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {
                        for certs in registry.ocsp_certs() {
                            checker.check(&certs.0, &certs.1).await;
                        }
                    }
                }
            }
        });
    }
    if let Some(ocsp) = config.revocation.as_ref().and_then(|r| r.ocsp.clone())
        && !config.inbound.is_empty()
    {
        tokio::spawn(staple_loop(
            tls.clone(),
            ocsp,
            state.metrics.revocation.ocsp_staple_next_update.clone(),
            stop_admin.clone(),
        ));
    }

    if config
        .revocation
        .as_ref()
        .is_some_and(|r| r.policy.fetch_distribution_points)
    {
        tokio::spawn(fetch_crls(state.clone(), stop_admin.clone()));
    }

    state.started.store(true, Ordering::Release);
    state.refresh_ready();
    Ok(Sidecar {
        state,
        admin_addr,
        probe_addr,
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

    /// The bound address of the probe listener, if configured.
    pub fn probe_addr(&self) -> Option<SocketAddr> {
        self.probe_addr
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
        self.state.draining.store(true, Ordering::Release);
        self.state.refresh_ready();
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
                sidecar.state.reload("SIGHUP").await;
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

/// Keeps our SVID's OCSP staple fresh until `stop`: fetch, staple, and
/// fetch again at half the answer's validity (sooner when our SVID
/// rotates); a failed fetch is retried after 30 s.
async fn staple_loop(
    tls: Arc<TlsContext>,
    config: crate::config::OcspConfig,
    next_update: prometheus::Gauge,
    stop: CancellationToken,
) {
    const RETRY: Duration = Duration::from_secs(30);
    loop {
        let identity = tls.identity().current();
        let chain = &identity.certified.cert;
        let fetched = match chain.first() {
            None => Err("no certificate".to_string()),
            Some(leaf) => match issuer_of(&tls.trust(), leaf, &chain[1..]) {
                None => Err("our issuer is not in the chain or the bundle".to_string()),
                Some(issuer) => crate::revocation::staple::fetch(leaf, &issuer, &config).await,
            },
        };
        let wait = match fetched {
            Ok(staple) => {
                tls.identity()
                    .set_staple(&identity.leaf.serial, staple.response);
                next_update.set(staple.next_update as f64);
                tracing::debug!(next_update = %crate::clock::fmt_time(staple.next_update), "OCSP staple refreshed");
                staple.refresh_in
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch an OCSP staple for our SVID; retrying");
                RETRY
            }
        };
        // Re-check sooner than that if our SVID rotates.
        let serial = identity.leaf.serial.clone();
        drop(identity);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let step = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .min(Duration::from_secs(5));
            if step.is_zero() {
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(step) => {}
            }
            if tls.identity().current().leaf.serial != serial {
                break;
            }
        }
    }
}
