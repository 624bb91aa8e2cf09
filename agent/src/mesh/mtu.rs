//! The container network's MTU, from the underlay's.
//!
//! WireGuard wraps each packet in IP, UDP and its own 32-byte header and 16-byte tag, so
//! the tunnel carries packets 60 bytes (IPv4 underlay) or 80 bytes (IPv6) smaller than the
//! underlay's MTU; its default of 1420 fits a 1500-byte underlay even over IPv6. A tunnel MTU above
//! that makes every full-size packet fragment after encryption, or vanish where a hop
//! drops fragments: small requests work, large ones hang (moby#36689 on a WireGuard
//! underlay). The container bridge and every container's interface get the tunnel's MTU
//! too (the workloads set them: `workloads::mtu`), so no container sends a packet the
//! tunnel would have to fragment.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tracing::warn;

use super::link::{Interface, LinkError, Netlink};

/// WireGuard's overhead over an IPv4 underlay: IPv4 20 + UDP 8 + WireGuard 32, bytes.
pub const OVERHEAD_IPV4: u32 = 60;
/// Over an IPv6 underlay: IPv6 40 + UDP 8 + WireGuard 32, bytes.
pub const OVERHEAD_IPV6: u32 = 80;
/// The MTU a tunnel gets when no underlay can be found: WireGuard's own default, which
/// fits a 1500-byte underlay even over IPv6.
pub const DEFAULT_TUNNEL_MTU: u32 = 1420;
/// The smallest MTU an IPv4 host must accept (RFC 791: 576 bytes); a smaller override or
/// underlay is refused rather than applied.
pub const MINIMUM: u32 = 576;

/// The tunnel MTU over an underlay of `underlay` bytes whose peers are reached over IPv6
/// (`ipv6`) or IPv4.
pub fn tunnel_mtu(underlay: u32, ipv6: bool) -> u32 {
    let overhead = if ipv6 { OVERHEAD_IPV6 } else { OVERHEAD_IPV4 };
    underlay.saturating_sub(overhead)
}

/// What the tunnel's MTU was set from, for the log and the tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The operator's setting (`--mesh-mtu`).
    Configured,
    /// The interface that routes to the peers (the smallest MTU if they differ).
    Underlay { interface: String, mtu: u32 },
    /// Nothing to measure yet: no peer, and no interface holds this server's endpoint.
    Default,
}

/// The tunnel MTU for this server: the operator's `configured` value, or the underlay's
/// minus WireGuard's overhead, the underlay being the interface the kernel routes each
/// peer endpoint through (the smallest, if several) or, before there is any peer, the one
/// holding this server's own endpoint address.
pub async fn choose(
    netlink: &Netlink,
    interfaces: &[Interface],
    configured: Option<u32>,
    own_endpoint: SocketAddr,
    peer_endpoints: &[SocketAddr],
) -> Result<(u32, Source), LinkError> {
    if let Some(mtu) = configured {
        return Ok((mtu, Source::Configured));
    }
    let mut smallest: Option<(&Interface, bool)> = None;
    for endpoint in peer_endpoints {
        let Some(index) = netlink.route_to(endpoint.ip()).await? else {
            warn!(%endpoint, "no route to a peer's WireGuard endpoint");
            continue;
        };
        let Some(interface) = interfaces.iter().find(|i| i.index == index) else {
            continue;
        };
        if smallest.is_none_or(|(s, _)| interface.mtu < s.mtu) {
            smallest = Some((interface, endpoint.is_ipv6()));
        }
    }
    if smallest.is_none()
        && let IpAddr::V4(own) = own_endpoint.ip()
    {
        smallest = interfaces
            .iter()
            .find(|i| !i.loopback && own != Ipv4Addr::UNSPECIFIED && i.ipv4.contains(&own))
            .map(|i| (i, false));
    }
    Ok(match smallest {
        Some((interface, ipv6)) if interface.mtu > 0 => (
            tunnel_mtu(interface.mtu, ipv6),
            Source::Underlay {
                interface: interface.name.clone(),
                mtu: interface.mtu,
            },
        ),
        _ => (DEFAULT_TUNNEL_MTU, Source::Default),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tunnel_is_smaller_than_its_underlay_by_wireguards_overhead() {
        // WireGuard's own default: 1420, a 1500-byte underlay less IPv6's overhead.
        assert_eq!(tunnel_mtu(1500, true), DEFAULT_TUNNEL_MTU);
        assert_eq!(tunnel_mtu(1500, false), 1440);
        // This kind of machine's eth0.
        assert_eq!(tunnel_mtu(1400, false), 1340);
        assert_eq!(tunnel_mtu(1400, true), 1320);
        assert_eq!(tunnel_mtu(9001, false), 8941);
        assert_eq!(tunnel_mtu(40, false), 0);
    }
}
