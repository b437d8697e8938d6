//! A lock-free limit on how many log lines of one kind are written per
//! second, so a flood of bad connections cannot fill the disk with logs.

use std::sync::atomic::{AtomicU64, Ordering};

/// Allows `per_second` events per wall-clock second and counts the rest,
/// reporting the number suppressed with the next allowed line.
pub struct LogLimiter {
    per_second: u32,
    /// (second << 32) | count in that second.
    window: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    pub const fn new(per_second: u32) -> Self {
        LogLimiter {
            per_second,
            window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this event may be logged, with `n` events suppressed
    /// since the last logged one; `None` when it must not be.
    pub fn allow(&self) -> Option<u64> {
        let now = crate::clock::unix_now().max(0) as u64 & 0xffff_ffff;
        let mut cur = self.window.load(Ordering::Relaxed);
        loop {
            let (sec, count) = (cur >> 32, cur & 0xffff_ffff);
            let next = if sec == now {
                if count >= u64::from(self.per_second) {
                    self.suppressed.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                cur + 1
            } else {
                (now << 32) | 1
            };
            match self
                .window
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(self.suppressed.swap(0, Ordering::Relaxed)),
                Err(actual) => cur = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_within_a_second() {
        let l = LogLimiter::new(3);
        let allowed = (0..10).filter(|_| l.allow().is_some()).count();
        // A second boundary may fall inside the loop and allow a few more.
        assert!((3..=6).contains(&allowed), "{allowed}");
    }
}
