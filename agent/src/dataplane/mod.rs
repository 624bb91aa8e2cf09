//! The agent's side of the eBPF data plane: load the embedded object, attach its programs,
//! pin them, and write their maps.
//!
//! Invariants:
//! - the maps are the agent's only channel to the kernel programs;
//! - every program link and map is pinned under the configured bpffs directory, so steering
//!   keeps working while the agent is down, and a restarted agent swaps its fresh program
//!   into the pinned link (one `BPF_LINK_UPDATE`, no window without a program) and reopens
//!   the pinned maps with their contents.
//!
//! Pin layout: `<bpffs>/maps-v<MAP_LAYOUT>/<MAP NAME>` and
//! `<bpffs>/links/<program>-<cgroup id>`; the L4 ingress's tc programs under
//! `<bpffs>/programs/<program>` and their links under `<bpffs>/tc-links` (see `tc`). The
//! cgroup id in the link's name ties a pin to the cgroup it steers, so pointing the agent
//! at another cgroup root never adopts a link attached elsewhere. The layout version in the
//! maps' directory lets an upgraded agent tell older pins from its own and move them (see
//! `layout`).

mod callers;
mod counters;
mod dns;
mod isolation;
mod l4;
mod layout;
mod loader;
mod preflight;
mod services;
mod tc;

pub use callers::CallerTable;
pub use counters::{CounterError, Counters};
pub use dns::{DnsMaps, SeenPeers, Sender, Transport};
pub use isolation::AddressStacks;
pub use l4::{L4Table, L4TableError, L4Target, PortTraffic, Protocol};
pub use layout::{LayoutError, map_dir};
pub use loader::{Attachment, Dataplane, DataplaneConfig, LoadError, unpin};
pub use preflight::{
    PreflightError, cgroup2_mount, check_bpffs, check_cgroup_root, check_program_types,
};
pub use services::{Callers, ServiceTable, ServiceTableError};
pub use tc::{TcError, attach_ingress, detach_all, detach_others};
