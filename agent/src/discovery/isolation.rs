//! Keeps the stack isolation's map (see `dataplane::AddressStacks`) in step with the
//! records and this server's own containers: every container address of every stack, on
//! every server, with its stack's id. Datasources are not containers (their endpoints name
//! no server) and stay reachable from every stack, as do addresses outside the container
//! network.
//!
//! A container of this server is in the map from its registration as a caller on, before
//! its health check, so another stack can neither reach it nor be reached by it while it
//! starts; one of another server is from its first record on (before that, nothing names
//! it, and its own server refuses it).

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf, time::Duration};

use ferry_ebpf_abi::stack_id;
use tracing::{debug, warn};

use super::{Callers, records::Directory, records::Records};
use crate::dataplane::AddressStacks;

/// How often the map is compared again without a change announced (a write that failed is
/// retried then).
const RECHECK: Duration = Duration::from_secs(10);

/// Keeps the map pinned in `map_dir` in step with `records` and `callers`, from the first
/// time the records are known (a snapshot or central; before that, what an earlier agent
/// left stays as it is). Runs until the task is dropped.
pub async fn keep(map_dir: PathBuf, records: Records, callers: Callers) {
    let mut records_changed = records.subscribe();
    let mut callers_changed = callers.subscribe();
    let mut stacks: Option<AddressStacks> = None;
    let mut programmed = Programmed::new();
    loop {
        if records.is_loaded() {
            if stacks.is_none() {
                match AddressStacks::open(&map_dir) {
                    Ok(opened) => {
                        // What an earlier agent left pinned: compared like the rest, so an
                        // address that left the records meanwhile is removed.
                        match opened.entries() {
                            Ok(entries) => programmed = entries.into_iter().collect(),
                            Err(e) => warn!("reading the stack isolation's map: {e}"),
                        }
                        stacks = Some(opened);
                    }
                    Err(e) => warn!(map_dir = %map_dir.display(), "stack isolation: {e}"),
                }
            }
            if let Some(stacks) = &mut stacks {
                let local = callers.addresses();
                let net = ferry_api::keys::CONTAINER_NET;
                program(stacks, &records.read(), &local, net, &mut programmed);
            }
        }
        // A closed channel (its sender gone) would answer at once, forever: then the
        // timer alone paces the loop.
        tokio::select! {
            Ok(()) = records_changed.changed() => {}
            Ok(()) = callers_changed.changed() => {}
            () = tokio::time::sleep(RECHECK) => {}
        }
    }
}

/// The entries written so far, so that only changes are written again.
pub type Programmed = BTreeMap<Ipv4Addr, u32>;

/// The map the records and this server's containers (`local`: address, stack id) call
/// for: the containers of `container_net`'s `/16`. A local container's own stack wins over
/// a record still naming its address for another (a record lags the server it is about).
fn wanted(directory: &Directory, local: &[(Ipv4Addr, u32)], container_net: Ipv4Addr) -> Programmed {
    let [a, b, _, _] = container_net.octets();
    let mut wanted: Programmed = directory
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
        .collect();
    wanted.extend(
        local
            .iter()
            .filter(|(address, _)| address.octets()[..2] == [a, b])
            .copied(),
    );
    wanted
}

/// Writes what changed between `programmed` and what `directory` and `local` call for.
fn program(
    table: &mut AddressStacks,
    directory: &Directory,
    local: &[(Ipv4Addr, u32)],
    container_net: Ipv4Addr,
    programmed: &mut Programmed,
) {
    let wanted = wanted(directory, local, container_net);
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

#[cfg(test)]
mod tests {
    use ferry_api::records::{Endpoint, ServiceRecord};

    use super::*;

    fn record(stack: &str, endpoints: &[(Ipv4Addr, &str)]) -> ServiceRecord {
        ServiceRecord {
            stack: stack.into(),
            service: "web".into(),
            address: None,
            serving: Some(1),
            dns_behaviour: Default::default(),
            load_balancing: Default::default(),
            ports: vec![3000],
            published: Vec::new(),
            traffic_matches: Vec::new(),
            generations: BTreeMap::from([(
                1,
                endpoints
                    .iter()
                    .map(|(address, server)| Endpoint {
                        address: *address,
                        server: (*server).into(),
                        container: String::new(),
                    })
                    .collect(),
            )]),
        }
    }

    #[test]
    fn a_local_container_is_isolated_before_any_record_names_it() {
        let records = Records::default();
        let shop = Ipv4Addr::new(10, 66, 2, 5);
        // A datasource's endpoint names no server; it stays reachable from every stack.
        let datasource = Ipv4Addr::new(10, 66, 9, 9);
        records.replace([record("shop", &[(shop, "two"), (datasource, "")])]);
        let starting = Ipv4Addr::new(10, 66, 1, 7);
        let outside = Ipv4Addr::new(192, 168, 1, 1);
        let local = [(starting, stack_id("blog")), (outside, stack_id("blog"))];
        let wanted = wanted(&records.read(), &local, ferry_api::keys::CONTAINER_NET);
        assert_eq!(
            wanted,
            BTreeMap::from([(shop, stack_id("shop")), (starting, stack_id("blog"))])
        );
    }

    #[test]
    fn this_servers_own_container_wins_over_a_record_that_lags() {
        let records = Records::default();
        let reused = Ipv4Addr::new(10, 66, 1, 7);
        records.replace([record("shop", &[(reused, "one")])]);
        let local = [(reused, stack_id("blog"))];
        let wanted = wanted(&records.read(), &local, ferry_api::keys::CONTAINER_NET);
        assert_eq!(wanted, BTreeMap::from([(reused, stack_id("blog"))]));
    }
}
