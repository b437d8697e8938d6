//! Service authorization: the policy file model and its validation, the
//! compiled table that makes decisions, and per-identity rate limits.

mod model;
mod table;

pub use model::{Action, Mode, PolicySpec, RateLimitSpec, RuleSpec, ServiceSpec, parse};
pub use table::{Decision, PolicyTable, Request};
