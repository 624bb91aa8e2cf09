//! The store's identity (`auth/store-id`): a random id that names one history of
//! revisions. Lists carry it and watches may give it back, so a follower that listed one
//! store never resumes its revision in another (a SQLite central migrated to etcd counts
//! revisions afresh): it is told to list again instead.

use ferry_api::keys::STORE_ID;

use super::{Compare, Op, Store, StoreError, TxnOutcome};

/// A new identity: 16 random bytes in hex.
///
/// Errors: the system has no randomness to give ([`StoreError::Entropy`]).
pub fn fresh() -> Result<String, StoreError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(StoreError::Entropy)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `value` is an identity this module wrote.
fn valid(value: &[u8]) -> bool {
    value.len() == 32 && value.iter().all(u8::is_ascii_hexdigit)
}

/// The store's identity, written first if it has none (a store made before identities;
/// its followers list again once).
///
/// Errors: the store cannot be read or written.
pub fn ensure<S: Store + ?Sized>(store: &S) -> Result<String, StoreError> {
    loop {
        let found = store.get(STORE_ID)?;
        if let Some(kv) = &found
            && valid(&kv.value)
        {
            return Ok(String::from_utf8_lossy(&kv.value).into_owned());
        }
        let id = fresh()?;
        let seen = found.map_or(0, |kv| kv.mod_revision);
        let write = [Op::Put(STORE_ID.into(), id.clone().into_bytes())];
        match store.txn(&[Compare::ModRevision(STORE_ID.into(), seen)], &write)? {
            TxnOutcome::Committed(_) => return Ok(id),
            // Another replica wrote one first: read it.
            TxnOutcome::Failed(_) => continue,
        }
    }
}
