//! After a generation has settled, its containers are watched: a container that dies or
//! stops (Docker's events) or fails its service's health check twice in a row (probed
//! every half second) is reported at once, so central's records drop it and every
//! server's ingress, DNS and service addresses stop sending anything to it within a
//! second. One that passes again comes back the same way. A report that did not reach
//! central (down, or a replica gone) is sent again on the next tick.

use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};

use ferry_api::types::Desired;
use futures_util::StreamExt as _;
use tracing::{info, warn};

use super::{
    health,
    intent::{Shared, lock},
    report::Reporter,
};
use crate::containers;

/// How often each settled container is probed.
const PERIOD: Duration = Duration::from_millis(500);
/// Longest one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);
/// Failed probes in a row that take a container out; one pass brings it back.
const FAILURES: u32 = 2;
/// After a container event, when the state is reported once more.
const SETTLE: Duration = Duration::from_secs(1);

/// Watches this server's settled containers until the task is dropped.
pub(super) async fn watch(report: Reporter, intent: Shared) {
    let mut events = Box::pin(containers::events::lifecycle(&report.engine));
    let mut events_open = true;
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures: HashMap<String, u32> = HashMap::new();
    // Docker tells of a stop before its container is gone: one more report once things
    // have settled, so central never keeps a container that no longer exists.
    let mut settle_at: Option<tokio::time::Instant> = None;
    loop {
        let settle = async {
            match settle_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = events.next(), if events_open => match event {
                Some(Ok(event)) => {
                    info!(container = %event.id, action = %event.action, "container event; reporting");
                    report.report(&intent).await;
                    settle_at = Some(tokio::time::Instant::now() + SETTLE);
                }
                Some(Err(e)) => {
                    warn!("Docker's event stream: {e}; relying on health probes");
                    events_open = false;
                }
                None => events_open = false,
            },
            () = settle => {
                settle_at = None;
                report.report(&intent).await;
            }
            _ = tick.tick() => {
                let changed = probe_all(&report, &intent, &mut failures).await;
                if changed || report.behind() {
                    report.report(&intent).await;
                }
            }
        }
    }
}

/// Probes every running container of a settled, wanted generation; true when the set of
/// unhealthy containers changed.
async fn probe_all(
    report: &Reporter,
    intent: &Shared,
    failures: &mut HashMap<String, u32>,
) -> bool {
    let Ok(running) = containers::list(&report.engine).await else {
        return false;
    };
    let checks: Vec<_> = {
        let intent = lock(intent);
        running
            .into_iter()
            .filter(|c| c.running)
            .filter_map(|c| {
                let key = (c.stack.clone(), c.generation);
                let assignment = intent.desired.get(&key)?;
                if assignment.state != Desired::Run || !intent.settled.contains_key(&key) {
                    return None;
                }
                let service = assignment.services.get(&c.service)?.clone();
                Some((c, service))
            })
            .collect()
    };
    let results = futures_util::future::join_all(checks.iter().map(|(c, service)| async move {
        let outcome = tokio::time::timeout(PROBE_TIMEOUT, health::probe(service, c.address))
            .await
            .unwrap_or(Err(health::CheckError::TimedOut(PROBE_TIMEOUT)));
        (c, outcome)
    }))
    .await;
    let mut unhealthy = BTreeSet::new();
    let mut passed = Vec::new();
    for (c, outcome) in results {
        let count = failures.entry(c.id.clone()).or_default();
        match outcome {
            Ok(()) => {
                *count = 0;
                passed.push((c.stack.clone(), c.service.clone(), c.generation, c.index));
            }
            Err(e) => {
                *count += 1;
                if *count == FAILURES {
                    warn!(stack = %c.stack, service = %c.service, container = %c.id, "failing its health check, out of rotation: {e}");
                }
            }
        }
        if *count >= FAILURES {
            unhealthy.insert(c.id.clone());
        }
    }
    failures.retain(|id, _| checks.iter().any(|(c, _)| &c.id == id));
    let mut intent = lock(intent);
    // One that failed its first check after a scale-up joins rotation once it passes.
    let joined = passed.iter().any(|slot| intent.starting.remove(slot));
    if intent.unhealthy == unhealthy {
        return joined;
    }
    for back in intent.unhealthy.difference(&unhealthy) {
        info!(container = %back, "passing its health check again, back in rotation");
    }
    intent.unhealthy = unhealthy;
    true
}
