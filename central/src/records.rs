//! Service discovery records, `records/<stack>/<service>` (see [`ferry_api::records`]):
//! derived from every server's container report and the stack's generations, rewritten
//! whenever either changes, and only where something changed, so agents' watches carry
//! real news. A stack's datasources get records too, from the addresses it set for them.

use ferry_api::keys;
use std::{collections::BTreeMap, net::Ipv4Addr};

use ferry_api::{
    records::{Endpoint, ServiceRecord, endpoints},
    servicefile::{Database, DnsBehaviour, Port, Service},
    types::ContainerReport,
};

use crate::{
    state::{StackError, Stacks, datasources_of, encode},
    store::{Compare, Op, Store, StoreError, TxnOutcome},
};

/// `records/<stack>/<service>`.
pub fn key(stack: &str, service: &str) -> String {
    keys::record(stack, service)
}

/// Every server's last container report, by server.
pub fn reports<S: Store>(store: &S) -> Result<BTreeMap<String, Vec<ContainerReport>>, StackError> {
    let (kvs, _) = store.list(keys::CONTAINERS)?;
    kvs.into_iter()
        .map(|kv| {
            let server = keys::containers_of(&kv.key).unwrap_or_default().to_string();
            let containers =
                serde_json::from_slice(&kv.value).map_err(|source| StackError::Corrupt {
                    key: kv.key.clone(),
                    source,
                })?;
            Ok((server, containers))
        })
        .collect()
}

/// Brings `records/<stack>/` in line with the reports and generations: one transaction,
/// none when nothing changed. A new service gets a free service address.
pub fn refresh<S: Store>(store: &S, stacks: &Stacks<S>, stack: &str) -> Result<(), StackError> {
    for _ in 0..8 {
        match refresh_once(store, stacks, stack) {
            Err(StackError::Store(StoreError::Contended { .. })) => continue,
            other => return other,
        }
    }
    Err(StackError::Store(StoreError::Contended {
        what: "a service address",
    }))
}

fn refresh_once<S: Store>(store: &S, stacks: &Stacks<S>, stack: &str) -> Result<(), StackError> {
    let reports = reports(store)?;
    let mut found = endpoints(stack, &reports);
    let record = match stacks.stack(stack) {
        Ok(record) => Some(record),
        Err(StackError::UnknownStack { .. }) => None,
        Err(e) => return Err(e),
    };
    let serving = record.as_ref().and_then(|r| r.serving);
    // Each service's spec as the serving generation has it, else as the newest has it
    // (two reads, however many generations the stack has had).
    let mut specs: BTreeMap<String, Service> = BTreeMap::new();
    if let Some(latest) = record.as_ref().map(|r| r.latest).filter(|n| *n > 0) {
        specs.extend(stacks.generation(stack, latest)?.services);
    }
    if let Some(serving) = serving {
        let services = stacks.generation(stack, serving)?.services;
        // A serving service with nothing running still has a record (and answers empty).
        for name in services.keys() {
            found.entry(name.clone()).or_default();
        }
        specs.extend(services);
    }
    // Datasources the stack points at are names too: not versioned, on their own port.
    let datasources = datasources_of(store, stack)?;
    for (name, addresses) in &datasources {
        found.entry(name.clone()).or_insert_with(|| {
            let endpoints = addresses
                .iter()
                .map(|address| Endpoint {
                    address: *address,
                    server: String::new(),
                    container: format!("datasource {name}"),
                })
                .collect();
            BTreeMap::from([(0, endpoints)])
        });
    }
    let (existing, _) = store.list(&keys::records_of(stack))?;
    let (taken, _) = store.list(keys::SERVICE_ADDRESSES)?;
    let mut fresh = free_addresses(&taken);
    let mut ops = Vec::new();
    let mut compares = Vec::new();
    let wanted: BTreeMap<String, ServiceRecord> = found
        .into_iter()
        .map(|(service, generations)| {
            let spec = match (specs.get(&service), datasources.contains_key(&service)) {
                (Some(spec), _) => spec.clone(),
                (None, true) => datasource_spec(&service),
                (None, false) => Service::default(),
            };
            let key = key(stack, &service);
            // A service keeps its address for as long as it has a record.
            let kept = existing
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| serde_json::from_slice::<ServiceRecord>(&kv.value).ok())
                .and_then(|r| r.address);
            let address = kept.or_else(|| {
                let address = fresh.next()?;
                let claim = address_key(address);
                compares.push(Compare::ModRevision(claim.clone(), 0));
                ops.push(Op::Put(claim, key.clone().into_bytes()));
                Some(address)
            });
            let record = ServiceRecord {
                stack: stack.into(),
                service: service.clone(),
                address,
                serving,
                dns_behaviour: spec.dns_behaviour,
                load_balancing: spec.load_balancing,
                ports: spec.ports.iter().map(|p| p.container).collect(),
                published: spec
                    .ports
                    .iter()
                    .copied()
                    .filter(|p| p.http.or(p.https).or(p.tcp).or(p.udp).is_some())
                    .collect(),
                traffic_matches: spec.traffic_matches.clone(),
                generations,
            };
            (key, record)
        })
        .collect();
    for kv in &existing {
        if !wanted.contains_key(&kv.key) {
            ops.push(Op::Delete(kv.key.clone()));
            let gone = serde_json::from_slice::<ServiceRecord>(&kv.value).ok();
            if let Some(address) = gone.and_then(|r| r.address) {
                ops.push(Op::Delete(address_key(address)));
            }
        }
    }
    for (key, record) in &wanted {
        let value = encode(key, record)?;
        if !existing
            .iter()
            .any(|kv| kv.key == *key && kv.value == value)
        {
            ops.push(Op::Put(key.clone(), value));
        }
    }
    if ops.is_empty() {
        return Ok(());
    }
    match store.txn(&compares, &ops)? {
        TxnOutcome::Committed(_) => Ok(()),
        // Another stack's refresh took the same free address first: pick again.
        TxnOutcome::Failed(_) => Err(StackError::Store(StoreError::Contended {
            what: "a service address",
        })),
    }
}

/// How a datasource's record reads: every caller gets the same addresses, and its SRV
/// record names the database's usual port.
fn datasource_spec(name: &str) -> Service {
    let port = match Database::ALL
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, d)| *d)
    {
        Some(Database::Mysql) => 3306,
        Some(Database::Postgresql) => 5432,
        Some(Database::Mongodb) => 27017,
        Some(Database::Redis) | None => 6379,
    };
    Service {
        dns_behaviour: DnsBehaviour::NonVersioned,
        ports: vec![Port {
            container: port,
            ..Port::default()
        }],
        ..Service::default()
    }
}

/// Where a taken service address is kept, holding the record's key.
fn address_key(address: Ipv4Addr) -> String {
    keys::service_address(address)
}

/// Service addresses come from 10.96.0.0/16, away from the container network.
fn free_addresses(taken: &[crate::store::KeyValue]) -> impl Iterator<Item = Ipv4Addr> + '_ {
    (1u32..0xffff)
        .map(|i| Ipv4Addr::from(0x0a60_0000 | i))
        .filter(|a| a.octets()[3] != 0 && a.octets()[3] != 255)
        .filter(move |a| !taken.iter().any(|kv| kv.key == address_key(*a)))
}
