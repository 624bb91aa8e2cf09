//! Keeps the connect4 service table in step with central's records: for every service
//! with a service address, each declared port steers round-robin over the endpoints the
//! records give a host caller (the serving generation). Resumes its watch from the last
//! revision it saw; while central is unreachable the table keeps what it has.

use std::{collections::BTreeMap, net::SocketAddrV4, path::PathBuf, time::Duration};

use ferry_api::records::ServiceRecord;
use futures_util::StreamExt as _;
use tracing::{info, warn};

use crate::{
    dataplane::ServiceTable,
    membership::{reconnect::Backoff, state::Loaded},
};

/// Runs until the task is dropped.
pub async fn run(loaded: Loaded, map_dir: PathBuf) {
    let mut records: BTreeMap<String, ServiceRecord> = BTreeMap::new();
    let mut programmed: BTreeMap<SocketAddrV4, Vec<SocketAddrV4>> = BTreeMap::new();
    let mut seen: Option<u64> = None;
    let mut backoff = Backoff::new(Duration::from_millis(500));
    loop {
        backoff.attempt();
        if let Err(e) = follow(&loaded, &map_dir, &mut records, &mut programmed, &mut seen).await {
            warn!("service addresses: {e}; reconnecting");
        }
        tokio::time::sleep(backoff.wait()).await;
    }
}

async fn follow(
    loaded: &Loaded,
    map_dir: &std::path::Path,
    records: &mut BTreeMap<String, ServiceRecord>,
    programmed: &mut BTreeMap<SocketAddrV4, Vec<SocketAddrV4>>,
    seen: &mut Option<u64>,
) -> Result<(), String> {
    let mut table = ServiceTable::open(map_dir).map_err(|e| e.to_string())?;
    let client = loaded.client().map_err(|e| e.to_string())?;
    let after = match *seen {
        Some(revision) => revision,
        None => {
            let list = client.list("records/").await.map_err(|e| e.to_string())?;
            *records = list
                .items
                .into_iter()
                .filter_map(|i| Some((i.key, serde_json::from_value(i.value).ok()?)))
                .collect();
            program(&mut table, records, programmed);
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
                Some(Ok(record)) => {
                    records.insert(event.key, record);
                }
                Some(Err(e)) => warn!(key = %event.key, "unreadable record: {e}"),
                None => {
                    records.remove(&event.key);
                }
            }
        }
        program(&mut table, records, programmed);
        *seen = Some(line.revision);
    }
    Err("central ended the watch".into())
}

/// The table `records` call for: service address and port to backends.
fn wanted(records: &BTreeMap<String, ServiceRecord>) -> BTreeMap<SocketAddrV4, Vec<SocketAddrV4>> {
    let mut out = BTreeMap::new();
    for record in records.values() {
        let Some(address) = record.address else {
            continue;
        };
        let endpoints = record.pick(None);
        for port in &record.ports {
            let backends = endpoints
                .iter()
                .map(|e| SocketAddrV4::new(e.address, *port))
                .collect();
            out.insert(SocketAddrV4::new(address, *port), backends);
        }
    }
    out
}

fn program(
    table: &mut ServiceTable,
    records: &BTreeMap<String, ServiceRecord>,
    programmed: &mut BTreeMap<SocketAddrV4, Vec<SocketAddrV4>>,
) {
    let wanted = wanted(records);
    // Only what changed: every rewrite swaps the service's backend bank.
    for (service, backends) in &wanted {
        if programmed.get(service) == Some(backends) {
            continue;
        }
        match table.set(*service, backends) {
            Ok(()) => {
                info!(%service, backends = backends.len(), "service address steered");
                programmed.insert(*service, backends.clone());
            }
            Err(e) => warn!(%service, "steering: {e}"),
        }
    }
    let stale: Vec<SocketAddrV4> = programmed
        .keys()
        .filter(|s| !wanted.contains_key(s))
        .copied()
        .collect();
    for service in stale {
        match table.remove(service) {
            Ok(()) => {
                programmed.remove(&service);
                info!(%service, "service address removed");
            }
            Err(e) => warn!(%service, "removing steering: {e}"),
        }
    }
}
