//! A count with a ceiling: how many of something are open (connections,
//! handshakes in progress), refusing one more at the limit. Taking a place
//! is one atomic operation with no lock and no waiting; the place is given
//! back when its guard drops. The ceiling can change while places are
//! held (a live config reload): nothing is taken away, new ones wait for
//! the count to fall below it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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

#[cfg(test)]
mod tests {
    use super::*;

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
