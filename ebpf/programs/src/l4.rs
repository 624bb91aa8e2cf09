//! tc programs for the published `tcp:` and `udp:` ports: the L4 ingress in the kernel.
//!
//! - `ferry_l4_ingress`, on the ingress of each external interface: a packet of a tracked
//!   flow is rewritten to its backend and sent out of the backend's interface; the first
//!   packet of a new flow (a TCP SYN, or a UDP datagram with no live entry) takes the port's
//!   next backend, round-robin, and creates the flow's two entries. A backend on another
//!   server also gets the flow's source rewritten (SNAT) to this server's ContainerNet
//!   address and a port of its own, so its replies come back here through WireGuard.
//! - `ferry_l4_reply` (container bridge, Ethernet) and `ferry_l4_reply_l3` (WireGuard link,
//!   no link-layer header): a backend's packet of a tracked flow gets the published
//!   address and port back as its source (and the client as its destination after SNAT)
//!   and leaves by the external interface it came in on.
//!
//! Packets are redirected with `bpf_redirect_neigh`, which fills in the link-layer header
//! from the kernel's FIB and neighbour tables: steered flows never pass netfilter, and the
//! server's own conntrack never sees them.
//!
//! What the programs leave to the kernel's stack (and so to the agent's userspace relay,
//! which keeps listening on every published port): anything that is not IPv4 TCP or UDP,
//! IP fragments (the first one included: the stack reassembles them and the relay carries
//! the datagram), TCP segments of flows the map does not know (connections the relay
//! accepted before the program was attached, or entries the LRU evicted), and every port
//! whose value lists no backend.
//!
//! ICMP errors about a steered flow (destination unreachable, fragmentation needed among
//! them, and time exceeded) are translated and sent on the same way (see `icmp`), so
//! path MTU discovery works through the rewrite in both directions.
//!
//! Checksums are updated incrementally with the kernel's helpers (RFC 1624), which also
//! handle packets whose checksum the device will complete (`CHECKSUM_PARTIAL`); a UDP
//! datagram sent without a checksum keeps none.

mod icmp;

use core::{
    intrinsics::{AtomicOrdering, atomic_xadd},
    ptr,
};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns, bpf_redirect_neigh},
    macros::{classifier, map},
    maps::{HashMap, LruHashMap, LruPerCpuHashMap},
    programs::TcContext,
};
use ferry_ebpf_abi::{
    FAMILY_IPV4, FLOW_CLOSED, FLOW_DESTINATION, FLOW_REPLY, FLOW_SOURCE, Flow, FlowKey,
    L4_BACKEND_SNAT, L4Backend, L4Port, L4PortKey, MAX_L4_BACKENDS, MAX_L4_FLOWS, MAX_L4_PORTS,
    MAX_L4_TRAFFIC, SNAT_PORT_FIRST, Traffic, TrafficKey, UDP_FLOW_IDLE_NS,
};

#[map(name = "FERRY_L4_PORTS")]
static FERRY_L4_PORTS: HashMap<L4PortKey, L4Port> = HashMap::pinned(MAX_L4_PORTS, 0);

#[map(name = "FERRY_L4_FLOWS")]
static FERRY_L4_FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::pinned(MAX_L4_FLOWS, 0);

#[map(name = "FERRY_L4_TRAFFIC")]
static FERRY_L4_TRAFFIC: LruPerCpuHashMap<TrafficKey, Traffic> =
    LruPerCpuHashMap::pinned(MAX_L4_TRAFFIC, 0);

const ETH_HLEN: usize = 14;
/// `ETH_P_IP` as the packet (and `skb->protocol`) carries it: network byte order.
const ETH_P_IP_BE: u16 = 0x0800_u16.to_be();
const TCP: u8 = 6;
const UDP: u8 = 17;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// The fragment offset and more-fragments bits of the IPv4 header's flags field.
const IP_FRAGMENT_BITS: u16 = 0x3fff;
/// `bpf_l4_csum_replace` flags: the changed field is part of the pseudo-header.
const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
/// `bpf_l4_csum_replace` flags: a zero checksum (UDP without one) stays zero.
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;
/// SNAT ports per backend: [`SNAT_PORT_FIRST`] to 65535.
const SNAT_PORTS: u32 = 65_536 - SNAT_PORT_FIRST as u32;
/// SNAT ports tried for a new flow before it is left to the stack: with random probes, a
/// range half taken fails one new flow in 65,536 (0.5^16), a tenth taken one in 10^16.
const SNAT_TRIES: u32 = 16;
/// How long a closed flow (a FIN or RST seen from its backend) keeps its SNAT port, so
/// its last packets still find their way: twice Linux's FIN-WAIT timeout, nanoseconds.
const CLOSED_HOLD_NS: u64 = 120_000_000_000;
/// How long an open TCP flow may stay silent both ways and keep its SNAT port (the
/// userspace relay's limit too), nanoseconds.
const TCP_FLOW_IDLE_NS: u64 = 3_600_000_000_000;
const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

/// The headers of an IPv4 TCP or UDP packet, as the wire carries them (network order).
struct Packet {
    /// Offset of the IP header.
    l3: usize,
    /// Offset of the TCP or UDP header.
    l4: usize,
    protocol: u8,
    src: u32,
    dst: u32,
    src_port: u16,
    dst_port: u16,
    /// TCP's flags byte; 0 for UDP.
    tcp_flags: u8,
}

impl Packet {
    fn key(&self) -> FlowKey {
        FlowKey {
            src: [self.src, 0, 0, 0],
            dst: [self.dst, 0, 0, 0],
            src_port: self.src_port,
            dst_port: self.dst_port,
            protocol: self.protocol,
            family: FAMILY_IPV4,
            _pad: 0,
        }
    }

    /// A connection's first segment: SYN without ACK.
    fn opens(&self) -> bool {
        self.protocol == TCP && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    /// Offset of the TCP or UDP checksum.
    fn checksum(&self) -> usize {
        self.l4 + if self.protocol == TCP { 16 } else { 6 }
    }
}

/// Steers the published ports' flows arriving on an external interface.
#[classifier]
pub fn ferry_l4_ingress(ctx: TcContext) -> i32 {
    match parse(&ctx, ETH_HLEN) {
        Some(packet) => steer(&ctx, &packet),
        None => icmp::toward_backend(&ctx, ETH_HLEN),
    }
}

/// Sends local backends' replies back to their clients (on the container bridge).
#[classifier]
pub fn ferry_l4_reply(ctx: TcContext) -> i32 {
    reply(&ctx, ETH_HLEN)
}

/// Sends replies of backends on other servers back to their clients (on the WireGuard
/// link, whose packets start at the IP header).
#[classifier]
pub fn ferry_l4_reply_l3(ctx: TcContext) -> i32 {
    reply(&ctx, 0)
}

fn reply(ctx: &TcContext, l3: usize) -> i32 {
    let Some(packet) = parse(ctx, l3) else {
        return icmp::toward_client(ctx, l3);
    };
    let Some(entry) = FERRY_L4_FLOWS.get_ptr_mut(&packet.key()) else {
        return TC_ACT_OK;
    };
    // SAFETY: the pointer comes from a successful lookup and stays valid for this run;
    // `seen` and `flags` are written by this direction's packets only (a reply entry is
    // never looked up by the client's), and a lost race costs nothing but a timestamp.
    let flow = unsafe { &mut *entry };
    if flow.flags & FLOW_REPLY == 0 {
        return TC_ACT_OK;
    }
    // SAFETY: plain helper call.
    flow.seen = unsafe { bpf_ktime_get_coarse_ns() };
    if packet.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        flow.flags |= FLOW_CLOSED;
    }
    let flow = *flow;
    let traffic = TrafficKey {
        addr: [packet.src, 0, 0, 0],
        port: packet.src_port,
        host_port: flow.src_port,
        protocol: packet.protocol,
        family: FAMILY_IPV4,
        _pad: 0,
    };
    account(&traffic, 0, 0, u64::from(ctx.len()));
    send(ctx, &packet, &flow)
}

/// The IPv4 TCP or UDP headers at `l3`, or None for anything the programs leave alone.
#[inline(always)]
fn parse(ctx: &TcContext, l3: usize) -> Option<Packet> {
    let (ihl, protocol) = ipv4(ctx, l3)?;
    if protocol != TCP && protocol != UDP {
        return None;
    }
    let l4 = l3 + ihl;
    Some(Packet {
        l3,
        l4,
        protocol,
        src: ctx.load(l3 + 12).ok()?,
        dst: ctx.load(l3 + 16).ok()?,
        src_port: ctx.load(l4).ok()?,
        dst_port: ctx.load(l4 + 2).ok()?,
        tcp_flags: if protocol == TCP {
            ctx.load(l4 + 13).ok()?
        } else {
            0
        },
    })
}

/// The header length and protocol of the unfragmented IPv4 packet at `l3`, or None.
#[inline(always)]
fn ipv4(ctx: &TcContext, l3: usize) -> Option<(usize, u8)> {
    if l3 == ETH_HLEN {
        let ethertype: u16 = ctx.load(12).ok()?;
        if ethertype != ETH_P_IP_BE {
            return None;
        }
    } else if ctx.skb.protocol() != u32::from(ETH_P_IP_BE) {
        return None;
    }
    let version_ihl: u8 = ctx.load(l3).ok()?;
    if version_ihl >> 4 != 4 {
        return None;
    }
    // 20 to 60 bytes: options are skipped, not parsed.
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    let fragment: u16 = ctx.load(l3 + 6).ok()?;
    if u16::from_be(fragment) & IP_FRAGMENT_BITS != 0 {
        return None;
    }
    Some((ihl, ctx.load(l3 + 9).ok()?))
}

fn steer(ctx: &TcContext, packet: &Packet) -> i32 {
    let key = packet.key();
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let opens = packet.opens();
    if let Some(entry) = FERRY_L4_FLOWS.get_ptr_mut(&key) {
        // SAFETY: the pointer comes from a successful lookup and stays valid for this run;
        // another CPU may write `seen` at the same time, and either value will do.
        let flow = unsafe { &mut *entry };
        let live = match packet.protocol {
            TCP => !opens,
            _ => now.wrapping_sub(flow.seen) < UDP_FLOW_IDLE_NS,
        };
        if flow.flags & FLOW_REPLY != 0 {
            return TC_ACT_OK;
        }
        if live {
            flow.seen = now;
            let flow = *flow;
            account(&traffic_of(packet, &flow), 0, u64::from(ctx.len()), 0);
            return send(ctx, packet, &flow);
        }
        // A SYN on a tracked tuple: the client sending it again because no answer came
        // (its backend may have died), or a new connection from a reused port; either way
        // it takes the next backend, as a UDP client back after its idle time does. The
        // old backend's entry goes, so a late answer from it cannot reach the client,
        // which now waits for the new backend's.
        let stale = FlowKey {
            src: flow.dst,
            dst: if flow.flags & FLOW_SOURCE != 0 {
                flow.src
            } else {
                key.src
            },
            src_port: flow.dst_port,
            dst_port: if flow.flags & FLOW_SOURCE != 0 {
                flow.src_port
            } else {
                key.src_port
            },
            protocol: key.protocol,
            family: FAMILY_IPV4,
            _pad: 0,
        };
        let _ = FERRY_L4_FLOWS.remove(&stale);
    }
    if packet.protocol == TCP && !opens {
        return TC_ACT_OK;
    }
    let port_key = L4PortKey {
        port: packet.dst_port,
        protocol: packet.protocol,
        _pad: 0,
    };
    let Some(port) = FERRY_L4_PORTS.get_ptr_mut(&port_key) else {
        return TC_ACT_OK;
    };
    let Some(backend) = next_backend(port) else {
        return TC_ACT_OK;
    };
    let mut forward = Flow {
        dst: backend.addr,
        dst_port: backend.port,
        ifindex: backend.ifindex,
        flags: FLOW_DESTINATION,
        seen: now,
        ..Flow::default()
    };
    let mut reply_key = FlowKey {
        src: backend.addr,
        dst: key.src,
        src_port: backend.port,
        dst_port: key.src_port,
        protocol: key.protocol,
        family: FAMILY_IPV4,
        _pad: 0,
    };
    let mut reply = Flow {
        src: key.dst,
        src_port: key.dst_port,
        dst: key.src,
        dst_port: key.src_port,
        // SAFETY: a tc program's context is a valid __sk_buff.
        ifindex: unsafe { (*(ctx.as_ptr() as *const __sk_buff)).ifindex },
        flags: FLOW_SOURCE | FLOW_REPLY,
        _pad: 0,
        seen: now,
    };
    if backend.flags & L4_BACKEND_SNAT != 0 {
        // SAFETY: the pointer comes from a successful lookup and stays valid for this run.
        let snat = unsafe { (*port).snat };
        reply_key.dst = snat;
        let Some(snat_port) = snat_port(&key, &mut reply_key, now) else {
            // Every port tried is taken by another client: the relay takes this one.
            return TC_ACT_OK;
        };
        forward.src = snat;
        forward.src_port = snat_port;
        forward.flags |= FLOW_SOURCE;
        reply.flags |= FLOW_DESTINATION;
    }
    // The reply's entry first: once the forward one exists the backend may answer.
    if FERRY_L4_FLOWS.insert(&reply_key, &reply, 0).is_err()
        || FERRY_L4_FLOWS.insert(&key, &forward, 0).is_err()
    {
        return TC_ACT_OK;
    }
    account(&traffic_of(packet, &forward), 1, u64::from(ctx.len()), 0);
    send(ctx, packet, &forward)
}

/// The port's next backend, round-robin: one atomic fetch-and-add on its cursor.
#[inline(always)]
fn next_backend(port: *mut L4Port) -> Option<L4Backend> {
    // SAFETY: the pointer comes from a successful lookup and stays valid for this run.
    let count = unsafe { (*port).count };
    if count == 0 || count > MAX_L4_BACKENDS {
        return None;
    }
    // SAFETY: as above; the cursor is a u64 inside the live value. SeqCst for the reason
    // `connect4::next_turn` gives.
    let turn =
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*port).cursor, 1) };
    let index = (turn % u64::from(count)) as usize;
    if index >= MAX_L4_BACKENDS as usize {
        return None;
    }
    // SAFETY: index is below the array's length, checked above for the verifier's sake.
    Some(unsafe { ptr::read((&raw const (*port).backends).cast::<L4Backend>().add(index)) })
}

/// A source port for the SNAT of the flow `key`, written into `reply_key.dst_port`: one
/// whose tuple (`reply_key` with that port) no live flow holds. Ports are probed at random,
/// so a busy range still yields a free port within a few lookups; a flow holds its port
/// until it has closed (a FIN or RST from the backend) and been quiet for a while, or
/// has been idle longer than any client would wait.
#[inline(always)]
fn snat_port(key: &FlowKey, reply_key: &mut FlowKey, now: u64) -> Option<u16> {
    for _ in 0..SNAT_TRIES {
        // SAFETY: plain helper call.
        let random = unsafe { bpf_get_prandom_u32() };
        let port = SNAT_PORT_FIRST + (random % SNAT_PORTS) as u16;
        reply_key.dst_port = port.to_be();
        // SAFETY: plain data, copied out.
        let Some(taken) = (unsafe { FERRY_L4_FLOWS.get(reply_key) }).copied() else {
            return Some(reply_key.dst_port);
        };
        let idle = now.wrapping_sub(taken.seen);
        let released = if taken.flags & FLOW_CLOSED != 0 {
            idle > CLOSED_HOLD_NS
        } else if key.protocol == TCP {
            idle > TCP_FLOW_IDLE_NS
        } else {
            idle > UDP_FLOW_IDLE_NS
        };
        if released {
            return Some(reply_key.dst_port);
        }
    }
    None
}

/// The traffic counters' key of a client's packet steered by `forward`.
#[inline(always)]
fn traffic_of(packet: &Packet, forward: &Flow) -> TrafficKey {
    TrafficKey {
        addr: forward.dst,
        port: forward.dst_port,
        host_port: packet.dst_port,
        protocol: packet.protocol,
        family: FAMILY_IPV4,
        _pad: 0,
    }
}

/// Adds to this CPU's counters of `key`.
#[inline(always)]
fn account(key: &TrafficKey, flows: u64, bytes_in: u64, bytes_out: u64) {
    if let Some(traffic) = FERRY_L4_TRAFFIC.get_ptr_mut(key) {
        // SAFETY: a per-CPU value is only touched by programs on this CPU, and a tc
        // program runs with preemption off.
        unsafe {
            (*traffic).flows += flows;
            (*traffic).bytes_in += bytes_in;
            (*traffic).bytes_out += bytes_out;
        }
        return;
    }
    let first = Traffic {
        flows,
        bytes_in,
        bytes_out,
    };
    let _ = FERRY_L4_TRAFFIC.insert(key, &first, u64::from(BPF_NOEXIST));
}

/// Rewrites the packet as `flow` says and sends it out of `flow.ifindex`; a packet the
/// rewrite left half done is dropped rather than sent with a wrong checksum.
#[inline(always)]
fn send(ctx: &TcContext, packet: &Packet, flow: &Flow) -> i32 {
    if rewrite(ctx, packet, flow).is_err() {
        return TC_ACT_SHOT;
    }
    redirect(ctx, packet.l3, flow.ifindex)
}

/// Sends the packet (its IP header at `l3`) out of `ifindex`, the link-layer header filled
/// in by the kernel's FIB and neighbour tables.
#[inline(always)]
fn redirect(ctx: &TcContext, l3: usize, ifindex: u32) -> i32 {
    // From a device without a link-layer header (the WireGuard link): the kernel's
    // neighbour output needs one to fill in, so room for it goes in front, its type set.
    if l3 == 0
        && (ctx.change_head(ETH_HLEN as u32, 0).is_err() || ctx.store(12, &ETH_P_IP_BE, 0).is_err())
    {
        return TC_ACT_SHOT;
    }
    // SAFETY: plain helper call; no parameters, the kernel looks the next hop up.
    unsafe { bpf_redirect_neigh(ifindex, ptr::null_mut(), 0, 0) as i32 }
}

#[inline(always)]
fn rewrite(ctx: &TcContext, packet: &Packet, flow: &Flow) -> Result<(), i64> {
    let checksum = packet.checksum();
    let zero_stays = if packet.protocol == UDP {
        BPF_F_MARK_MANGLED_0
    } else {
        0
    };
    if flow.flags & FLOW_SOURCE != 0 {
        let (addr, port) = (packet.l3 + 12, packet.l4);
        set_addr(ctx, packet, addr, packet.src, flow.src[0], zero_stays)?;
        set_port(
            ctx,
            port,
            checksum,
            packet.src_port,
            flow.src_port,
            zero_stays,
        )?;
    }
    if flow.flags & FLOW_DESTINATION != 0 {
        let (addr, port) = (packet.l3 + 16, packet.l4 + 2);
        set_addr(ctx, packet, addr, packet.dst, flow.dst[0], zero_stays)?;
        set_port(
            ctx,
            port,
            checksum,
            packet.dst_port,
            flow.dst_port,
            zero_stays,
        )?;
    }
    Ok(())
}

/// Replaces the address at `offset` (`old` with `new`, both network order) and fixes the
/// IP header's checksum and the TCP or UDP one, whose pseudo-header holds the address.
#[inline(always)]
fn set_addr(
    ctx: &TcContext,
    packet: &Packet,
    offset: usize,
    old: u32,
    new: u32,
    zero_stays: u64,
) -> Result<(), i64> {
    if old == new {
        return Ok(());
    }
    let flags = BPF_F_PSEUDO_HDR | zero_stays | 4;
    ctx.l4_csum_replace(packet.checksum(), u64::from(old), u64::from(new), flags)?;
    ctx.l3_csum_replace(packet.l3 + 10, u64::from(old), u64::from(new), 4)?;
    ctx.store(offset, &new, 0)
}

/// Replaces the port at `offset` and fixes the TCP or UDP checksum at `checksum`.
#[inline(always)]
fn set_port(
    ctx: &TcContext,
    offset: usize,
    checksum: usize,
    old: u16,
    new: u16,
    zero_stays: u64,
) -> Result<(), i64> {
    if old == new {
        return Ok(());
    }
    ctx.l4_csum_replace(checksum, u64::from(old), u64::from(new), zero_stays | 2)?;
    ctx.store(offset, &new, 0)
}
