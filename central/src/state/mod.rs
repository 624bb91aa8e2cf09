//! Central's typed state on top of the [`store`](crate::store): what lives under which
//! key, and the rules that keep it consistent.
//!
//! Key layout (values are JSON):
//! - `servers/<name>`: a [`Server`], with its ContainerNet subnet;
//! - `subnets/<index>`: the name of the server holding `10.66.<index>.0/24`, so a subnet is
//!   taken by creating a key that must not exist: two servers can never get the same one;
//! - `stacks/<stack>` and `generations/<stack>/<N>`: see [`stacks`](Stacks);
//! - `variables/<stack>`: the stack's variables, see [`Variables`];
//! - `datasources/<stack>`: where the stack's datasources are, see [`Datasources`];
//! - `certificates/<stack>/<name>`: TLS certificates for HTTPS, see [`Certificates`].

mod certificates;
mod datasources;
mod servers;
mod stacks;
mod variables;

use serde::{Serialize, de::DeserializeOwned};

use crate::store::{Compare, Op, Store, StoreError, TxnOutcome};

/// Reads the JSON value at `key` (the default when absent) and its revision.
fn read_json<S: Store, T: DeserializeOwned + Default>(
    store: &S,
    key: &str,
) -> Result<(T, u64), StackError> {
    match store.get(key)? {
        Some(kv) => {
            let value =
                serde_json::from_slice(&kv.value).map_err(|source| StackError::Corrupt {
                    key: kv.key.clone(),
                    source,
                })?;
            Ok((value, kv.mod_revision))
        }
        None => Ok((T::default(), 0)),
    }
}

/// Changes the JSON value at `key` with `change` (which may refuse), written only if no
/// one else wrote it meanwhile; retried a few times, then `what` is reported contended.
fn update_json<S, T, E>(
    store: &S,
    key: &str,
    what: &'static str,
    mut change: impl FnMut(&mut T) -> Result<(), E>,
) -> Result<T, E>
where
    S: Store,
    T: Serialize + DeserializeOwned + Default,
    E: From<StackError>,
{
    for _ in 0..16 {
        let (mut value, revision): (T, u64) = read_json(store, key)?;
        change(&mut value)?;
        let outcome = store
            .txn(
                &[Compare::ModRevision(key.to_string(), revision)],
                &[Op::Put(key.to_string(), encode(key, &value)?)],
            )
            .map_err(StackError::Store)?;
        if let TxnOutcome::Committed(_) = outcome {
            return Ok(value);
        }
    }
    Err(StackError::Store(StoreError::Contended { what }).into())
}

/// Whether `name` may name a server or a stack: 1 to 63 lower-case letters, digits and
/// '-', not starting with '-' (names appear in keys, DNS names and Docker labels).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

pub use certificates::{CertificateError, Certificates};
pub use datasources::{
    DatasourceError, Datasources, MAX_ADDRESSES, StackDatasources, read as datasources_of,
};
pub use servers::{ContainerNet, Server, ServerError, Servers};
pub(crate) use stacks::encode;
pub use stacks::{Generation, Phase, Stack, StackError, Stacks};
pub use variables::{MAX_VALUE_BYTES, MAX_VARIABLES, VariableError, Variables};
