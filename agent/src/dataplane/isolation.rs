//! The stack isolation's map: each known container address of ContainerNet with its
//! stack's id, read by `connect4`, `sendmsg4` and the `cgroup_skb/ingress` program.

use std::{net::Ipv4Addr, path::Path};

use aya::maps::{HashMap, MapData, MapError};
use ferry_ebpf_abi::map_names;

use super::services::{ServiceTableError, open_hash};

/// Container address to stack id. One writer: the records follower.
pub struct AddressStacks {
    map: HashMap<MapData, u32, u32>,
}

impl AddressStacks {
    /// Opens the map pinned in `map_dir`.
    pub fn open(map_dir: &Path) -> Result<Self, ServiceTableError> {
        Ok(Self {
            map: open_hash(map_dir, map_names::ADDRESS_STACKS)?,
        })
    }

    /// Puts `address` in stack `stack` (a [`ferry_ebpf_abi::stack_id`]).
    pub fn set(&mut self, address: Ipv4Addr, stack: u32) -> Result<(), MapError> {
        self.map.insert(&u32::from(address).to_be(), &stack, 0)
    }

    /// Forgets `address`: it passes everywhere again.
    pub fn remove(&mut self, address: Ipv4Addr) -> Result<(), MapError> {
        match self.map.remove(&u32::from(address).to_be()) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every address with its stack id.
    pub fn entries(&self) -> Result<Vec<(Ipv4Addr, u32)>, MapError> {
        self.map
            .iter()
            .map(|entry| {
                entry.map(|(address, stack)| (Ipv4Addr::from(u32::from_be(address)), stack))
            })
            .collect()
    }
}
