//! A deploy across servers: where a generation's containers go, and what the servers'
//! reports make of it.
//!
//! Placement (see [`crate::placement`]): each service runs a number of containers spread
//! over the servers; a new generation keeps the counts the serving one has. Each server's
//! share is written as an [`Assignment`] under `desired/<server>/<stack>/<N>` in the transaction that creates the
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
    placement::{self, PlacementError, Room, Spread},
    state::{StackError, Stacks},
    store::{Op, Store},
};

use ferry_api::keys::{self, DESIRED, PROGRESS, STATUS};
pub use ferry_api::keys::{
    desired as assignment_key, progress as progress_key, status as status_key,
};

/// One server's share of a generation: each service it runs, with its spec and its
/// number of containers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Share {
    /// The services, with their specs.
    pub services: BTreeMap<String, Service>,
    /// Containers of each.
    pub counts: BTreeMap<String, u32>,
}

/// Where a generation's containers go, by server.
pub type Placement = BTreeMap<String, Share>;

/// The assignments of generation `generation` of `stack`, by server.
pub fn assignments<S: Store>(
    store: &S,
    stack: &str,
    generation: u64,
) -> Result<BTreeMap<String, Assignment>, StackError> {
    let (assigned, _) = store.list(DESIRED)?;
    assigned
        .iter()
        .filter_map(|kv| {
            let (server, of, number) = keys::per_server_generation(DESIRED, &kv.key)?;
            (of == stack && number == generation).then(|| (server.to_string(), kv))
        })
        .map(|(server, kv)| {
            let assignment =
                serde_json::from_slice(&kv.value).map_err(|source| StackError::Corrupt {
                    key: kv.key.clone(),
                    source,
                })?;
            Ok((server, assignment))
        })
        .collect()
}

/// The servers as placement sees them: each one's memory, and what the wanted
/// generations of other stacks (and `stack`'s own, but those of `except`) promised of
/// it. A stack's next generation runs beside the one it replaces only while it deploys
/// and drains, so that one's memory is not counted against it; its addresses are, since
/// both hold theirs during the overlap.
pub fn rooms<S: Store>(
    store: &S,
    servers: &[Server],
    stack: &str,
    except: &[u64],
) -> Result<Vec<Room>, StackError> {
    let mut rooms: Vec<Room> = servers
        .iter()
        .map(|s| Room {
            name: s.name.clone(),
            memory: s.memory_bytes,
            reserved: 0,
            containers: 0,
        })
        .collect();
    rooms.sort_by(|a, b| a.name.cmp(&b.name));
    let (assigned, _) = store.list(DESIRED)?;
    for kv in &assigned {
        let Some((server, _, _)) = keys::per_server_generation(DESIRED, &kv.key) else {
            continue;
        };
        let Some(room) = rooms.iter_mut().find(|r| r.name == server) else {
            continue;
        };
        let assignment: Assignment =
            serde_json::from_slice(&kv.value).map_err(|source| StackError::Corrupt {
                key: kv.key.clone(),
                source,
            })?;
        if assignment.state != Desired::Run {
            continue;
        }
        let replaced = assignment.stack == stack && except.contains(&assignment.generation);
        for (name, spec) in &assignment.services {
            let n = assignment.count(name);
            // Addresses are taken while both generations run (a deploy's overlap), so the
            // one being replaced still holds its own.
            room.containers = room.containers.saturating_add(n);
            if !replaced {
                let each = spec.constraints.memory.unwrap_or(0);
                room.reserved = room
                    .reserved
                    .saturating_add(each.saturating_mul(u64::from(n)));
            }
        }
    }
    Ok(rooms)
}

/// Containers of each service in generation `generation` of `stack`, over all servers.
pub fn counts<S: Store>(
    store: &S,
    stack: &str,
    generation: u64,
) -> Result<BTreeMap<String, u32>, StackError> {
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for assignment in assignments(store, stack, generation)?.values() {
        for name in assignment.services.keys() {
            *counts.entry(name.clone()).or_default() += assignment.count(name);
        }
    }
    Ok(counts)
}

/// Where a new generation's containers go: each service at the count the serving
/// generation runs it with (within the new service.yml's bounds), or, new, at its default
/// (see [`placement::default_count`]); spread over `rooms` in name order.
pub fn place(
    rooms: &mut [Room],
    services: &BTreeMap<String, Service>,
    serving: &BTreeMap<String, u32>,
) -> Result<Placement, PlacementError> {
    let mut out = Placement::new();
    for (name, spec) in services {
        let count = match serving.get(name) {
            Some(n) => {
                let (min, max) = placement::bounds(spec);
                (*n).clamp(min, max)
            }
            None => placement::default_count(spec, rooms.len()),
        };
        let spread = placement::spread(rooms, name, spec, count, &Spread::new())?;
        for (server, n) in spread {
            let share = out.entry(server).or_default();
            share.services.insert(name.clone(), spec.clone());
            share.counts.insert(name.clone(), n);
        }
    }
    Ok(out)
}

/// Why a placement was not written.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error(transparent)]
    Placement(#[from] PlacementError),
}

/// What a new generation of `generation.stack` writes beside itself: its placement on
/// `servers` (counts from the serving generation, see [`place`]), with the serving
/// generation's unchanged `restart_on_deploy: false` containers carried along. Called
/// inside the generation's transaction attempt, so it sees the stack as the commit does.
pub fn generation_ops<S: Store>(
    store: &S,
    stacks: &Stacks<S>,
    servers: &[Server],
    generation: &Generation,
    services: &BTreeMap<String, Service>,
    npm: &NpmRegistry,
) -> Result<Vec<Op>, PlaceError> {
    let stack = &generation.stack;
    let serving = match stacks.stack(stack) {
        Ok(record) => record.serving,
        Err(StackError::UnknownStack { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let serving_counts = match serving {
        Some(n) => counts(store, stack, n)?,
        None => BTreeMap::new(),
    };
    let except: Vec<u64> = serving.into_iter().collect();
    let mut rooms = rooms(store, servers, stack, &except)?;
    let placement = place(&mut rooms, services, &serving_counts)?;
    let carried = carried(store, stack, serving, &placement)?;
    Ok(assignment_ops(generation, &placement, &carried, npm)?)
}

/// Per server, the services whose containers from the serving generation are kept rather
/// than replaced: `restart_on_deploy: false`, and the same spec and count on the same
/// server now. The value is the generation that started them (carried along since).
pub fn carried<S: Store>(
    store: &S,
    stack: &str,
    serving: Option<u64>,
    placement: &Placement,
) -> Result<BTreeMap<String, BTreeMap<String, u64>>, StackError> {
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let Some(serving) = serving else {
        return Ok(out);
    };
    let before = assignments(store, stack, serving)?;
    for (server, share) in placement {
        let Some(before) = before.get(server) else {
            continue;
        };
        for (name, spec) in &share.services {
            let same_count = share.counts.get(name).copied() == Some(before.count(name));
            if !spec.restart_on_deploy && before.services.get(name) == Some(spec) && same_count {
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
    placement: &Placement,
    carried: &BTreeMap<String, BTreeMap<String, u64>>,
    npm: &NpmRegistry,
) -> Result<Vec<Op>, StackError> {
    // Each deploy_command runs on one server: the first, by name, that starts the service
    // anew (a kept container's service was deployed before).
    let mut runs_deploy: BTreeMap<&str, &str> = BTreeMap::new();
    for (server, share) in placement {
        for (name, spec) in &share.services {
            let kept = carried.get(server).is_some_and(|c| c.contains_key(name));
            if spec.deploy_command.is_some() && !kept {
                runs_deploy.entry(name.as_str()).or_insert(server.as_str());
            }
        }
    }
    placement
        .iter()
        .map(|(server, share)| {
            let key = assignment_key(server, &generation.stack, generation.number);
            let assignment = Assignment {
                stack: generation.stack.clone(),
                generation: generation.number,
                source_digest: generation.source_digest.clone(),
                services: share.services.clone(),
                counts: share.counts.clone(),
                drain_ms: 0,
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

/// What a scale of `service` in the serving generation writes: every server's assignment
/// with its new count (a server that gets its first container of the stack gets an
/// assignment; one that loses its last keeps its assignment at count 0), and the
/// generation's status reports forgotten, so only fresh ones tell how the change went. Containers removed drain for `drain` once they leave rotation.
pub struct Scaled {
    /// The writes.
    pub ops: Vec<Op>,
    /// The service's containers per server afterwards.
    pub spread: Spread,
}

/// See [`Scaled`]. `rooms` must leave out the serving generation's promises (they are
/// counted here, but this service's own).
pub fn scale_ops<S: Store>(
    store: &S,
    rooms: &mut [Room],
    serving: &Generation,
    service: &str,
    count: u32,
    drain: std::time::Duration,
) -> Result<Result<Scaled, PlacementError>, StackError> {
    let stack = &serving.stack;
    let before = assignments(store, stack, serving.number)?;
    let Some(spec) = serving.services.get(service) else {
        return Ok(Ok(Scaled {
            ops: Vec::new(),
            spread: Spread::new(),
        }));
    };
    let mut from = Spread::new();
    for (server, assignment) in &before {
        if let Some(room) = rooms.iter_mut().find(|r| r.name == *server) {
            for (name, other) in assignment.services.iter().filter(|(n, _)| *n != service) {
                let each = other.constraints.memory.unwrap_or(0);
                let promised = each.saturating_mul(u64::from(assignment.count(name)));
                room.reserved = room.reserved.saturating_add(promised);
            }
            // The service's own containers are placed again from `from` below.
            room.containers = room.containers.saturating_sub(assignment.count(service));
        }
        let n = assignment.count(service);
        if n > 0 {
            from.insert(server.clone(), n);
        }
    }
    let spread = match placement::spread(rooms, service, spec, count, &from) {
        Ok(spread) => spread,
        Err(e) => return Ok(Err(e)),
    };
    let template = before.values().next();
    let drain_ms = u64::try_from(drain.as_millis()).unwrap_or(u64::MAX);
    let mut ops = Vec::new();
    let servers: std::collections::BTreeSet<&String> = before.keys().chain(spread.keys()).collect();
    for server in servers {
        // Every server's: a report from before (an earlier scale's failure) must not be
        // read as this one's outcome.
        ops.push(Op::Delete(status_key(server, stack, serving.number)));
        let n = spread.get(server).copied().unwrap_or(0);
        let mut assignment = match before.get(server) {
            Some(a) if a.count(service) == n => continue,
            Some(a) => a.clone(),
            None => Assignment {
                stack: stack.clone(),
                generation: serving.number,
                source_digest: serving.source_digest.clone(),
                services: BTreeMap::new(),
                counts: BTreeMap::new(),
                drain_ms,
                state: Desired::Run,
                carried: BTreeMap::new(),
                deploy_commands: Default::default(),
                npm: template.map(|a| a.npm.clone()).unwrap_or_default(),
            },
        };
        // Counts for every service, so none falls back to "one" once others have one.
        for name in assignment.services.keys().cloned().collect::<Vec<_>>() {
            let c = assignment.count(&name);
            assignment.counts.insert(name, c);
        }
        assignment.services.insert(service.into(), spec.clone());
        assignment.counts.insert(service.into(), n);
        assignment.drain_ms = drain_ms;
        // A scale never runs the deploy_command again.
        assignment.deploy_commands.remove(service);
        let key = assignment_key(server, stack, serving.number);
        ops.push(Op::Put(
            key.clone(),
            crate::state::encode(&key, &assignment)?,
        ));
    }
    Ok(Ok(Scaled { ops, spread }))
}

/// Every server's assignment of `generation` of `stack`, rewritten to `state`.
pub fn set_state_ops<S: Store>(
    store: &S,
    stack: &str,
    generation: u64,
    state: Desired,
) -> Result<Vec<Op>, StackError> {
    assignments(store, stack, generation)?
        .into_iter()
        .map(|(server, mut assignment)| {
            assignment.state = state;
            let key = assignment_key(&server, stack, generation);
            Ok(Op::Put(
                key.clone(),
                crate::state::encode(&key, &assignment)?,
            ))
        })
        .collect()
}

/// The writes that deploy a retired generation again: its containers wanted again, the
/// reports and progress of its first deploy forgotten so only fresh ones settle and show
/// it.
pub fn rerun_ops<S: Store>(store: &S, generation: &Generation) -> Result<Vec<Op>, StackError> {
    let suffix = keys::generation_suffix(&generation.stack, generation.number);
    let mut ops = set_state_ops(store, &generation.stack, generation.number, Desired::Run)?;
    for prefix in [STATUS, PROGRESS] {
        let (reported, _) = store.list(prefix)?;
        ops.extend(
            reported
                .into_iter()
                .filter(|kv| kv.key.ends_with(&suffix))
                .map(|kv| Op::Delete(kv.key)),
        );
    }
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
    let (assigned, _) = store.list(DESIRED)?;
    let (reported, _) = store.list(STATUS)?;
    Ok(assigned
        .iter()
        .filter_map(|kv| keys::per_server_generation(DESIRED, &kv.key))
        .filter(|(_, of, number)| *of == stack && *number == generation)
        .map(|(server, _, _)| server)
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

    fn rooms(names: &[&str]) -> Vec<Room> {
        names
            .iter()
            .map(|name| Room {
                name: (*name).into(),
                memory: None,
                reserved: 0,
                containers: 0,
            })
            .collect()
    }

    #[test]
    fn new_services_run_one_per_server_up_to_max_count_and_others_keep_their_count() {
        let mut services = BTreeMap::new();
        services.insert("web".to_string(), Service::default());
        let mut api = Service::default();
        api.constraints.max_count = Some(1);
        services.insert("api".to_string(), api);
        services.insert("worker".to_string(), Service::default());
        let serving = BTreeMap::from([("worker".to_string(), 5)]);
        let placement = place(&mut rooms(&["b", "a"]), &services, &serving).expect("fits");
        let of = |server: &str| -> Vec<(&str, u32)> {
            placement[server]
                .counts
                .iter()
                .map(|(s, n)| (s.as_str(), *n))
                .collect()
        };
        assert_eq!(of("a"), [("api", 1), ("web", 1), ("worker", 3)]);
        assert_eq!(of("b"), [("web", 1), ("worker", 2)]);
    }
}
