//! The map keys and values that ferry's kernel programs and the agent share.
//!
//! Every type is `#[repr(C)]`, `Copy` and free of implicit padding, so the bytes the agent
//! writes are the bytes the kernel reads. Addresses and ports are kept in network byte order,
//! as the kernel hands them to `cgroup/connect4`, so the hot path never swaps bytes.
#![no_std]

/// Maximum number of backends one service can have in one bank of the backends map.
pub const MAX_BACKENDS: u32 = 1024;

/// Capacity of the service table.
pub const MAX_SERVICES: u32 = 16_384;

/// Names of the maps, as the object declares them and as they are pinned.
pub mod map_names {
    /// Service address to [`Service`](super::Service).
    pub const SERVICES: &str = "FERRY_SERVICES";
    /// [`BackendKey`](super::BackendKey) to [`Backend`](super::Backend).
    pub const BACKENDS: &str = "FERRY_BACKENDS";
    /// Per-CPU event counters, indexed by [`Counter`](super::Counter).
    pub const COUNTERS: &str = "FERRY_COUNTERS";
}

/// Name of the east-west load balancing program in the object.
pub const CONNECT4_PROGRAM: &str = "ferry_connect4";

/// A service address: the IPv4 address and port a caller connects to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// IPv4 address, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    /// Explicit padding so the key has no uninitialised bytes for the hash.
    pub _pad: u16,
}

/// What the kernel needs to steer a connect to a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Service {
    /// Stable identifier chosen by the agent; the first half of every [`BackendKey`].
    pub id: u32,
    /// Number of live backends in the current bank; 0 means refuse the connect.
    pub count: u32,
    /// Which bank of [`BackendKey::slot`] is current: slots `bank * MAX_BACKENDS ..`.
    /// The agent fills the other bank and then replaces this value in one map update, so a
    /// reader never sees a count that does not match the slots.
    pub bank: u32,
    /// Explicit padding so `cursor` is 8-byte aligned without implicit padding.
    pub _pad: u32,
    /// Round-robin cursor, advanced with an atomic add by the kernel. 64 bits because the
    /// BPF target has no 32-bit atomics.
    pub cursor: u64,
}

/// One backend slot of one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendKey {
    /// [`Service::id`].
    pub service: u32,
    /// `bank * MAX_BACKENDS + index`.
    pub slot: u32,
}

/// A backend address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    /// IPv4 address, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    /// Explicit padding.
    pub _pad: u16,
}

/// Indexes of the per-CPU counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A connect to a service address was rewritten to a backend.
    Steered = 0,
    /// A connect to a service address found no backend and was refused.
    NoBackend = 1,
    /// A service's count pointed at a slot that was missing (an update raced the lookup).
    MissingSlot = 2,
}

impl Counter {
    /// Number of counters; the size of the counters map.
    pub const LEN: u32 = 3;
    /// Every counter, in index order.
    pub const ALL: [Counter; 3] = [Counter::Steered, Counter::NoBackend, Counter::MissingSlot];
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all four types are repr(C), Copy, and have no padding: every bit pattern is valid.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::Service {}
    unsafe impl aya::Pod for super::BackendKey {}
    unsafe impl aya::Pod for super::Backend {}
}
