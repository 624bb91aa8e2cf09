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
    /// Cgroup id to [`Caller`](super::Caller): whose generation a process belongs to.
    pub const CALLERS: &str = "FERRY_CALLERS";
    /// One [`DnsListener`](super::DnsListener): where intercepted DNS goes.
    pub const DNS_LISTENER: &str = "FERRY_DNS_LISTENER";
    /// Socket cookie to the [`DnsOrigin`](super::DnsOrigin) a container asked.
    pub const DNS_ORIGINS: &str = "FERRY_DNS_ORIGINS";
    /// [`DnsPeer`](super::DnsPeer) to the cgroup id of the socket that sent from it.
    pub const DNS_PEERS: &str = "FERRY_DNS_PEERS";
    /// A ring buffer of [`DnsPeerSeen`](super::DnsPeerSeen): every UDP query a container
    /// sends to the listener, in order, read by the DNS server from shared memory.
    pub const DNS_SEEN: &str = "FERRY_DNS_SEEN";
    /// [`L4PortKey`](super::L4PortKey) to [`L4Port`](super::L4Port): the published `tcp:`
    /// and `udp:` ports the tc program steers, with their backends.
    pub const L4_PORTS: &str = "FERRY_L4_PORTS";
    /// [`FlowKey`](super::FlowKey) to [`Flow`](super::Flow): the L4 connection tracking,
    /// two entries per flow (the client's direction and the backend's), LRU.
    pub const L4_FLOWS: &str = "FERRY_L4_FLOWS";
    /// Per-CPU [`TrafficKey`](super::TrafficKey) to [`Traffic`](super::Traffic): flows and
    /// bytes per port and backend, LRU.
    pub const L4_TRAFFIC: &str = "FERRY_L4_TRAFFIC";
    /// A container's address (IPv4, network byte order) to its stack's
    /// [`stack_id`](super::stack_id): the stack isolation's view of ContainerNet.
    pub const ADDRESS_STACKS: &str = "FERRY_ADDRESS_STACKS";
    /// Every map the object pins, in no particular order.
    pub const ALL: [&str; 12] = [
        SERVICES,
        BACKENDS,
        COUNTERS,
        CALLERS,
        DNS_LISTENER,
        DNS_ORIGINS,
        DNS_PEERS,
        DNS_SEEN,
        L4_PORTS,
        L4_FLOWS,
        L4_TRAFFIC,
        ADDRESS_STACKS,
    ];
}

/// The version of the maps' shapes (key and value sizes, capacities, which maps exist), part
/// of every map's pin path (`<bpffs>/maps-v<MAP_LAYOUT>/<MAP NAME>`). Bump it whenever a
/// map's shape changes, and teach the agent's migration (`dataplane::layout`) to carry the
/// older shape's entries over, so an agent upgraded in place over older pins converts them
/// instead of failing on a map it cannot reuse.
///
/// History:
/// - 1: the first release: a service keyed by address and port alone
///   ([`legacy::ServiceKeyV1`], 8 bytes) and three counters, pinned in `<bpffs>/maps`;
/// - 2: versioned steering: keys carry the caller's generation (12 bytes), six counters,
///   the callers and DNS maps; still pinned in `<bpffs>/maps`;
/// - 3: layout 2's shapes, pinned in a directory that names the version;
/// - 4: layout 3's maps and shapes, plus the ring buffer of DNS senders
///   ([`map_names::DNS_SEEN`]);
/// - 5: layout 4's maps and shapes, plus the L4 ingress maps ([`map_names::L4_PORTS`],
///   [`map_names::L4_FLOWS`], [`map_names::L4_TRAFFIC`]);
/// - 6: layout 5's maps and shapes, plus the stack isolation's
///   [`map_names::ADDRESS_STACKS`] and its counter ([`Counter::Isolated`], seven counters).
pub const MAP_LAYOUT: u32 = 6;

/// Shapes of older map layouts, kept so an upgraded agent can read their pins.
pub mod legacy {
    /// Layout 1's key of the services map: one entry per service address, for everyone.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct ServiceKeyV1 {
        /// IPv4 address, network byte order.
        pub addr: u32,
        /// Port, network byte order.
        pub port: u16,
        /// Explicit padding.
        pub _pad: u16,
    }

    /// Layout 1's number of counters: `Steered`, `NoBackend`, `MissingSlot`, the first three
    /// of today's, at the same indexes.
    pub const COUNTERS_V1_LEN: u32 = 3;
}

/// Capacity of the callers map: containers on one server.
pub const MAX_CALLERS: u32 = 16_384;

/// The socket mark (`SO_MARK`) on the agent's own DNS sockets: its forwarder's queries to
/// the upstream resolvers. The DNS hooks never redirect a socket that carries it, so the
/// agent cannot send its own queries back to itself whatever cgroup it runs in. The value
/// only has to be one no other program puts on its port-53 sockets; it also takes part in
/// policy routing (`ip rule fwmark`), where an operator's rules could match it.
pub const AGENT_SOCKET_MARK: u32 = 0x6665_0035;

/// Capacity of the DNS origin and peer maps (LRU: the oldest sockets are forgotten first).
pub const MAX_DNS_SOCKETS: u32 = 65_536;

/// Size of the ring buffer of DNS senders in bytes (a power of two, a multiple of the
/// page): about 10,900 records of 24 bytes (8 of header), far more than the DNS server
/// leaves unread between two batches.
pub const DNS_SEEN_BYTES: u32 = 256 * 1024;

/// Names of the programs in the object.
pub mod program_names {
    /// `cgroup/connect4`: service addresses and TCP (and connected UDP) DNS.
    pub const CONNECT4: &str = "ferry_connect4";
    /// `cgroup/sendmsg4`: unconnected UDP DNS.
    pub const SENDMSG4: &str = "ferry_sendmsg4";
    /// `cgroup/recvmsg4`: replies seem to come from the resolver asked.
    pub const RECVMSG4: &str = "ferry_recvmsg4";
    /// `cgroup/getpeername4`: a connected DNS socket's peer is the resolver asked.
    pub const GETPEERNAME4: &str = "ferry_getpeername4";
    /// `cgroup_skb/egress`: records which cgroup sends from each source to the DNS listener.
    pub const DNS_EGRESS: &str = "ferry_dns_egress";
    /// `tc` ingress of the external interfaces: steers the flows of published L4 ports.
    pub const L4_INGRESS: &str = "ferry_l4_ingress";
    /// `tc` ingress of the container bridge (an Ethernet device): the replies of local
    /// backends, sent back as from the published port.
    pub const L4_REPLY: &str = "ferry_l4_reply";
    /// `tc` ingress of the WireGuard link (no link-layer header): the replies of backends on
    /// other servers.
    pub const L4_REPLY_L3: &str = "ferry_l4_reply_l3";
    /// `cgroup_skb/ingress`: drops what reaches a container from another stack's.
    pub const ISOLATION: &str = "ferry_isolation";
}

/// Capacity of the address-to-stack map: every address of 254 servers' `/24`s, rounded
/// up to a power of two.
pub const MAX_ADDRESS_STACKS: u32 = 65_536;

/// Most backends one published L4 port steers to (containers of the serving generation).
pub const MAX_L4_BACKENDS: u32 = 256;

/// Capacity of the L4 ports map.
pub const MAX_L4_PORTS: u32 = 1024;

/// Capacity of the L4 connection tracking map: two entries per flow, so half as many flows.
/// When it is full the least recently used entries go first.
pub const MAX_L4_FLOWS: u32 = 131_072;

/// Capacity of the L4 traffic counters (port and backend pairs), LRU.
pub const MAX_L4_TRAFFIC: u32 = 8192;

/// [`L4Backend::family`] and friends: the address family (Linux's `AF_INET`).
pub const FAMILY_IPV4: u8 = 2;
/// Linux's `AF_INET6`; the layout has room for it, the programs steer IPv4 only so far.
pub const FAMILY_IPV6: u8 = 10;

/// First source port of the ports the tc program uses to SNAT flows to backends on other
/// servers; they run to 65535, above Linux's default ephemeral range (32768-60999), so the
/// server's own connections from its ContainerNet address never take one.
pub const SNAT_PORT_FIRST: u16 = 61_440;

/// How long a UDP flow keeps its backend without a datagram from its client, nanoseconds
/// (the userspace relay's rule too).
pub const UDP_FLOW_IDLE_NS: u64 = 30_000_000_000;

/// A published L4 port: the key of [`map_names::L4_PORTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct L4PortKey {
    /// The host port, network byte order.
    pub port: u16,
    /// IP protocol number: 6 (TCP) or 17 (UDP).
    pub protocol: u8,
    /// Explicit padding.
    pub _pad: u8,
}

/// One backend of a published L4 port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct L4Backend {
    /// The container's address: IPv4 in the first word, network byte order, the rest zero.
    pub addr: [u32; 4],
    /// The interface that reaches it: the container bridge, or the WireGuard link.
    pub ifindex: u32,
    /// The container's port, network byte order.
    pub port: u16,
    /// [`L4_BACKEND_SNAT`] when the backend is on another server.
    pub flags: u8,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
}

/// [`L4Backend::flags`]: the flow's source becomes [`L4Port::snat`], so the backend's
/// replies come back through this server.
pub const L4_BACKEND_SNAT: u8 = 1;

/// A published L4 port's backends, replaced whole by one map update, so the program never
/// sees a count that does not match the backends.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L4Port {
    /// Round-robin cursor, advanced with an atomic add by the kernel; the agent carries it
    /// over when it replaces the value.
    pub cursor: u64,
    /// Live backends in [`L4Port::backends`]; 0 leaves the port to the userspace relay.
    pub count: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// This server's ContainerNet address (IPv4 in the first word), the source of flows to
    /// backends on other servers.
    pub snat: [u32; 4],
    /// The first `count` are live.
    pub backends: [L4Backend; MAX_L4_BACKENDS as usize],
}

/// One direction of a tracked flow as the packets carry it: the key of
/// [`map_names::L4_FLOWS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// Source address (IPv4 in the first word), network byte order.
    pub src: [u32; 4],
    /// Destination address.
    pub dst: [u32; 4],
    /// Source port, network byte order.
    pub src_port: u16,
    /// Destination port, network byte order.
    pub dst_port: u16,
    /// IP protocol number.
    pub protocol: u8,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// Explicit padding.
    pub _pad: u16,
}

/// What a tracked flow's packets in one direction become, and where they go.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Flow {
    /// The new source address, when [`FLOW_SOURCE`] is set.
    pub src: [u32; 4],
    /// The new destination address, when [`FLOW_DESTINATION`] is set.
    pub dst: [u32; 4],
    /// The new source port, with [`FLOW_SOURCE`].
    pub src_port: u16,
    /// The new destination port, with [`FLOW_DESTINATION`].
    pub dst_port: u16,
    /// The interface the rewritten packet is sent out of.
    pub ifindex: u32,
    /// [`FLOW_SOURCE`], [`FLOW_DESTINATION`], [`FLOW_REPLY`], [`FLOW_CLOSED`].
    pub flags: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// When a packet last used the entry (`bpf_ktime_get_coarse_ns`), nanoseconds.
    pub seen: u64,
}

/// [`Flow::flags`]: rewrite the source.
pub const FLOW_SOURCE: u32 = 1;
/// [`Flow::flags`]: rewrite the destination.
pub const FLOW_DESTINATION: u32 = 2;
/// [`Flow::flags`]: the backend's direction (its source is the backend).
pub const FLOW_REPLY: u32 = 4;
/// [`Flow::flags`]: the backend sent a FIN or RST; the flow's SNAT port may be given to a
/// new flow once it has been quiet for a while.
pub const FLOW_CLOSED: u32 = 8;

/// A published port and one of its backends: the key of [`map_names::L4_TRAFFIC`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct TrafficKey {
    /// The backend's address (IPv4 in the first word), network byte order.
    pub addr: [u32; 4],
    /// The backend's port, network byte order.
    pub port: u16,
    /// The published host port, network byte order.
    pub host_port: u16,
    /// IP protocol number.
    pub protocol: u8,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// Explicit padding.
    pub _pad: u16,
}

/// One CPU's share of a port and backend's traffic.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Traffic {
    /// Flows steered to the backend.
    pub flows: u64,
    /// Bytes (whole IP packets) from clients to the backend.
    pub bytes_in: u64,
    /// Bytes from the backend back to clients.
    pub bytes_out: u64,
}

/// A service address (the IPv4 address and port a caller connects to), for callers of one
/// generation or for everyone else.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// IPv4 address, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    /// Explicit padding so the key has no uninitialised bytes for the hash.
    pub _pad: u16,
    /// The callers' generation this entry is for, or [`ANY_GENERATION`] for callers of
    /// other stacks, host processes, and generations without an entry of their own.
    pub generation: u32,
}

/// [`ServiceKey::generation`] of the entry every caller falls back to.
pub const ANY_GENERATION: u32 = 0;

/// Who a cgroup's processes are, for versioned steering: their stack and generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// [`stack_id`] of the stack.
    pub stack: u32,
    /// The generation the caller belongs to.
    pub generation: u32,
}

/// Where intercepted DNS goes: the agent's listener. An address of 0 turns interception off.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DnsListener {
    /// IPv4 address, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    /// Explicit padding.
    pub _pad: u16,
}

/// The resolver a container's socket asked before interception, restored on its replies.
pub type DnsOrigin = DnsListener;

/// A sender to the DNS listener as the listener sees it: source address, port, protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DnsPeer {
    /// Source IPv4 address, network byte order.
    pub addr: u32,
    /// Source port, network byte order.
    pub port: u16,
    /// IP protocol number: 6 (TCP) or 17 (UDP).
    pub protocol: u8,
    /// Explicit padding.
    pub _pad: u8,
}

/// One UDP query a container sent to the DNS listener, as the egress program saw it leave:
/// who sent from that source. The record is written before the datagram reaches the
/// listener's socket, so a server that reads the ring after receiving a datagram has its
/// sender's record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsPeerSeen {
    /// The source, as in the peers map.
    pub peer: DnsPeer,
    /// The cgroup id of the sending socket.
    pub cgroup: u64,
}

/// A stack's id in the kernel maps: FNV-1a of its name, so every agent and every restart
/// agrees on it without storing anything.
pub const fn stack_id(name: &str) -> u32 {
    let bytes = name.as_bytes();
    let mut hash: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u32;
        hash = hash.wrapping_mul(0x0100_0193);
        i += 1;
    }
    hash
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
    /// [`stack_id`] of the service's stack: a caller of this stack uses the entry for its
    /// own generation when there is one.
    pub stack: u32,
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
    /// A connect was steered to the entry of the caller's own generation.
    Versioned = 3,
    /// A DNS query (UDP send or TCP/UDP connect to port 53) went to the agent's listener.
    DnsRedirected = 4,
    /// A reply's source, or a socket's peer, was given back as the resolver asked.
    DnsRestored = 5,
    /// A connect, datagram or packet between containers of two stacks was refused.
    Isolated = 6,
}

impl Counter {
    /// Number of counters; the size of the counters map.
    pub const LEN: u32 = 7;
    /// Every counter, in index order.
    pub const ALL: [Counter; 7] = [
        Counter::Steered,
        Counter::NoBackend,
        Counter::MissingSlot,
        Counter::Versioned,
        Counter::DnsRedirected,
        Counter::DnsRestored,
        Counter::Isolated,
    ];
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all these types are repr(C), Copy, and have no padding: every bit pattern is
    // valid.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::Caller {}
    unsafe impl aya::Pod for super::DnsListener {}
    unsafe impl aya::Pod for super::DnsPeer {}
    unsafe impl aya::Pod for super::DnsPeerSeen {}
    unsafe impl aya::Pod for super::Service {}
    unsafe impl aya::Pod for super::BackendKey {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::legacy::ServiceKeyV1 {}
    unsafe impl aya::Pod for super::L4PortKey {}
    unsafe impl aya::Pod for super::L4Backend {}
    unsafe impl aya::Pod for super::L4Port {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::Flow {}
    unsafe impl aya::Pod for super::TrafficKey {}
    unsafe impl aya::Pod for super::Traffic {}
}
