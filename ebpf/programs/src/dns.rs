//! DNS interception at the socket: a container's queries to port 53 go to the agent's DNS
//! listener, whatever resolver the container was given, and the replies look as if they
//! came from the resolver it asked.
//!
//! - `connect4` (TCP, connected UDP) and `sendmsg4` (unconnected UDP) rewrite the
//!   destination and remember, per socket cookie, what the container asked;
//! - `recvmsg4` and `getpeername4` give that address back where the listener's would show;
//! - `cgroup_skb/egress` records which cgroup sent from each source address and port to the
//!   listener, so the DNS server knows its caller exactly, even when two cgroups share a
//!   network namespace and so an address: in a hash map, and for UDP also in a ring buffer
//!   the server reads from shared memory (no `bpf()` call per query).
//!
//! Who is redirected: only processes of ferry's containers, i.e. of a cgroup in the callers
//! map, and never a socket carrying [`AGENT_SOCKET_MARK`]. Whatever cgroup the programs are
//! attached to, even the machine's cgroup2 root, host processes resolve as they did before
//! ferry, and the agent's forwarder can never have its own queries sent back to itself
//! (which, with the attach root above the agent, looped every query until the forwarder's
//! in-flight bound answered SERVFAIL). A container's query in the moment between its start
//! and its registration goes where the container sent it (Docker's resolver), unanswered
//! for `cloud66.local` but never lost.

use aya_ebpf::{
    EbpfContext as _,
    bindings::__sk_buff,
    helpers::{bpf_get_socket_cookie, bpf_skb_cgroup_id},
    macros::{cgroup_skb, cgroup_sock_addr, map},
    maps::{Array, LruHashMap, RingBuf},
    programs::{SkBuffContext, SockAddrContext},
};
use ferry_ebpf_abi::{
    AGENT_SOCKET_MARK, Counter, DNS_SEEN_BYTES, DnsListener, DnsOrigin, DnsPeer, DnsPeerSeen,
    MAX_DNS_SOCKETS,
};

use crate::{callers, counters::bump};

#[map(name = "FERRY_DNS_LISTENER")]
static FERRY_DNS_LISTENER: Array<DnsListener> = Array::pinned(1, 0);

#[map(name = "FERRY_DNS_ORIGINS")]
static FERRY_DNS_ORIGINS: LruHashMap<u64, DnsOrigin> = LruHashMap::pinned(MAX_DNS_SOCKETS, 0);

#[map(name = "FERRY_DNS_PEERS")]
static FERRY_DNS_PEERS: LruHashMap<DnsPeer, u64> = LruHashMap::pinned(MAX_DNS_SOCKETS, 0);

#[map(name = "FERRY_DNS_SEEN")]
static FERRY_DNS_SEEN: RingBuf = RingBuf::pinned(DNS_SEEN_BYTES, 0);

/// IP protocol number of UDP.
const UDP: u8 = 17;

/// `bpf_ringbuf_output` flag: no wakeup; the DNS server reads the ring after each receive
/// and never sleeps on it.
const BPF_RB_NO_WAKEUP: u64 = 1;

/// DNS's port, as the hooks see ports: network byte order in the low 16 bits.
const DNS_PORT: u32 = 53u16.to_be() as u32;

/// Return value that lets the call go on (the only one recvmsg4/getpeername4 may return).
const ALLOW: i32 = 1;

/// The listener, when interception is on.
#[inline(always)]
fn listener() -> Option<DnsListener> {
    FERRY_DNS_LISTENER.get(0).copied().filter(|l| l.addr != 0)
}

/// If the socket address is a DNS server and the caller one of ferry's containers, points
/// it at the listener and remembers what it was. Returns whether it did.
#[inline(always)]
pub fn redirect(ctx: &SockAddrContext) -> bool {
    // SAFETY: the kernel hands every sock_addr program a valid bpf_sock_addr.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.user_port != DNS_PORT {
        return false;
    }
    let Some(listener) = listener() else {
        return false;
    };
    // SAFETY: a sock_addr context always carries its socket (a PTR_TO_SOCKET the verifier
    // knows is not null); `mark` is one of the fields it lets programs read.
    if unsafe { (*sa.__bindgen_anon_1.sk).mark } == AGENT_SOCKET_MARK {
        return false;
    }
    if callers::current().is_none() {
        return false;
    }
    let origin = DnsOrigin {
        addr: sa.user_ip4,
        port: sa.user_port as u16,
        _pad: 0,
    };
    // SAFETY: the context is a sock_addr context, which the helper accepts.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // A socket sending query after query to one resolver is written once: an LRU update
    // costs an element swap, a lookup does not.
    // SAFETY: the value is plain data copied out at once.
    if unsafe { FERRY_DNS_ORIGINS.get(&cookie) } != Some(&origin) {
        // A full LRU map evicts the oldest socket's entry; the insert itself cannot fail
        // for want of room, and if it failed the reply would still arrive, from the
        // listener.
        let _ = FERRY_DNS_ORIGINS.insert(&cookie, &origin, 0);
    }
    sa.user_ip4 = listener.addr;
    sa.user_port = u32::from(listener.port);
    bump(Counter::DnsRedirected);
    true
}

#[cgroup_sock_addr(sendmsg4)]
pub fn ferry_sendmsg4(ctx: SockAddrContext) -> i32 {
    if redirect(&ctx) {
        return ALLOW;
    }
    // SAFETY: the kernel hands every sock_addr program a valid bpf_sock_addr.
    let destination = unsafe { (*ctx.sock_addr).user_ip4 };
    let stack = crate::isolation::caller_stack(callers::current());
    if crate::isolation::allows(stack, destination) {
        ALLOW
    } else {
        crate::isolation::refuse()
    }
}

/// Where the listener's address shows (a reply's source, a connected socket's peer), shows
/// the resolver the socket asked instead.
#[inline(always)]
fn restore(ctx: &SockAddrContext) {
    // SAFETY: as in `redirect`.
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some(listener) = listener() else {
        return;
    };
    if sa.user_ip4 != listener.addr || sa.user_port != u32::from(listener.port) {
        return;
    }
    // SAFETY: as in `redirect`.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is plain data copied out at once.
    if let Some(origin) = unsafe { FERRY_DNS_ORIGINS.get(&cookie) } {
        sa.user_ip4 = origin.addr;
        sa.user_port = u32::from(origin.port);
        bump(Counter::DnsRestored);
    }
}

#[cgroup_sock_addr(recvmsg4)]
pub fn ferry_recvmsg4(ctx: SockAddrContext) -> i32 {
    restore(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn ferry_getpeername4(ctx: SockAddrContext) -> i32 {
    restore(&ctx);
    ALLOW
}

/// An IPv4 header without options followed by the transport ports: what one load reads.
/// (A cgroup_skb program's data starts at the network header.)
const HEAD: usize = 24;

#[cgroup_skb(egress)]
pub fn ferry_dns_egress(ctx: SkBuffContext) -> i32 {
    record_peer(&ctx);
    // Egress programs never drop: this one only watches.
    ALLOW
}

#[inline(always)]
fn record_peer(ctx: &SkBuffContext) {
    let Some(listener) = listener() else {
        return;
    };
    // One helper call for every field: this runs for every packet a container sends.
    let Ok(head) = ctx.load::<[u8; HEAD]>(0) else {
        return;
    };
    // IPv4 without options only: DNS clients never send options, and anything else is not
    // a query this records (its sender is then answered as a host process, or dropped).
    if head[0] != 0x45 {
        return;
    }
    let word = |at: usize| u32::from_ne_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    let half = |at: usize| u16::from_ne_bytes([head[at], head[at + 1]]);
    if word(16) != listener.addr || half(22) != listener.port {
        return;
    }
    let peer = DnsPeer {
        addr: word(12),
        port: half(20),
        protocol: head[9],
        _pad: 0,
    };
    // SAFETY: the context of a cgroup_skb program is a valid __sk_buff.
    let cgroup = unsafe { bpf_skb_cgroup_id(ctx.as_ptr() as *mut __sk_buff) };
    if peer.protocol == UDP {
        // Every UDP query, in order: the server finds its sender in shared memory without
        // a system call. A full ring drops the record; the server notices (it read a full
        // ring) and asks the peers map below instead.
        let _ = FERRY_DNS_SEEN.output(&DnsPeerSeen { peer, cgroup }, BPF_RB_NO_WAKEUP);
    }
    // Written only when it changes (a new source, or a port reused by another cgroup).
    // SAFETY: the value is plain data copied out at once.
    if unsafe { FERRY_DNS_PEERS.get(&peer) } != Some(&cgroup) {
        let _ = FERRY_DNS_PEERS.insert(&peer, &cgroup, 0);
    }
}
