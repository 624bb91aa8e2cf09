//! Central's service records as this server last saw them, shared by the steering of
//! service addresses and the DNS server. While central is unreachable they keep what they
//! have: names go on resolving from this copy.

use std::{
    collections::{BTreeMap, HashMap},
    fs, io,
    path::Path,
    sync::{
        Arc, PoisonError, RwLock, RwLockReadGuard,
        atomic::{AtomicBool, Ordering},
    },
};

use ferry_api::records::ServiceRecord;
use tracing::warn;

/// The records, by service name, then stack.
#[derive(Debug, Default)]
pub struct Directory {
    by_service: HashMap<String, BTreeMap<String, ServiceRecord>>,
}

/// What looking a service name up found.
#[derive(Debug)]
pub enum Found<'a> {
    /// The one record the name means for this caller.
    One(&'a ServiceRecord),
    /// Several stacks have a service of that name and the caller belongs to none of them.
    Ambiguous,
    /// No stack has it.
    Missing,
}

impl Directory {
    /// The record `service` means to a caller of stack `stack` (None: a host process):
    /// its own stack's; failing that, the only stack's that has one.
    pub fn find(&self, service: &str, stack: Option<&str>) -> Found<'_> {
        let Some(stacks) = self.by_service.get(service) else {
            return Found::Missing;
        };
        if let Some(record) = stack.and_then(|s| stacks.get(s)) {
            return Found::One(record);
        }
        let mut all = stacks.values();
        match (all.next(), all.next()) {
            (Some(record), None) => Found::One(record),
            (Some(_), Some(_)) => Found::Ambiguous,
            (None, _) => Found::Missing,
        }
    }

    /// Every record.
    pub fn all(&self) -> impl Iterator<Item = &ServiceRecord> {
        self.by_service.values().flat_map(BTreeMap::values)
    }

    fn insert(&mut self, record: ServiceRecord) {
        self.by_service
            .entry(record.service.clone())
            .or_default()
            .insert(record.stack.clone(), record);
    }

    fn remove(&mut self, stack: &str, service: &str) {
        if let Some(stacks) = self.by_service.get_mut(service) {
            stacks.remove(stack);
            if stacks.is_empty() {
                self.by_service.remove(service);
            }
        }
    }
}

/// The shared, lock-protected [`Directory`].
#[derive(Clone, Debug, Default)]
pub struct Records {
    inner: Arc<RwLock<Directory>>,
    /// Whether the records came from central or a snapshot of an earlier run; until then an
    /// empty directory means "not known yet", not "no such service".
    loaded: Arc<AtomicBool>,
    /// Bumped on every change, for followers (the ingress routes).
    changes: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Records {
    /// The records saved by an earlier run at `snapshot`, if any: a restarted agent answers
    /// from them while central is out of reach.
    pub fn from_snapshot(snapshot: &Path) -> Self {
        let records = Self::default();
        match fs::read(snapshot) {
            Ok(bytes) => match serde_json::from_slice::<Vec<ServiceRecord>>(&bytes) {
                Ok(saved) => {
                    records.replace(saved);
                }
                Err(e) => {
                    warn!(snapshot = %snapshot.display(), "unreadable records snapshot, ignored: {e}")
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!(snapshot = %snapshot.display(), "reading the records snapshot: {e}"),
        }
        records
    }

    /// Saves the records at `snapshot` (written aside, then renamed into place).
    pub fn save(&self, snapshot: &Path) -> io::Result<()> {
        let all: Vec<ServiceRecord> = self.read().all().cloned().collect();
        let bytes = serde_json::to_vec(&all).map_err(io::Error::other)?;
        let aside = snapshot.with_extension("new");
        fs::write(&aside, bytes)?;
        fs::rename(&aside, snapshot)
    }

    /// Whether the records are known (see the field).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// A receiver that sees every later change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Reads the records; hold the guard briefly, writers wait for it.
    pub fn read(&self) -> RwLockReadGuard<'_, Directory> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces every record with `records` (a fresh listing).
    pub fn replace(&self, records: impl IntoIterator<Item = ServiceRecord>) {
        let mut fresh = Directory::default();
        for record in records {
            fresh.insert(record);
        }
        *self.inner.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        self.loaded.store(true, Ordering::Release);
        self.changed();
    }

    /// Applies one change of `records/<stack>/<service>`: a new value, or its removal.
    pub fn apply(&self, key: &str, value: Option<ServiceRecord>) {
        let mut directory = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        match value {
            Some(record) => directory.insert(record),
            None => {
                if let Some((stack, service)) = ferry_api::keys::record_of(key) {
                    directory.remove(stack, service);
                }
            }
        }
        drop(directory);
        self.changed();
    }
}
