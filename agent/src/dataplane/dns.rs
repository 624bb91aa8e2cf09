//! The DNS interception maps: where the listener is, and which cgroup sent from a source
//! (a hash map asked with one `bpf()` call, and a ring buffer of UDP senders the DNS
//! server reads from shared memory: [`SeenPeers`]).

use std::{
    collections::HashMap as StdHashMap,
    net::SocketAddrV4,
    path::Path,
    time::{Duration, SystemTime},
};

use aya::maps::{Array, HashMap, Map, MapData, MapError, RingBuf};
use ferry_ebpf_abi::{DnsListener, DnsPeer, DnsPeerSeen, map_names};

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

/// Bytes one record takes in the ring: the kernel's 8-byte header and the record, rounded
/// up to 8.
const SEEN_RECORD: usize = 8 + std::mem::size_of::<DnsPeerSeen>().next_multiple_of(8);
/// Most senders kept in memory; past it the mirror starts again (see [`SeenPeers`]).
const MAX_MIRRORED: usize = 65_536;

/// Who sent a UDP query, as far as the ring says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    /// A socket of this cgroup, in ferry's containers' cgroups.
    Container(u64),
    /// No container: the ring has every container's query since the mirror was last
    /// complete, and none from this source.
    NotContainer,
    /// The mirror cannot say (just opened, or a record may have been lost): ask the peers
    /// map.
    Unknown,
}

/// The kernel's ring of UDP queries sent to the listener ([`map_names::DNS_SEEN`]), mirrored
/// in memory by source address and port, so the DNS server finds a query's sender without a
/// system call (the peers map costs one `bpf()` call per query).
///
/// As exact as the peers map: the egress program writes a query's record before the
/// datagram reaches the listener's socket, so once [`read`](Self::read) runs after a
/// receive, every datagram received has its sender's record in the mirror, unless a
/// record was lost. Records are lost only when the ring is full, which a read notices (it
/// took a full ring's worth); the mirror then starts again, empty. A source with no record
/// is "not a container" only for a datagram the kernel queued at least [`SETTLE`] after
/// the mirror (re)started (its receive timestamp, `SO_TIMESTAMPNS`): its sender, if a
/// container, wrote its record after the start, a trip of microseconds before the queue,
/// so this reader has it. Earlier datagrams (queued while an agent restarted, whose
/// records the last one may have read) get [`Sender::Unknown`], and the peers map answers.
/// Only one reader may consume the ring: one DNS server per server, as the listener allows.
pub struct SeenPeers {
    ring: RingBuf<MapData>,
    /// (source address, source port), both in network byte order, to the cgroup id.
    mirror: StdHashMap<(u32, u16), u64>,
    /// When the mirror (re)started, plus [`SETTLE`], on the clock of receive timestamps.
    settled: SystemTime,
}

/// A read that takes this many bytes of records may have followed a full ring.
const FULL_AT: usize = ferry_ebpf_abi::DNS_SEEN_BYTES as usize - 2 * SEEN_RECORD;

/// How long after it starts the mirror waits before a miss may mean "not a container":
/// far longer than a datagram takes from the sender's egress to the listener's queue.
pub const SETTLE: Duration = Duration::from_secs(1);

impl SeenPeers {
    /// Opens the ring pinned in `map_dir`.
    pub fn open(map_dir: &Path) -> Result<Self, ServiceTableError> {
        let ring: RingBuf<MapData> = open_pinned(map_dir, map_names::DNS_SEEN, Map::RingBuf)?;
        Ok(Self {
            ring,
            mirror: StdHashMap::new(),
            settled: SystemTime::now() + SETTLE,
        })
    }

    /// Takes every record the kernel wrote since the last read into the mirror.
    pub fn read(&mut self) {
        let mut taken = 0;
        while let Some(item) = self.ring.next() {
            taken += SEEN_RECORD;
            let Some(record) = item.get(..std::mem::size_of::<DnsPeerSeen>()) else {
                continue;
            };
            let addr = u32::from_ne_bytes([record[0], record[1], record[2], record[3]]);
            let port = u16::from_ne_bytes([record[4], record[5]]);
            let mut cgroup = [0u8; 8];
            cgroup.copy_from_slice(&record[8..16]);
            self.mirror.insert((addr, port), u64::from_ne_bytes(cgroup));
        }
        if taken >= FULL_AT || self.mirror.len() > MAX_MIRRORED {
            self.mirror.clear();
            self.settled = SystemTime::now() + SETTLE;
        }
    }

    /// Who sent a datagram from `addr`:`port` (network byte order, as `sockaddr_in` holds
    /// them); `queued` gives the time the kernel queued it (None: no timestamp came with
    /// it), asked only when the mirror has no such source.
    pub fn sender(
        &self,
        addr: u32,
        port: u16,
        queued: impl FnOnce() -> Option<SystemTime>,
    ) -> Sender {
        match self.mirror.get(&(addr, port)) {
            Some(cgroup) => Sender::Container(*cgroup),
            None if queued().is_some_and(|t| t >= self.settled) => Sender::NotContainer,
            None => Sender::Unknown,
        }
    }
}
