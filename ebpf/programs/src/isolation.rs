//! Stack isolation: a container reaches its own stack's containers, never another stack's.
//!
//! The agent writes every container address of ContainerNet it knows (from central's
//! records, all servers) with its stack's id. Two checks use it, both keyed by cgroup:
//! - at the caller, in `connect4` and `sendmsg4`: a connect or datagram from a container to
//!   another stack's container fails at once with EACCES, after service steering (so a
//!   service address of another stack is refused too);
//! - at the receiver, `cgroup_skb/ingress` on the containers' cgroup root: a packet reaching
//!   a container's socket from another stack's address is dropped, whatever sent it (a raw
//!   socket skips the hooks above).
//!
//! Addresses the map does not hold pass: host processes, the agent and the ingress
//! (this server's gateway and the servers' own addresses), datasources, and anything
//! outside ferry. So does any socket whose cgroup is not a registered container.

use aya_ebpf::{
    EbpfContext as _,
    bindings::__sk_buff,
    helpers::{bpf_set_retval, bpf_skb_cgroup_id},
    macros::{cgroup_skb, map},
    maps::HashMap,
    programs::SkBuffContext,
};
use ferry_ebpf_abi::{Caller, Counter, MAX_ADDRESS_STACKS};

use crate::{callers, counters::bump};

#[map(name = "FERRY_ADDRESS_STACKS")]
static FERRY_ADDRESS_STACKS: HashMap<u32, u32> = HashMap::pinned(MAX_ADDRESS_STACKS, 0);

/// Return value that lets the packet or call go on.
const ALLOW: i32 = 1;
/// Return value that drops the packet, or fails the call with the error set.
const REFUSE: i32 = 0;
/// What a refused connect or send fails with: "Permission denied", which says why, where
/// ECONNREFUSED would look like a service that is down.
const EACCES: i32 = 13;

/// What [`caller_stack`] gives for a socket that is not a container's.
const NO_STACK: u64 = u64::MAX;

/// The stack id of `caller`, or [`NO_STACK`]. (A plain integer rather than an
/// `Option<Caller>` kept across the program: LLVM may spill a `None`'s undefined payload,
/// and the verifier refuses to read an uninitialised register.)
#[inline(always)]
pub fn caller_stack(caller: Option<Caller>) -> u64 {
    match caller {
        Some(caller) => u64::from(caller.stack),
        None => NO_STACK,
    }
}

/// Whether a socket of stack `stack` (see [`caller_stack`]) may reach `addr` (IPv4,
/// network byte order): a socket that is not a container's, or an address of no stack, or
/// of the caller's own.
#[inline(always)]
pub fn allows(stack: u64, addr: u32) -> bool {
    if stack == NO_STACK {
        return true;
    }
    // SAFETY: the value is plain data copied out at once.
    match unsafe { FERRY_ADDRESS_STACKS.get(&addr) } {
        Some(owner) => u64::from(*owner) == stack,
        None => true,
    }
}

/// Fails the connect or send with EACCES.
#[inline(always)]
pub fn refuse() -> i32 {
    bump(Counter::Isolated);
    // SAFETY: plain helper call; the kernel uses this value when the program returns REFUSE.
    unsafe { bpf_set_retval(-EACCES) };
    REFUSE
}

#[cgroup_skb(ingress)]
pub fn ferry_isolation(ctx: SkBuffContext) -> i32 {
    // A cgroup_skb program's data starts at the network header.
    let Ok(version) = ctx.load::<u8>(0) else {
        return ALLOW;
    };
    if version >> 4 != 4 {
        return ALLOW;
    }
    // The source address, bytes 12..16, kept in network byte order as the map holds it.
    let Ok(source) = ctx.load::<u32>(12) else {
        return ALLOW;
    };
    // SAFETY: the context of a cgroup_skb program is a valid __sk_buff.
    let cgroup = unsafe { bpf_skb_cgroup_id(ctx.as_ptr() as *mut __sk_buff) };
    if allows(caller_stack(callers::of(cgroup)), source) {
        ALLOW
    } else {
        bump(Counter::Isolated);
        REFUSE
    }
}
