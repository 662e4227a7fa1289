//! Liveness of the media plane's threads: each one beats as it goes round its loop (at
//! least every few hundred milliseconds when idle), and the node is live while every
//! beat is recent. `/healthz` answers from it, so a media thread that died or hangs is
//! seen by whoever watches the node.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A thread that has not gone round its loop for this long counts as stalled.
pub const STALLED_AFTER: Duration = Duration::from_secs(5);

pub(crate) struct Heartbeat {
    name: String,
    clock: Instant,
    /// Milliseconds since `clock` at the last beat.
    last: AtomicU64,
}

impl Heartbeat {
    pub fn new(name: String) -> Self {
        Self { name, clock: Instant::now(), last: AtomicU64::new(0) }
    }

    pub fn beat(&self) {
        let now = u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    /// Since the last beat.
    pub fn age(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.clock.elapsed().saturating_sub(last)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Whether every thread beat within [`STALLED_AFTER`]; otherwise which did not.
pub(crate) fn check(beats: &[std::sync::Arc<Heartbeat>]) -> Result<(), String> {
    let stalled: Vec<String> = beats
        .iter()
        .filter(|b| b.age() > STALLED_AFTER)
        .map(|b| format!("{} silent for {:.1} s", b.name(), b.age().as_secs_f64()))
        .collect();
    if stalled.is_empty() { Ok(()) } else { Err(format!("media plane stalled: {}", stalled.join(", "))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_stops_beating_is_reported() {
        let beat = std::sync::Arc::new(Heartbeat::new("shard 0".into()));
        beat.beat();
        assert!(check(std::slice::from_ref(&beat)).is_ok());
        let old = std::sync::Arc::new(Heartbeat {
            name: "shard 1".into(),
            clock: Instant::now() - Duration::from_secs(10),
            last: AtomicU64::new(0),
        });
        let report = check(&[beat, old]).unwrap_err();
        assert!(report.contains("shard 1 silent"), "{report}");
        assert!(!report.contains("shard 0"), "{report}");
    }
}
