//! Service authorization: the policy file model and its validation, the
//! compiled table that makes decisions, per-identity rate limits, the
//! active policy store with reload, and the audit log.

mod audit;
mod model;
mod ratelimit;
mod store;
mod table;

pub use audit::{AuditEvent, AuditLog};
pub use model::{Action, Mode, PolicySpec, RateLimitSpec, RuleSpec, ServiceSpec, parse};
pub use ratelimit::RateLimiter;
pub use store::{ActivePolicy, PolicyStore, ReloadOutcome, load_file};
pub use table::{Decision, PeerRulesCache, PolicyTable, Request};
