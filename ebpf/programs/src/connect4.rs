//! `cgroup/connect4`: east-west load balancing at the socket.
//!
//! A connect from a process in the agent's cgroup tree to a service address is rewritten to
//! the next backend of that service before the kernel sends anything, so there is no NAT,
//! no conntrack entry and no per-packet cost. Connects to any other address pass untouched.
//!
//! A caller whose cgroup the agent registered (a container: its stack and generation) uses
//! the service's entry for its own generation when the service is of its stack and the agent
//! wrote one; everyone else uses the service's general entry. A service with no live backend
//! refuses the connect with ECONNREFUSED at once.
//!
//! Connects to port 53 from ferry's containers are DNS: they go to the agent's listener
//! (see `dns`). A container's connect to another stack's container, directly or through
//! that stack's service address, fails with EACCES (see `isolation`).
//!
//! Invariant: the agent writes a service's backends into the bank that [`Service::bank`] does
//! not name, then replaces the service value in one update. A lookup here therefore sees
//! either the old set or the new set, never a mix.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    helpers::bpf_set_retval,
    macros::{cgroup_sock_addr, map},
    maps::HashMap,
    programs::SockAddrContext,
};
use aya_log_ebpf::warn;
use ferry_ebpf_abi::{
    ANY_GENERATION, Backend, BackendKey, Counter, MAX_BACKENDS, MAX_SERVICES, Service, ServiceKey,
};

use crate::{callers, counters::bump, dns, isolation};

#[map(name = "FERRY_SERVICES")]
static FERRY_SERVICES: HashMap<ServiceKey, Service> = HashMap::pinned(MAX_SERVICES, 0);

#[map(name = "FERRY_BACKENDS")]
static FERRY_BACKENDS: HashMap<BackendKey, Backend> = HashMap::pinned(MAX_SERVICES * 4, 0);

/// Return value that lets the connect go on.
const ALLOW: i32 = 1;
/// Return value that makes connect(2) fail, with the error set by `bpf_set_retval`.
const REFUSE: i32 = 0;
/// What a connect to a service with nothing behind it fails with.
const ECONNREFUSED: i32 = 111;

#[cgroup_sock_addr(connect4)]
pub fn ferry_connect4(ctx: SockAddrContext) -> i32 {
    if dns::redirect(&ctx) {
        return ALLOW;
    }
    // SAFETY: the kernel hands every connect4 program a valid bpf_sock_addr.
    let sa = unsafe { &mut *ctx.sock_addr };
    let mut key = ServiceKey {
        addr: sa.user_ip4,
        // The port sits in the low 16 bits, already in network byte order.
        port: sa.user_port as u16,
        _pad: 0,
        generation: ANY_GENERATION,
    };
    // Plain integers, not the Option: see `isolation::caller_stack`.
    let caller = callers::current();
    let stack = isolation::caller_stack(caller);
    let generation = caller.map_or(ANY_GENERATION, |c| c.generation);
    let Some(mut service) = FERRY_SERVICES.get_ptr_mut(&key) else {
        return if isolation::allows(stack, sa.user_ip4) {
            ALLOW
        } else {
            isolation::refuse()
        };
    };
    // SAFETY: the pointer comes from a successful lookup and stays valid for this run.
    if stack == u64::from(unsafe { (*service).stack }) {
        key.generation = generation;
        if let Some(own) = FERRY_SERVICES.get_ptr_mut(&key) {
            service = own;
            bump(Counter::Versioned);
        }
    }
    // SAFETY: the pointer comes from a successful lookup and stays valid for this run.
    let (id, count, bank, cursor) = unsafe {
        (
            (*service).id,
            (*service).count,
            (*service).bank,
            &raw mut (*service).cursor,
        )
    };
    if count == 0 || count > MAX_BACKENDS {
        bump(Counter::NoBackend);
        // Rare and worth a line: someone connects to a service with nothing behind it.
        warn!(&ctx, "ferry: connect to service {} refused: no backend", id);
        return refuse();
    }
    // SAFETY: `cursor` points into a live map value.
    let turn = unsafe { next_turn(cursor) };
    // The remainder is below `count`, itself a u32, so the cast is lossless.
    let index = (turn % u64::from(count)) as u32;
    let slot = BackendKey {
        service: id,
        slot: bank * MAX_BACKENDS + index,
    };
    // SAFETY: the value is plain data; a concurrent agent update replaces the element whole.
    let Some(backend) = (unsafe { FERRY_BACKENDS.get(&slot) }) else {
        bump(Counter::MissingSlot);
        return refuse();
    };
    // Another stack's service steers to another stack's containers.
    if !isolation::allows(stack, backend.addr) {
        return isolation::refuse();
    }
    sa.user_ip4 = backend.addr;
    sa.user_port = u32::from(backend.port);
    bump(Counter::Steered);
    ALLOW
}

/// Fails the connect with ECONNREFUSED, as a port with no listener would, so the caller
/// learns at once instead of after a timeout.
#[inline(always)]
fn refuse() -> i32 {
    // SAFETY: plain helper call; the kernel uses this value when the program returns REFUSE.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REFUSE
}

/// Takes the next round-robin turn: one atomic fetch-and-add, so concurrent connects on
/// other CPUs each get their own turn.
///
/// SeqCst, not Relaxed: BPF has one atomic add either way, but LLVM 22 lowers a relaxed
/// add whose result is used to the non-fetching form and returns the addend instead of the
/// old value. The object must be built for BPF cpu v3 (`cargo xtask build-ebpf` does), the
/// first ISA with fetching atomics.
///
/// # Safety
/// `cursor` must point into a live map value.
#[inline(always)]
unsafe fn next_turn(cursor: *mut u64) -> u64 {
    // SAFETY: the caller guarantees `cursor` is valid.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(cursor, 1) }
}
