//! `ferry-central migrate`: a SQLite central's state moved into an etcd cluster, so a user
//! who started on one machine moves to replicas without deploying again.
//!
//! Every key is copied as it is now (history is not: etcd counts revisions afresh), in
//! transactions of bounded size, each guarded by the cluster holding no central's state;
//! the last writes a new store identity, so every agent and CLI that listed the old store
//! lists again instead of resuming a revision of the other history, and compacts etcd's
//! history up to that point. The data directory's central.toml then names the cluster;
//! its CA, certificates and tokens are unchanged. The SQLite file stays as it was.

use std::path::{Path, PathBuf};

use ferry_api::keys::STORE_ID;

use crate::{
    config::{Config, ConfigError, StoreConfig},
    init::STATE_DB,
    store::{
        Compare, Op, Store, StoreError, TxnOutcome,
        etcd::{EtcdConfigError, EtcdStore},
        identity,
        sqlite::SqliteStore,
    },
};

/// Most writes in one etcd transaction (etcd refuses more than `--max-txn-ops`, 128 by
/// default).
const BATCH_OPS: usize = 100;
/// Most bytes of values in one transaction (etcd refuses requests over 1.5 MiB by
/// default; one value may be up to 1 MiB).
const BATCH_BYTES: usize = 1 << 20;

/// What a migration did.
#[derive(Debug)]
pub struct Migrated {
    /// Keys copied.
    pub keys: usize,
    /// The cluster's revision after the copy.
    pub revision: u64,
    /// The SQLite file left behind.
    pub sqlite: PathBuf,
}

/// Why a migration did not happen (nothing is changed in the data directory then).
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "{data_dir}'s central already keeps its state in etcd ({etcd}); there is nothing to \
         migrate"
    )]
    AlreadyEtcd { data_dir: PathBuf, etcd: String },
    #[error(transparent)]
    EtcdConfig(#[from] EtcdConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{etcd} already holds a central's state; migrate into a cluster that holds none (or \
         point the replicas at it as they are)"
    )]
    InUse { etcd: String },
}

/// Copies the state of the SQLite central in `data_dir` into the etcd cluster `to`, and
/// points `data_dir`'s config at it. Central must be stopped meanwhile.
pub fn migrate(data_dir: &Path, to: StoreConfig) -> Result<Migrated, MigrateError> {
    let mut config = Config::load(data_dir)?;
    if let Some(store) = &config.store {
        return Err(MigrateError::AlreadyEtcd {
            data_dir: data_dir.into(),
            etcd: store.etcd.clone(),
        });
    }
    let sqlite = data_dir.join(STATE_DB);
    let (kvs, _) = SqliteStore::open(&sqlite)?.list("")?;
    let etcd = EtcdStore::connect(&to.etcd()?)?;
    let in_use = || MigrateError::InUse {
        etcd: etcd.endpoints().into(),
    };
    // Only where no central's state is, each batch again: a copy interrupted half-way is
    // finished by running the migration again.
    let empty = || Compare::ModRevision(STORE_ID.into(), 0);
    let mut batch: Vec<Op> = Vec::new();
    let mut bytes = 0;
    let mut keys = 0;
    for kv in kvs.into_iter().filter(|kv| kv.key != STORE_ID) {
        if batch.len() == BATCH_OPS || bytes + kv.value.len() > BATCH_BYTES {
            if let TxnOutcome::Failed(_) = etcd.txn(&[empty()], &std::mem::take(&mut batch))? {
                return Err(in_use());
            }
            bytes = 0;
        }
        bytes += kv.value.len();
        keys += 1;
        batch.push(Op::Put(kv.key, kv.value));
    }
    batch.push(Op::Put(STORE_ID.into(), identity::fresh()?.into_bytes()));
    let revision = match etcd.txn(&[empty()], &batch)? {
        TxnOutcome::Committed(revision) => revision,
        TxnOutcome::Failed(_) => return Err(in_use()),
    };
    // No history before the copy: whoever resumes a revision from before lists again.
    etcd.compact(revision)?;
    config.store = Some(to);
    config.replace(data_dir)?;
    Ok(Migrated {
        keys,
        revision,
        sqlite,
    })
}
