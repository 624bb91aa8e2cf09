//! How this server runs workloads: the agent's flags, fixed for its run.

use std::{net::Ipv4Addr, path::PathBuf};

/// How this server runs workloads.
#[derive(Clone, Debug)]
pub struct WorkloadOptions {
    /// The Docker Engine's socket.
    pub docker_socket: PathBuf,
    /// The image every service without a Dockerfile is built on, instead of the official
    /// Node image of its Node major.
    pub base_image: Option<String>,
    /// The npm registry builds install from (a mirror), instead of npm's own.
    pub npm_registry: Option<String>,
    /// The Docker network builds run their steps on (the engine's default when None).
    pub build_network: Option<String>,
    /// The Docker network joined by every container (with this server's subnet).
    pub network: String,
    /// The container network's base address (10.66.0.0).
    pub container_net: Ipv4Addr,
    /// The cgroup v2 directory the data plane attaches to; containers get leaves here.
    pub cgroup_root: PathBuf,
    /// Where cgroup v2 is mounted.
    pub cgroup2: PathBuf,
    /// The container network's MTU as the mesh chose it (None until it has; see
    /// [`crate::mesh::mtu`]).
    pub mtu: tokio::sync::watch::Receiver<Option<u32>>,
}
