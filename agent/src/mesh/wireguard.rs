//! WireGuard verbs: keys, listen port and peers of one interface, and its peer statistics.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::SystemTime,
};

pub use wireguard_control::Key;
use wireguard_control::{
    Backend as WgBackend, Device, DeviceUpdate, InterfaceName, PeerConfig, PeerConfigBuilder,
    PeerInfo,
};

/// Which WireGuard implementation carries the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The kernel module, configured over generic netlink.
    Kernel,
    /// wireguard-go, configured over its UAPI socket in `/var/run/wireguard`.
    Userspace,
}

impl From<Backend> for WgBackend {
    fn from(backend: Backend) -> Self {
        match backend {
            Backend::Kernel => WgBackend::Kernel,
            Backend::Userspace => WgBackend::Userspace,
        }
    }
}

/// Seconds between keepalives to each peer. 25 s is what WireGuard's documentation gives
/// for keeping a NAT mapping open; setting it on a new peer also makes both
/// implementations send a keepalive at once, so a peer that joined or changed its key has a
/// session before the first packet of a flow needs one (a rotation's gap went from a TCP
/// retransmission, ~1 s, to the time the change takes to arrive).
pub const PERSISTENT_KEEPALIVE_SECS: u16 = 25;

/// Another server as this server's WireGuard sees it.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The peer's public key.
    pub public_key: Key,
    /// Where the peer's WireGuard listens.
    pub endpoint: SocketAddr,
    /// The peer's container subnet: the only addresses accepted from it and routed to it.
    pub subnet: (Ipv4Addr, u8),
}

/// Traffic counters of one peer.
#[derive(Clone, Debug)]
pub struct PeerStats {
    /// The peer's public key.
    pub public_key: Key,
    /// Bytes received from the peer, after decryption.
    pub rx_bytes: u64,
    /// Bytes sent to the peer, before encryption.
    pub tx_bytes: u64,
    /// When the last handshake completed, if one has.
    pub last_handshake: Option<SystemTime>,
}

/// A failed WireGuard configuration call.
#[derive(Debug, thiserror::Error)]
pub enum WireguardError {
    #[error("{name:?} is not a valid interface name: {source}")]
    Name {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("{action} wireguard interface {name} ({backend:?}): {source}")]
    Call {
        action: &'static str,
        name: String,
        backend: Backend,
        #[source]
        source: io::Error,
    },
}

/// Sets the interface's private key, listen port and exactly `peers`, telling it only what
/// differs from what it has: peers it has that are not wanted are removed, peers whose
/// endpoint, allowed IPs or keepalive differ are updated in place, and the others are left
/// alone, so a pass that changes nothing touches nothing.
///
/// Each of these matters to traffic. Replacing the whole set would drop every session and
/// cost each flow a new handshake whenever any server joins or leaves. wireguard-go closes
/// and reopens its UDP socket whenever it is told a listen port, even the one it has
/// (`BindUpdate` in its `device/uapi.go`; the kernel compares first), so a handshake
/// arriving meanwhile is lost and its sender retries only after 5 s (REKEY_TIMEOUT): a key
/// rotation's gap was 5.1 s in one run of six before the port was left alone. And
/// replacing a peer's allowed IPs leaves an instant where packets for its subnet have no
/// peer.
pub fn configure(
    name: &str,
    private_key: &Key,
    listen_port: u16,
    peers: &[Peer],
    backend: Backend,
) -> Result<(), WireguardError> {
    let iface = interface_name(name)?;
    // A device that cannot be read yet (wireguard-go before its first start) has nothing,
    // and applying starts it.
    let device = Device::get(&iface, backend.into()).ok();
    let mut update = DeviceUpdate::new();
    let mut changes = 0;
    if device.as_ref().and_then(|d| d.private_key.as_ref()) != Some(private_key) {
        update = update.set_private_key(private_key.clone());
        changes += 1;
    }
    if device.as_ref().and_then(|d| d.listen_port) != Some(listen_port) {
        update = update.set_listen_port(listen_port);
        changes += 1;
    }
    let present: &[PeerInfo] = device.as_ref().map_or(&[], |d| &d.peers);
    for unwanted in present
        .iter()
        .filter(|p| !peers.iter().any(|w| w.public_key == p.config.public_key))
    {
        update = update.remove_peer_by_key(&unwanted.config.public_key);
        changes += 1;
    }
    for peer in peers {
        let current = present
            .iter()
            .find(|p| p.config.public_key == peer.public_key);
        if current.is_some_and(|current| peer.is_configured_as(&current.config)) {
            continue;
        }
        update = update.add_peer(
            PeerConfigBuilder::new(&peer.public_key)
                .set_endpoint(peer.endpoint)
                .set_persistent_keepalive_interval(PERSISTENT_KEEPALIVE_SECS)
                .replace_allowed_ips()
                .add_allowed_ip(peer.subnet.0.into(), peer.subnet.1),
        );
        changes += 1;
    }
    if device.is_some() && changes == 0 {
        return Ok(());
    }
    update
        .apply(&iface, backend.into())
        .map_err(|source| WireguardError::Call {
            action: "configure",
            name: name.into(),
            backend,
            source,
        })
}

impl Peer {
    /// Whether `config`, as the interface reports it, is this peer as [`configure`] sets
    /// it: same endpoint, this subnet as its only allowed IPs, ferry's keepalive.
    fn is_configured_as(&self, config: &PeerConfig) -> bool {
        config.endpoint == Some(self.endpoint)
            && config.persistent_keepalive_interval == Some(PERSISTENT_KEEPALIVE_SECS)
            && matches!(
                config.allowed_ips.as_slice(),
                [ip] if ip.address == IpAddr::V4(self.subnet.0) && ip.cidr == self.subnet.1
            )
    }
}

/// The statistics of every peer of the interface.
pub fn peer_stats(name: &str, backend: Backend) -> Result<Vec<PeerStats>, WireguardError> {
    let iface = interface_name(name)?;
    let device = Device::get(&iface, backend.into()).map_err(|source| WireguardError::Call {
        action: "read",
        name: name.into(),
        backend,
        source,
    })?;
    Ok(device
        .peers
        .into_iter()
        .map(|peer| PeerStats {
            public_key: peer.config.public_key,
            rx_bytes: peer.stats.rx_bytes,
            tx_bytes: peer.stats.tx_bytes,
            last_handshake: peer.stats.last_handshake_time,
        })
        .collect())
}

fn interface_name(name: &str) -> Result<InterfaceName, WireguardError> {
    name.parse().map_err(
        |e: wireguard_control::InvalidInterfaceName| WireguardError::Name {
            name: name.into(),
            source: e.into(),
        },
    )
}
