//! Follows `records/` on central: a listing, then a watch resumed from the last revision
//! seen. Each change updates the shared records, the service table and the stack
//! isolation's map. While central is unreachable they keep what they have.

use std::{path::PathBuf, time::Duration};

use ferry_api::records::ServiceRecord;
use tracing::warn;

use super::{addresses, isolation, records::Records};
use crate::{
    dataplane::{AddressStacks, ServiceTable},
    membership::{
        follow::{Follower, Update},
        state::Loaded,
    },
};

/// Runs until the task is dropped.
pub async fn run(loaded: Loaded, map_dir: PathBuf, records: Records, snapshot: PathBuf) {
    let mut programmed = addresses::Programmed::new();
    let mut isolated = isolation::Programmed::new();
    let mut stacks = None;
    let mut follower: Follower<ServiceRecord> = Follower::new(
        loaded.client(),
        ferry_api::keys::RECORDS,
        "service records",
        Duration::from_millis(500),
    );
    let mut table = None;
    loop {
        let update = follower.next().await;
        match update {
            Update::Snapshot { items, .. } => records.replace(items.into_iter().map(|(_, r)| r)),
            Update::Changes { changes, .. } => {
                for (key, record) in changes {
                    records.apply(&key, record);
                }
            }
        }
        if table.is_none() {
            match ServiceTable::open(&map_dir) {
                Ok(opened) => table = Some(opened),
                Err(e) => warn!(map_dir = %map_dir.display(), "service records: {e}"),
            }
        }
        if let Some(table) = &mut table {
            addresses::program(table, &records.read(), &mut programmed);
        }
        if stacks.is_none() {
            match AddressStacks::open(&map_dir) {
                Ok(opened) => {
                    // What an earlier agent left pinned: compared like the rest, so an
                    // address that left the records meanwhile is removed.
                    match opened.entries() {
                        Ok(entries) => isolated = entries.into_iter().collect(),
                        Err(e) => warn!("reading the stack isolation's map: {e}"),
                    }
                    stacks = Some(opened);
                }
                Err(e) => warn!(map_dir = %map_dir.display(), "stack isolation: {e}"),
            }
        }
        if let Some(stacks) = &mut stacks {
            let net = ferry_api::keys::CONTAINER_NET;
            isolation::program(stacks, &records.read(), net, &mut isolated);
        }
        if let Err(e) = records.save(&snapshot) {
            warn!(snapshot = %snapshot.display(), "saving the records: {e}");
        }
    }
}
