//! The DNS interception maps: where the listener is, and which cgroup sent from a source.

use std::{net::SocketAddrV4, path::Path};

use aya::maps::{Array, HashMap, Map, MapData, MapError};
use ferry_ebpf_abi::{DnsListener, DnsPeer, map_names};

use super::services::{ServiceTableError, open_pinned};

/// IP protocol numbers, as the peers map keys them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TCP.
    Tcp = 6,
    /// UDP.
    Udp = 17,
}

/// The agent's view of the DNS maps.
pub struct DnsMaps {
    listener: Array<MapData, DnsListener>,
    peers: HashMap<MapData, DnsPeer, u64>,
}

impl DnsMaps {
    /// Opens the maps pinned in `map_dir`.
    pub fn open(map_dir: &Path) -> Result<Self, ServiceTableError> {
        Ok(Self {
            listener: open_pinned(map_dir, map_names::DNS_LISTENER, Map::Array)?,
            peers: open_pinned(map_dir, map_names::DNS_PEERS, Map::LruHashMap)?,
        })
    }

    /// Sends containers' DNS to `listener` from now on; `None` stops interception.
    pub fn set_listener(&mut self, listener: Option<SocketAddrV4>) -> Result<(), MapError> {
        let value = listener.map_or_else(DnsListener::default, |l| DnsListener {
            addr: u32::from(*l.ip()).to_be(),
            port: l.port().to_be(),
            _pad: 0,
        });
        self.listener.set(0, &value, 0)
    }

    /// The cgroup id of the socket that last sent to the listener from `peer` over
    /// `transport`, if the kernel saw one.
    pub fn cgroup_of(&self, peer: SocketAddrV4, transport: Transport) -> Option<u64> {
        let key = DnsPeer {
            addr: u32::from(*peer.ip()).to_be(),
            port: peer.port().to_be(),
            protocol: transport as u8,
            _pad: 0,
        };
        self.peers.get(&key, 0).ok()
    }
}
