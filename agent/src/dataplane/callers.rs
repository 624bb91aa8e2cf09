//! The callers map: which stack and generation each container's cgroup belongs to, so the
//! kernel steers a container's connects to services of its own generation.

use std::path::Path;

use aya::maps::{HashMap, MapData, MapError};
use ferry_ebpf_abi::{Caller, map_names};

use super::services::{ServiceTableError, open_hash};

/// Cgroup id to caller, as the connect4 program reads it. One writer: the daemon.
pub struct CallerTable {
    callers: HashMap<MapData, u64, Caller>,
}

impl CallerTable {
    /// Opens the map pinned in `map_dir`.
    pub fn open(map_dir: &Path) -> Result<Self, ServiceTableError> {
        Ok(Self {
            callers: open_hash(map_dir, map_names::CALLERS)?,
        })
    }

    /// Registers the processes of cgroup `cgroup` as callers of `generation` of `stack`
    /// (a [`ferry_ebpf_abi::stack_id`]).
    pub fn set(&mut self, cgroup: u64, stack: u32, generation: u32) -> Result<(), MapError> {
        self.callers
            .insert(&cgroup, &Caller { stack, generation }, 0)
    }

    /// Forgets cgroup `cgroup`.
    pub fn remove(&mut self, cgroup: u64) -> Result<(), MapError> {
        match self.callers.remove(&cgroup) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
