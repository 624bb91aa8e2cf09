//! A deploy across servers: where a generation's containers go, and what the servers'
//! reports make of it.
//!
//! Placement: every service runs one container on every server, in name order, up to its
//! `constraints.max_count`. Each server's share is written as an
//! [`Assignment`] under `desired/<server>/<stack>/<N>` in the transaction that creates the
//! generation, so no agent ever sees a generation without its placement or the reverse.
//! A service with `restart_on_deploy: false` whose spec did not change keeps its running
//! container: the assignment says which generation started it ([`carried`]).
//!
//! Completion: each server reports under `status/<server>/<stack>/<N>`. One unhealthy
//! report fails the generation (it never serves) and, in the same transaction, tells every
//! server to stop its containers at once. When every assigned server reported healthy, the
//! generation serves and the one before is retired: its assignments turn to
//! [`Desired::Stop`] with the drain period, so the old containers keep answering requests
//! in flight for that long and only then stop.

use std::collections::BTreeMap;

use ferry_api::{
    servicefile::Service,
    types::{Assignment, Desired, Generation, NpmRegistry, Phase, Server, StatusReport},
};

use crate::{
    state::{StackError, Stacks},
    store::{Op, Store},
};

/// `desired/<server>/<stack>/<N>`.
pub fn assignment_key(server: &str, stack: &str, generation: u64) -> String {
    format!("desired/{server}/{stack}/{generation:010}")
}

/// `progress/<server>/<stack>/<N>`: what the server's agent shows of its work.
pub fn progress_key(server: &str, stack: &str, generation: u64) -> String {
    format!("progress/{server}/{stack}/{generation:010}")
}

/// `status/<server>/<stack>/<N>`.
pub fn status_key(server: &str, stack: &str, generation: u64) -> String {
    format!("status/{server}/{stack}/{generation:010}")
}

/// Which services each server runs.
pub fn place(
    servers: &[Server],
    services: &BTreeMap<String, Service>,
) -> BTreeMap<String, BTreeMap<String, Service>> {
    let mut names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    let mut placement: BTreeMap<String, BTreeMap<String, Service>> = BTreeMap::new();
    for (service, spec) in services {
        let count = spec
            .constraints
            .max_count
            .map_or(names.len(), |n| n as usize);
        for server in names.iter().take(count) {
            placement
                .entry((*server).to_string())
                .or_default()
                .insert(service.clone(), spec.clone());
        }
    }
    placement
}

/// Per server, the services whose container from the serving generation is kept rather
/// than replaced: `restart_on_deploy: false` and the same spec on the same server now. The
/// value is the generation that started the container (carried along since).
pub fn carried<S: Store>(
    store: &S,
    stack: &str,
    serving: Option<u64>,
    placement: &BTreeMap<String, BTreeMap<String, Service>>,
) -> Result<BTreeMap<String, BTreeMap<String, u64>>, StackError> {
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let Some(serving) = serving else {
        return Ok(out);
    };
    for (server, services) in placement {
        let key = assignment_key(server, stack, serving);
        let Some(kv) = store.get(&key)? else {
            continue;
        };
        let before: Assignment =
            serde_json::from_slice(&kv.value).map_err(|source| StackError::Corrupt {
                key: key.clone(),
                source,
            })?;
        for (name, spec) in services {
            if !spec.restart_on_deploy && before.services.get(name) == Some(spec) {
                let origin = before.carried.get(name).copied().unwrap_or(serving);
                out.entry(server.clone())
                    .or_default()
                    .insert(name.clone(), origin);
            }
        }
    }
    Ok(out)
}

/// The writes that record `placement` for `generation`, keeping the `carried` containers.
pub fn assignment_ops(
    generation: &Generation,
    placement: &BTreeMap<String, BTreeMap<String, Service>>,
    carried: &BTreeMap<String, BTreeMap<String, u64>>,
    npm: &NpmRegistry,
) -> Result<Vec<Op>, StackError> {
    // Each deploy_command runs on one server: the first, by name, that starts the service
    // anew (a kept container's service was deployed before).
    let mut runs_deploy: BTreeMap<&str, &str> = BTreeMap::new();
    for (server, services) in placement {
        for (name, spec) in services {
            let kept = carried.get(server).is_some_and(|c| c.contains_key(name));
            if spec.deploy_command.is_some() && !kept {
                runs_deploy.entry(name.as_str()).or_insert(server.as_str());
            }
        }
    }
    placement
        .iter()
        .map(|(server, services)| {
            let key = assignment_key(server, &generation.stack, generation.number);
            let assignment = Assignment {
                stack: generation.stack.clone(),
                generation: generation.number,
                source_digest: generation.source_digest.clone(),
                services: services.clone(),
                state: Desired::Run,
                carried: carried.get(server).cloned().unwrap_or_default(),
                deploy_commands: runs_deploy
                    .iter()
                    .filter(|(_, s)| **s == server.as_str())
                    .map(|(name, _)| name.to_string())
                    .collect(),
                npm: npm.clone(),
            };
            Ok(Op::Put(
                key.clone(),
                crate::state::encode(&key, &assignment)?,
            ))
        })
        .collect()
}

/// Every server's assignment of `generation` of `stack`, rewritten to `state`.
pub fn set_state_ops<S: Store>(
    store: &S,
    stack: &str,
    generation: u64,
    state: Desired,
) -> Result<Vec<Op>, StackError> {
    let suffix = format!("/{stack}/{generation:010}");
    let (assigned, _) = store.list("desired/")?;
    assigned
        .iter()
        .filter(|kv| kv.key.ends_with(&suffix))
        .map(|kv| {
            let mut assignment: Assignment =
                serde_json::from_slice(&kv.value).map_err(|source| StackError::Corrupt {
                    key: kv.key.clone(),
                    source,
                })?;
            assignment.state = state;
            Ok(Op::Put(
                kv.key.clone(),
                crate::state::encode(&kv.key, &assignment)?,
            ))
        })
        .collect()
}

/// The writes that deploy a retired generation again: its containers wanted again, the
/// reports of its first deploy forgotten so only fresh ones settle it.
pub fn rerun_ops<S: Store>(store: &S, generation: &Generation) -> Result<Vec<Op>, StackError> {
    let suffix = format!("/{}/{:010}", generation.stack, generation.number);
    let mut ops = set_state_ops(store, &generation.stack, generation.number, Desired::Run)?;
    let (reported, _) = store.list("status/")?;
    ops.extend(
        reported
            .into_iter()
            .filter(|kv| kv.key.ends_with(&suffix))
            .map(|kv| Op::Delete(kv.key)),
    );
    Ok(ops)
}

/// Records `server`'s report and, if that settles the generation, fails it or makes it
/// serve (retiring the one before, which drains for `drain`). The report that settles it
/// commits in the same transaction as the outcome: one durable write, not two. Returns
/// the generation's phase afterwards.
pub fn record_status<S: Store>(
    store: &S,
    stacks: &Stacks<S>,
    report_from: (&str, &str, u64),
    report: &StatusReport,
    drain: std::time::Duration,
) -> Result<Phase, StackError> {
    let (server, stack, generation) = report_from;
    let key = status_key(server, stack, generation);
    let put_report = Op::Put(key.clone(), crate::state::encode(&key, report)?);
    let current = stacks.generation(stack, generation)?;
    if current.phase != Phase::Deploying {
        store.txn(&[], &[put_report])?;
        return Ok(current.phase);
    }
    if !report.healthy {
        let reason = format!("{server}: {}", report.detail);
        let mut ops = set_state_ops(store, stack, generation, Desired::Stop { drain_ms: 0 })?;
        ops.push(put_report);
        return Ok(stacks.fail(stack, generation, reason, &ops)?.phase);
    }
    let drain_ms = u64::try_from(drain.as_millis()).unwrap_or(u64::MAX);
    let retire = |old| set_state_ops(store, stack, old, Desired::Stop { drain_ms });
    if all_healthy(store, stack, generation, Some(server))? {
        stacks.serve_deployed(stack, generation, &[put_report], retire)?;
        return Ok(Phase::Serving);
    }
    store.txn(&[], &[put_report])?;
    // Another server's last report may have landed between the look above and this write;
    // then this one completes the set.
    if all_healthy(store, stack, generation, None)? {
        stacks.serve_deployed(stack, generation, &[], retire)?;
        return Ok(Phase::Serving);
    }
    Ok(Phase::Deploying)
}

/// Whether every server assigned the generation reported healthy (counting `reporting`
/// as healthy, when given, before its report is stored).
fn all_healthy<S: Store>(
    store: &S,
    stack: &str,
    generation: u64,
    reporting: Option<&str>,
) -> Result<bool, StackError> {
    let suffix = format!("/{stack}/{generation:010}");
    let (assigned, _) = store.list("desired/")?;
    let (reported, _) = store.list("status/")?;
    Ok(assigned
        .iter()
        .filter(|kv| kv.key.ends_with(&suffix))
        .filter_map(|kv| kv.key.strip_prefix("desired/")?.split('/').next())
        .all(|s| {
            reporting == Some(s)
                || reported.iter().any(|kv| {
                    kv.key == status_key(s, stack, generation)
                        && serde_json::from_slice::<StatusReport>(&kv.value)
                            .is_ok_and(|r| r.healthy)
                })
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str) -> Server {
        Server {
            name: name.into(),
            subnet_index: 1,
            wireguard_public_key: String::new(),
            wireguard_endpoint: "192.0.2.1:51820".parse().expect("addr"),
        }
    }

    #[test]
    fn every_service_on_every_server_up_to_its_max_count() {
        let mut services = BTreeMap::new();
        services.insert("web".to_string(), Service::default());
        let mut api = Service::default();
        api.constraints.max_count = Some(1);
        services.insert("api".to_string(), api);
        let placement = place(&[server("b"), server("a")], &services);
        assert_eq!(placement["a"].keys().collect::<Vec<_>>(), ["api", "web"]);
        assert_eq!(placement["b"].keys().collect::<Vec<_>>(), ["web"]);
    }
}
