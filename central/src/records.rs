//! Service discovery records, `records/<stack>/<service>` (see [`ferry_api::records`]):
//! derived from every server's container report and the stack's generations, rewritten
//! whenever either changes, and only where something changed, so agents' watches carry
//! real news.

use std::collections::BTreeMap;

use ferry_api::{
    records::{ServiceRecord, endpoints},
    servicefile::Service,
    types::ContainerReport,
};

use crate::{
    state::{StackError, Stacks, encode},
    store::{Op, Store},
};

/// `records/<stack>/<service>`.
pub fn key(stack: &str, service: &str) -> String {
    format!("records/{stack}/{service}")
}

/// Every server's last container report, by server.
pub fn reports<S: Store>(store: &S) -> Result<BTreeMap<String, Vec<ContainerReport>>, StackError> {
    let (kvs, _) = store.list("containers/")?;
    kvs.into_iter()
        .map(|kv| {
            let server = kv.key.trim_start_matches("containers/").to_string();
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
/// none when nothing changed.
pub fn refresh<S: Store>(store: &S, stacks: &Stacks<S>, stack: &str) -> Result<(), StackError> {
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
    let wanted: BTreeMap<String, ServiceRecord> = found
        .into_iter()
        .map(|(service, generations)| {
            let spec = specs.get(&service).cloned().unwrap_or_default();
            let record = ServiceRecord {
                stack: stack.into(),
                service: service.clone(),
                serving,
                dns_behaviour: spec.dns_behaviour,
                load_balancing: spec.load_balancing,
                ports: spec.ports.iter().map(|p| p.container).collect(),
                generations,
            };
            (key(stack, &service), record)
        })
        .collect();
    let (existing, _) = store.list(&format!("records/{stack}/"))?;
    let mut ops = Vec::new();
    for kv in &existing {
        if !wanted.contains_key(&kv.key) {
            ops.push(Op::Delete(kv.key.clone()));
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
    if !ops.is_empty() {
        store.txn(&[], &ops)?;
    }
    Ok(())
}
