//! The one authorizer. Every decision the sidecar makes about a peer and a
//! service is made here: a new L4 connection, each HTTP request, and an
//! open connection judged again after a policy reload. Each decision is
//! counted once (`portcullis_authz_decisions_total`), audited once, and
//! logged under a rate limit, whoever asked.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::IntCounter;

use super::audit::{AuditEvent, AuditLog};
use super::store::PolicyStore;
use super::table::{Decision, PeerRulesCache, Request};
use crate::identity::SpiffeId;
use crate::log_limit::LogLimiter;
use crate::metrics::{DecisionCounterCache, PolicyFamilies};

/// What every decision consults and reports to.
pub struct Authorizer {
    policy: Arc<PolicyStore>,
    audit: AuditLog,
    decisions: prometheus::IntCounterVec,
    closed: prometheus::IntCounterVec,
    rate_limited: prometheus::IntCounterVec,
}

/// Why a connection or request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The policy denies it (`rule` is the rule that did, or `default`).
    Denied { rule: Arc<str> },
    /// The peer is over the service's rate limit.
    RateLimited,
}

/// One service's authorizer: its labels resolved once, its own log limit.
pub struct ServiceAuthorizer {
    authorizer: Arc<Authorizer>,
    service: Arc<str>,
    rate_limited: IntCounter,
    log_limit: LogLimiter,
}

/// What one HTTP connection keeps between its requests: every request
/// comes from the same verified peer, so the rules that peer matches are
/// looked up once, and the counter of the last decision is reused.
#[derive(Default)]
pub struct ConnectionAuthz {
    rules: PeerRulesCache,
    counter: DecisionCounterCache,
}

impl Authorizer {
    pub fn new(policy: Arc<PolicyStore>, audit: AuditLog, families: &PolicyFamilies) -> Self {
        Authorizer {
            policy,
            audit,
            decisions: families.decisions.clone(),
            closed: families.closed.clone(),
            rate_limited: families.rate_limited.clone(),
        }
    }

    pub fn policy(&self) -> &Arc<PolicyStore> {
        &self.policy
    }

    /// The authorizer of one service (an inbound listener).
    pub fn for_service(self: &Arc<Self>, service: &str) -> ServiceAuthorizer {
        // The default denial exists from the start, so a rate or an
        // increase over it sees the first one.
        self.decisions
            .with_label_values(&[service, "deny", "default"]);
        ServiceAuthorizer {
            authorizer: self.clone(),
            service: service.into(),
            rate_limited: self.rate_limited.with_label_values(&[service]),
            log_limit: LogLimiter::new(20),
        }
    }

    /// Whether the policy in force still admits an open connection from
    /// `peer` to `service` (made by `request`, for a tunnel), with no side
    /// effect: the decision that refuses it, if it does. A connection it
    /// refuses is reported with [`Authorizer::closed_by_reload`].
    pub fn recheck(
        &self,
        service: &str,
        peer: &SpiffeId,
        request: Option<&Request<'_>>,
    ) -> Result<(), Decision> {
        let decision = self.policy.active().table.decide(service, peer, request);
        if decision.admitted() {
            Ok(())
        } else {
            Err(decision)
        }
    }

    /// Reports an open connection that a policy reload closed: logged,
    /// audited (`cause: policy_reload`) and counted.
    pub fn closed_by_reload(
        &self,
        service: &str,
        peer: &SpiffeId,
        src: SocketAddr,
        request: Option<&Request<'_>>,
        decision: &Decision,
    ) {
        tracing::warn!(%service, %peer, %src, rule = %decision.rule, "closing open connection: the new policy denies it");
        self.closed.with_label_values(&[service]).inc();
        self.audit.record(&AuditEvent {
            peer,
            service,
            rule: &decision.rule,
            decision: decision.label(),
            mode: decision.mode.as_str(),
            src,
            request: request.map(|r| (r.method, r.path)),
            cause: Some("policy_reload"),
        });
    }
}

impl ServiceAuthorizer {
    pub fn service(&self) -> &Arc<str> {
        &self.service
    }

    /// Whether the policy in force would admit an L4 connection from
    /// `peer`, with no side effect (no count, no audit, no rate-limit
    /// token).
    pub fn would_admit(&self, peer: &SpiffeId) -> bool {
        self.authorizer.recheck(&self.service, peer, None).is_ok()
    }

    /// A new L4 connection from `peer`: the policy, then the service's
    /// rate limit.
    pub fn connection(&self, peer: &SpiffeId, src: SocketAddr) -> Result<(), Refusal> {
        let a = &self.authorizer;
        let active = a.policy.active();
        let decision = active.table.decide(&self.service, peer, None);
        a.decisions
            .with_label_values(&[&self.service, decision.label(), &decision.rule])
            .inc();
        self.judged(&decision, peer, src, None)?;
        if let Some(limiter) = active.limiter(&self.service)
            && !limiter.try_acquire(peer, std::time::Instant::now())
        {
            self.rate_limited.inc();
            if let Some(suppressed) = self.log_limit.allow() {
                tracing::info!(listener = %self.service, %src, %peer, suppressed, "inbound connection over the rate limit");
            }
            return Err(Refusal::RateLimited);
        }
        Ok(())
    }

    /// One HTTP request from `peer` on a connection that keeps `conn`.
    pub fn request(
        &self,
        conn: &ConnectionAuthz,
        peer: &SpiffeId,
        src: SocketAddr,
        request: &Request<'_>,
    ) -> Result<(), Refusal> {
        let a = &self.authorizer;
        let active = a.policy.active();
        let decision = active
            .table
            .decide_cached(&conn.rules, &self.service, peer, Some(request));
        conn.counter.count(
            &a.decisions,
            &self.service,
            decision.label(),
            &decision.rule,
        );
        self.judged(&decision, peer, src, Some(request))?;
        if let Some(limiter) = active.limiter(&self.service)
            && !limiter.try_acquire(peer, std::time::Instant::now())
        {
            self.rate_limited.inc();
            return Err(Refusal::RateLimited);
        }
        Ok(())
    }

    /// Audits a decision and, when it refuses, logs it.
    fn judged(
        &self,
        decision: &Decision,
        peer: &SpiffeId,
        src: SocketAddr,
        request: Option<&Request<'_>>,
    ) -> Result<(), Refusal> {
        self.authorizer.audit.record(&AuditEvent {
            peer,
            service: &self.service,
            rule: &decision.rule,
            decision: decision.label(),
            mode: decision.mode.as_str(),
            src,
            request: request.map(|r| (r.method, r.path)),
            cause: None,
        });
        if decision.admitted() {
            return Ok(());
        }
        if let Some(suppressed) = self.log_limit.allow() {
            match request {
                None => {
                    tracing::info!(listener = %self.service, %src, %peer, rule = %decision.rule, suppressed, "inbound connection denied by policy")
                }
                Some(r) => {
                    tracing::info!(listener = %self.service, %src, %peer, method = %r.method, path = %r.path, rule = %decision.rule, suppressed, "request denied by policy")
                }
            }
        }
        Err(Refusal::Denied {
            rule: decision.rule.clone(),
        })
    }
}
