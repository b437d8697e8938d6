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

/// The last refusal reported for one kind of state. Every trigger (the
/// periodic re-read, each file event) re-reads a bad file and refuses it
/// again; saying so each time buries the one line that matters. A refusal
/// is news when its input or its reason differs from the last one.
#[derive(Debug, Default)]
pub struct LastRefusal(std::sync::Mutex<Option<String>>);

impl LastRefusal {
    /// Whether refusing `input` (a content hash) for `reason` is news;
    /// remembers it.
    pub fn is_news(&self, input: &str, reason: &str) -> bool {
        let key = format!("{input}\n{reason}");
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_deref() == Some(key.as_str()) {
            return false;
        }
        *last = Some(key);
        true
    }

    /// The state was accepted (or is unchanged and good): the next refusal
    /// is news whatever it is.
    pub fn clear(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// A content hash of `path` for [`LastRefusal`] (its read error, if it
/// cannot be read).
pub fn content_hash(path: &std::path::Path) -> String {
    use sha2::Digest;
    match std::fs::read(path) {
        Ok(bytes) => hex::encode(sha2::Sha256::digest(bytes)),
        Err(e) => format!("unreadable: {e}"),
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

    #[test]
    fn the_same_refusal_is_news_once() {
        let r = LastRefusal::default();
        assert!(r.is_news("a", "bad"));
        assert!(!r.is_news("a", "bad"));
        assert!(r.is_news("b", "bad"), "a changed file is news");
        assert!(r.is_news("b", "worse"), "a new reason is news");
        assert!(!r.is_news("b", "worse"));
        r.clear();
        assert!(r.is_news("b", "worse"), "after a good state, news again");
    }
}
