//! The encrypted container network between servers: a WireGuard link per server, one peer
//! per other server, each peer's AllowedIPs its `/24` of ContainerNet.
//!
//! Two layers of verbs, as innernet has them: [`link`] speaks rtnetlink for links,
//! addresses and routes; [`wireguard`] speaks WireGuard's own interface (generic netlink for
//! the kernel module, the UAPI socket for wireguard-go) for keys and peers. Private keys are
//! generated and kept on the server they belong to; only public keys travel. [`interface`]
//! composes them: detect the backend, then bring one interface to its desired state;
//! [`mtu`] sizes the tunnel and the container network from the underlay;
//! [`socket_buffers`] gives wireguard-go the UDP buffers it lacks; [`sync`] drives it all
//! from central's watch.

pub mod interface;
pub mod link;
pub mod mtu;
pub mod rotation;
pub mod socket_buffers;
pub mod sync;
pub mod wireguard;
