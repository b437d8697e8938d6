//! Authorization: decisions (by service, decision and rule), the policy
//! in force and its reloads, connections a reload closed, rate limiting,
//! and what the audit log held back.

use std::sync::Arc;

use prometheus::{Gauge, IntCounter, IntCounterVec, IntGaugeVec, Registry};

use super::register::{counter, counter_vec, gauge, int_gauge_vec};

pub struct PolicyFamilies {
    /// service, decision, rule
    pub decisions: IntCounterVec,
    reloads: IntCounterVec,
    info: IntGaugeVec,
    last_success: Gauge,
    /// service
    pub closed: IntCounterVec,
    /// service
    pub rate_limited: IntCounterVec,
    pub audit_suppressed: IntCounter,
    pub audit_dropped: IntCounter,
}

/// The decision counter a connection used last (see
/// [`DecisionCounterCache::count`]). A policy reload makes new rule
/// names, so a cached entry never outlives the rule it counts.
#[derive(Default)]
pub struct DecisionCounterCache(arc_swap::ArcSwapOption<CachedCounter>);

pub struct CachedCounter {
    rule: Arc<str>,
    decision: &'static str,
    counter: IntCounter,
}

impl DecisionCounterCache {
    /// Counts a decision in `decisions` through this cache: the requests
    /// of one connection nearly always meet the same rule, and the
    /// labelled lookup (three strings hashed under a lock) is then skipped.
    pub fn count(
        &self,
        decisions: &IntCounterVec,
        service: &str,
        decision: &'static str,
        rule: &Arc<str>,
    ) {
        if let Some(last) = &*self.0.load()
            && Arc::ptr_eq(&last.rule, rule)
            && last.decision == decision
        {
            last.counter.inc();
            return;
        }
        let counter = decisions.with_label_values(&[service, decision, rule]);
        counter.inc();
        self.0.store(Some(Arc::new(CachedCounter {
            rule: rule.clone(),
            decision,
            counter,
        })));
    }
}

impl PolicyFamilies {
    pub(super) fn new(registry: &Registry) -> Self {
        let reloads = counter_vec(
            registry,
            "portcullis_policy_reloads_total",
            "Policy reload attempts by result: success, unchanged or error.",
            &["result"],
        );
        // From the start, so `increase(...{result="error"})` sees the
        // first refused reload.
        for result in ["success", "unchanged", "error"] {
            reloads.with_label_values(&[result]);
        }
        PolicyFamilies {
            decisions: counter_vec(
                registry,
                "portcullis_authz_decisions_total",
                "Authorization decisions: decision is allow, deny, or audit_deny (denied by policy, let through in audit mode); rule is the rule that decided, or default.",
                &["service", "decision", "rule"],
            ),
            reloads,
            info: int_gauge_vec(
                registry,
                "portcullis_policy_info",
                "The active policy: its file's SHA-256 (none when no policy file is configured); always 1.",
                &["sha256"],
            ),
            last_success: gauge(
                registry,
                "portcullis_policy_last_reload_success_timestamp_seconds",
                "When the active policy was loaded, as a Unix timestamp.",
            ),
            closed: counter_vec(
                registry,
                "portcullis_policy_closed_connections_total",
                "Open connections closed because a policy reload no longer allows their peer.",
                &["service"],
            ),
            rate_limited: counter_vec(
                registry,
                "portcullis_rate_limited_total",
                "Connections or requests refused because their peer was over the service's rate limit.",
                &["service"],
            ),
            audit_suppressed: counter(
                registry,
                "portcullis_audit_log_suppressed_total",
                "Audit log lines not written because of the audit rate limit.",
            ),
            audit_dropped: counter(
                registry,
                "portcullis_audit_log_dropped_total",
                "Audit log lines dropped because the writer fell behind or the sink refused them (a full disk).",
            ),
        }
    }

    /// Counts one decision.
    pub fn decision(&self, service: &str, decision: &str, rule: &str) {
        self.decisions
            .with_label_values(&[service, decision, rule])
            .inc();
    }

    /// Counts a reload attempt by its result.
    pub fn reload(&self, result: &str) {
        self.reloads.with_label_values(&[result]).inc();
    }

    /// Records the policy now in force.
    pub fn active(&self, sha256: Option<&str>, loaded_at: i64) {
        self.info.reset();
        self.info
            .with_label_values(&[sha256.unwrap_or("none")])
            .set(1);
        self.last_success.set(loaded_at as f64);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::metrics::Metrics;

    fn series(m: &Metrics, decision: &str, rule: &str) -> Option<u64> {
        let want = format!(
            "portcullis_authz_decisions_total{{decision=\"{decision}\",rule=\"{rule}\",service=\"web\"}} "
        );
        m.encode()
            .lines()
            .find_map(|l| l.strip_prefix(want.as_str())?.parse().ok())
    }

    #[test]
    fn cached_decision_counts_each_decision_in_its_own_series() {
        let m = Metrics::new();
        let cache = DecisionCounterCache::default();
        let read: Arc<str> = Arc::from("read");
        for _ in 0..3 {
            cache.count(&m.policy.decisions, "web", "allow", &read);
        }
        assert_eq!(series(&m, "allow", "read"), Some(3));
        // Another decision by the same rule, and another rule, each get
        // their own series, and switching back still counts.
        cache.count(&m.policy.decisions, "web", "audit_deny", &read);
        let write: Arc<str> = Arc::from("write");
        cache.count(&m.policy.decisions, "web", "deny", &write);
        cache.count(&m.policy.decisions, "web", "allow", &read);
        assert_eq!(series(&m, "allow", "read"), Some(4));
        assert_eq!(series(&m, "audit_deny", "read"), Some(1));
        assert_eq!(series(&m, "deny", "write"), Some(1));
        // A reloaded policy names its rules anew: same name, same series.
        let reloaded: Arc<str> = Arc::from("read");
        cache.count(&m.policy.decisions, "web", "allow", &reloaded);
        assert_eq!(series(&m, "allow", "read"), Some(5));
    }
}
