//! Counts with a ceiling: how many of something are open (connections,
//! handshakes in progress), refusing one more at the limit. A [`Limit`]
//! is one count: taking a place is one atomic operation with no lock and
//! no waiting; the place is given back when its guard drops. The ceiling
//! can change while places are held (a live config reload): nothing is
//! taken away, new ones wait for the count to fall below it.
//!
//! [`PerClient`] is one count per client address, so one address (one
//! hostile pod) cannot take every place of a listener. It is touched once
//! when a connection opens and once when it closes, never per request or
//! per byte, through a lock on one of 16 shards.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub struct Limit {
    open: AtomicUsize,
    max: AtomicUsize,
}

/// One place in a [`Limit`], held until dropped.
#[derive(Debug)]
pub struct Place(Arc<Limit>);

impl Limit {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Limit {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        })
    }

    /// A place, or `None` at the ceiling.
    pub fn try_take(self: &Arc<Self>) -> Option<Place> {
        let max = self.max.load(Ordering::Relaxed);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Place(self.clone()))
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

const SHARDS: usize = 16;

/// Open places per client address, each address up to one ceiling.
pub struct PerClient {
    hasher: std::collections::hash_map::RandomState,
    shards: Vec<Mutex<HashMap<IpAddr, usize>>>,
}

/// One address's place in a [`PerClient`], held until dropped.
pub struct ClientPlace {
    of: Arc<PerClient>,
    ip: IpAddr,
}

impl PerClient {
    pub fn new() -> Arc<Self> {
        Arc::new(PerClient {
            hasher: Default::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        })
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, usize>> {
        &self.shards[(self.hasher.hash_one(ip) as usize) % SHARDS]
    }

    /// A place for `ip`, or `None` when it already holds `max`.
    pub fn try_take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ClientPlace> {
        let mut map = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientPlace {
            of: self.clone(),
            ip,
        })
    }

    /// Places `ip` holds now.
    pub fn open(&self, ip: IpAddr) -> usize {
        let map = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for ClientPlace {
    fn drop(&mut self) {
        let mut map = self
            .of
            .shard(&self.ip)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            // An address with nothing open takes no memory.
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_up_to_its_ceiling_and_nothing_kept_once_closed() {
        let per = PerClient::new();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let held: Vec<_> = (0..3).map(|_| per.try_take(a, 3).unwrap()).collect();
        assert!(per.try_take(a, 3).is_none());
        let other = per
            .try_take(b, 3)
            .expect("another address has its own count");
        drop(held);
        drop(other);
        assert_eq!(per.open(a), 0);
        assert!(per.shards.iter().all(|s| s.lock().unwrap().is_empty()));
    }

    #[test]
    fn places_up_to_the_ceiling_and_back_on_drop() {
        let l = Limit::new(2);
        let a = l.try_take().unwrap();
        let b = l.try_take().unwrap();
        assert!(l.try_take().is_none());
        assert_eq!(l.open(), 2);
        drop(a);
        let c = l.try_take().unwrap();
        // Lowered live: held places stay, new ones wait.
        l.set_max(1);
        assert!(l.try_take().is_none());
        drop((b, c));
        assert_eq!(l.open(), 0);
        let _d = l.try_take().unwrap();
        assert!(l.try_take().is_none());
    }

    #[test]
    fn concurrent_takers_never_pass_the_ceiling() {
        let l = Limit::new(8);
        let taken = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        if let Some(p) = l.try_take() {
                            assert!(l.open() <= 8);
                            taken.lock().unwrap().push(p);
                        }
                    }
                });
            }
        });
        assert_eq!(taken.into_inner().unwrap().len(), 8);
    }
}
