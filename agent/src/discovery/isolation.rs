//! Keeps the stack isolation's map (see `dataplane::AddressStacks`) in step with the
//! records: every container address of every stack, on every server, with its stack's id.
//! Datasources are not containers (their endpoints name no server) and stay reachable
//! from every stack, as do addresses outside the container network.
//!
//! A container is in the map from its first record on, which its health check gates; a
//! container not recorded yet passes (it has no name another stack could find it by).

use std::{collections::BTreeMap, net::Ipv4Addr};

use ferry_ebpf_abi::stack_id;
use tracing::{debug, warn};

use super::records::Directory;
use crate::dataplane::AddressStacks;

/// The entries written so far, so that only changes are written again.
pub type Programmed = BTreeMap<Ipv4Addr, u32>;

/// The map the records call for: the containers of `container_net`'s `/16`.
fn wanted(directory: &Directory, container_net: Ipv4Addr) -> Programmed {
    let [a, b, _, _] = container_net.octets();
    directory
        .all()
        .flat_map(|record| {
            let stack = stack_id(&record.stack);
            record
                .generations
                .values()
                .flatten()
                .filter(move |e| !e.server.is_empty() && e.address.octets()[..2] == [a, b])
                .map(move |e| (e.address, stack))
        })
        .collect()
}

/// Writes what changed between `programmed` and what `directory` calls for.
pub fn program(
    table: &mut AddressStacks,
    directory: &Directory,
    container_net: Ipv4Addr,
    programmed: &mut Programmed,
) {
    let wanted = wanted(directory, container_net);
    for (address, stack) in &wanted {
        if programmed.get(address) == Some(stack) {
            continue;
        }
        match table.set(*address, *stack) {
            Ok(()) => {
                debug!(%address, stack, "address isolated in its stack");
                programmed.insert(*address, *stack);
            }
            Err(e) => warn!(%address, "stack isolation: {e}"),
        }
    }
    let stale: Vec<Ipv4Addr> = programmed
        .keys()
        .filter(|a| !wanted.contains_key(a))
        .copied()
        .collect();
    for address in stale {
        match table.remove(address) {
            Ok(()) => {
                programmed.remove(&address);
            }
            Err(e) => warn!(%address, "stack isolation: {e}"),
        }
    }
}
