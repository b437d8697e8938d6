//! The control plane's shared state: what the reload orchestrator, the
//! background tasks and the admin server all work on, and readiness.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use super::credentials::Credentials;
use super::enforce::Enforcer;
use super::source::OwnSource;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy::{Authorizer, PolicyStore};
use crate::proxy::registry::ConnRegistry;
use crate::tls::TlsContext;
use crate::upstream::UpstreamSet;

pub struct ControlPlane {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub tls: Arc<TlsContext>,
    pub policy: Arc<PolicyStore>,
    pub authorizer: Arc<Authorizer>,
    pub registry: Arc<ConnRegistry>,
    pub enforcer: Enforcer,
    pub credentials: Credentials,
    /// Every outbound upstream's breakers and limits, set once the
    /// listeners are built.
    pub(super) upstreams: OnceLock<Vec<Arc<UpstreamSet>>>,
    /// Serializes policy reloads (they run on blocking threads).
    pub(super) policy_reloading: tokio::sync::Mutex<()>,
    /// The last refused policy and config files, reported once each.
    pub(super) policy_refused: super::report::LastRefusal,
    pub(super) config_refused: super::report::LastRefusal,
    started: AtomicBool,
    draining: AtomicBool,
    ready: AtomicBool,
}

impl ControlPlane {
    pub(super) fn new(
        config: Config,
        metrics: Arc<Metrics>,
        tls: Arc<TlsContext>,
        (source, hashes): (Arc<OwnSource>, (String, String)),
        authorizer: Arc<Authorizer>,
        registry: Arc<ConnRegistry>,
    ) -> Self {
        let enforcer = Enforcer::new(
            registry.clone(),
            authorizer.clone(),
            tls.clone(),
            metrics.clone(),
            config.connections.close_on_peer_expiry,
        );
        ControlPlane {
            credentials: Credentials::new(
                config.clone(),
                source,
                hashes,
                tls.clone(),
                metrics.clone(),
            ),
            policy: authorizer.policy().clone(),
            config,
            metrics,
            tls,
            authorizer,
            registry,
            enforcer,
            upstreams: OnceLock::new(),
            policy_reloading: tokio::sync::Mutex::new(()),
            policy_refused: Default::default(),
            config_refused: Default::default(),
            started: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            ready: AtomicBool::new(false),
        }
    }

    /// Every outbound upstream's breakers and limits.
    pub fn upstreams(&self) -> &[Arc<UpstreamSet>] {
        self.upstreams.get().map(Vec::as_slice).unwrap_or_default()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub(super) fn set_started(&self) {
        self.started.store(true, Ordering::Release);
        self.refresh_ready();
    }

    pub(super) fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.refresh_ready();
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
}
