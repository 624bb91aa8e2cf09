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

use ferry_api::records::ServiceRecord;
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
            let pattern = pattern.to_ascii_lowercase();
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

    /// The service `host` (lowercase, without port; None: the request named none) means on
    /// `port`.
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
