//! What an agent tells central of its server every few seconds, and what the operator
//! reads back: `PUT /v1/heartbeat/<server>` and `GET /v1/servers/status`.
//!
//! Central keeps the last heartbeat of each server in memory, stamped with its own clock
//! when it arrived: a server's "last contact" never depends on the server's clock, and
//! heartbeats, which change every time, never grow the store's history. A restarted
//! central knows each server again at its next heartbeat.

use serde::{Deserialize, Serialize};

use crate::types::Server;

/// Most WireGuard peers one heartbeat lists (a server has one per other server).
pub const MAX_PEERS: usize = 1024;
/// Longest version string kept.
pub const MAX_VERSION: usize = 64;
/// Longest L4 path description kept.
pub const MAX_L4_PATH: usize = 256;

/// `PUT /v1/heartbeat/<server>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The agent's version (`ferry-agent --version`).
    pub version: String,
    /// Seconds until the next heartbeat; a server silent for three of them is unreachable.
    pub interval_secs: u32,
    /// The container network's WireGuard link, once the mesh is up.
    #[serde(default)]
    pub wireguard: Option<WireguardStatus>,
    /// Ferry's containers running on the server, when the agent runs workloads.
    #[serde(default)]
    pub containers_running: Option<u32>,
    /// How the published `tcp:` and `udp:` ports are served: `kernel (<interfaces>)` (the
    /// tc programs) or `relay (<why>)` (the agent's userspace relay); None before the
    /// ingress has decided, or when the agent runs no workloads.
    #[serde(default)]
    pub l4_path: Option<String>,
}

impl Heartbeat {
    /// Why this heartbeat is refused, if it is out of bounds.
    pub fn out_of_bounds(&self) -> Option<String> {
        let peers = self.wireguard.as_ref().map_or(0, |w| w.peers.len());
        if peers > MAX_PEERS {
            return Some(format!("{peers} peers listed; at most {MAX_PEERS}"));
        }
        if self.version.len() > MAX_VERSION {
            return Some(format!("a version of at most {MAX_VERSION} bytes"));
        }
        if self.l4_path.as_ref().is_some_and(|p| p.len() > MAX_L4_PATH) {
            return Some(format!("an L4 path of at most {MAX_L4_PATH} bytes"));
        }
        if self.interval_secs == 0 || self.interval_secs > 3600 {
            return Some("interval_secs from 1 to 3600".into());
        }
        None
    }
}

/// The WireGuard link of a server's container network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireguardStatus {
    /// `kernel` or `userspace` (wireguard-go).
    pub backend: String,
    /// The link's MTU, bytes: the underlay's less WireGuard's overhead, or the operator's
    /// `--mesh-mtu`; None from agents older than this field.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Each peer, by its public key.
    pub peers: Vec<PeerStatus>,
}

/// One WireGuard peer as the server sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Its public key, base64 (central names the server it belongs to).
    pub public_key: String,
    /// Unix time of the last handshake, seconds; None: never.
    pub last_handshake_unix: Option<u64>,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
}

/// One server as `GET /v1/servers/status` gives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// The server as registered.
    pub server: Server,
    /// Unix time central last heard from it, seconds; None: not since central started.
    pub last_contact_unix: Option<u64>,
    /// Its last heartbeat.
    pub heartbeat: Option<Heartbeat>,
}

impl ServerStatus {
    /// Whether the server has been silent for three of its heartbeat intervals at `now`
    /// (Unix seconds); a server never heard from is not called unreachable.
    pub fn unreachable_at(&self, now: u64) -> bool {
        match (self.last_contact_unix, &self.heartbeat) {
            (Some(last), Some(beat)) => {
                now.saturating_sub(last) > 3 * u64::from(beat.interval_secs)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(peers: usize) -> Heartbeat {
        Heartbeat {
            version: "0.1.0".into(),
            interval_secs: 10,
            wireguard: Some(WireguardStatus {
                backend: "kernel".into(),
                mtu: Some(1340),
                peers: (0..peers)
                    .map(|i| PeerStatus {
                        public_key: format!("key{i}"),
                        last_handshake_unix: None,
                        rx_bytes: 0,
                        tx_bytes: 0,
                    })
                    .collect(),
            }),
            containers_running: None,
            l4_path: Some("kernel (eth0)".into()),
        }
    }

    #[test]
    fn heartbeats_are_bounded() {
        assert_eq!(beat(MAX_PEERS).out_of_bounds(), None);
        assert!(beat(MAX_PEERS + 1).out_of_bounds().is_some());
        let mut long = beat(0);
        long.version = "x".repeat(MAX_VERSION + 1);
        assert!(long.out_of_bounds().is_some());
        let mut wordy = beat(0);
        wordy.l4_path = Some("relay (".repeat(MAX_L4_PATH));
        assert!(wordy.out_of_bounds().is_some());
        let mut never = beat(0);
        never.interval_secs = 0;
        assert!(never.out_of_bounds().is_some());
    }

    #[test]
    fn three_missed_heartbeats_make_a_server_unreachable() {
        let status = |last| ServerStatus {
            server: Server {
                name: "one".into(),
                subnet_index: 1,
                wireguard_public_key: String::new(),
                wireguard_endpoint: "192.0.2.1:51820".parse().expect("addr"),
                memory_bytes: None,
                key_requested: 0,
                key_generation: 0,
            },
            last_contact_unix: last,
            heartbeat: last.map(|_| beat(0)),
        };
        assert!(!status(Some(1000)).unreachable_at(1030));
        assert!(status(Some(1000)).unreachable_at(1031));
        assert!(!status(None).unreachable_at(5000));
    }
}
