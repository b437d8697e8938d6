//! The addresses of one upstream endpoint. An IP literal is itself; a
//! name is resolved (getaddrinfo, on a blocking thread), and every address
//! it gives is used: each connection starts at the next one in turn and
//! moves on to the following ones when TCP fails, as Envoy's strict DNS
//! clusters use each address. The answer is kept for `dns_refresh`; the
//! first connection after that resolves again while the others go on with
//! the answer they have, and a lookup that fails keeps the last good
//! answer (a DNS hiccup is not an outage).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::time::Instant;

use crate::config::Endpoint;
use crate::log_limit::LogLimiter;

struct Answer {
    addrs: Arc<[SocketAddr]>,
    at: Instant,
}

pub struct Addresses {
    endpoint: Endpoint,
    refresh: Duration,
    answer: ArcSwapOption<Answer>,
    /// Where the next connection starts among the addresses.
    next: AtomicUsize,
    /// Set while one connection resolves again, so the others do not.
    resolving: AtomicBool,
    log_limit: LogLimiter,
}

/// The addresses to try for one connection, in order.
pub struct Attempts {
    addrs: Arc<[SocketAddr]>,
    start: usize,
}

impl Attempts {
    pub fn iter(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let n = self.addrs.len();
        (0..n).map(move |k| self.addrs[(self.start + k) % n])
    }
}

impl Addresses {
    pub fn new(endpoint: Endpoint, refresh: Duration) -> Self {
        let answer = endpoint.addr().map(|a| {
            Arc::new(Answer {
                addrs: Arc::from([a]),
                at: Instant::now(),
            })
        });
        Addresses {
            endpoint,
            refresh,
            answer: ArcSwapOption::new(answer),
            next: AtomicUsize::new(0),
            resolving: AtomicBool::new(false),
            log_limit: LogLimiter::new(5),
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The addresses for one connection, or `None` when the name has never
    /// resolved.
    pub async fn attempts(&self) -> Option<Attempts> {
        let current = self.answer.load_full();
        let stale = match &current {
            None => true,
            Some(a) => self.endpoint.addr().is_none() && a.at.elapsed() >= self.refresh,
        };
        let answer = if stale && !self.resolving.swap(true, Ordering::AcqRel) {
            let fresh = self.resolve().await;
            self.resolving.store(false, Ordering::Release);
            fresh.or(current)?
        } else {
            current?
        };
        let start = self.next.fetch_add(1, Ordering::Relaxed) % answer.addrs.len();
        Some(Attempts {
            addrs: answer.addrs.clone(),
            start,
        })
    }

    /// Looks the name up again; on failure keeps the last good answer
    /// (checked again after another `dns_refresh`).
    async fn resolve(&self) -> Option<Arc<Answer>> {
        let looked_up = tokio::net::lookup_host((self.endpoint.host(), self.endpoint.port())).await;
        let mut addrs: Vec<SocketAddr> = match looked_up {
            Ok(it) => it.collect(),
            Err(e) => {
                if let Some(suppressed) = self.log_limit.allow() {
                    tracing::warn!(endpoint = %self.endpoint, error = %e, suppressed, "endpoint name does not resolve; keeping the last answer, if any");
                }
                Vec::new()
            }
        };
        // getaddrinfo may list an address once per socket type.
        addrs.sort_unstable();
        addrs.dedup();
        let now = Instant::now();
        if addrs.is_empty() {
            let last = self.answer.load_full()?;
            let kept = Arc::new(Answer {
                addrs: last.addrs.clone(),
                at: now,
            });
            self.answer.store(Some(kept.clone()));
            return Some(kept);
        }
        let previous = self.answer.load();
        if previous.as_ref().is_none_or(|p| *p.addrs != *addrs) {
            tracing::info!(endpoint = %self.endpoint, addresses = ?addrs, "endpoint resolved");
        }
        let fresh = Arc::new(Answer {
            addrs: addrs.into(),
            at: now,
        });
        self.answer.store(Some(fresh.clone()));
        Some(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_literal_is_itself_and_a_name_gives_each_address_in_turn() {
        let lit = Addresses::new(Endpoint::parse("127.0.0.1:443").unwrap(), Duration::ZERO);
        let a = lit.attempts().await.unwrap();
        assert_eq!(
            a.iter().collect::<Vec<_>>(),
            ["127.0.0.1:443".parse().unwrap()]
        );

        let name = Addresses::new(
            Endpoint::parse("localhost:443").unwrap(),
            Duration::from_secs(60),
        );
        let first = name.attempts().await.expect("localhost resolves");
        assert!(
            first
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 443)
        );
        // Every address is tried once per connection, starting in turn.
        let n = first.addrs.len();
        assert_eq!(first.iter().count(), n);
        let second = name.attempts().await.unwrap();
        assert_eq!(second.start, (first.start + 1) % n);
    }

    #[tokio::test]
    async fn a_failed_lookup_keeps_the_last_answer() {
        let a = Addresses::new(
            Endpoint::parse("no-such-host.invalid:443").unwrap(),
            Duration::ZERO,
        );
        assert!(a.attempts().await.is_none(), "never resolved");
        a.answer.store(Some(Arc::new(Answer {
            addrs: Arc::from(["10.0.0.1:443".parse::<SocketAddr>().unwrap()]),
            at: Instant::now(),
        })));
        let kept = a.attempts().await.expect("the last answer is kept");
        assert_eq!(
            kept.iter().collect::<Vec<_>>(),
            ["10.0.0.1:443".parse().unwrap()]
        );
    }
}
