//! The typed API for the L4 ingress maps: the published `tcp:` and `udp:` ports with their
//! backends, and the per-port, per-backend traffic counters.
//!
//! A port's backends are one map value, replaced whole by one update, so the tc program
//! sees the old set or the new one, never a mix; the round-robin cursor is carried over.
//! Established flows live in the connection tracking map, which the agent never writes:
//! changing a port's backends moves new flows only.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
};

use aya::maps::{HashMap, Map, MapData, MapError, PerCpuHashMap};
use ferry_ebpf_abi::{
    FAMILY_IPV4, L4_BACKEND_SNAT, L4Backend, L4Port, L4PortKey, MAX_L4_BACKENDS, Traffic,
    TrafficKey, map_names,
};

use super::{ServiceTableError, services::open_pinned};

/// A transport protocol of a published L4 port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// `tcp:` ports.
    Tcp,
    /// `udp:` ports.
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
        }
    }

    /// `tcp` or `udp`, as metrics label it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One backend as the kernel reaches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L4Target {
    /// The container's address and port.
    pub address: SocketAddrV4,
    /// The interface that reaches it (the container bridge or the WireGuard link).
    pub ifindex: u32,
    /// Whether it is on another server (its flows are SNATed to this server's address).
    pub remote: bool,
}

/// Errors from reading or writing the L4 maps.
#[derive(Debug, thiserror::Error)]
pub enum L4TableError {
    #[error(transparent)]
    Open(#[from] ServiceTableError),
    #[error(
        "port {protocol:?} {port} has {count} backends; at most {MAX_L4_BACKENDS} are supported"
    )]
    TooManyBackends {
        protocol: Protocol,
        port: u16,
        count: usize,
    },
    #[error("{op} {map} for {protocol:?} port {port}: {source}")]
    Update {
        op: &'static str,
        map: &'static str,
        protocol: Protocol,
        port: u16,
        #[source]
        source: MapError,
    },
    #[error("read {map}: {source}")]
    Read {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

/// A port and backend's traffic, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortTraffic {
    /// Flows steered to the backend.
    pub flows: u64,
    /// Bytes from clients.
    pub bytes_in: u64,
    /// Bytes back to clients.
    pub bytes_out: u64,
}

/// The published L4 ports as the tc program sees them.
pub struct L4Table {
    ports: HashMap<MapData, L4PortKey, L4Port>,
    traffic: PerCpuHashMap<MapData, TrafficKey, Traffic>,
}

impl L4Table {
    /// Opens the maps pinned in `map_dir`.
    pub fn open(map_dir: &Path) -> Result<Self, L4TableError> {
        Ok(Self {
            ports: open_pinned(map_dir, map_names::L4_PORTS, Map::HashMap)?,
            traffic: open_pinned(map_dir, map_names::L4_TRAFFIC, Map::PerCpuLruHashMap)?,
        })
    }

    /// Makes host port `port` steer new flows round-robin over `backends`, SNATing those
    /// to remote ones to `snat`. An empty list leaves the port's new flows to the
    /// userspace relay.
    pub fn set(
        &mut self,
        protocol: Protocol,
        port: u16,
        snat: Ipv4Addr,
        backends: &[L4Target],
    ) -> Result<(), L4TableError> {
        if backends.len() > MAX_L4_BACKENDS as usize {
            return Err(L4TableError::TooManyBackends {
                protocol,
                port,
                count: backends.len(),
            });
        }
        let key = port_key(protocol, port);
        let cursor = self.ports.get(&key, 0).map_or(0, |p| p.cursor);
        // 6 KB: on the heap.
        let mut value = Box::new(L4Port {
            cursor,
            count: backends.len() as u32,
            _pad: 0,
            snat: [u32::from_ne_bytes(snat.octets()), 0, 0, 0],
            backends: [L4Backend::default(); MAX_L4_BACKENDS as usize],
        });
        for (slot, backend) in value.backends.iter_mut().zip(backends) {
            *slot = L4Backend {
                addr: [u32::from_ne_bytes(backend.address.ip().octets()), 0, 0, 0],
                ifindex: backend.ifindex,
                port: backend.address.port().to_be(),
                flags: if backend.remote { L4_BACKEND_SNAT } else { 0 },
                family: FAMILY_IPV4,
            };
        }
        self.ports
            .insert(&key, &*value, 0)
            .map_err(|source| L4TableError::Update {
                op: "write",
                map: map_names::L4_PORTS,
                protocol,
                port,
                source,
            })
    }

    /// Stops steering `port`: its new flows go to the relay; tracked ones carry on.
    pub fn remove(&mut self, protocol: Protocol, port: u16) -> Result<(), L4TableError> {
        match self.ports.remove(&port_key(protocol, port)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(L4TableError::Update {
                op: "remove",
                map: map_names::L4_PORTS,
                protocol,
                port,
                source,
            }),
        }
    }

    /// Every steered port with its backends' addresses, in slot order.
    pub fn ports(&self) -> Result<BTreeMap<(Protocol, u16), Vec<SocketAddrV4>>, L4TableError> {
        let mut out = BTreeMap::new();
        for entry in self.ports.iter() {
            let (key, value) = entry.map_err(|source| L4TableError::Read {
                map: map_names::L4_PORTS,
                source,
            })?;
            let Some(protocol) = Protocol::from_number(key.protocol) else {
                continue;
            };
            let backends = value
                .backends
                .iter()
                .take(value.count as usize)
                .map(|b| SocketAddrV4::new(ipv4(b.addr[0]), u16::from_be(b.port)))
                .collect();
            out.insert((protocol, u16::from_be(key.port)), backends);
        }
        Ok(out)
    }

    /// Every port and backend's traffic, summed over CPUs.
    pub fn traffic(
        &self,
    ) -> Result<BTreeMap<(Protocol, u16, SocketAddrV4), PortTraffic>, L4TableError> {
        let mut out = BTreeMap::new();
        for entry in self.traffic.iter() {
            let (key, values) = entry.map_err(|source| L4TableError::Read {
                map: map_names::L4_TRAFFIC,
                source,
            })?;
            let Some(protocol) = Protocol::from_number(key.protocol) else {
                continue;
            };
            let backend = SocketAddrV4::new(ipv4(key.addr[0]), u16::from_be(key.port));
            let sum: &mut PortTraffic = out
                .entry((protocol, u16::from_be(key.host_port), backend))
                .or_default();
            for cpu in values.iter() {
                sum.flows += cpu.flows;
                sum.bytes_in += cpu.bytes_in;
                sum.bytes_out += cpu.bytes_out;
            }
        }
        Ok(out)
    }
}

fn port_key(protocol: Protocol, port: u16) -> L4PortKey {
    L4PortKey {
        port: port.to_be(),
        protocol: protocol.number(),
        _pad: 0,
    }
}

/// An address as the maps hold it (network order in a native u32).
fn ipv4(word: u32) -> Ipv4Addr {
    Ipv4Addr::from(word.to_ne_bytes())
}
