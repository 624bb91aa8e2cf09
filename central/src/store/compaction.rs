//! Keeping the change log bounded: central compacts it periodically, keeping a window of
//! recent history for followers that reconnect.
//!
//! The window keeps both the last [`Window::revisions`] revisions and everything younger
//! than [`Window::age`]: a follower disconnected for less than the age, or fewer revisions
//! than the count behind, resumes its watch; one further behind is told the revision it
//! asked for is compacted (HTTP 410, reason `compacted`) and lists again. etcd's own
//! auto-compaction offers the same two modes (`revision` and `periodic`); ferry keeps the
//! larger of the two windows, so a burst of writes never cuts the age short and a quiet
//! hour never cuts the count short.
//!
//! [`Compactor`] decides (a pure function of the time and revisions it is shown, so a test
//! can drive an hour of history in a moment); [`run`] applies it to a store on a timer.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use tracing::{info, warn};

use super::{Revision, Store};

/// How much history is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// At least this many of the latest revisions.
    pub revisions: u64,
    /// At least the revisions made in this long.
    pub age: Duration,
}

impl Default for Window {
    /// 10,000 revisions and one hour: an agent down for an hour (a reboot, a network
    /// outage) resumes where it was, whatever the cluster wrote meanwhile.
    fn default() -> Self {
        Self {
            revisions: 10_000,
            age: Duration::from_secs(3600),
        }
    }
}

/// How often [`run`] looks.
pub const INTERVAL: Duration = Duration::from_secs(60);

/// Decides how far the log may be compacted, from samples of the store's revision over
/// time. Times are offsets from any fixed start (the task's, or a test's clock).
#[derive(Debug)]
pub struct Compactor {
    window: Window,
    /// (when, the revision then), oldest first.
    samples: VecDeque<(Duration, Revision)>,
    /// The log is compacted up to here.
    done: Revision,
}

impl Compactor {
    /// A compactor keeping `window`.
    pub fn new(window: Window) -> Self {
        Self {
            window,
            samples: VecDeque::new(),
            done: 0,
        }
    }

    /// Notes that the store is at `revision` at time `now`; returns the revision to compact
    /// up to (inclusive) when the window allows more than was compacted already.
    ///
    /// Nothing is compacted before the compactor has watched for [`Window::age`]: it cannot
    /// know which revisions are younger than that until it has seen them being made.
    pub fn due(&mut self, now: Duration, revision: Revision) -> Option<Revision> {
        self.samples.push_back((now, revision));
        let cutoff = now.checked_sub(self.window.age)?;
        // The newest sample at or before the cutoff: every revision after it may be
        // younger than the age, so it is the last one that may go.
        while self.samples.len() > 1 && self.samples[1].0 <= cutoff {
            self.samples.pop_front();
        }
        let (when, old_enough) = *self.samples.front()?;
        if when > cutoff {
            return None;
        }
        let upto = old_enough.min(revision.saturating_sub(self.window.revisions));
        (upto > self.done).then(|| {
            self.done = upto;
            upto
        })
    }
}

/// Compacts `store` every `interval`, keeping `window`, until the task is dropped. A
/// failed compaction is logged and tried again at the next tick; nothing depends on it
/// but the log's size.
pub async fn run<S: Store>(store: Arc<S>, window: Window, interval: Duration) {
    let start = tokio::time::Instant::now();
    let mut compactor = Compactor::new(window);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let store = store.clone();
        let revision = match store.revision() {
            Ok(revision) => revision,
            Err(e) => {
                warn!("compaction: reading the revision: {e}");
                continue;
            }
        };
        let Some(upto) = compactor.due(start.elapsed(), revision) else {
            continue;
        };
        match tokio::task::spawn_blocking(move || store.compact(upto)).await {
            Ok(Ok(())) => info!(upto, revision, "change log compacted"),
            Ok(Err(e)) => warn!(upto, "compaction failed: {e}"),
            Err(e) => warn!(upto, "compaction task failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn nothing_goes_before_the_age_has_been_watched() {
        let mut compactor = Compactor::new(Window {
            revisions: 10,
            age: 10 * MINUTE,
        });
        for minute in 0..10 {
            assert_eq!(
                compactor.due(minute * MINUTE, 1000 * (minute as u64 + 1)),
                None
            );
        }
        // At minute 10, minute 0's revision (1000) is as old as the age.
        assert_eq!(compactor.due(10 * MINUTE, 11_000), Some(1000));
        // Nothing new is old enough yet: the same cut is not made twice.
        assert_eq!(
            compactor.due(10 * MINUTE + Duration::from_secs(1), 11_001),
            None
        );
        assert_eq!(compactor.due(11 * MINUTE, 12_000), Some(2000));
    }

    #[test]
    fn the_revision_count_keeps_a_quiet_hours_history() {
        let mut compactor = Compactor::new(Window {
            revisions: 500,
            age: MINUTE,
        });
        // Ten revisions a minute: the age would allow all but the last ten to go, the
        // count keeps the last 500.
        let mut cuts = Vec::new();
        for minute in 0..=120u32 {
            let revision = u64::from(minute) * 10;
            cuts.extend(compactor.due(minute * MINUTE, revision));
        }
        assert_eq!(cuts.first(), Some(&10));
        assert_eq!(cuts.last(), Some(&700), "1200 - 500");
    }
}
