//! This server's containers as callers: each one's cgroup id and the stack, service and
//! generation its processes belong to, and its address. Kept in memory for the DNS server
//! and the stack isolation, and in the kernel's callers map for `connect4`; written by the
//! workloads as containers start and by every container report, so every view follows the
//! containers that run.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicBool, Ordering},
    },
};

use ferry_ebpf_abi::stack_id;
use tracing::warn;

use crate::dataplane::CallerTable;

/// Who a container is, as a caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalCaller {
    /// Its stack.
    pub stack: String,
    /// Its service.
    pub service: String,
    /// The newest generation it runs for: its own, or a later one it was carried into.
    pub generation: u64,
    /// Its ContainerNet address, once Docker gave it one.
    pub address: Option<Ipv4Addr>,
}

/// The shared table of this server's callers, by cgroup id.
#[derive(Clone)]
pub struct Callers {
    known: Arc<RwLock<HashMap<u64, Arc<LocalCaller>>>>,
    kernel: Arc<Mutex<Kernel>>,
    /// Whether the containers have been listed once since the agent started.
    loaded: Arc<AtomicBool>,
    /// Bumped on every write, for followers (the stack isolation).
    changes: Arc<tokio::sync::watch::Sender<u64>>,
}

/// The kernel's callers map, opened on first use: the daemon starts the data plane first.
struct Kernel {
    map_dir: Option<PathBuf>,
    table: Option<CallerTable>,
}

impl Kernel {
    fn table(&mut self) -> Option<&mut CallerTable> {
        if self.table.is_none() {
            let dir = self.map_dir.as_ref()?;
            match CallerTable::open(dir) {
                Ok(table) => self.table = Some(table),
                Err(e) => warn!("callers map: {e}"),
            }
        }
        self.table.as_mut()
    }
}

impl Callers {
    /// A table that writes the kernel's callers map pinned in `map_dir` (None: memory only,
    /// for tests of the DNS answers).
    pub fn new(map_dir: Option<PathBuf>) -> Self {
        Self {
            known: Arc::default(),
            kernel: Arc::new(Mutex::new(Kernel {
                map_dir,
                table: None,
            })),
            loaded: Arc::default(),
            changes: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    /// A receiver that sees every later write.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The address and stack id of every known caller that has an address.
    pub fn addresses(&self) -> Vec<(Ipv4Addr, u32)> {
        self.known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter_map(|c| Some((c.address?, stack_id(&c.stack))))
            .collect()
    }

    /// Whether this server's containers have been listed since the agent started.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// The caller whose processes live in cgroup `cgroup`, if it is one of ours (shared:
    /// the DNS server asks for every query).
    pub fn get(&self, cgroup: u64) -> Option<Arc<LocalCaller>> {
        self.known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&cgroup)
            .cloned()
    }

    /// Records (or updates) one container, e.g. just after it started.
    pub fn register(&self, cgroup: u64, caller: LocalCaller) {
        self.write_kernel(cgroup, &caller);
        self.known
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(cgroup, Arc::new(caller));
        self.changes.send_modify(|n| *n += 1);
    }

    /// Makes the table exactly `all`: the containers that run now.
    pub fn replace(&self, all: HashMap<u64, LocalCaller>) {
        let gone: Vec<u64> = {
            let known = self.known.read().unwrap_or_else(PoisonError::into_inner);
            known
                .keys()
                .filter(|k| !all.contains_key(k))
                .copied()
                .collect()
        };
        {
            let mut kernel = self.kernel.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(table) = kernel.table() {
                for cgroup in &gone {
                    if let Err(e) = table.remove(*cgroup) {
                        warn!(cgroup, "forgetting a caller: {e}");
                    }
                }
            }
        }
        for (cgroup, caller) in &all {
            self.write_kernel(*cgroup, caller);
        }
        *self.known.write().unwrap_or_else(PoisonError::into_inner) =
            all.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
        self.loaded.store(true, Ordering::Release);
        self.changes.send_modify(|n| *n += 1);
    }

    fn write_kernel(&self, cgroup: u64, caller: &LocalCaller) {
        let mut kernel = self.kernel.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(table) = kernel.table() else { return };
        // Generations beyond u32 would take four billion deploys of one stack.
        let generation = u32::try_from(caller.generation).unwrap_or(u32::MAX);
        if let Err(e) = table.set(cgroup, stack_id(&caller.stack), generation) {
            warn!(cgroup, stack = %caller.stack, "registering a caller: {e}");
        }
    }
}
