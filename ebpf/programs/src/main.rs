//! ferry's kernel programs.
//!
//! # Layout
//! - `connect4`: east-west load balancing; a connect to a service address becomes a connect
//!   to one of its backends (of the caller's own generation when it has some), round-robin.
//! - `dns`: queries to port 53 from ferry's containers go to the agent's DNS listener, and
//!   the listener learns each query's cgroup.
//! - `callers`: which cgroups are ferry's containers.
//! - `isolation`: a container reaches its own stack's containers, not another stack's.
//! - `l4`: the published `tcp:` and `udp:` ports, steered by tc programs on the server's
//!   interfaces, with connection tracking.
//!
//! The maps are the agent's only channel to these programs. They are pinned by name so that
//! they, and the steering they drive, outlive an agent restart.
#![no_std]
#![no_main]
// The BPF target has no `AtomicU64::fetch_add` (no compare-and-swap in its spec), but the
// kernel has an atomic fetch-add instruction; the intrinsic reaches it directly.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod callers;
mod connect4;
mod counters;
mod dns;
mod isolation;
mod l4;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach a panic, so this is never called.
    loop {}
}

/// License string the kernel reads to allow GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
