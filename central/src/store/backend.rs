//! The store central runs on, chosen at start: SQLite in its data directory (the default),
//! or an etcd cluster (`--store etcd://...`).

use std::{path::Path, sync::Arc};

use tokio::sync::broadcast;

use crate::{config::StoreConfig, init::STATE_DB};

use super::{
    Commit, Compare, Event, KeyValue, Op, Revision, Store, StoreError, StoreHealth, TxnOutcome,
    etcd::EtcdStore, sqlite::SqliteStore,
};

/// One of the backends, behind [`Store`].
pub enum Backend {
    /// One SQLite file.
    Sqlite(SqliteStore),
    /// An etcd cluster.
    Etcd(Box<EtcdStore>),
}

impl Backend {
    /// Opens the store `config` names: SQLite in `data_dir` without one, else the etcd
    /// cluster.
    ///
    /// Errors: the SQLite file cannot be opened, the etcd configuration is wrong, or no
    /// member answers.
    pub fn open(data_dir: &Path, config: Option<&StoreConfig>) -> Result<Self, StoreError> {
        Ok(match config {
            None => Self::Sqlite(SqliteStore::open(&data_dir.join(STATE_DB))?),
            Some(config) => Self::Etcd(Box::new(EtcdStore::connect(&config.etcd()?)?)),
        })
    }

    /// The backend, the revision and, on etcd, each member's health.
    ///
    /// Errors: the store cannot tell its revision (etcd: no majority answers).
    pub fn health(&self) -> Result<StoreHealth, StoreError> {
        Ok(match self {
            Self::Sqlite(store) => StoreHealth {
                backend: "sqlite".into(),
                revision: store.revision()?,
                members: Vec::new(),
            },
            Self::Etcd(store) => StoreHealth {
                backend: "etcd".into(),
                revision: store.revision()?,
                members: store.members()?,
            },
        })
    }

    /// Its name and where it is, for logs and health: `sqlite` or `etcd (URLS)`.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(_) => "sqlite".into(),
            Self::Etcd(etcd) => format!("etcd ({})", etcd.endpoints()),
        }
    }
}

/// Calls `$call` on whichever backend `$self` is.
macro_rules! each {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            Backend::Sqlite($store) => $call,
            Backend::Etcd($store) => $call,
        }
    };
}

impl Store for Backend {
    fn revision(&self) -> Result<Revision, StoreError> {
        each!(self, s => s.revision())
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        each!(self, s => s.get(key))
    }

    fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        each!(self, s => s.list(prefix))
    }

    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<TxnOutcome, StoreError> {
        each!(self, s => s.txn(compares, ops))
    }

    fn changes(
        &self,
        prefix: &str,
        after: Revision,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        each!(self, s => s.changes(prefix, after, limit))
    }

    fn compact(&self, upto: Revision) -> Result<(), StoreError> {
        each!(self, s => s.compact(upto))
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<Commit>> {
        each!(self, s => s.subscribe())
    }
}
