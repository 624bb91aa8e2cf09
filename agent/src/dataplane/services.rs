//! The typed API for the service maps: a service address and its backends.
//!
//! The table opens the pinned maps, so any process of the agent (the daemon, the CLI, a
//! test) writes the same kernel state. There must be one writer at a time: the daemon.
//!
//! A change of backends goes into the bank the service does not use, then one map update
//! switches the service to it, then the old bank is cleared. The kernel therefore never
//! reads a backend count that does not match the slots present.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
};

use aya::maps::{HashMap, Map, MapData, MapError};
use ferry_ebpf_abi::{
    ANY_GENERATION, Backend, BackendKey, MAX_BACKENDS, MAX_SERVICES, Service, ServiceKey, map_names,
};

/// Errors from reading or writing the service maps.
#[derive(Debug, thiserror::Error)]
pub enum ServiceTableError {
    #[error(
        "open pinned map {path}: {source}; is the agent running (`ferry-agent run`) with the \
         same --bpffs?"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("{path} is not a hash map of the expected key and value sizes: {source}")]
    Shape {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("service {service} has {count} backends; at most {MAX_BACKENDS} are supported")]
    TooManyBackends { service: SocketAddrV4, count: usize },
    #[error("the service table is full ({MAX_SERVICES} services); remove one first")]
    Full,
    #[error("{op} {map} for service {service}: {source}")]
    Update {
        op: &'static str,
        map: &'static str,
        service: SocketAddrV4,
        #[source]
        source: MapError,
    },
    #[error("read {map}: {source}")]
    Read {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

/// Which callers an entry of the table steers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Callers {
    /// Everyone without an entry of their own: host processes, other stacks, generations
    /// the agent wrote nothing for.
    Everyone,
    /// Containers of this generation of the service's stack.
    Generation(u32),
}

impl Callers {
    fn generation(self) -> u32 {
        match self {
            Callers::Everyone => ANY_GENERATION,
            Callers::Generation(g) => g,
        }
    }

    fn from_generation(g: u32) -> Self {
        if g == ANY_GENERATION {
            Callers::Everyone
        } else {
            Callers::Generation(g)
        }
    }
}

/// Service address to backends, as the connect4 program sees them.
pub struct ServiceTable {
    services: HashMap<MapData, ServiceKey, Service>,
    backends: HashMap<MapData, BackendKey, Backend>,
}

impl ServiceTable {
    /// Opens the maps pinned in `map_dir` (see [`DataplaneConfig::map_dir`](super::DataplaneConfig::map_dir)).
    pub fn open(map_dir: &Path) -> Result<Self, ServiceTableError> {
        Ok(Self {
            services: open_hash(map_dir, map_names::SERVICES)?,
            backends: open_hash(map_dir, map_names::BACKENDS)?,
        })
    }

    /// Makes `service` steer `callers` round-robin over `backends`. An empty list keeps the
    /// service known but refuses its connects (ECONNREFUSED). `stack` is the service's
    /// stack ([`ferry_ebpf_abi::stack_id`]), whose containers may have entries of their own.
    pub fn set(
        &mut self,
        service: SocketAddrV4,
        stack: u32,
        callers: Callers,
        backends: &[SocketAddrV4],
    ) -> Result<(), ServiceTableError> {
        let count = u32::try_from(backends.len())
            .ok()
            .filter(|n| *n <= MAX_BACKENDS)
            .ok_or(ServiceTableError::TooManyBackends {
                service,
                count: backends.len(),
            })?;
        let key = service_key(service, callers);
        let current = self.current(&key, service)?;
        let (id, bank, cursor) = match current {
            Some(s) => (s.id, 1 - s.bank, s.cursor),
            None => (self.free_id()?, 0, 0),
        };
        for (index, backend) in (0u32..).zip(backends) {
            let slot = BackendKey {
                service: id,
                slot: bank * MAX_BACKENDS + index,
            };
            self.backends
                .insert(&slot, &backend_value(*backend), 0)
                .map_err(|source| ServiceTableError::Update {
                    op: "write",
                    map: map_names::BACKENDS,
                    service,
                    source,
                })?;
        }
        let value = Service {
            id,
            count,
            bank,
            stack,
            cursor,
        };
        self.services
            .insert(&key, &value, 0)
            .map_err(|source| ServiceTableError::Update {
                op: "write",
                map: map_names::SERVICES,
                service,
                source,
            })?;
        if let Some(old) = current {
            self.clear_bank(service, old)?;
        }
        Ok(())
    }

    /// Stops steering `service` for `callers`; their connects then use the general entry,
    /// or, for [`Callers::Everyone`], go to the address as written.
    pub fn remove(
        &mut self,
        service: SocketAddrV4,
        callers: Callers,
    ) -> Result<(), ServiceTableError> {
        let key = service_key(service, callers);
        let Some(current) = self.current(&key, service)? else {
            return Ok(());
        };
        self.services
            .remove(&key)
            .map_err(|source| ServiceTableError::Update {
                op: "remove",
                map: map_names::SERVICES,
                service,
                source,
            })?;
        self.clear_bank(service, current)
    }

    /// The backends of `service` for `callers`, in slot order, or `None` if there is no
    /// such entry.
    pub fn get(
        &self,
        service: SocketAddrV4,
        callers: Callers,
    ) -> Result<Option<Vec<SocketAddrV4>>, ServiceTableError> {
        let key = service_key(service, callers);
        match self.current(&key, service)? {
            Some(s) => self.backends_of(&s).map(Some),
            None => Ok(None),
        }
    }

    /// Every entry and its backends, sorted by service address, then callers.
    pub fn list(
        &self,
    ) -> Result<BTreeMap<(SocketAddrV4, Callers), Vec<SocketAddrV4>>, ServiceTableError> {
        let mut out = BTreeMap::new();
        for entry in self.services.iter() {
            let (key, value) = entry.map_err(|source| ServiceTableError::Read {
                map: map_names::SERVICES,
                source,
            })?;
            out.insert(
                (
                    socket_addr(key.addr, key.port),
                    Callers::from_generation(key.generation),
                ),
                self.backends_of(&value)?,
            );
        }
        Ok(out)
    }

    fn current(
        &self,
        key: &ServiceKey,
        service: SocketAddrV4,
    ) -> Result<Option<Service>, ServiceTableError> {
        match self.services.get(key, 0) {
            Ok(value) => Ok(Some(value)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(ServiceTableError::Update {
                op: "read",
                map: map_names::SERVICES,
                service,
                source,
            }),
        }
    }

    fn backends_of(&self, service: &Service) -> Result<Vec<SocketAddrV4>, ServiceTableError> {
        (0..service.count)
            .map(|index| {
                let slot = BackendKey {
                    service: service.id,
                    slot: service.bank * MAX_BACKENDS + index,
                };
                self.backends
                    .get(&slot, 0)
                    .map(|b| socket_addr(b.addr, b.port))
                    .map_err(|source| ServiceTableError::Read {
                        map: map_names::BACKENDS,
                        source,
                    })
            })
            .collect()
    }

    fn clear_bank(&mut self, service: SocketAddrV4, old: Service) -> Result<(), ServiceTableError> {
        for index in 0..old.count {
            let slot = BackendKey {
                service: old.id,
                slot: old.bank * MAX_BACKENDS + index,
            };
            match self.backends.remove(&slot) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(ServiceTableError::Update {
                        op: "clear",
                        map: map_names::BACKENDS,
                        service,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// The lowest service id not in use.
    fn free_id(&self) -> Result<u32, ServiceTableError> {
        let mut used = Vec::new();
        for entry in self.services.iter() {
            let (_, value) = entry.map_err(|source| ServiceTableError::Read {
                map: map_names::SERVICES,
                source,
            })?;
            used.push(value.id);
        }
        used.sort_unstable();
        let mut id = 0;
        for taken in used {
            if taken != id {
                break;
            }
            id += 1;
        }
        if id >= MAX_SERVICES {
            return Err(ServiceTableError::Full);
        }
        Ok(id)
    }
}

pub(super) fn open_hash<K: aya::Pod, V: aya::Pod>(
    map_dir: &Path,
    name: &str,
) -> Result<HashMap<MapData, K, V>, ServiceTableError> {
    open_pinned(map_dir, name, Map::HashMap)
}

/// Opens the map pinned as `name` in `map_dir` as a `T`, the map being of kind `kind`.
pub(super) fn open_pinned<T>(
    map_dir: &Path,
    name: &str,
    kind: fn(MapData) -> Map,
) -> Result<T, ServiceTableError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = map_dir.join(name);
    let data = MapData::from_pin(&path).map_err(|source| ServiceTableError::Open {
        path: path.clone(),
        source,
    })?;
    T::try_from(kind(data)).map_err(|source| ServiceTableError::Shape { path, source })
}

fn service_key(service: SocketAddrV4, callers: Callers) -> ServiceKey {
    ServiceKey {
        addr: u32::from(*service.ip()).to_be(),
        port: service.port().to_be(),
        _pad: 0,
        generation: callers.generation(),
    }
}

fn backend_value(backend: SocketAddrV4) -> Backend {
    Backend {
        addr: u32::from(*backend.ip()).to_be(),
        port: backend.port().to_be(),
        _pad: 0,
    }
}

pub(super) fn socket_addr(addr: u32, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(u32::from_be(addr)), u16::from_be(port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_in_network_byte_order() {
        let key = service_key("10.96.0.1:80".parse().unwrap(), Callers::Generation(7));
        assert_eq!(key.generation, 7);
        assert_eq!(key.addr.to_ne_bytes(), [10, 96, 0, 1]);
        assert_eq!(key.port.to_ne_bytes(), [0, 80]);
        let back = socket_addr(key.addr, key.port);
        assert_eq!(back, "10.96.0.1:80".parse().unwrap());
    }
}
