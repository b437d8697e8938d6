//! Service authorization: the policy file model and its validation, the
//! compiled table that makes decisions, per-identity rate limits, the
//! active policy, the audit log, and the one authorizer that every
//! decision goes through.

mod audit;
mod authorizer;
mod model;
mod ratelimit;
mod store;
mod table;

pub use audit::{AuditEvent, AuditLog};
pub use authorizer::{Authorizer, ConnectionAuthz, Refusal, ServiceAuthorizer};
pub use model::{Action, Mode, PolicySpec, RateLimitSpec, RuleSpec, ServiceSpec, parse};
pub use ratelimit::RateLimiter;
pub use store::{ActivePolicy, PolicyStore, load_file};
pub use table::{Decision, PeerRulesCache, PolicyTable, Request};
