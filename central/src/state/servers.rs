//! Servers and their ContainerNet subnets: one `/24` each, never handed out twice,
//! released when the server is removed.

use ferry_api::keys;
use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
};

pub use ferry_api::types::Server;

use crate::store::{Compare, Op, Store, StoreError, TxnOutcome};

/// The container network: a `/16` cut into one `/24` per server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContainerNet {
    /// The network address, e.g. 10.66.0.0.
    pub base: Ipv4Addr,
}

impl Default for ContainerNet {
    fn default() -> Self {
        Self {
            base: keys::CONTAINER_NET,
        }
    }
}

impl ContainerNet {
    /// The `/24` with third octet `index`.
    pub fn subnet(&self, index: u8) -> Ipv4Addr {
        let [a, b, _, _] = self.base.octets();
        Ipv4Addr::new(a, b, index, 0)
    }
}

/// Errors from server bookkeeping.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a server named {name:?} is already registered; remove it first or pick another name")]
    Exists { name: String },
    #[error("no server named {name:?}")]
    Unknown { name: String },
    #[error("{name:?} is not a valid server name: use 1 to 63 lower-case letters, digits and '-'")]
    BadName { name: String },
    #[error(
        "every subnet of the container network is taken ({max} servers); remove a server first"
    )]
    Exhausted { max: usize },
    #[error(
        "server {by:?} already has WireGuard endpoint {endpoint}; give this server its own \
         address and port (--endpoint)"
    )]
    EndpointTaken { endpoint: SocketAddr, by: String },
    #[error(
        "server {by:?} already has this WireGuard public key; every server makes its own \
         keypair (a copied state directory carries another server's key: join from a fresh one)"
    )]
    KeyTaken { by: String },
    #[error(
        "server {name:?} was asked for key rotation {requested}, not {given}; its agent \
         publishes the key for the newest request"
    )]
    StaleRotation {
        name: String,
        requested: u64,
        given: u64,
    },
    #[error("the record at {key} is unreadable: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Server registration over a store.
pub struct Servers<S: Store> {
    store: Arc<S>,
    net: ContainerNet,
}

/// Subnet indexes handed out: 1 to 254 (0 and 255 stay free for central's own use).
const INDEXES: std::ops::RangeInclusive<u8> = 1..=254;
/// How often a registration retries after losing a race for a subnet.
const ATTEMPTS: usize = 16;

impl<S: Store> Servers<S> {
    /// Server bookkeeping on `store` for the container network `net`.
    pub fn new(store: Arc<S>, net: ContainerNet) -> Self {
        Self { store, net }
    }

    /// The `/24` of a server.
    pub fn subnet_of(&self, server: &Server) -> (Ipv4Addr, u8) {
        (self.net.subnet(server.subnet_index), 24)
    }

    /// Registers a server and gives it the lowest free subnet, atomically.
    pub fn register(
        &self,
        name: &str,
        wireguard_public_key: &str,
        endpoint: SocketAddr,
    ) -> Result<Server, ServerError> {
        self.register_with(name, wireguard_public_key, endpoint, None, Vec::new())
    }

    /// [`register`](Self::register), with the server's memory (bytes, as it said) and
    /// `extra` writes committed in the same transaction (the server's credential, for one).
    pub fn register_with(
        &self,
        name: &str,
        wireguard_public_key: &str,
        endpoint: SocketAddr,
        memory_bytes: Option<u64>,
        extra: Vec<Op>,
    ) -> Result<Server, ServerError> {
        check_name(name)?;
        let server_key = keys::server(name);
        for _ in 0..ATTEMPTS {
            if self.store.get(&server_key)?.is_some() {
                return Err(ServerError::Exists { name: name.into() });
            }
            self.check_unclaimed(name, Some(endpoint), wireguard_public_key)?;
            let (taken, _) = self.store.list(keys::SUBNETS)?;
            let taken: Vec<u8> = taken
                .iter()
                .filter_map(|kv| keys::subnet_of(&kv.key))
                .collect();
            let index =
                INDEXES
                    .clone()
                    .find(|i| !taken.contains(i))
                    .ok_or(ServerError::Exhausted {
                        max: INDEXES.count(),
                    })?;
            let server = Server {
                name: name.into(),
                subnet_index: index,
                wireguard_public_key: wireguard_public_key.into(),
                wireguard_endpoint: endpoint,
                memory_bytes,
                key_requested: 0,
                key_generation: 0,
            };
            let subnet_key = keys::subnet(index);
            let record = serde_json::to_vec(&server).map_err(|source| ServerError::Corrupt {
                key: server_key.clone(),
                source,
            })?;
            // Both keys must be absent: the name is new and the subnet is free.
            let outcome = self.store.txn(
                &[
                    Compare::ModRevision(server_key.clone(), 0),
                    Compare::ModRevision(subnet_key.clone(), 0),
                ],
                &[
                    vec![
                        Op::Put(subnet_key, name.as_bytes().to_vec()),
                        Op::Put(server_key.clone(), record),
                    ],
                    extra.clone(),
                ]
                .concat(),
            )?;
            if let TxnOutcome::Committed(_) = outcome {
                return Ok(server);
            }
        }
        // Every attempt lost a race: other registrations are taking subnets as fast as we
        // look. Say so rather than spin.
        Err(ServerError::Store(StoreError::Contended {
            what: "subnet allocation",
        }))
    }

    /// Refuses an endpoint or public key another server than `name` has: a server cannot
    /// take over another's traffic by claiming its address or key.
    fn check_unclaimed(
        &self,
        name: &str,
        endpoint: Option<SocketAddr>,
        public_key: &str,
    ) -> Result<(), ServerError> {
        for other in self.list()?.into_iter().filter(|s| s.name != name) {
            if Some(other.wireguard_endpoint) == endpoint {
                return Err(ServerError::EndpointTaken {
                    endpoint: other.wireguard_endpoint,
                    by: other.name,
                });
            }
            if other.wireguard_public_key.trim() == public_key.trim() {
                return Err(ServerError::KeyTaken { by: other.name });
            }
        }
        Ok(())
    }

    /// Asks server `name`'s agent for a new keypair: bumps its `key_requested`. Returns the
    /// record as written.
    pub fn request_rotation(&self, name: &str) -> Result<Server, ServerError> {
        self.update(name, |server| {
            server.key_requested = server.key_requested.max(server.key_generation) + 1;
            Ok(())
        })
    }

    /// Records server `name`'s new public key, made for rotation `generation`, which must
    /// be the newest asked of it.
    pub fn publish_key(
        &self,
        name: &str,
        public_key: &str,
        generation: u64,
    ) -> Result<Server, ServerError> {
        self.check_unclaimed(name, None, public_key)?;
        self.update(name, |server| {
            if generation != server.key_requested {
                return Err(ServerError::StaleRotation {
                    name: server.name.clone(),
                    requested: server.key_requested,
                    given: generation,
                });
            }
            server.wireguard_public_key = public_key.trim().into();
            server.key_generation = generation;
            Ok(())
        })
    }

    /// Reads, changes and writes back one server's record, again if another write came
    /// between.
    fn update(
        &self,
        name: &str,
        change: impl Fn(&mut Server) -> Result<(), ServerError>,
    ) -> Result<Server, ServerError> {
        let key = keys::server(name);
        for _ in 0..ATTEMPTS {
            let kv = self
                .store
                .get(&key)?
                .ok_or_else(|| ServerError::Unknown { name: name.into() })?;
            let mut server: Server =
                serde_json::from_slice(&kv.value).map_err(|source| ServerError::Corrupt {
                    key: key.clone(),
                    source,
                })?;
            change(&mut server)?;
            let record = serde_json::to_vec(&server).map_err(|source| ServerError::Corrupt {
                key: key.clone(),
                source,
            })?;
            let outcome = self.store.txn(
                &[Compare::ModRevision(key.clone(), kv.mod_revision)],
                &[Op::Put(key.clone(), record)],
            )?;
            if let TxnOutcome::Committed(_) = outcome {
                return Ok(server);
            }
        }
        Err(ServerError::Store(StoreError::Contended {
            what: "a server's record",
        }))
    }

    /// Removes a server and releases its subnet, atomically.
    pub fn remove(&self, name: &str) -> Result<Server, ServerError> {
        self.remove_with(name, Vec::new())
    }

    /// [`remove`](Self::remove), with `extra` writes in the same transaction.
    pub fn remove_with(&self, name: &str, extra: Vec<Op>) -> Result<Server, ServerError> {
        let server = self.get(name)?;
        let ops = [
            vec![
                Op::Delete(keys::server(name)),
                Op::Delete(keys::subnet(server.subnet_index)),
            ],
            extra,
        ]
        .concat();
        self.store.txn(&[], &ops)?;
        Ok(server)
    }

    /// One server.
    pub fn get(&self, name: &str) -> Result<Server, ServerError> {
        let key = keys::server(name);
        let kv = self
            .store
            .get(&key)?
            .ok_or_else(|| ServerError::Unknown { name: name.into() })?;
        serde_json::from_slice(&kv.value).map_err(|source| ServerError::Corrupt { key, source })
    }

    /// Every server, by name.
    pub fn list(&self) -> Result<Vec<Server>, ServerError> {
        let (records, _) = self.store.list(keys::SERVERS)?;
        records
            .into_iter()
            .map(|kv| {
                serde_json::from_slice(&kv.value).map_err(|source| ServerError::Corrupt {
                    key: kv.key,
                    source,
                })
            })
            .collect()
    }
}

fn check_name(name: &str) -> Result<(), ServerError> {
    if super::valid_name(name) {
        Ok(())
    } else {
        Err(ServerError::BadName { name: name.into() })
    }
}
