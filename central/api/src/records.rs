//! Service discovery records: where each service's containers are, per generation, and the
//! rule that picks the ones a caller gets.
//!
//! Central derives a [`ServiceRecord`] per service at `records/<stack>/<service>` from the
//! servers' container reports and the stack's generations; agents follow `records/` and
//! answer `<service>.cloud66.local` (and steer service addresses) from it with
//! [`ServiceRecord::pick`], knowing the caller's generation from its cgroup.

use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::{
    servicefile::{DnsBehaviour, LoadBalancing, Port},
    types::ContainerReport,
};

/// One container a name can resolve to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoint {
    /// Its address on the container network.
    pub address: Ipv4Addr,
    /// The server it runs on (for `load_balancing: closest`).
    pub server: String,
    /// Docker's id.
    pub container: String,
}

/// `records/<stack>/<service>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// The stack.
    pub stack: String,
    /// The service.
    pub service: String,
    /// Its stable service address: a connect to it (on a declared port) from a container
    /// is steered to one of the endpoints [`pick`](Self::pick) gives.
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
    /// The stack's serving generation, if one serves.
    pub serving: Option<u64>,
    /// Versioned (the default) or not.
    pub dns_behaviour: DnsBehaviour,
    /// How callers are spread over the endpoints.
    pub load_balancing: LoadBalancing,
    /// The container ports the service declares (SRV records).
    pub ports: Vec<u16>,
    /// The ports published on the servers' own addresses (ingress).
    #[serde(default)]
    pub published: Vec<Port>,
    /// Host names the service answers on shared HTTP(S) ports (exact or `*.` wildcard);
    /// none: it is the default of its ports.
    #[serde(default)]
    pub traffic_matches: Vec<String>,
    /// Running containers by the generation they serve; a container kept across deploys
    /// (`restart_on_deploy: false`) is under each generation it serves.
    pub generations: BTreeMap<u64, Vec<Endpoint>>,
}

impl ServiceRecord {
    /// The endpoints a caller of generation `caller` gets (None: a host process or an
    /// unknown cgroup): the newest generation at or below the caller's that has running
    /// containers; failing that, or when the service is not versioned, the serving
    /// generation's; failing that, the newest that has any. Empty only when no container
    /// of the service runs at all.
    pub fn pick(&self, caller: Option<u64>) -> &[Endpoint] {
        let nonempty = |g: &u64| self.generations.get(g).filter(|e| !e.is_empty());
        let versioned = match (self.dns_behaviour, caller) {
            (DnsBehaviour::Versioned, Some(g)) => self
                .generations
                .range(..=g)
                .rev()
                .find(|(_, e)| !e.is_empty())
                .map(|(_, e)| e.as_slice()),
            _ => None,
        };
        versioned
            .or_else(|| self.serving.as_ref().and_then(nonempty).map(Vec::as_slice))
            .or_else(|| {
                self.generations
                    .values()
                    .rev()
                    .find(|e| !e.is_empty())
                    .map(Vec::as_slice)
            })
            .unwrap_or(&[])
    }
}

/// Running containers of `stack` from every server's report, by service and by the
/// generations each serves. A draining container (serving none any more) stays under its
/// own generation while it runs: callers of that generation still reach it.
pub fn endpoints<'a>(
    stack: &str,
    reports: impl IntoIterator<Item = (&'a String, &'a Vec<ContainerReport>)>,
) -> BTreeMap<String, BTreeMap<u64, Vec<Endpoint>>> {
    let mut out: BTreeMap<String, BTreeMap<u64, Vec<Endpoint>>> = BTreeMap::new();
    for (server, containers) in reports {
        for c in containers {
            let Some(address) = c.address else { continue };
            if c.stack != stack || c.state != crate::types::ContainerState::Running {
                continue;
            }
            let serves = if c.serves.is_empty() {
                std::slice::from_ref(&c.generation)
            } else {
                c.serves.as_slice()
            };
            for generation in serves {
                out.entry(c.service.clone())
                    .or_default()
                    .entry(*generation)
                    .or_default()
                    .push(Endpoint {
                        address,
                        server: server.clone(),
                        container: c.id.clone(),
                    });
            }
        }
    }
    for generations in out.values_mut() {
        for list in generations.values_mut() {
            list.sort();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(last: u8) -> Endpoint {
        Endpoint {
            address: Ipv4Addr::new(10, 66, 1, last),
            server: "one".into(),
            container: format!("c{last}"),
        }
    }

    fn record(serving: Option<u64>, generations: &[(u64, &[u8])]) -> ServiceRecord {
        ServiceRecord {
            stack: "shop".into(),
            service: "api".into(),
            address: None,
            serving,
            dns_behaviour: DnsBehaviour::Versioned,
            load_balancing: LoadBalancing::RoundRobin,
            ports: vec![4000],
            published: Vec::new(),
            traffic_matches: Vec::new(),
            generations: generations
                .iter()
                .map(|(g, lasts)| (*g, lasts.iter().map(|l| endpoint(*l)).collect()))
                .collect(),
        }
    }

    fn lasts(endpoints: &[Endpoint]) -> Vec<u8> {
        endpoints.iter().map(|e| e.address.octets()[3]).collect()
    }

    #[test]
    fn during_a_deploy_each_generation_gets_its_own() {
        let r = record(Some(1), &[(1, &[2, 3]), (2, &[4])]);
        assert_eq!(lasts(r.pick(Some(1))), [2, 3], "old web, old api");
        assert_eq!(lasts(r.pick(Some(2))), [4], "new web, new api");
        assert_eq!(lasts(r.pick(None)), [2, 3], "the host gets the serving one");
    }

    #[test]
    fn a_caller_without_its_generation_gets_the_newest_below_it_then_the_serving_one() {
        // api did not change in generation 3 (kept under 2 only), web of 3 asks.
        let r = record(Some(2), &[(1, &[2]), (2, &[4])]);
        assert_eq!(lasts(r.pick(Some(3))), [4]);
        // A caller older than every generation left gets the serving one.
        let r = record(Some(5), &[(5, &[9])]);
        assert_eq!(lasts(r.pick(Some(3))), [9]);
    }

    #[test]
    fn non_versioned_services_always_answer_with_the_serving_generation() {
        let mut r = record(Some(1), &[(1, &[2]), (2, &[4])]);
        r.dns_behaviour = DnsBehaviour::NonVersioned;
        assert_eq!(lasts(r.pick(Some(2))), [2]);
    }

    #[test]
    fn nothing_serving_yet_means_the_newest_running_and_nothing_running_means_empty() {
        let r = record(None, &[(1, &[2])]);
        assert_eq!(lasts(r.pick(None)), [2]);
        let r = record(Some(1), &[]);
        assert!(r.pick(Some(1)).is_empty());
    }

    #[test]
    fn reports_become_endpoints_by_the_generations_each_container_serves() {
        use crate::types::ContainerState::{Running, Stopped};
        let report =
            |id: &str, service: &str, generation: u64, serves: &[u64], state| ContainerReport {
                id: id.into(),
                stack: "shop".into(),
                service: service.into(),
                generation,
                serves: serves.to_vec(),
                address: Some(Ipv4Addr::new(10, 66, 1, id.len() as u8)),
                state,
                cgroup_id: None,
            };
        let reports = BTreeMap::from([(
            "one".to_string(),
            vec![
                report("a", "api", 1, &[], Running),         // draining: under 1
                report("bb", "api", 2, &[2], Running),       // new
                report("ccc", "cache", 1, &[2, 3], Running), // kept into 2 and 3
                report("dddd", "api", 2, &[2], Stopped),     // not running: no endpoint
            ],
        )]);
        let found = endpoints("shop", &reports);
        let gens = |service: &str| -> Vec<(u64, usize)> {
            found[service].iter().map(|(g, e)| (*g, e.len())).collect()
        };
        assert_eq!(gens("api"), [(1, 1), (2, 1)]);
        assert_eq!(gens("cache"), [(2, 1), (3, 1)]);
    }
}
