//! Where a stack's containers go: how many of each service, and on which servers.
//!
//! A service runs a number of containers (Cloud 66 scales by containers), spread over
//! the servers so that no server has two more of it than another (5 over two servers: 3
//! and 2). Among the servers with the fewest, one with the most free memory goes first
//! when the service has a memory limit, then the first by name. A server never takes a
//! container whose memory limit does not fit in what its earlier containers' limits left
//! of its memory (Kubernetes' scheduler does the same with requests); a server that did
//! not say its memory takes any.
//!
//! A server also holds at most [`ADDRESSES_PER_SERVER`] containers: each takes an address of
//! its `/24` (measured: a count past that started containers until Docker had no address
//! left, then failed halfway).
//!
//! Placement starts from what runs: a scale adds to the servers with the fewest and
//! removes from those with the most (the last by name first), so the containers that
//! stay are never moved.

use std::collections::BTreeMap;

use ferry_api::servicefile::Service;

/// Containers per server of one service.
pub type Spread = BTreeMap<String, u32>;

/// Most containers one server holds: its `/24` less the network, gateway and broadcast
/// addresses, and a few kept for one-off containers (builds run on the host network).
pub const ADDRESSES_PER_SERVER: u32 = 250;

/// A server as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Room {
    /// Its name.
    pub name: String,
    /// Its memory in bytes; None: unknown, nothing is refused for memory.
    pub memory: Option<u64>,
    /// Bytes already promised to containers placement does not move (other stacks').
    pub reserved: u64,
    /// Containers it already holds that placement does not move (its addresses taken).
    pub containers: u32,
}

/// Why a count cannot be placed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error(
        "{service}: {count} containers asked, but its service.yml allows {allowed}; change \
         constraints.min_count/max_count and deploy, or ask for a count within it"
    )]
    OutOfBounds {
        service: String,
        count: u32,
        allowed: String,
    },
    #[error(
        "{service}: {count} containers with a memory limit of {limit} MiB each do not fit: \
         {placed} fit ({rooms}); lower the count or the memory limit, or add a server"
    )]
    NoRoom {
        service: String,
        count: u32,
        limit: u64,
        placed: u32,
        /// Each server's memory and what was promised of it, e.g. `one: 512 of 1024 MiB`.
        rooms: String,
    },
    #[error(
        "{service}: {count} containers do not fit: a server holds at most \
         {ADDRESSES_PER_SERVER} (one address of its /24 each) and {placed} fit ({rooms}); \
         lower the count or add a server"
    )]
    NoAddresses {
        service: String,
        count: u32,
        placed: u32,
        /// Each server's containers, e.g. `one: 250 of 250`.
        rooms: String,
    },
    #[error("no server has joined; run `ferry-agent join` on a server first")]
    NoServers,
}

/// The bounds service.yml puts on `spec`'s count, as `(min, max)`.
pub fn bounds(spec: &Service) -> (u32, u32) {
    let min = spec.constraints.min_count.unwrap_or(0);
    let max = spec.constraints.max_count.unwrap_or(u32::MAX);
    (min, max.max(min))
}

/// How many containers a service starts with when nothing says otherwise: one per
/// server (what ferry did before counts), within its service.yml bounds.
pub fn default_count(spec: &Service, servers: usize) -> u32 {
    let (min, max) = bounds(spec);
    u32::try_from(servers).unwrap_or(u32::MAX).clamp(min, max)
}

/// Refuses `count` outside `spec`'s bounds.
pub fn check_bounds(service: &str, spec: &Service, count: u32) -> Result<(), PlacementError> {
    let (min, max) = bounds(spec);
    if (min..=max).contains(&count) {
        return Ok(());
    }
    let allowed = match (min, max) {
        (0, max) => format!("at most {max}"),
        (min, u32::MAX) => format!("at least {min}"),
        (min, max) => format!("{min} to {max}"),
    };
    Err(PlacementError::OutOfBounds {
        service: service.into(),
        count,
        allowed,
    })
}

/// Spreads `count` containers of `service` over `rooms`, starting from `from` (what runs
/// now, kept where it is). Each placed container's memory limit is added to its room's
/// `reserved`, so services placed one after another share the rooms.
pub fn spread(
    rooms: &mut [Room],
    service: &str,
    spec: &Service,
    count: u32,
    from: &Spread,
) -> Result<Spread, PlacementError> {
    if rooms.is_empty() {
        return if count == 0 {
            Ok(Spread::new())
        } else {
            Err(PlacementError::NoServers)
        };
    }
    let limit = spec.constraints.memory.unwrap_or(0);
    let mut placed: Spread = rooms
        .iter()
        .filter_map(|r| Some((r.name.clone(), *from.get(&r.name).filter(|n| **n > 0)?)))
        .collect();
    let mut total: u32 = placed.values().sum();
    while total > count {
        // The server with the most, the last by name among equals, gives one back.
        let Some(name) = placed
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0)))
            .map(|(name, _)| name.clone())
        else {
            break;
        };
        if let Some(n) = placed.get_mut(&name) {
            *n -= 1;
            if *n == 0 {
                placed.remove(&name);
            }
        }
        total -= 1;
    }
    for room in rooms.iter_mut() {
        let kept = placed.get(&room.name).copied().unwrap_or(0);
        room.reserved = room
            .reserved
            .saturating_add(u64::from(kept).saturating_mul(limit));
        room.containers = room.containers.saturating_add(kept);
    }
    while total < count {
        let addressed = |r: &Room| r.containers < ADDRESSES_PER_SERVER;
        if !rooms.iter().any(addressed) {
            let rooms = rooms
                .iter()
                .map(|r| format!("{}: {} of {ADDRESSES_PER_SERVER}", r.name, r.containers))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(PlacementError::NoAddresses {
                service: service.into(),
                count,
                placed: total,
                rooms,
            });
        }
        let fits = |r: &Room| {
            addressed(r)
                && r.memory
                    .is_none_or(|m| m.saturating_sub(r.reserved) >= limit)
        };
        let free = |r: &Room| r.memory.map_or(u64::MAX, |m| m.saturating_sub(r.reserved));
        let best = rooms.iter_mut().filter(|r| fits(r)).min_by(|a, b| {
            let (na, nb) = (placed.get(&a.name), placed.get(&b.name));
            na.cmp(&nb)
                .then_with(|| match limit {
                    0 => std::cmp::Ordering::Equal,
                    _ => free(b).cmp(&free(a)),
                })
                .then_with(|| a.name.cmp(&b.name))
        });
        let Some(room) = best else {
            let rooms = rooms
                .iter()
                .map(|r| match r.memory {
                    Some(m) => {
                        format!("{}: {} of {} MiB promised", r.name, mib(r.reserved), mib(m))
                    }
                    None => format!("{}: memory unknown", r.name),
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Err(PlacementError::NoRoom {
                service: service.into(),
                count,
                limit: mib(limit),
                placed: total,
                rooms,
            });
        };
        room.reserved = room.reserved.saturating_add(limit);
        room.containers += 1;
        *placed.entry(room.name.clone()).or_default() += 1;
        total += 1;
    }
    Ok(placed)
}

fn mib(bytes: u64) -> u64 {
    bytes / (1024 * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rooms(memory: &[(&str, Option<u64>)]) -> Vec<Room> {
        memory
            .iter()
            .map(|(name, memory)| Room {
                name: (*name).into(),
                memory: memory.map(|m| m << 20),
                reserved: 0,
                containers: 0,
            })
            .collect()
    }

    fn with_memory(mib: u64) -> Service {
        let mut spec = Service::default();
        spec.constraints.memory = Some(mib << 20);
        spec
    }

    fn counts(spread: &Spread) -> Vec<(&str, u32)> {
        spread.iter().map(|(s, n)| (s.as_str(), *n)).collect()
    }

    #[test]
    fn five_over_two_servers_is_three_and_two_and_two_is_one_each() {
        let mut r = rooms(&[("b", None), ("a", None)]);
        let spec = Service::default();
        let five = spread(&mut r, "web", &spec, 5, &Spread::new()).expect("fits");
        assert_eq!(counts(&five), [("a", 3), ("b", 2)]);
        let two = spread(&mut r, "web", &spec, 2, &five).expect("fits");
        assert_eq!(counts(&two), [("a", 1), ("b", 1)]);
    }

    #[test]
    fn a_scale_keeps_what_runs_where_it_is() {
        let mut r = rooms(&[("a", None), ("b", None), ("c", None)]);
        let spec = Service::default();
        let from = Spread::from([("b".to_string(), 2)]);
        let up = spread(&mut r, "web", &spec, 4, &from).expect("fits");
        assert_eq!(counts(&up), [("a", 1), ("b", 2), ("c", 1)]);
        let down = spread(&mut r, "web", &spec, 3, &up).expect("fits");
        assert_eq!(counts(&down), [("a", 1), ("b", 1), ("c", 1)]);
        let none = spread(&mut r, "web", &spec, 0, &down).expect("fits");
        assert!(none.is_empty());
    }

    #[test]
    fn memory_limits_prefer_room_and_never_overfill_a_server() {
        // 1 GiB and 2 GiB servers, 512 MiB containers: the larger server goes first on a
        // tie, and at most 2 + 4 fit.
        let mut r = rooms(&[("a", Some(1024)), ("b", Some(2048))]);
        let spec = with_memory(512);
        let one = spread(&mut r.clone(), "web", &spec, 1, &Spread::new()).expect("fits");
        assert_eq!(counts(&one), [("b", 1)]);
        let six = spread(&mut r.clone(), "web", &spec, 6, &Spread::new()).expect("fits");
        assert_eq!(counts(&six), [("a", 2), ("b", 4)]);
        let err = spread(&mut r, "web", &spec, 7, &Spread::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "web: 7 containers with a memory limit of 512 MiB each do not fit: 6 fit (a: 1024 \
             of 1024 MiB promised, b: 2048 of 2048 MiB promised); lower the count or the \
             memory limit, or add a server"
        );
    }

    #[test]
    fn a_server_holds_no_more_containers_than_its_subnet_has_addresses() {
        let mut r = rooms(&[("a", None), ("b", None)]);
        r[0].containers = 10;
        let spec = Service::default();
        let most = spread(&mut r.clone(), "web", &spec, 490, &Spread::new()).expect("fits");
        assert_eq!(counts(&most), [("a", 240), ("b", 250)]);
        let err = spread(&mut r, "web", &spec, 999_999, &Spread::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "web: 999999 containers do not fit: a server holds at most 250 (one address of \
             its /24 each) and 490 fit (a: 250 of 250, b: 250 of 250); lower the count or \
             add a server"
        );
    }

    #[test]
    fn what_other_services_promised_counts() {
        let mut r = rooms(&[("a", Some(1024))]);
        spread(&mut r, "api", &with_memory(768), 1, &Spread::new()).expect("fits");
        let err = spread(&mut r, "web", &with_memory(512), 1, &Spread::new()).unwrap_err();
        assert!(
            matches!(err, PlacementError::NoRoom { placed: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn bounds_come_from_min_and_max_count() {
        let mut spec = Service::default();
        assert_eq!(default_count(&spec, 3), 3);
        spec.constraints.max_count = Some(1);
        assert_eq!(default_count(&spec, 3), 1);
        spec.constraints.min_count = Some(4);
        spec.constraints.max_count = Some(7);
        assert_eq!(default_count(&spec, 1), 4);
        assert!(check_bounds("web", &spec, 7).is_ok());
        assert_eq!(
            check_bounds("web", &spec, 8).unwrap_err().to_string(),
            "web: 8 containers asked, but its service.yml allows 4 to 7; change \
             constraints.min_count/max_count and deploy, or ask for a count within it"
        );
        assert!(spread(&mut [], "web", &spec, 1, &Spread::new()).is_err());
    }
}
