//! The active policy behind an `ArcSwap`, and reloading it: the new file
//! is read, parsed, validated and compiled in full before it replaces the
//! old one; an invalid file changes nothing. A file whose content hash is
//! unchanged is not swapped at all.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use super::model::{PolicySpec, parse};
use super::ratelimit::RateLimiter;
use super::table::PolicyTable;
use crate::config::ConfigError;

/// One loaded policy: the compiled table plus what operators see of it.
pub struct ActivePolicy {
    pub table: PolicyTable,
    /// `None` when no policy file is configured.
    pub spec: Option<PolicySpec>,
    /// SHA-256 of the file's bytes, lowercase hex.
    pub sha256: Option<String>,
    /// Unix time it was loaded.
    pub loaded_at: i64,
    limiters: HashMap<String, RateLimiter>,
}

impl ActivePolicy {
    fn new(spec: Option<PolicySpec>, sha256: Option<String>) -> Self {
        let table = spec
            .as_ref()
            .map(PolicyTable::compile)
            .unwrap_or_else(PolicyTable::allow_all);
        let limiters = spec
            .iter()
            .flat_map(|s| s.services.iter())
            .filter_map(|s| {
                s.rate_limit
                    .map(|rl| (s.name.clone(), RateLimiter::new(rl)))
            })
            .collect();
        ActivePolicy {
            table,
            spec,
            sha256,
            loaded_at: crate::clock::unix_now(),
            limiters,
        }
    }

    /// The rate limiter of `service`, if its policy sets one.
    pub fn limiter(&self, service: &str) -> Option<&RateLimiter> {
        self.limiters.get(service)
    }
}

/// What a reload did.
#[derive(Debug, Clone)]
pub enum ReloadOutcome {
    Applied {
        sha256: String,
    },
    Unchanged {
        sha256: String,
    },
    Failed(ConfigError),
    /// No policy file is configured.
    NotConfigured,
}

impl ReloadOutcome {
    /// The `result` label of `portcullis_policy_reloads_total`.
    pub fn label(&self) -> &'static str {
        match self {
            ReloadOutcome::Applied { .. } => "success",
            ReloadOutcome::Unchanged { .. } => "unchanged",
            ReloadOutcome::Failed(_) => "error",
            ReloadOutcome::NotConfigured => "not_configured",
        }
    }
}

pub struct PolicyStore {
    path: Option<PathBuf>,
    active: ArcSwap<ActivePolicy>,
    /// Serializes reloads (they run on blocking threads).
    reloading: Mutex<()>,
}

/// Reads, hashes, parses and validates a policy file.
pub fn load_file(path: &Path) -> Result<(PolicySpec, String), ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: None,
        column: None,
        reason: format!("cannot read: {e}"),
    })?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let text = std::str::from_utf8(&bytes).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: None,
        column: None,
        reason: format!("not UTF-8: {e}"),
    })?;
    Ok((parse(text, path)?, sha256))
}

impl PolicyStore {
    /// Loads the policy at `path`, or admits every authenticated peer when
    /// there is none.
    pub fn open(path: Option<&Path>) -> Result<Self, ConfigError> {
        let active = match path {
            Some(p) => {
                let (spec, sha) = load_file(p)?;
                ActivePolicy::new(Some(spec), Some(sha))
            }
            None => ActivePolicy::new(None, None),
        };
        Ok(PolicyStore {
            path: path.map(Path::to_path_buf),
            active: ArcSwap::from_pointee(active),
            reloading: Mutex::new(()),
        })
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The policy in force now: one atomic load, no lock.
    pub fn active(&self) -> arc_swap::Guard<Arc<ActivePolicy>> {
        self.active.load()
    }

    /// Re-reads the file; blocking (call it on a blocking thread).
    pub fn reload(&self) -> ReloadOutcome {
        let Some(path) = &self.path else {
            return ReloadOutcome::NotConfigured;
        };
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        match load_file(path) {
            Err(e) => ReloadOutcome::Failed(e),
            Ok((spec, sha256)) => {
                if self.active.load().sha256.as_deref() == Some(sha256.as_str()) {
                    return ReloadOutcome::Unchanged { sha256 };
                }
                self.active.store(Arc::new(ActivePolicy::new(
                    Some(spec),
                    Some(sha256.clone()),
                )));
                ReloadOutcome::Applied { sha256 }
            }
        }
    }
}
