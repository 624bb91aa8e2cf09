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
    let serving = match stacks.stack(stack) {
        Ok(record) => record.serving,
        Err(StackError::UnknownStack { .. }) => None,
        Err(e) => return Err(e),
    };
    // Each service's spec: as the serving generation has it, else its newest mention.
    let mut specs: BTreeMap<String, Service> = BTreeMap::new();
    let generations = match stacks.generations(stack) {
        Ok(g) => g,
        Err(StackError::UnknownStack { .. }) => Vec::new(),
        Err(e) => return Err(e),
    };
    for generation in &generations {
        specs.extend(generation.services.clone());
    }
    if let Some(serving) = serving.and_then(|n| generations.iter().find(|g| g.number == n)) {
        specs.extend(serving.services.clone());
        // A serving service with nothing running still has a record (and answers empty).
        for name in serving.services.keys() {
            found.entry(name.clone()).or_default();
        }
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
