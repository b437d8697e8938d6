//! What a reload did: one [`Outcome`] type for every kind of state that
//! reloads (our identity and trust, the policy, the upstreams' settings),
//! and the [`ReloadReport`] of all of them that `POST /reload` returns.

use std::time::Duration;

use serde::Serialize;

/// What reloading one kind of state did.
#[derive(Debug, Clone)]
pub enum Outcome<T> {
    /// The new state is in force; what changed.
    Applied(T),
    /// Nothing changed (the files hash as before); what stays in force,
    /// where there is something to say.
    Unchanged(Option<T>),
    /// Half of a change has arrived (a certificate without its key): looked
    /// at again after `retry`.
    Pending {
        waiting_for: String,
        retry: Duration,
    },
    /// Refused; the previous state keeps serving.
    Failed(String),
    /// This kind of state is not configured.
    NotConfigured,
}

impl<T: Serialize> Outcome<T> {
    /// The `result` field, and the label of the reload metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Applied(_) => "success",
            Outcome::Unchanged(_) => "unchanged",
            Outcome::Pending { .. } => "pending",
            Outcome::Failed(_) => "error",
            Outcome::NotConfigured => "not_configured",
        }
    }

    pub fn is_failed(&self) -> bool {
        matches!(self, Outcome::Failed(_))
    }

    /// `{"result": label, ...}` with the details of what changed or stays,
    /// what is awaited, or the error.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({ "result": self.label() });
        match self {
            Outcome::Applied(d) | Outcome::Unchanged(Some(d)) => {
                if let (Some(obj), Ok(serde_json::Value::Object(fields))) =
                    (v.as_object_mut(), serde_json::to_value(d))
                {
                    obj.extend(fields);
                }
            }
            Outcome::Pending { waiting_for, .. } => v["waiting_for"] = waiting_for.as_str().into(),
            Outcome::Failed(e) => v["error"] = e.as_str().into(),
            Outcome::Unchanged(None) | Outcome::NotConfigured => {}
        }
        v
    }
}

/// What a reload of our identity and trust changed.
#[derive(Debug, Clone, Serialize)]
pub struct IdentityChange {
    pub identity_changed: bool,
    /// The trust bundles or CRLs changed.
    pub bundle_changed: bool,
    /// Our SVID's serial now.
    pub serial: String,
}

/// The policy in force.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyVersion {
    pub sha256: String,
}

/// The upstreams whose breaker, limit and retry settings changed.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamsChanged {
    pub changed: Vec<String>,
}

/// What one reload did, per kind of state; the reply of `POST /reload`.
#[derive(Debug, Clone)]
pub struct ReloadReport {
    pub identity: Outcome<IdentityChange>,
    pub policy: Outcome<PolicyVersion>,
    pub upstreams: Outcome<UpstreamsChanged>,
}

impl ReloadReport {
    /// Whether nothing was refused.
    pub fn ok(&self) -> bool {
        !self.identity.is_failed() && !self.policy.is_failed() && !self.upstreams.is_failed()
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "identity": self.identity.to_json(),
            "policy": self.policy.to_json(),
            "upstreams": self.upstreams.to_json(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reports_in_the_same_shape() {
        let report = ReloadReport {
            identity: Outcome::Applied(IdentityChange {
                identity_changed: true,
                bundle_changed: false,
                serial: "0a".into(),
            }),
            policy: Outcome::Unchanged(Some(PolicyVersion {
                sha256: "ab".into(),
            })),
            upstreams: Outcome::Failed("x.yaml:3:1: bad".into()),
        };
        assert!(!report.ok());
        let v = report.to_json();
        assert_eq!(
            v["identity"],
            serde_json::json!({"result": "success", "identity_changed": true, "bundle_changed": false, "serial": "0a"})
        );
        assert_eq!(
            v["policy"],
            serde_json::json!({"result": "unchanged", "sha256": "ab"})
        );
        assert_eq!(
            v["upstreams"],
            serde_json::json!({"result": "error", "error": "x.yaml:3:1: bad"})
        );
        let pending: Outcome<IdentityChange> = Outcome::Pending {
            waiting_for: "key.pem: does not match".into(),
            retry: Duration::from_millis(200),
        };
        assert_eq!(
            pending.to_json(),
            serde_json::json!({"result": "pending", "waiting_for": "key.pem: does not match"})
        );
        let none: Outcome<UpstreamsChanged> = Outcome::Unchanged(None);
        assert_eq!(none.to_json(), serde_json::json!({"result": "unchanged"}));
        let off: Outcome<PolicyVersion> = Outcome::NotConfigured;
        assert_eq!(
            off.to_json(),
            serde_json::json!({"result": "not_configured"})
        );
    }
}
