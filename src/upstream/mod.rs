//! Upstreams: what protects an outbound upstream and its app from each
//! other. Per-endpoint circuit breakers (`breaker`), and the endpoint set
//! with its balancing, exact limits and retry budget (`set`).

pub mod breaker;
pub mod set;

pub use breaker::{Admitted, Breaker, CircuitState, Outcome, Transition};
pub use set::{Call, EndpointMetrics, Rejection, Slot, UpstreamMetrics, UpstreamSet};
