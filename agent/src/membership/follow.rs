//! Following a prefix of central: a snapshot, then every change after it, for as long as
//! the agent runs. The one way the agent follows central (servers, records, certificates,
//! assignments, actions).
//!
//! Invariants:
//! - the first update, and the first after central said the revision it was at is
//!   compacted, is a [`Update::Snapshot`] that replaces everything known; every other is
//!   [`Update::Changes`] after the previous update's revision: none lost, none repeated;
//! - while central is unreachable [`Follower::next`] waits (backoff from
//!   [`Backoff`], logged once per failure) and resumes the watch from the revision it saw;
//! - undecodable values are logged with their key and left out: one bad record does not
//!   stop a server from following the rest.

use std::{marker::PhantomData, pin::Pin, time::Duration};

use ferry_api::{
    Revision,
    client::{Client, ClientError},
    types::WatchLine,
};
use futures_util::{Stream, StreamExt as _};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use super::reconnect::Backoff;

/// What a [`Follower`] sees next.
#[derive(Debug, PartialEq)]
pub enum Update<T> {
    /// Every key under the prefix, as of `revision`: replaces what was known.
    Snapshot {
        items: Vec<(String, T)>,
        revision: Revision,
    },
    /// The changes after the previous update, up to `revision`; `None` is a deletion.
    Changes {
        changes: Vec<(String, Option<T>)>,
        revision: Revision,
    },
}

/// Why one attempt to follow failed (the follower retries; these are logged).
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(transparent)]
    Central(#[from] ClientError),
    #[error("central ended the watch of {prefix}")]
    Ended { prefix: String },
}

type Lines = Pin<Box<dyn Stream<Item = Result<WatchLine, ClientError>> + Send>>;

/// Follows one prefix of central, yielding its values decoded as `T`.
pub struct Follower<T> {
    client: Client,
    prefix: String,
    /// What is followed, for logs ("service records").
    what: &'static str,
    /// The revision everything delivered is up to; None: list first.
    seen: Option<Revision>,
    /// The identity of the store the last list came from: a central on another store
    /// (migrated since) refuses to resume it, and the follower lists again.
    store: String,
    watch: Option<Lines>,
    backoff: Backoff,
    /// Wait the backoff before the next attempt.
    waiting: bool,
    values: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Follower<T> {
    /// A follower of `prefix` through `client`, waiting `first_wait` after a first failure
    /// and doubling from there (see [`Backoff`]).
    pub fn new(
        client: Client,
        prefix: impl Into<String>,
        what: &'static str,
        first_wait: Duration,
    ) -> Self {
        Self {
            client,
            prefix: prefix.into(),
            what,
            seen: None,
            store: String::new(),
            watch: None,
            backoff: Backoff::new(first_wait),
            waiting: false,
            values: PhantomData,
        }
    }

    /// The next update; waits for central as long as it takes.
    pub async fn next(&mut self) -> Update<T> {
        loop {
            if std::mem::take(&mut self.waiting) {
                tokio::time::sleep(self.backoff.wait()).await;
            }
            match self.attempt().await {
                Ok(update) => return update,
                Err(FollowError::Central(ClientError::Compacted { .. })) => {
                    info!(prefix = %self.prefix, "{}: central no longer has the revision \
                           this server saw; listing again", self.what);
                    self.relist();
                }
                Err(e) => {
                    warn!(prefix = %self.prefix, "{}: {e}; reconnecting", self.what);
                    self.watch = None;
                    self.waiting = true;
                }
            }
        }
    }

    /// Starts over after the caller failed to act on an update: the next update is a
    /// fresh snapshot, after the backoff's wait.
    pub fn start_over(&mut self) {
        self.relist();
        self.waiting = true;
    }

    /// Makes the next update a fresh snapshot, at once: for a caller that waits on its
    /// own before asking again.
    pub fn relist(&mut self) {
        self.seen = None;
        self.watch = None;
    }

    async fn attempt(&mut self) -> Result<Update<T>, FollowError> {
        let Some(seen) = self.seen else {
            self.backoff.attempt();
            let list = self.client.list(&self.prefix).await?;
            let items = list
                .items
                .into_iter()
                .filter_map(|item| self.decode(&item.key, item.value).map(|v| (item.key, v)))
                .collect();
            self.seen = Some(list.revision);
            self.store = list.store;
            return Ok(Update::Snapshot {
                items,
                revision: list.revision,
            });
        };
        let watch = match &mut self.watch {
            Some(watch) => watch,
            None => {
                self.backoff.attempt();
                let lines = self
                    .client
                    .watch_listed(&self.prefix, seen, &self.store)
                    .await?;
                self.watch.insert(Box::pin(lines))
            }
        };
        let line = match watch.next().await {
            Some(line) => line?,
            None => {
                return Err(FollowError::Ended {
                    prefix: self.prefix.clone(),
                });
            }
        };
        let changes = line
            .events
            .into_iter()
            .filter_map(|event| match event.value {
                None => Some((event.key, None)),
                Some(value) => self.decode(&event.key, value).map(|v| (event.key, Some(v))),
            })
            .collect();
        self.seen = Some(line.revision);
        Ok(Update::Changes {
            changes,
            revision: line.revision,
        })
    }

    fn decode(&self, key: &str, value: serde_json::Value) -> Option<T> {
        serde_json::from_value(value)
            .inspect_err(|e| warn!(%key, "{}: unreadable value, left out: {e}", self.what))
            .ok()
    }
}
