//! Follows `records/` on central: a listing, then a watch resumed from the last revision
//! seen. Each change updates the shared records and the service table. While central is
//! unreachable both keep what they have.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use ferry_api::records::ServiceRecord;
use futures_util::StreamExt as _;
use tracing::warn;

use super::{addresses, records::Records};
use crate::{
    dataplane::ServiceTable,
    membership::{reconnect::Backoff, state::Loaded},
};

/// Runs until the task is dropped.
pub async fn run(loaded: Loaded, map_dir: PathBuf, records: Records, snapshot: PathBuf) {
    let mut programmed = addresses::Programmed::new();
    let mut seen: Option<u64> = None;
    let mut backoff = Backoff::new(Duration::from_millis(500));
    loop {
        backoff.attempt();
        let reach = Reach {
            loaded: &loaded,
            map_dir: &map_dir,
            records: &records,
            snapshot: &snapshot,
        };
        if let Err(e) = follow(&reach, &mut programmed, &mut seen).await {
            warn!("service records: {e}; reconnecting");
        }
        tokio::time::sleep(backoff.wait()).await;
    }
}

/// What following needs, besides its progress.
struct Reach<'a> {
    loaded: &'a Loaded,
    map_dir: &'a Path,
    records: &'a Records,
    snapshot: &'a Path,
}

impl Reach<'_> {
    /// Steers what the records say and saves them for the next run.
    fn settle(&self, table: &mut ServiceTable, programmed: &mut addresses::Programmed) {
        addresses::program(table, &self.records.read(), programmed);
        if let Err(e) = self.records.save(self.snapshot) {
            warn!(snapshot = %self.snapshot.display(), "saving the records: {e}");
        }
    }
}

async fn follow(
    reach: &Reach<'_>,
    programmed: &mut addresses::Programmed,
    seen: &mut Option<u64>,
) -> Result<(), String> {
    let (loaded, map_dir, records) = (reach.loaded, reach.map_dir, reach.records);
    let mut table = ServiceTable::open(map_dir).map_err(|e| e.to_string())?;
    let client = loaded.client().map_err(|e| e.to_string())?;
    let after = match *seen {
        Some(revision) => revision,
        None => {
            let list = client.list("records/").await.map_err(|e| e.to_string())?;
            records.replace(list.items.into_iter().filter_map(|item| {
                serde_json::from_value::<ServiceRecord>(item.value)
                    .inspect_err(|e| warn!(key = %item.key, "unreadable record: {e}"))
                    .ok()
            }));
            reach.settle(&mut table, programmed);
            *seen = Some(list.revision);
            list.revision
        }
    };
    let mut watch = Box::pin(
        client
            .watch("records/", after)
            .await
            .map_err(|e| e.to_string())?,
    );
    while let Some(line) = watch.next().await {
        let line = line.map_err(|e| e.to_string())?;
        for event in line.events {
            match event.value.map(serde_json::from_value::<ServiceRecord>) {
                Some(Ok(record)) => records.apply(&event.key, Some(record)),
                Some(Err(e)) => warn!(key = %event.key, "unreadable record: {e}"),
                None => records.apply(&event.key, None),
            }
        }
        reach.settle(&mut table, programmed);
        *seen = Some(line.revision);
    }
    Err("central ended the watch".into())
}
