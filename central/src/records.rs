//! Service discovery records, `records/<stack>/<service>` (see [`ferry_api::records`]):
//! derived from every server's container report and the stack's generations, rewritten
//! whenever either changes, and only where something changed, so agents' watches carry
//! real news. A stack's datasources get records too, from the addresses it set for them.
//!
//! A refresh gathers what it reads, computes the writes from it (a pure function, unit-tested
//! without a store) and commits them in one transaction guarded by what it read: every
//! server's report and every record as they were (a record it creates: that none exists),
//! and its address claims. Replicas refresh concurrently; a refresh that read before
//! another's commit fails its guard and starts over, so a stale view never overwrites a
//! newer one.

use ferry_api::keys;
use std::{collections::BTreeMap, net::Ipv4Addr};

use ferry_api::{
    records::{Endpoint, ServiceRecord, endpoints},
    servicefile::{Database, DnsBehaviour, Port, Service},
    types::ContainerReport,
};

use crate::{
    state::{StackError, Stacks, datasources_of, encode},
    store::{Compare, KeyValue, Op, Store, StoreError, TxnOutcome},
};

/// `records/<stack>/<service>`.
pub fn key(stack: &str, service: &str) -> String {
    keys::record(stack, service)
}

/// Every server's last container report, by server.
pub fn reports<S: Store>(store: &S) -> Result<BTreeMap<String, Vec<ContainerReport>>, StackError> {
    let (kvs, _) = store.list(keys::CONTAINERS)?;
    decode_reports(kvs)
}

fn decode_reports(
    kvs: Vec<KeyValue>,
) -> Result<BTreeMap<String, Vec<ContainerReport>>, StackError> {
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
    for _ in 0..16 {
        match refresh_once(store, stacks, stack) {
            Err(StackError::Store(StoreError::Contended { .. })) => continue,
            other => return other,
        }
    }
    Err(StackError::Store(StoreError::Contended {
        what: "a refresh of the records",
    }))
}

fn refresh_once<S: Store>(store: &S, stacks: &Stacks<S>, stack: &str) -> Result<(), StackError> {
    let gathered = gather(store, stacks, stack)?;
    let (compares, ops) = compute(stack, &gathered)?;
    if ops.is_empty() {
        return Ok(());
    }
    match store.txn(&compares, &ops)? {
        TxnOutcome::Committed(_) => Ok(()),
        // Another refresh committed since this one read (or took the same free address):
        // read again.
        TxnOutcome::Failed(_) => Err(StackError::Store(StoreError::Contended {
            what: "a refresh of the records",
        })),
    }
}

/// Everything a refresh of one stack's records reads, read in one place so that
/// [`compute`] is a pure function of it.
#[derive(Debug, Default)]
struct Gathered {
    /// Every server's last container report, by server.
    reports: BTreeMap<String, Vec<ContainerReport>>,
    /// Each report's key and the revision it was read at: the commit's guard.
    report_revisions: Vec<(String, u64)>,
    /// The serving generation, if any.
    serving: Option<u64>,
    /// The services of the serving generation (each has a record, running or not).
    serving_services: Vec<String>,
    /// Each service's spec: as the serving generation has it, else as the newest has it.
    specs: BTreeMap<String, Service>,
    /// The stack's datasources and their addresses.
    datasources: BTreeMap<String, Vec<Ipv4Addr>>,
    /// `records/<stack>/` as stored.
    existing: Vec<KeyValue>,
    /// Every taken service address.
    taken: Vec<KeyValue>,
}

fn gather<S: Store>(store: &S, stacks: &Stacks<S>, stack: &str) -> Result<Gathered, StackError> {
    let record = match stacks.stack(stack) {
        Ok(record) => Some(record),
        Err(StackError::UnknownStack { .. }) => None,
        Err(e) => return Err(e),
    };
    let serving = record.as_ref().and_then(|r| r.serving);
    // Two reads, however many generations the stack has had.
    let mut specs: BTreeMap<String, Service> = BTreeMap::new();
    if let Some(latest) = record.as_ref().map(|r| r.latest).filter(|n| *n > 0) {
        specs.extend(stacks.generation(stack, latest)?.services);
    }
    let mut serving_services = Vec::new();
    if let Some(serving) = serving {
        let services = stacks.generation(stack, serving)?.services;
        serving_services = services.keys().cloned().collect();
        specs.extend(services);
    }
    let (report_kvs, _) = store.list(keys::CONTAINERS)?;
    let report_revisions = report_kvs
        .iter()
        .map(|kv| (kv.key.clone(), kv.mod_revision))
        .collect();
    Ok(Gathered {
        reports: decode_reports(report_kvs)?,
        report_revisions,
        serving,
        serving_services,
        specs,
        datasources: datasources_of(store, stack)?,
        existing: store.list(&keys::records_of(stack))?.0,
        taken: store.list(keys::SERVICE_ADDRESSES)?.0,
    })
}

/// The compares and writes that bring `records/<stack>/` in line with `gathered`: a
/// record per service with running containers, per serving service and per datasource; a
/// new one claims a free service address (the compare guards the claim against another
/// refresh), a gone one frees its address; unchanged records are not written. Empty when
/// nothing changes.
fn compute(stack: &str, gathered: &Gathered) -> Result<(Vec<Compare>, Vec<Op>), StackError> {
    let Gathered {
        reports,
        report_revisions,
        serving,
        serving_services,
        specs,
        datasources,
        existing,
        taken,
    } = gathered;
    let mut found = endpoints(stack, reports);
    // A serving service with nothing running still has a record (and answers empty).
    for name in serving_services {
        found.entry(name.clone()).or_default();
    }
    // Datasources the stack points at are names too: not versioned, on their own port.
    for (name, addresses) in datasources {
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
    let mut fresh = free_addresses(taken);
    let mut ops = Vec::new();
    // Guarded by everything read that decides the writes: the reports and the records.
    let mut compares: Vec<Compare> = report_revisions
        .iter()
        .map(|(key, revision)| Compare::ModRevision(key.clone(), *revision))
        .chain(
            existing
                .iter()
                .map(|kv| Compare::ModRevision(kv.key.clone(), kv.mod_revision)),
        )
        .collect();
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
                serving: *serving,
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
    for kv in existing {
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
        match existing.iter().find(|kv| kv.key == *key) {
            Some(kv) if kv.value == value => {}
            Some(_) => ops.push(Op::Put(key.clone(), value)),
            None => {
                // Created here: only if no other refresh created it meanwhile.
                compares.push(Compare::ModRevision(key.clone(), 0));
                ops.push(Op::Put(key.clone(), value));
            }
        }
    }
    Ok((compares, ops))
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
fn free_addresses(taken: &[KeyValue]) -> impl Iterator<Item = Ipv4Addr> + '_ {
    (1u32..0xffff)
        .map(|i| Ipv4Addr::from(0x0a60_0000 | i))
        .filter(|a| a.octets()[3] != 0 && a.octets()[3] != 255)
        .filter(move |a| !taken.iter().any(|kv| kv.key == address_key(*a)))
}

#[cfg(test)]
mod tests {
    use ferry_api::types::ContainerState;

    use super::*;

    fn web(generation: u64, address: [u8; 4]) -> ContainerReport {
        ContainerReport {
            id: format!("web-{generation}"),
            stack: "shop".into(),
            service: "web".into(),
            generation,
            serves: vec![generation],
            address: Some(Ipv4Addr::from(address)),
            state: ContainerState::Running,
            cgroup_id: None,
        }
    }

    fn stored(key: &str, value: Vec<u8>) -> KeyValue {
        KeyValue {
            key: key.into(),
            value,
            create_revision: 1,
            mod_revision: 1,
        }
    }

    fn puts(ops: &[Op]) -> Vec<&str> {
        ops.iter()
            .filter_map(|op| match op {
                Op::Put(key, _) => Some(key.as_str()),
                Op::Delete(_) => None,
            })
            .collect()
    }

    #[test]
    fn a_new_service_gets_a_record_and_claims_the_first_free_address() {
        let gathered = Gathered {
            reports: BTreeMap::from([("one".into(), vec![web(1, [10, 66, 1, 2])])]),
            report_revisions: vec![("containers/one".into(), 7)],
            serving: Some(1),
            serving_services: vec!["web".into(), "worker".into()],
            taken: vec![stored(
                "service-addresses/10.96.0.1",
                b"records/blog/x".to_vec(),
            )],
            ..Gathered::default()
        };
        let (compares, ops) = compute("shop", &gathered).expect("computes");
        // Guarded by the report it was computed from; 10.96.0.1 is another stack's: web
        // takes .2, worker .3, each claim guarded, and each new record made only if no
        // other refresh made it first.
        assert_eq!(
            compares,
            [
                Compare::ModRevision("containers/one".into(), 7),
                Compare::ModRevision("service-addresses/10.96.0.2".into(), 0),
                Compare::ModRevision("service-addresses/10.96.0.3".into(), 0),
                Compare::ModRevision("records/shop/web".into(), 0),
                Compare::ModRevision("records/shop/worker".into(), 0),
            ]
        );
        assert_eq!(
            puts(&ops),
            [
                "service-addresses/10.96.0.2",
                "service-addresses/10.96.0.3",
                "records/shop/web",
                "records/shop/worker",
            ]
        );
        let Some(Op::Put(_, value)) = ops
            .iter()
            .find(|op| matches!(op, Op::Put(key, _) if key == "records/shop/web"))
        else {
            panic!("no web record in {ops:?}");
        };
        let record: ServiceRecord = serde_json::from_slice(value).expect("a record");
        assert_eq!(record.address, Some(Ipv4Addr::new(10, 96, 0, 2)));
        assert_eq!(record.serving, Some(1));
        assert_eq!(
            record.generations[&1]
                .iter()
                .map(|e| e.address)
                .collect::<Vec<_>>(),
            [Ipv4Addr::new(10, 66, 1, 2)]
        );
    }

    #[test]
    fn an_unchanged_record_is_not_written_and_a_gone_one_frees_its_address() {
        let mut gathered = Gathered {
            reports: BTreeMap::from([("one".into(), vec![web(1, [10, 66, 1, 2])])]),
            serving: Some(1),
            serving_services: vec!["web".into()],
            ..Gathered::default()
        };
        let (_, first) = compute("shop", &gathered).expect("computes");
        let record = first
            .iter()
            .find_map(|op| match op {
                Op::Put(key, value) if key == "records/shop/web" => Some(value.clone()),
                _ => None,
            })
            .expect("a web record");
        let old: ServiceRecord = serde_json::from_slice(&record).expect("a record");
        let mut gone = old.clone();
        gone.service = "cache".into();
        gone.address = Some(Ipv4Addr::new(10, 96, 0, 9));
        gathered.existing = vec![
            stored("records/shop/web", record),
            stored(
                "records/shop/cache",
                serde_json::to_vec(&gone).expect("encodes"),
            ),
        ];
        let (compares, ops) = compute("shop", &gathered).expect("computes");
        assert_eq!(
            compares,
            [
                Compare::ModRevision("records/shop/web".into(), 1),
                Compare::ModRevision("records/shop/cache".into(), 1),
            ],
            "guarded by the records as read; web keeps its address, no claim"
        );
        assert_eq!(
            ops,
            [
                Op::Delete("records/shop/cache".into()),
                Op::Delete("service-addresses/10.96.0.9".into()),
            ]
        );
    }
}
