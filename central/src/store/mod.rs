//! Central's state: a revisioned key-value model, etcd's.
//!
//! Invariants:
//! - one global revision; every committed transaction bumps it by exactly one, and it never
//!   goes backwards, across restarts included;
//! - each key carries the revision that created it and the one that last changed it;
//! - every change is logged under its revision, so a watcher that saw revision R resumes
//!   with exactly the changes after R: none lost, none repeated. Compaction drops old log
//!   entries ([`compaction`] keeps a window of revisions and age); a watcher asking for a
//!   compacted revision is told to list again.
//!
//! [`Store`] is the seam for backends. [`sqlite::SqliteStore`] is the embedded one (one
//! file, WAL, synced on every commit); [`etcd::EtcdStore`] keeps the state in an etcd v3
//! cluster, ferry's revision being etcd's. [`Backend`] is the one central runs.

mod backend;
pub mod compaction;
pub mod etcd;
pub mod identity;
pub mod sqlite;
mod watch;

pub use backend::Backend;

pub use watch::{Watch, WatchError};

/// A revision of the whole store.
pub type Revision = u64;

/// A key and its value as of some revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// The revision that created the key (since its last deletion).
    pub create_revision: Revision,
    /// The revision of its last change.
    pub mod_revision: Revision,
}

/// One change, as a watcher sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The revision of the transaction that made the change.
    pub revision: Revision,
    /// The key changed.
    pub key: String,
    /// The new value, or None for a deletion.
    pub value: Option<Vec<u8>>,
}

/// What one commit changed, as the store announces it to its watchers right after the
/// commit, in revision order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// The commit's revision.
    pub revision: Revision,
    /// Its changes, or None when they were too large to pass around: a watcher reads
    /// them from the log instead.
    pub events: Option<Vec<Event>>,
    /// The keys it changed (empty when unknown: a gap in an etcd watch), so a watcher of
    /// another prefix passes over a commit too large to announce without reading the log.
    pub keys: Vec<String>,
}

/// Largest total of values a [`Commit`] carries; a bigger commit is announced without
/// them, so the commits a slow watcher may still hold in memory stay small.
pub const MAX_ANNOUNCED_BYTES: usize = 64 * 1024;

/// How many commits a watcher may fall behind before it must read the log again.
pub const ANNOUNCE_BACKLOG: usize = 256;

/// A condition a transaction checks before it applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key's modification revision equals this (0: the key does not exist).
    ModRevision(String, Revision),
}

/// A write inside a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Set a key.
    Put(String, Vec<u8>),
    /// Remove a key (a no-op if absent).
    Delete(String),
}

/// What a transaction did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Every compare held; the writes are committed at this revision.
    Committed(Revision),
    /// A compare failed; nothing was written. The store's revision at the time.
    Failed(Revision),
}

/// Errors from a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("open the store at {path}: {source}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("store {op}: {source}")]
    Sql {
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "revision {requested} has been compacted (oldest kept: {oldest}); list again and watch from the revision the list returns"
    )]
    Compacted {
        requested: Revision,
        oldest: Revision,
    },
    #[error("key {key:?} is not valid: {why}")]
    BadKey { key: String, why: &'static str },
    #[error("a value of {size} bytes is over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("{what} kept losing races with concurrent writers; try again")]
    Contended { what: &'static str },
    #[error(transparent)]
    EtcdConfig(#[from] etcd::EtcdConfigError),
    #[error("etcd at {endpoints} cannot be used: {source}")]
    Connect {
        endpoints: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("etcd {op}: {source}")]
    Etcd {
        op: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd {op}: no answer within {after:?}; is a majority of the members up?")]
    Timeout {
        op: &'static str,
        after: std::time::Duration,
    },
    #[error("etcd ended a history read: {reason}")]
    Canceled { reason: String },
    #[error("the store is closed")]
    Closed,
    #[error(
        "revision {requested} is past this store's {current}: it comes from another store's \
         history (a migration or a restore); list again and watch from the revision the \
         list returns"
    )]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    #[error(
        "the list being resumed was of another store (this one was migrated or restored \
         since); list again and watch from the revision the list returns"
    )]
    OtherStore,
    #[error("no randomness for the store's identity: {0}")]
    Entropy(getrandom::Error),
}

impl StoreError {
    /// Whether trying again may succeed: an etcd member down, unreachable or between
    /// leaders (gRPC `Unavailable`, or the connection itself).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Etcd { source, .. } => etcd::is_transient(source),
            _ => false,
        }
    }
}

/// The operations every backend offers.
pub trait Store: Send + Sync + 'static {
    /// The current revision.
    fn revision(&self) -> Result<Revision, StoreError>;
    /// One key, if present.
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    /// Every key starting with `prefix`, in key order, and the revision they are as of.
    fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError>;
    /// Applies `ops` atomically, at one new revision, if every compare holds.
    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<TxnOutcome, StoreError>;
    /// The changes after `after` to keys starting with `prefix`, oldest first, at most
    /// `limit` of them.
    fn changes(
        &self,
        prefix: &str,
        after: Revision,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;
    /// Forgets the change log up to and including `upto`.
    fn compact(&self, upto: Revision) -> Result<(), StoreError>;
    /// A receiver of every commit from now on, in revision order.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<std::sync::Arc<Commit>>;

    /// Sets one key; returns the new revision.
    fn put(&self, key: &str, value: &[u8]) -> Result<Revision, StoreError> {
        match self.txn(&[], &[Op::Put(key.into(), value.into())])? {
            TxnOutcome::Committed(rev) | TxnOutcome::Failed(rev) => Ok(rev),
        }
    }
}

pub use ferry_api::types::{MemberHealth, StoreHealth};

/// Longest key accepted.
pub const MAX_KEY: usize = 1024;
/// Largest value accepted.
pub const MAX_VALUE: usize = 1 << 20;

/// Checks a key and value against the limits every backend enforces.
pub fn check_write(op: &Op) -> Result<(), StoreError> {
    let (key, value) = match op {
        Op::Put(key, value) => (key, Some(value)),
        Op::Delete(key) => (key, None),
    };
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(StoreError::BadKey {
            key: key.chars().take(64).collect(),
            why: "keys are 1 to 1024 bytes",
        });
    }
    if let Some(value) = value
        && value.len() > MAX_VALUE
    {
        return Err(StoreError::TooLarge {
            size: value.len(),
            limit: MAX_VALUE,
        });
    }
    Ok(())
}
