//! The callers map: which cgroups are ferry's containers, and of which stack and generation.
//! The agent writes it as containers start and stop; every program reads it.

use aya_ebpf::{helpers::bpf_get_current_cgroup_id, macros::map, maps::HashMap};
use ferry_ebpf_abi::{Caller, MAX_CALLERS};

#[map(name = "FERRY_CALLERS")]
static FERRY_CALLERS: HashMap<u64, Caller> = HashMap::pinned(MAX_CALLERS, 0);

/// The container the current task belongs to, if its cgroup is one the agent registered.
#[inline(always)]
pub fn current() -> Option<Caller> {
    // SAFETY: no sleeping helper here; the cgroup id is the calling task's.
    of(unsafe { bpf_get_current_cgroup_id() })
}

/// The container of cgroup `cgroup`, if the agent registered it.
#[inline(always)]
pub fn of(cgroup: u64) -> Option<Caller> {
    // SAFETY: the value is plain data copied out at once.
    unsafe { FERRY_CALLERS.get(&cgroup) }.copied()
}
