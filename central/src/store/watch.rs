//! Watching a prefix from a revision: history first, then live changes, with no change
//! lost or repeated, however the two race.

use std::sync::Arc;

use super::{Event, Revision, Store, StoreError};

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
pub struct Watch<S: Store> {
    store: Arc<S>,
    prefix: String,
    after: Revision,
    commits: tokio::sync::watch::Receiver<Revision>,
}

impl<S: Store> Watch<S> {
    /// Starts after revision `after`: the first batch holds the changes after it.
    pub fn new(store: Arc<S>, prefix: impl Into<String>, after: Revision) -> Self {
        // Subscribe before reading anything, so no commit can slip between the history read
        // and the wait for the next notification.
        let commits = store.subscribe();
        Self {
            store,
            prefix: prefix.into(),
            after,
            commits,
        }
    }

    /// The revision this watch has delivered everything up to; resume from here.
    pub fn revision(&self) -> Revision {
        self.after
    }

    /// The next changes, oldest first; waits until there is at least one.
    pub async fn next(&mut self) -> Result<Vec<Event>, WatchError> {
        loop {
            let head = self.store.revision()?;
            let events = self.store.changes(&self.prefix, self.after, BATCH)?;
            if let Some(last) = events.last() {
                self.after = last.revision;
                return Ok(events);
            }
            // Nothing for this prefix up to `head`: skip ahead, then wait for a commit.
            self.after = self.after.max(head);
            self.commits.borrow_and_update();
            if *self.commits.borrow() > self.after {
                continue;
            }
            self.commits
                .changed()
                .await
                .map_err(|_| WatchError::Closed)?;
        }
    }
}
