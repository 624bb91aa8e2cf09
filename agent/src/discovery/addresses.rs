//! Keeps the connect4 service table in step with the records: for every service with a
//! service address, each declared port steers round-robin over the endpoints a host caller
//! gets (the general entry), and callers of each generation of the service's stack whose
//! pick differs get an entry of their own.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddrV4,
};

use ferry_api::servicefile::DnsBehaviour;
use ferry_ebpf_abi::stack_id;
use tracing::{info, warn};

use super::records::Directory;
use crate::dataplane::{Callers, ServiceTable};

/// What an entry steers to: the stack's id and the backends.
type Steering = (u32, Vec<SocketAddrV4>);

/// The entries written so far, so that only changes are written again.
pub type Programmed = BTreeMap<(SocketAddrV4, Callers), Steering>;

/// The table the records call for.
fn wanted(directory: &Directory) -> Programmed {
    let mut generations: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for record in directory.all() {
        generations
            .entry(&record.stack)
            .or_default()
            .extend(record.generations.keys());
    }
    let mut out = BTreeMap::new();
    for record in directory.all() {
        let Some(address) = record.address else {
            continue;
        };
        let stack = stack_id(&record.stack);
        let general = record.pick(None);
        let mut entries = vec![(Callers::Everyone, general)];
        if record.dns_behaviour == DnsBehaviour::Versioned {
            for g in generations.get(record.stack.as_str()).into_iter().flatten() {
                let own = record.pick(Some(*g));
                if own != general {
                    let g = u32::try_from(*g).unwrap_or(u32::MAX);
                    entries.push((Callers::Generation(g), own));
                }
            }
        }
        for port in &record.ports {
            for (callers, endpoints) in &entries {
                let backends = endpoints
                    .iter()
                    .map(|e| SocketAddrV4::new(e.address, *port))
                    .collect();
                out.insert(
                    (SocketAddrV4::new(address, *port), *callers),
                    (stack, backends),
                );
            }
        }
    }
    out
}

/// Writes what changed between `programmed` and what `directory` calls for.
pub fn program(table: &mut ServiceTable, directory: &Directory, programmed: &mut Programmed) {
    let wanted = wanted(directory);
    // Only what changed: every rewrite swaps the entry's backend bank.
    for (key, steering) in &wanted {
        if programmed.get(key) == Some(steering) {
            continue;
        }
        let (service, callers) = *key;
        let (stack, backends) = steering;
        match table.set(service, *stack, callers, backends) {
            Ok(()) => {
                info!(%service, ?callers, backends = backends.len(), "service address steered");
                programmed.insert(*key, steering.clone());
            }
            Err(e) => warn!(%service, "steering: {e}"),
        }
    }
    let stale: Vec<(SocketAddrV4, Callers)> = programmed
        .keys()
        .filter(|k| !wanted.contains_key(k))
        .copied()
        .collect();
    for (service, callers) in stale {
        match table.remove(service, callers) {
            Ok(()) => {
                programmed.remove(&(service, callers));
                info!(%service, ?callers, "service address entry removed");
            }
            Err(e) => warn!(%service, "removing steering: {e}"),
        }
    }
}
