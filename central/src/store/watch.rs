//! Watching a prefix from a revision: history first, then live changes, with no change
//! lost or repeated, however the two race.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::{Commit, Event, Revision, Store, StoreError};

/// Most changes read from the log in one go.
const BATCH: usize = 1000;

/// Why a watch ended.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the store was closed")]
    Closed,
}

/// A watch of every key under a prefix.
///
/// It reads the log until it has caught up, then follows the store's announced commits in
/// memory (no query per commit, however many watchers there are); if it falls more than
/// the backlog behind, or a commit was too large to announce whole, it reads the log again.
pub struct Watch<S: Store> {
    store: Arc<S>,
    prefix: String,
    after: Revision,
    commits: broadcast::Receiver<Arc<Commit>>,
    from_log: bool,
    log_reads: u64,
}

impl<S: Store> Watch<S> {
    /// Starts after revision `after`: the first batch holds the changes after it.
    pub fn new(store: Arc<S>, prefix: impl Into<String>, after: Revision) -> Self {
        // Subscribe before reading anything, so no commit can slip between the log read
        // and the switch to announced commits.
        let commits = store.subscribe();
        Self {
            store,
            prefix: prefix.into(),
            after,
            commits,
            from_log: true,
            log_reads: 0,
        }
    }

    /// The revision this watch has delivered everything up to; resume from here.
    pub fn revision(&self) -> Revision {
        self.after
    }

    /// How many times this watch has read the change log rather than announced commits: once
    /// to catch up, and again each time it fell behind or met a commit too large to
    /// announce. For logs and tests that check the path taken.
    pub fn log_reads(&self) -> u64 {
        self.log_reads
    }

    /// The next changes, oldest first; waits until there is at least one.
    pub async fn next(&mut self) -> Result<Vec<Event>, WatchError> {
        loop {
            if self.from_log {
                self.log_reads += 1;
                let events = self.store.changes(&self.prefix, self.after, BATCH)?;
                if let Some(last) = events.last() {
                    self.after = last.revision;
                    return Ok(events);
                }
                // Every matching change so far is delivered; announced commits at or
                // below `after` are skipped below, later ones are new.
                self.from_log = false;
            }
            let commit = match self.commits.recv().await {
                Ok(commit) => commit,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.from_log = true;
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return Err(WatchError::Closed),
            };
            if commit.revision <= self.after {
                continue;
            }
            let Some(events) = &commit.events else {
                // Too large to announce: read from the log, unless it is known to touch
                // nothing under this prefix (a source archive's chunks, say).
                let elsewhere = !commit.keys.is_empty()
                    && !commit.keys.iter().any(|k| k.starts_with(&self.prefix));
                if !elsewhere {
                    self.from_log = true;
                }
                continue;
            };
            let mine: Vec<Event> = events
                .iter()
                .filter(|e| e.key.starts_with(&self.prefix))
                .cloned()
                .collect();
            if mine.is_empty() {
                continue;
            }
            self.after = commit.revision;
            return Ok(mine);
        }
    }
}
