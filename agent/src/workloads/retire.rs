//! Taking containers away: a retired generation drains for the period central gave, then
//! each container stops as its service asks and is removed; a scale-down's surplus
//! containers leave rotation at once and stop after the assignment's drain; containers no
//! assignment accounts for stop when the loop lists its assignments.

use std::time::Duration;

use ferry_api::types::{Assignment, Desired};
use tracing::{info, warn};

use super::{
    intent::{RunId, Shared, lock},
    plan,
    report::Reporter,
};
use crate::containers::{self, ContainerError, FerryContainer};

/// Waits out the drain, then stops the generation's containers, unless it was wanted
/// again meanwhile (a rollback).
pub(super) async fn retire(
    report: Reporter,
    intent: Shared,
    assignment: Assignment,
    drain: Duration,
) {
    let id = (assignment.stack.clone(), assignment.generation);
    info!(stack = %id.0, generation = id.1, ?drain, "draining");
    tokio::time::sleep(drain).await;
    let still_wanted_stopped = lock(&intent).wants_stopped(&id);
    if still_wanted_stopped {
        stop_generation(&report, &intent, &id, Some(&assignment)).await;
    }
    {
        let mut intent = lock(&intent);
        intent.stopping.remove(&id);
        if still_wanted_stopped {
            intent.starting.retain(|s| (&s.0, s.2) != (&id.0, id.1));
        }
    }
    report.report(&intent).await;
}

/// Takes the containers of `assignment`'s stack that run past their count (a
/// scale-down) out of rotation at once, and stops each after the assignment's drain.
pub(super) async fn drain_surplus(report: &Reporter, intent: &Shared, assignment: &Assignment) {
    let running = match containers::list(&report.engine).await {
        Ok(running) => running,
        Err(e) => {
            warn!("listing containers to find a scale-down's surplus: {e}");
            return;
        }
    };
    let surplus: Vec<FerryContainer> = {
        let mut intent = lock(intent);
        plan::surplus(&intent, running, &assignment.stack)
            .into_iter()
            .filter(|c| intent.draining.insert(c.id.clone()))
            .collect()
    };
    if surplus.is_empty() {
        return;
    }
    // Reported `draining` now: central's records drop them, and with them every path.
    report.report(intent).await;
    let drain = Duration::from_millis(assignment.drain_ms);
    for c in surplus {
        info!(stack = %c.stack, service = %c.service, generation = c.generation, index = c.index, ?drain, "scaled down; draining");
        let (report, intent) = (report.clone(), intent.clone());
        let assignment = assignment.clone();
        tokio::spawn(async move {
            tokio::time::sleep(drain).await;
            // Wanted again meanwhile (scaled back up): it stays.
            let still = lock(&intent).surplus(&c);
            if still {
                match stop_one(&report, &c, Some(&assignment)).await {
                    Ok(()) => {
                        info!(stack = %c.stack, service = %c.service, index = c.index, "scaled down; stopped and removed")
                    }
                    Err(e) => warn!("stopping {}/{} #{}: {e}", c.stack, c.service, c.index),
                }
            }
            lock(&intent).draining.remove(&c.id);
            report.report(&intent).await;
        });
    }
}

/// Stops every container of generation `id` but those a wanted generation carried along,
/// each as its service in `assignment` asks (at once, without one).
async fn stop_generation(
    report: &Reporter,
    intent: &Shared,
    id: &RunId,
    assignment: Option<&Assignment>,
) {
    let running = match containers::list(&report.engine).await {
        Ok(running) => running,
        Err(e) => {
            warn!(stack = %id.0, generation = id.1, "listing containers to stop: {e}");
            return;
        }
    };
    let mine = plan::retiring(&lock(intent), running, id);
    let stops = mine.into_iter().map(|c| async move {
        match stop_one(report, &c, assignment).await {
            Ok(()) => info!(stack = %c.stack, service = %c.service, generation = c.generation, "stopped and removed"),
            Err(e) => warn!("stopping {}/{}: {e}", c.stack, c.service),
        }
    });
    futures_util::future::join_all(stops).await;
}

/// Stops container `c` as its service in `assignment` asks (its `pre_stop_sequence` and
/// `stop_grace`), and removes it.
async fn stop_one(
    report: &Reporter,
    c: &FerryContainer,
    assignment: Option<&Assignment>,
) -> Result<(), ContainerError> {
    let service = assignment.and_then(|a| a.services.get(&c.service));
    let steps = service
        .map(|s| s.pre_stop_sequence.as_slice())
        .unwrap_or_default();
    let grace = service
        .and_then(|s| s.stop_grace)
        .unwrap_or(containers::DEFAULT_STOP_GRACE);
    containers::stop_and_remove(&report.engine, &c.id, steps, grace).await
}

/// Stops ferry containers that no assignment accounts for (left by a server's removal or
/// a lost stop): they would otherwise run for ever, unseen.
pub(super) async fn stop_orphans(report: &Reporter, intent: &Shared) -> Result<(), ContainerError> {
    let running = containers::list(&report.engine).await?;
    let orphans = plan::orphans(&lock(intent), &running);
    for id in orphans {
        warn!(stack = %id.0, generation = id.1, "containers with no assignment; stopping them");
        stop_generation(report, intent, &id, None).await;
    }
    Ok(())
}

/// `assignment` as a stop without drain: what a deleted assignment becomes.
pub(super) fn stop_now(assignment: Assignment) -> Assignment {
    Assignment {
        state: Desired::Stop { drain_ms: 0 },
        ..assignment
    }
}
