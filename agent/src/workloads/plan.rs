//! The reconcile loop's decisions, as pure functions of an assignment, what runs here and
//! the intent: which containers are adopted, replaced or started (and so which services
//! need an image built), and which are stopped. The callers list containers and act; no
//! decision here talks to Docker or central, so unit tests reach every one.

use std::collections::BTreeSet;

use ferry_api::types::Assignment;

use super::intent::{Intent, RunId};
use crate::containers::FerryContainer;

/// What is done about one container slot of a wanted generation.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step<'a> {
    /// It runs already (started by an earlier agent, or kept from an earlier generation):
    /// adopted and checked again.
    Adopt(&'a FerryContainer),
    /// Its container exited before it was checked: removed, and a new one started
    /// rather than two kept.
    Replace(&'a FerryContainer),
    /// Nothing of it exists here: started.
    Start,
}

/// One service's slots of a wanted generation, `0..count` in order.
#[derive(Debug)]
pub(super) struct ServicePlan<'a> {
    /// The service's name.
    pub(super) name: &'a str,
    /// Each slot's index and what is done about it.
    pub(super) steps: Vec<(u32, Step<'a>)>,
}

impl ServicePlan<'_> {
    /// Whether the service's image must be built (or pulled): some slot starts a container.
    pub(super) fn needs_image(&self) -> bool {
        self.steps
            .iter()
            .any(|(_, step)| !matches!(step, Step::Adopt(_)))
    }
}

/// What bringing `assignment` up on this server takes, given the containers `running`
/// here (every ferry container, running or not), service by service.
pub(super) fn settle<'a>(
    assignment: &'a Assignment,
    running: &'a [FerryContainer],
) -> Vec<ServicePlan<'a>> {
    assignment
        .services
        .keys()
        .map(|name| ServicePlan {
            name,
            steps: (0..assignment.count(name))
                .map(|index| {
                    let step = match existing(assignment, running, name, index) {
                        Some(c) if c.running => Step::Adopt(c),
                        Some(dead) => Step::Replace(dead),
                        None => Step::Start,
                    };
                    (index, step)
                })
                .collect(),
        })
        .collect()
}

/// Container `index` of service `name` this generation uses, if one exists here: a kept
/// one (`restart_on_deploy: false`), else its own (perhaps left by an earlier agent), a
/// running one first.
fn existing<'a>(
    assignment: &Assignment,
    running: &'a [FerryContainer],
    name: &str,
    index: u32,
) -> Option<&'a FerryContainer> {
    let of = |generation: u64| {
        move |c: &&FerryContainer| {
            c.stack == assignment.stack
                && c.service == name
                && c.generation == generation
                && c.index == index
        }
    };
    let kept = assignment
        .carried
        .get(name)
        .and_then(|origin| running.iter().filter(of(*origin)).find(|c| c.running));
    let own = || {
        let mut own = running.iter().filter(of(assignment.generation));
        let first = own.clone().next();
        own.find(|c| c.running).or(first)
    };
    kept.or_else(own)
}

/// The containers of generation `id` that stop with it: all but those a wanted generation
/// carried along.
pub(super) fn retiring(
    intent: &Intent,
    running: Vec<FerryContainer>,
    id: &RunId,
) -> Vec<FerryContainer> {
    running
        .into_iter()
        .filter(|c| c.stack == id.0 && c.generation == id.1)
        .filter(|c| {
            intent
                .serves(&c.stack, &c.service, c.generation, c.index)
                .is_empty()
        })
        .collect()
}

/// The containers of `stack` running past their service's count (a scale-down), which
/// drain and stop.
pub(super) fn surplus(
    intent: &Intent,
    running: Vec<FerryContainer>,
    stack: &str,
) -> Vec<FerryContainer> {
    running
        .into_iter()
        .filter(|c| c.stack == stack && intent.surplus(c))
        .collect()
}

/// The generations with containers here that no assignment accounts for (left by a
/// server's removal or a lost stop): they would otherwise run for ever, unseen.
pub(super) fn orphans(intent: &Intent, running: &[FerryContainer]) -> BTreeSet<RunId> {
    running
        .iter()
        .map(|c| (c.stack.clone(), c.generation))
        .filter(|id| !intent.desired.contains_key(id))
        .collect()
}

#[cfg(test)]
mod tests {
    use ferry_api::types::Desired;

    use super::{
        super::intent::tests::{assignment, container, wanting},
        *,
    };

    fn steps<'a>(plan: &'a [ServicePlan<'a>]) -> Vec<&'a Step<'a>> {
        assert_eq!(plan.len(), 1, "one service, web");
        plan[0].steps.iter().map(|(_, step)| step).collect()
    }

    #[test]
    fn a_new_generation_builds_and_starts_every_container() {
        let wanted = assignment(2, 3);
        let running = [container(1, 0, true)];
        let plan = settle(&wanted, &running);
        assert_eq!(steps(&plan), vec![&Step::Start, &Step::Start, &Step::Start]);
        assert!(plan[0].needs_image());
    }

    #[test]
    fn a_restarted_agent_adopts_what_runs_and_builds_nothing() {
        let wanted = assignment(1, 2);
        let running = [container(1, 0, true), container(1, 1, true)];
        let plan = settle(&wanted, &running);
        assert_eq!(
            steps(&plan),
            vec![&Step::Adopt(&running[0]), &Step::Adopt(&running[1])]
        );
        assert!(!plan[0].needs_image());
    }

    #[test]
    fn an_exited_container_is_replaced_and_a_running_twin_preferred() {
        let wanted = assignment(1, 2);
        let running = [
            container(1, 0, false),
            container(1, 1, false),
            FerryContainer {
                id: "c1-1-again".into(),
                ..container(1, 1, true)
            },
        ];
        let plan = settle(&wanted, &running);
        assert_eq!(
            steps(&plan),
            vec![&Step::Replace(&running[0]), &Step::Adopt(&running[2])]
        );
        assert!(plan[0].needs_image());
    }

    #[test]
    fn a_scale_up_keeps_the_running_and_starts_the_missing() {
        let wanted = assignment(1, 3);
        let running = [container(1, 0, true)];
        let plan = settle(&wanted, &running);
        assert_eq!(
            steps(&plan),
            vec![&Step::Adopt(&running[0]), &Step::Start, &Step::Start]
        );
    }

    #[test]
    fn a_carried_service_adopts_the_earlier_generations_container() {
        let mut wanted = assignment(2, 1);
        wanted.carried.insert("web".into(), 1);
        let running = [container(1, 0, true)];
        let plan = settle(&wanted, &running);
        assert_eq!(steps(&plan), vec![&Step::Adopt(&running[0])]);
        let gone = [container(1, 0, false)];
        assert_eq!(
            steps(&settle(&wanted, &gone)),
            vec![&Step::Start],
            "a kept container that no longer runs is not adopted: generation 2 starts its own"
        );
    }

    #[test]
    fn a_retired_generation_stops_all_but_what_a_wanted_one_carried() {
        let mut old = assignment(1, 2);
        old.state = Desired::Stop { drain_ms: 0 };
        let mut new = assignment(2, 1);
        new.carried.insert("web".into(), 1);
        let intent = wanting([old, new]);
        let running = vec![
            container(1, 0, true),
            container(1, 1, true),
            container(2, 0, true),
        ];
        let ids: Vec<String> = retiring(&intent, running, &("shop".into(), 1))
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(ids, vec!["c1-1"], "index 0 was carried into generation 2");
    }

    #[test]
    fn a_scale_down_drains_the_containers_past_the_count() {
        let intent = wanting([assignment(1, 1)]);
        let running = vec![
            container(1, 0, true),
            container(1, 1, true),
            container(1, 2, false),
        ];
        let ids: Vec<String> = surplus(&intent, running, "shop")
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(ids, vec!["c1-1"]);
    }

    #[test]
    fn containers_no_assignment_accounts_for_are_orphans() {
        let intent = wanting([assignment(2, 1)]);
        let running = [
            container(1, 0, true),
            container(2, 0, true),
            container(1, 1, false),
        ];
        assert_eq!(
            orphans(&intent, &running),
            BTreeSet::from([("shop".to_string(), 1)])
        );
    }
}
