//! Upstreams: what protects an outbound upstream and its app from each
//! other. Per-endpoint circuit breakers (`breaker`).

pub mod breaker;

pub use breaker::{Admitted, Breaker, BreakerConfig, CircuitState, Outcome, Transition};
