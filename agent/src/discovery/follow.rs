//! Follows `records/` on central: a listing, then a watch resumed from the last revision
//! seen. Each change updates the shared records (which the stack isolation follows) and
//! the service table. While central is unreachable they keep what they have.

use std::{path::PathBuf, time::Duration};

use ferry_api::records::ServiceRecord;
use tracing::warn;

use super::{addresses, records::Records};
use crate::{
    dataplane::ServiceTable,
    membership::{
        follow::{Follower, Update},
        state::Loaded,
    },
};

/// Runs until the task is dropped.
pub async fn run(loaded: Loaded, map_dir: PathBuf, records: Records, snapshot: PathBuf) {
    let mut programmed = addresses::Programmed::new();
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
        if let Err(e) = records.save(&snapshot) {
            warn!(snapshot = %snapshot.display(), "saving the records: {e}");
        }
    }
}
