//! What this agent knows it is asked to do, and what it is doing about it: shared by the
//! reconcile loop, its drain and stop tasks, the liveness watch and the reports.
//!
//! Plain data behind one lock, and the questions every one of them asks of it (which
//! generations a container serves, whether it is surplus, what state to report), answered
//! without Docker so unit tests reach them.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex, MutexGuard},
};

use ferry_api::types::{Assignment, ContainerState, Desired};

use crate::containers::FerryContainer;

/// One container's place: (stack, service, generation it was started for, index).
pub(super) type Slot = (String, String, u64, u32);

/// A generation of a stack on this server: (stack, generation).
pub(super) type RunId = (String, u64);

/// What this agent is asked to do and what is under way.
#[derive(Default)]
pub(super) struct Intent {
    /// The current assignment of every generation for this server.
    pub(super) desired: BTreeMap<RunId, Assignment>,
    /// Runs that were built, started, checked and reported, as they were assigned then.
    pub(super) settled: BTreeMap<RunId, Assignment>,
    /// Containers started (or being started) that have not passed a health check yet:
    /// reported `starting`, so nothing leads to them.
    pub(super) starting: BTreeSet<Slot>,
    /// Containers (Docker ids) a scale-down took out whose drain is under way.
    pub(super) draining: BTreeSet<String>,
    /// Generations whose containers a stop task is draining or stopping.
    pub(super) stopping: BTreeSet<RunId>,
    /// Running containers (Docker ids) that fail their service's health check (see
    /// `liveness`): reported as unhealthy, so no name or request leads to them.
    pub(super) unhealthy: BTreeSet<String>,
}

impl Intent {
    /// The generations that run container `index` of `service` started for `generation`:
    /// its own while wanted and counted, and later ones it was carried into.
    pub(super) fn serves(
        &self,
        stack: &str,
        service: &str,
        generation: u64,
        index: u32,
    ) -> Vec<u64> {
        self.desired
            .values()
            .filter(|a| a.stack == stack && a.state == Desired::Run)
            .filter(|a| index < a.count(service))
            .filter(|a| match a.carried.get(service) {
                Some(origin) => *origin == generation,
                None => a.generation == generation,
            })
            .map(|a| a.generation)
            .collect()
    }

    /// Whether `c` runs past its service's count in a generation still wanted (a
    /// scale-down took it out): it drains, then stops.
    pub(super) fn surplus(&self, c: &FerryContainer) -> bool {
        let wanted = self
            .desired
            .get(&(c.stack.clone(), c.generation))
            .is_some_and(|a| a.state == Desired::Run);
        c.running
            && wanted
            && self
                .serves(&c.stack, &c.service, c.generation, c.index)
                .is_empty()
    }

    /// The state central is told `c` is in: out of every path unless `Running`.
    pub(super) fn state_of(&self, c: &FerryContainer) -> ContainerState {
        let slot = (c.stack.clone(), c.service.clone(), c.generation, c.index);
        match (c.running, self.unhealthy.contains(&c.id)) {
            (false, _) => ContainerState::Stopped,
            (true, true) => ContainerState::Unhealthy,
            (true, false) if self.starting.contains(&slot) => ContainerState::Starting,
            (true, false) if self.surplus(c) => ContainerState::Draining,
            (true, false) => ContainerState::Running,
        }
    }

    /// Whether generation `id` should be stopped (it is retired, or no longer assigned).
    pub(super) fn wants_stopped(&self, id: &RunId) -> bool {
        self.desired
            .get(id)
            .is_none_or(|a| matches!(a.state, Desired::Stop { .. }))
    }
}

/// The intent as the loop and its tasks share it.
pub(super) type Shared = Arc<Mutex<Intent>>;

/// The intent, locked.
pub(super) fn lock(intent: &Shared) -> MutexGuard<'_, Intent> {
    // A panicked holder leaves plain data behind; keep going with it.
    intent
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Generation `generation` of stack `shop` running `web` (`count` of it) here.
    pub(crate) fn assignment(generation: u64, count: u32) -> Assignment {
        Assignment {
            stack: "shop".into(),
            generation,
            source_digest: "digest".into(),
            services: [("web".to_string(), Default::default())].into(),
            counts: [("web".to_string(), count)].into(),
            drain_ms: 0,
            state: Desired::Run,
            carried: BTreeMap::new(),
            deploy_commands: BTreeSet::new(),
            npm: Default::default(),
        }
    }

    /// Container `index` of `web`, started for `generation`.
    pub(crate) fn container(generation: u64, index: u32, running: bool) -> FerryContainer {
        FerryContainer {
            id: format!("c{generation}-{index}"),
            stack: "shop".into(),
            service: "web".into(),
            generation,
            index,
            address: None,
            running,
        }
    }

    /// An intent that wants `assignments`, with nothing under way.
    pub(crate) fn wanting(assignments: impl IntoIterator<Item = Assignment>) -> Intent {
        Intent {
            desired: assignments
                .into_iter()
                .map(|a| ((a.stack.clone(), a.generation), a))
                .collect(),
            ..Intent::default()
        }
    }

    #[test]
    fn a_container_serves_its_own_generation_within_the_count() {
        let intent = wanting([assignment(1, 2)]);
        assert_eq!(intent.serves("shop", "web", 1, 0), vec![1]);
        assert_eq!(intent.serves("shop", "web", 1, 1), vec![1]);
        assert!(
            intent.serves("shop", "web", 1, 2).is_empty(),
            "past the count"
        );
        assert!(
            intent.serves("shop", "api", 1, 0).is_empty(),
            "not assigned"
        );
        assert!(
            intent.serves("other", "web", 1, 0).is_empty(),
            "another stack"
        );
    }

    #[test]
    fn a_carried_container_serves_the_generation_it_was_carried_into() {
        let mut next = assignment(2, 1);
        next.carried.insert("web".into(), 1);
        let intent = wanting([assignment(1, 1), next]);
        assert_eq!(intent.serves("shop", "web", 1, 0), vec![1, 2]);
        assert!(
            intent.serves("shop", "web", 2, 0).is_empty(),
            "generation 2 runs generation 1's container, not one of its own"
        );
    }

    #[test]
    fn a_retired_generation_is_served_by_nothing_and_wanted_stopped() {
        let mut old = assignment(1, 1);
        old.state = Desired::Stop { drain_ms: 0 };
        let intent = wanting([old, assignment(2, 1)]);
        assert!(intent.serves("shop", "web", 1, 0).is_empty());
        assert!(intent.wants_stopped(&("shop".into(), 1)));
        assert!(!intent.wants_stopped(&("shop".into(), 2)));
        assert!(intent.wants_stopped(&("shop".into(), 3)), "never assigned");
    }

    #[test]
    fn a_scale_down_makes_the_highest_index_surplus_and_reports_it_draining() {
        let intent = wanting([assignment(1, 2)]);
        let kept = container(1, 1, true);
        let past = container(1, 2, true);
        assert!(!intent.surplus(&kept));
        assert!(intent.surplus(&past));
        assert_eq!(intent.state_of(&kept), ContainerState::Running);
        assert_eq!(intent.state_of(&past), ContainerState::Draining);
        assert!(
            !intent.surplus(&container(1, 2, false)),
            "a stopped one has nothing to drain"
        );
    }

    #[test]
    fn the_reported_state_puts_stopped_unhealthy_and_starting_out_of_rotation() {
        let mut intent = wanting([assignment(1, 3)]);
        intent.unhealthy.insert("c1-0".into());
        intent.starting.insert(("shop".into(), "web".into(), 1, 1));
        assert_eq!(
            intent.state_of(&container(1, 0, true)),
            ContainerState::Unhealthy
        );
        assert_eq!(
            intent.state_of(&container(1, 1, true)),
            ContainerState::Starting
        );
        assert_eq!(
            intent.state_of(&container(1, 0, false)),
            ContainerState::Stopped,
            "stopped outranks unhealthy"
        );
        assert_eq!(
            intent.state_of(&container(1, 2, true)),
            ContainerState::Running
        );
    }
}
