//! The reload orchestrator. Every trigger (the file watch, the periodic
//! re-read, SIGHUP, `POST /reload`, a fetched CRL) calls
//! [`ControlPlane::reload`], which re-reads each kind of state in turn
//! (identity and trust, then the policy, then the upstreams' settings),
//! validates it whole before swapping it in, and has the enforcement sweep
//! judge open connections against whatever changed. An invalid file is
//! refused with its place and the previous state keeps serving.

use std::sync::Arc;

use super::control::ControlPlane;
use super::enforce::Change;
use super::report::{IdentityChange, Outcome, PolicyVersion, ReloadReport, UpstreamsChanged};
use crate::config::Config;

impl ControlPlane {
    /// Re-reads every reloadable file (SVID, key, bundles, CRLs, policy,
    /// the config's upstream settings) and reports what each did.
    pub async fn reload(self: &Arc<Self>, trigger: &str) -> ReloadReport {
        let identity = self.reload_identity(trigger).await;
        let policy = self.reload_policy(trigger).await;
        let upstreams = self.reload_upstreams(trigger).await;
        ReloadReport {
            identity,
            policy,
            upstreams,
        }
    }

    /// Re-reads our identity and trust only (a Workload API update).
    pub(super) async fn reload_identity(
        self: &Arc<Self>,
        trigger: &str,
    ) -> Outcome<IdentityChange> {
        let identity = self.credentials.reload(trigger).await;
        self.after_identity_reload(&identity);
        identity
    }

    fn after_identity_reload(self: &Arc<Self>, outcome: &Outcome<IdentityChange>) {
        match outcome {
            Outcome::Pending { retry, .. } => {
                // The other half of a cert/key pair is on its way: look again soon.
                let (plane, retry) = (self.clone(), *retry);
                tokio::spawn(async move {
                    tokio::time::sleep(retry).await;
                    let outcome = plane
                        .credentials
                        .reload("waiting for the matching key")
                        .await;
                    plane.after_identity_reload(&outcome);
                });
            }
            Outcome::Applied(change) => {
                self.refresh_ready();
                if change.bundle_changed {
                    self.enforcer.sweep(Change::Trust);
                }
            }
            Outcome::Unchanged(_) | Outcome::Failed(_) | Outcome::NotConfigured => {}
        }
    }

    /// Re-reads the policy file: an unchanged hash swaps nothing; a valid new
    /// one is compiled and put in force, then open connections are judged
    /// against it.
    async fn reload_policy(&self, trigger: &str) -> Outcome<PolicyVersion> {
        let Some(path) = self.policy.path().map(|p| p.to_path_buf()) else {
            return Outcome::NotConfigured;
        };
        let _one_at_a_time = self.policy_reloading.lock().await;
        let store = self.policy.clone();
        let file = path.clone();
        let outcome = tokio::task::spawn_blocking(move || match crate::policy::load_file(&file) {
            Err(e) => Outcome::Failed(e.to_string()),
            Ok((spec, sha256)) => {
                if store.active().sha256.as_deref() == Some(sha256.as_str()) {
                    return Outcome::Unchanged(Some(PolicyVersion { sha256 }));
                }
                store.install(spec, sha256.clone());
                Outcome::Applied(PolicyVersion { sha256 })
            }
        })
        .await
        .unwrap_or_else(|e| {
            Outcome::Failed(format!("{}: reload task failed: {e}", path.display()))
        });
        self.metrics.policy.reload(outcome.label());
        if !outcome.is_failed() {
            self.policy_refused.clear();
        }
        match &outcome {
            Outcome::Applied(v) => {
                let active = self.policy.active();
                self.metrics
                    .policy
                    .active(active.sha256.as_deref(), active.loaded_at);
                tracing::info!(trigger, sha256 = %v.sha256, "policy reloaded");
                self.enforcer.sweep(Change::Policy);
            }
            Outcome::Unchanged(_) => tracing::debug!(trigger, "policy unchanged"),
            Outcome::Failed(e) => {
                let input = super::report::content_hash(&path);
                if self.policy_refused.is_news(&input, e) {
                    tracing::error!(trigger, error = %e, "policy reload refused; the previous policy keeps serving")
                } else {
                    tracing::debug!(trigger, error = %e, "policy still refused")
                }
            }
            Outcome::Pending { .. } | Outcome::NotConfigured => {}
        }
        outcome
    }

    /// Re-reads the config file and applies each outbound listener's
    /// breaker, limit and retry settings to the running upstream. An
    /// invalid file changes nothing; other changes wait for a restart.
    async fn reload_upstreams(&self, trigger: &str) -> Outcome<UpstreamsChanged> {
        let sets = self.upstreams();
        if sets.is_empty() {
            return Outcome::Unchanged(None);
        }
        let path = self.config.source.clone();
        let loaded = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .unwrap_or_else(|e| {
                Err(crate::config::ConfigError::file(
                    &self.config.source,
                    format!("reload task failed: {e}"),
                ))
            });
        let new = match loaded {
            Ok(c) => c,
            Err(e) => {
                let input = super::report::content_hash(&self.config.source);
                if self.config_refused.is_news(&input, &e.to_string()) {
                    tracing::error!(trigger, error = %e, "config reload refused; upstream settings unchanged");
                }
                return Outcome::Failed(e.to_string());
            }
        };
        self.config_refused.clear();
        let mut changed = Vec::new();
        for set in sets {
            if let Some(l) = new.outbound.iter().find(|l| l.name == set.name())
                && set.update(l.upstream.clone())
            {
                changed.push(l.name.clone());
            }
        }
        if changed.is_empty() {
            return Outcome::Unchanged(None);
        }
        tracing::info!(trigger, upstreams = ?changed, "upstream settings reloaded");
        Outcome::Applied(UpstreamsChanged { changed })
    }
}
