//! Per-CPU event counters: per-event figures go here, never to the log, so the hot path
//! costs one array increment.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use ferry_ebpf_abi::Counter;

#[map(name = "FERRY_COUNTERS")]
static FERRY_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(Counter::LEN, 0);

/// Adds one to `counter` on this CPU.
#[inline(always)]
pub fn bump(counter: Counter) {
    if let Some(slot) = FERRY_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot is only touched by programs running on this CPU, and
        // preemption is off while a cgroup program runs.
        unsafe { *slot += 1 };
    }
}
