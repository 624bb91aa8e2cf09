//! The request and response bodies the API and its clients share.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Revision;

/// `POST /v1/join`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The server's name.
    pub name: String,
    /// Its WireGuard public key, base64.
    pub wireguard_public_key: String,
    /// Where its WireGuard listens, as the other servers reach it.
    pub wireguard_endpoint: std::net::SocketAddr,
}

/// What a joined server gets back.
#[derive(Debug, Deserialize, Serialize)]
pub struct JoinResponse {
    /// The server as registered.
    pub server: Server,
    /// Its ContainerNet subnet, e.g. `10.66.3.0/24`.
    pub subnet: String,
    /// Its own credential; shown once.
    pub agent_token: String,
}

/// `GET /v1/list`.
#[derive(Debug, Deserialize, Serialize)]
pub struct ListResponse {
    /// The revision the items are as of; watch from here.
    pub revision: Revision,
    /// The keys and values.
    pub items: Vec<Item>,
}

/// One key of a list.
#[derive(Debug, Deserialize, Serialize)]
pub struct Item {
    /// The key.
    pub key: String,
    /// Its value.
    pub value: Value,
    /// Its last change.
    pub mod_revision: Revision,
}

/// One line of `GET /v1/watch`.
#[derive(Debug, Deserialize, Serialize)]
pub struct WatchLine {
    /// Everything up to this revision has been sent; resume from here.
    #[serde(default)]
    pub revision: Revision,
    /// The changes.
    #[serde(default)]
    pub events: Vec<WatchEvent>,
    /// Set on the last line when the watch ends with an error.
    #[serde(default)]
    pub error: Option<String>,
}

/// One change in a watch line.
#[derive(Debug, Deserialize, Serialize)]
pub struct WatchEvent {
    /// Its revision.
    pub revision: Revision,
    /// The key.
    pub key: String,
    /// The new value, or null when deleted.
    pub value: Option<Value>,
}

/// A server as central knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    /// Unique name.
    pub name: String,
    /// Third octet of its `/24` in the container network.
    pub subnet_index: u8,
    /// Its WireGuard public key (base64); the private key never leaves the server.
    pub wireguard_public_key: String,
    /// Where its WireGuard listens.
    pub wireguard_endpoint: std::net::SocketAddr,
}
