//! Where a request goes: the host ports the records publish, the service a `Host` names on
//! each (exact names first, then the longest `*.` wildcard, then the port's default), and
//! the next container of that service's serving generation, round-robin. TCP and UDP
//! ports (L4) have one service each.
//!
//! A table is built whole from the records each time they change and swapped in; requests
//! read the table they started with, so a flip never shows half a table.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddrV4,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use ferry_api::{hostname, records::ServiceRecord};
use tracing::warn;

use crate::discovery::Directory;

/// How a host port is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    /// Plain HTTP/1.x.
    Http,
    /// HTTP over TLS.
    Https,
    /// Raw TCP, relayed whole to one container per connection.
    Tcp,
}

/// One container a request can go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Its address on the container network and the container port.
    pub address: SocketAddrV4,
    /// Docker's id (for metrics and logs).
    pub container: String,
}

/// A service as one host port reaches it.
#[derive(Debug)]
pub struct Target {
    /// `<stack>/<service>`.
    pub name: String,
    /// The serving generation's containers.
    pub backends: Vec<Backend>,
    next: AtomicUsize,
}

impl Target {
    /// The next backend, round-robin, skipping the ones `out` says are out of rotation;
    /// None when there is none left.
    pub fn next(&self, out: &OutOfRotation) -> Option<&Backend> {
        let n = self.backends.len();
        for _ in 0..n {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
            let backend = &self.backends[i];
            if !out.contains(backend.address) {
                return Some(backend);
            }
        }
        None
    }
}

/// Longest a connect may take while another backend is left to try: on the container
/// network a live one answers in well under a millisecond; a killed container's address
/// answers nothing.
pub const CONNECT_TIME: Duration = Duration::from_secs(1);
/// Longest a connect may take to the last backend left: under load a SYN can wait for its
/// one-second retransmit, and with nothing else to try, waiting beats refusing.
pub const LAST_CONNECT_TIME: Duration = Duration::from_secs(5);

impl Target {
    /// The first backend, in rotation, that `open` gets a connection to (given how long it
    /// may take), taking the ones that fail out of rotation. When every backend is out it
    /// still tries the next one: a lone container that was slow once is not refused for
    /// good.
    pub async fn first_open<'t, T, F, Fut>(
        &'t self,
        out: &OutOfRotation,
        mut open: F,
    ) -> Option<(&'t Backend, T)>
    where
        F: FnMut(&'t Backend, Duration) -> Fut,
        Fut: std::future::Future<Output = std::io::Result<T>>,
    {
        let n = self.backends.len();
        if n == 0 {
            return None;
        }
        let mut left = self
            .backends
            .iter()
            .filter(|b| !out.contains(b.address))
            .count();
        while left > 0 {
            let backend = self.next(out)?;
            left -= 1;
            let time = if left > 0 {
                CONNECT_TIME
            } else {
                LAST_CONNECT_TIME
            };
            match open(backend, time).await {
                Ok(opened) => return Some((backend, opened)),
                Err(e) => {
                    out.take_out(backend.address);
                    warn!(service = %self.name, backend = %backend.address, "out of rotation for {OUT_FOR:?}: {e}");
                }
            }
        }
        let backend = &self.backends[self.next.fetch_add(1, Ordering::Relaxed) % n];
        open(backend, LAST_CONNECT_TIME)
            .await
            .ok()
            .map(|opened| (backend, opened))
    }
}

/// The services of one host port, by host name.
#[derive(Debug, Default)]
struct PortRoutes {
    scheme: Option<Scheme>,
    exact: HashMap<String, usize>,
    /// (suffix with its dot, e.g. ".example.com", target), longest first.
    wildcards: Vec<(String, usize)>,
    default: Option<usize>,
}

/// Every host port's routes, built from one view of the records.
#[derive(Debug, Default)]
pub struct Routes {
    /// TCP ports: HTTP, HTTPS and raw TCP.
    ports: BTreeMap<u16, PortRoutes>,
    /// UDP ports.
    udp: BTreeMap<u16, usize>,
    targets: Vec<Target>,
}

impl Routes {
    /// The routes `directory` publishes.
    pub fn build(directory: &Directory) -> Self {
        let mut routes = Routes::default();
        let mut records: Vec<&ServiceRecord> = directory.all().collect();
        // Deterministic when two records claim the same name on a port.
        records.sort_by(|a, b| (&a.stack, &a.service).cmp(&(&b.stack, &b.service)));
        for record in records {
            for port in &record.published {
                for (host_port, scheme) in [
                    (port.http, Scheme::Http),
                    (port.https, Scheme::Https),
                    (port.tcp, Scheme::Tcp),
                ] {
                    if let Some(host_port) = host_port {
                        routes.add(record, host_port, scheme, port.container);
                    }
                }
                if let Some(host_port) = port.udp {
                    let index = routes.target(record, port.container);
                    if routes.udp.insert(host_port, index).is_some() {
                        warn!(service = %record.service, host_port, "a second service on the UDP port; the last one takes it");
                    }
                }
            }
        }
        routes
    }

    /// A new target: the record's serving containers on `container` port.
    fn target(&mut self, record: &ServiceRecord, container: u16) -> usize {
        self.targets.push(Target {
            name: format!("{}/{}", record.stack, record.service),
            backends: record
                .pick(None)
                .iter()
                .map(|e| Backend {
                    address: SocketAddrV4::new(e.address, container),
                    container: e.container.clone(),
                })
                .collect(),
            next: AtomicUsize::new(0),
        });
        self.targets.len() - 1
    }

    fn add(&mut self, record: &ServiceRecord, host_port: u16, scheme: Scheme, container: u16) {
        let name = format!("{}/{}", record.stack, record.service);
        let taken = self.ports.get(&host_port).and_then(|p| p.scheme);
        if taken.is_some_and(|s| s != scheme) {
            warn!(service = %name, host_port, "the port is already served with another scheme; ignored here");
            return;
        }
        let index = self.target(record, container);
        let port = self.ports.entry(host_port).or_default();
        port.scheme = Some(scheme);
        if record.traffic_matches.is_empty() || scheme == Scheme::Tcp {
            if port.default.is_some() {
                // Central refuses two defaults on a port; two stacks can still collide.
                warn!(service = %name, host_port, "a second default on the port; the first keeps it");
            } else {
                port.default = Some(index);
            }
        }
        if scheme == Scheme::Tcp {
            return;
        }
        for pattern in &record.traffic_matches {
            // Central stores them canonical; records written before it did are made so here.
            let pattern = hostname::canonical(pattern).into_owned();
            match pattern.strip_prefix('*') {
                Some(suffix) => port.wildcards.push((suffix.to_string(), index)),
                None => {
                    port.exact.entry(pattern).or_insert(index);
                }
            }
        }
        port.wildcards
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
    }

    /// The host ports to listen on, and how each is served.
    pub fn ports(&self) -> impl Iterator<Item = (u16, Scheme)> + '_ {
        self.ports
            .iter()
            .filter_map(|(p, r)| r.scheme.map(|s| (*p, s)))
    }

    /// The UDP ports to listen on.
    pub fn udp_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.udp.keys().copied()
    }

    /// The service of UDP port `port`.
    pub fn udp(&self, port: u16) -> Option<&Target> {
        self.udp.get(&port).map(|i| &self.targets[*i])
    }

    /// The service `host` (in [`hostname::canonical`] form, without port; None: the request
    /// named none) means on `port`.
    pub fn route(&self, port: u16, host: Option<&str>) -> Option<&Target> {
        let routes = self.ports.get(&port)?;
        let found = host.and_then(|host| {
            routes.exact.get(host).copied().or_else(|| {
                routes
                    .wildcards
                    .iter()
                    .find(|(suffix, _)| {
                        host.len() > suffix.len() && host.ends_with(suffix.as_str())
                    })
                    .map(|(_, i)| *i)
            })
        });
        found.or(routes.default).map(|i| &self.targets[i])
    }
}

/// How long a backend that refused a connection stays out of rotation; the records take it
/// out for good once its server reports it stopped.
pub const OUT_FOR: Duration = Duration::from_secs(2);

/// Backends that just failed to accept a connection (a container stopping or crashed): kept
/// out of rotation for [`OUT_FOR`] so no other request tries them meanwhile.
#[derive(Debug, Default)]
pub struct OutOfRotation {
    until: std::sync::Mutex<HashMap<SocketAddrV4, Instant>>,
}

impl OutOfRotation {
    /// Takes `backend` out for [`OUT_FOR`].
    pub fn take_out(&self, backend: SocketAddrV4) {
        self.lock().insert(backend, Instant::now() + OUT_FOR);
    }

    /// Whether `backend` is out now.
    pub fn contains(&self, backend: SocketAddrV4) -> bool {
        let mut until = self.lock();
        if until.is_empty() {
            return false;
        }
        let now = Instant::now();
        until.retain(|_, t| *t > now);
        until.contains_key(&backend)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddrV4, Instant>> {
        self.until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, net::Ipv4Addr};

    use ferry_api::{
        records::{Endpoint, ServiceRecord},
        servicefile::{DnsBehaviour, LoadBalancing, Port},
    };

    use super::*;
    use crate::discovery::Records;

    fn record(
        service: &str,
        published: Vec<Port>,
        matches: &[&str],
        lasts: &[u8],
    ) -> ServiceRecord {
        ServiceRecord {
            stack: "site".into(),
            service: service.into(),
            address: None,
            serving: Some(1),
            dns_behaviour: DnsBehaviour::Versioned,
            load_balancing: LoadBalancing::RoundRobin,
            ports: vec![3000],
            published,
            traffic_matches: matches.iter().map(ToString::to_string).collect(),
            generations: BTreeMap::from([(
                1,
                lasts
                    .iter()
                    .map(|l| Endpoint {
                        address: Ipv4Addr::new(10, 66, 1, *l),
                        server: "one".into(),
                        container: format!("c{l}"),
                    })
                    .collect(),
            )]),
        }
    }

    fn http(port: u16) -> Vec<Port> {
        vec![Port {
            container: 3000,
            http: Some(port),
            ..Port::default()
        }]
    }

    fn routes(records: Vec<ServiceRecord>) -> Routes {
        let all = Records::default();
        all.replace(records);
        Routes::build(&all.read())
    }

    fn name(routes: &Routes, port: u16, host: Option<&str>) -> Option<String> {
        routes.route(port, host).map(|t| t.name.clone())
    }

    #[test]
    fn exact_names_then_the_longest_wildcard_then_the_default() {
        let r = routes(vec![
            record("shop", http(80), &["shop.example.com"], &[2]),
            record("blog", http(80), &["*.blog.example"], &[3]),
            record("deep", http(80), &["*.deep.blog.example"], &[4]),
            record("fallback", http(80), &[], &[5]),
        ]);
        let at = |host| name(&r, 80, Some(host));
        assert_eq!(at("shop.example.com").as_deref(), Some("site/shop"));
        assert_eq!(at("a.blog.example").as_deref(), Some("site/blog"));
        assert_eq!(at("x.deep.blog.example").as_deref(), Some("site/deep"));
        // A wildcard covers names below it, not the name itself.
        assert_eq!(at("blog.example").as_deref(), Some("site/fallback"));
        assert_eq!(at("other.example").as_deref(), Some("site/fallback"));
        assert_eq!(name(&r, 80, None).as_deref(), Some("site/fallback"));
        assert_eq!(name(&r, 81, Some("shop.example.com")), None, "no such port");
    }

    #[test]
    fn without_a_default_an_unknown_host_has_no_service() {
        let r = routes(vec![record("shop", http(80), &["shop.example.com"], &[2])]);
        assert_eq!(name(&r, 80, Some("other.example")), None);
    }

    #[test]
    fn round_robin_skips_backends_out_of_rotation() {
        let r = routes(vec![record("shop", http(80), &[], &[2, 3, 4])]);
        let target = r.route(80, None).unwrap();
        let out = OutOfRotation::default();
        let picks: Vec<u8> = (0..6)
            .map(|_| target.next(&out).unwrap().address.ip().octets()[3])
            .collect();
        assert_eq!(picks, [2, 3, 4, 2, 3, 4]);
        out.take_out(SocketAddrV4::new(Ipv4Addr::new(10, 66, 1, 3), 3000));
        let picks: Vec<u8> = (0..4)
            .map(|_| target.next(&out).unwrap().address.ip().octets()[3])
            .collect();
        assert!(!picks.contains(&3), "{picks:?}");
        assert_eq!(
            target.backends[0].address.port(),
            3000,
            "the container port"
        );
    }

    #[test]
    fn tcp_and_udp_ports_have_one_service_each_and_schemes_do_not_mix() {
        let l4 = vec![
            Port {
                container: 7000,
                tcp: Some(7000),
                ..Port::default()
            },
            Port {
                container: 7001,
                udp: Some(7001),
                ..Port::default()
            },
        ];
        let r = routes(vec![
            record("shop", l4, &["shop.example.com"], &[2]),
            // Claims 7000 for HTTP too: the first scheme keeps the port.
            record("zzz", http(7000), &[], &[9]),
        ]);
        let ports: Vec<(u16, Scheme)> = r.ports().collect();
        assert_eq!(ports, [(7000, Scheme::Tcp)]);
        assert_eq!(
            name(&r, 7000, Some("anything")).as_deref(),
            Some("site/shop")
        );
        assert_eq!(r.udp_ports().collect::<Vec<_>>(), [7001]);
        assert_eq!(r.udp(7001).unwrap().backends[0].address.port(), 7001);
    }

    #[tokio::test]
    async fn a_failing_backend_is_skipped_and_a_lone_one_still_tried() {
        let r = routes(vec![record("shop", http(80), &[], &[2, 3])]);
        let target = r.route(80, None).unwrap();
        let out = OutOfRotation::default();
        let at = |last| SocketAddrV4::new(Ipv4Addr::new(10, 66, 1, last), 3000);
        let (picked, ()) = target
            .first_open(&out, |b, time| async move {
                if *b.address.ip() == Ipv4Addr::new(10, 66, 1, 2) {
                    // Another backend is left: the short wait.
                    assert_eq!(time, CONNECT_TIME);
                    Err(std::io::Error::other("refused"))
                } else {
                    Ok(())
                }
            })
            .await
            .unwrap();
        assert_eq!(picked.address, at(3));
        assert!(out.contains(at(2)));
        // Every backend out: the next one is still tried, patiently.
        out.take_out(at(3));
        let tried = target
            .first_open(&out, |_, time| async move {
                assert_eq!(time, LAST_CONNECT_TIME);
                Ok(())
            })
            .await;
        assert!(tried.is_some());
    }
}
