//! How long to wait before reaching central again after a connection ends.

use std::time::{Duration, Instant};

/// Exponential backoff that starts over once a connection has held for a while, so one
/// blip after days of calm does not cost the wait that a long outage earned.
pub struct Backoff {
    first: Duration,
    next: Duration,
    started: Instant,
}

/// Longest wait between attempts.
const MAX: Duration = Duration::from_secs(30);

impl Backoff {
    /// Backoff starting at `first`.
    pub fn new(first: Duration) -> Self {
        Self {
            first,
            next: first,
            started: Instant::now(),
        }
    }

    /// Marks the start of an attempt.
    pub fn attempt(&mut self) {
        self.started = Instant::now();
    }

    /// The wait after the attempt ended, doubling up to 30 s; an attempt that lasted
    /// longer than that starts the sequence over.
    pub fn wait(&mut self) -> Duration {
        if self.started.elapsed() > MAX {
            self.next = self.first;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(MAX);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(500));
        let waits: Vec<u64> = (0..8)
            .map(|_| {
                backoff.attempt();
                backoff.wait().as_millis() as u64
            })
            .collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
    }
}
