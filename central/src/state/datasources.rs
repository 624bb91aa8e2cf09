//! Where a stack's datasources are: `datasources/<stack>`, the addresses of each datasource
//! it names (`mysql`, `postgresql`, `mongodb`, `redis`). Central turns them into records, so
//! `redis.cloud66.local` resolves on every server. ferry does not run datasources itself yet;
//! this is how a stack points at the ones it has.

use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc};

use ferry_api::servicefile::Database;

use super::{StackError, read_json, update_json};
use crate::store::Store;

/// Most addresses one datasource may have.
pub const MAX_ADDRESSES: usize = 16;

/// Errors changing a stack's datasources.
#[derive(Debug, thiserror::Error)]
pub enum DatasourceError {
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error("{0}")]
    Invalid(String),
}

/// A stack's datasources by name, with their addresses.
pub type StackDatasources = BTreeMap<String, Vec<Ipv4Addr>>;

fn key(stack: &str) -> String {
    ferry_api::keys::datasources(stack)
}

/// The datasources of `stack` in `store`.
pub fn read<S: Store>(store: &S, stack: &str) -> Result<StackDatasources, StackError> {
    Ok(read_json(store, &key(stack))?.0)
}

/// Stack datasources over a store.
pub struct Datasources<S: Store> {
    store: Arc<S>,
}

impl<S: Store> Datasources<S> {
    /// Stack datasources on `store`.
    pub fn new(store: Arc<S>) -> Self {
        Self { store }
    }

    /// A stack's datasources.
    pub fn get(&self, stack: &str) -> Result<StackDatasources, StackError> {
        read(self.store.as_ref(), stack)
    }

    /// Sets `set` and removes `unset` in one change; checks everything first.
    pub fn change(
        &self,
        stack: &str,
        set: &StackDatasources,
        unset: &[String],
    ) -> Result<StackDatasources, DatasourceError> {
        for (name, addresses) in set {
            if !Database::ALL.iter().any(|(known, _)| known == name) {
                let known: Vec<&str> = Database::ALL.iter().map(|(n, _)| *n).collect();
                return Err(DatasourceError::Invalid(format!(
                    "{name:?} is not a datasource ferry knows; use one of {}",
                    known.join(", ")
                )));
            }
            if addresses.is_empty() || addresses.len() > MAX_ADDRESSES {
                return Err(DatasourceError::Invalid(format!(
                    "{name} needs between 1 and {MAX_ADDRESSES} addresses, not {}",
                    addresses.len()
                )));
            }
        }
        update_json(
            self.store.as_ref(),
            &key(stack),
            "a datasources change",
            |all: &mut StackDatasources| {
                for name in unset {
                    all.remove(name);
                }
                all.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
                Ok::<_, DatasourceError>(())
            },
        )
    }
}
