//! The active policy behind an `ArcSwap`: read, parsed, validated and
//! compiled in full before it is put in force, so a decision only ever
//! sees a whole policy. (When to reload, and what an unchanged or invalid
//! file means, is the control plane's.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    limiters: HashMap<String, Arc<RateLimiter>>,
}

impl ActivePolicy {
    /// Compiles `spec`. A service whose rate limit is the same as in
    /// `previous` keeps its limiter, buckets and all: otherwise reloading
    /// the policy (or getting an operator to) would hand every peer a new
    /// burst.
    fn new(
        spec: Option<PolicySpec>,
        sha256: Option<String>,
        previous: Option<&ActivePolicy>,
    ) -> Self {
        let table = spec
            .as_ref()
            .map(PolicyTable::compile)
            .unwrap_or_else(PolicyTable::allow_all);
        let limiters = spec
            .iter()
            .flat_map(|s| s.services.iter())
            .filter_map(|s| {
                let rl = s.rate_limit?;
                let kept = previous
                    .and_then(|p| p.limiters.get(&s.name))
                    .filter(|l| l.spec() == rl)
                    .cloned();
                Some((
                    s.name.clone(),
                    kept.unwrap_or_else(|| Arc::new(RateLimiter::new(rl))),
                ))
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
        self.limiters.get(service).map(|l| &**l)
    }
}

pub struct PolicyStore {
    path: Option<PathBuf>,
    active: ArcSwap<ActivePolicy>,
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
                ActivePolicy::new(Some(spec), Some(sha), None)
            }
            None => ActivePolicy::new(None, None, None),
        };
        Ok(PolicyStore {
            path: path.map(Path::to_path_buf),
            active: ArcSwap::from_pointee(active),
        })
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The policy in force now: one atomic load, no lock.
    pub fn active(&self) -> arc_swap::Guard<Arc<ActivePolicy>> {
        self.active.load()
    }

    /// Compiles `spec` (read from the file with hash `sha256`) and puts it
    /// in force for the next decision. Compiling a large policy takes time:
    /// call it on a blocking thread.
    pub fn install(&self, spec: PolicySpec, sha256: String) {
        let previous = self.active.load_full();
        self.active.store(Arc::new(ActivePolicy::new(
            Some(spec),
            Some(sha256),
            Some(&previous),
        )));
    }
}
