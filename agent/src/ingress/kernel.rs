//! The L4 ports (`tcp:` and `udp:`) in the kernel: the tc programs attached to this
//! server's interfaces, and the ports map written from the routes.
//!
//! Where the programs go:
//! - `ferry_l4_ingress` on every external interface (the operator's `--l4-interface`, or
//!   every interface that is up with an IPv4 address, except loopback, the WireGuard link
//!   and the container bridge): clients' packets to published ports;
//! - `ferry_l4_reply` on the container bridge (the interface holding this server's
//!   ContainerNet address, besides the WireGuard link): local backends' replies;
//! - `ferry_l4_reply_l3` on the WireGuard link: replies of backends on other servers.
//!
//! The reply programs are attached before any external one, so no flow is steered whose
//! replies would not be turned back. The userspace relay keeps listening on every port
//! whatever happens here: it serves what the programs leave to the stack (see the
//! programs' module), and everything while they cannot be attached, which the heartbeat
//! reports (`ferry servers list`, column L4).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
};

use ferry_ebpf_abi::program_names;
use tracing::{info, warn};

use super::routes::{Routes, Scheme};
use crate::{
    dataplane::{self, Attachment, L4Table, L4TableError, L4Target, Protocol, TcError},
    mesh::link::{Interface, LinkError, Netlink},
};

/// Why the kernel path cannot be used now.
#[derive(Debug, thiserror::Error)]
pub enum KernelPathError {
    #[error("no container bridge yet: no interface holds {gateway}")]
    NoBridge { gateway: Ipv4Addr },
    #[error("no external interface: none is up with an IPv4 address; name one with --l4-interface")]
    NoExternal,
    #[error("no interface {name} (--l4-interface)")]
    NoInterface { name: String },
    #[error("listing interfaces: {0}")]
    Netlink(#[from] LinkError),
    #[error(transparent)]
    Tc(#[from] TcError),
}

/// How the kernel path is set up.
#[derive(Clone, Debug)]
pub struct KernelOptions {
    /// ferry's bpffs directory (the loader pinned the tc programs under it).
    pub bpffs: PathBuf,
    /// The interfaces clients come in on; empty: detected (see the module's doc).
    pub interfaces: Vec<String>,
    /// The container network's WireGuard link.
    pub wg_interface: String,
    /// This server's ContainerNet address: the container bridge's gateway and the
    /// WireGuard link's address; flows to other servers' containers come from it.
    pub gateway: Ipv4Addr,
    /// Where the path in use is reported.
    pub path: L4Path,
    /// The operator's `--l4-path relay`: the programs are detached and the userspace relay
    /// serves every L4 port.
    pub relay_only: bool,
}

/// Which path the published L4 ports take on this server, as the heartbeat reports it:
/// `kernel (eth0)`, or `relay (<why>)`. Shared between the ingress and the heartbeat.
#[derive(Clone, Debug, Default)]
pub struct L4Path(Arc<Mutex<Option<String>>>);

impl L4Path {
    /// The path, once the ingress has decided one.
    pub fn get(&self) -> Option<String> {
        self.lock().clone()
    }

    /// Records `path`.
    pub fn set(&self, path: String) {
        let mut current = self.lock();
        if current.as_deref() != Some(path.as_str()) {
            info!(l4 = %path, "published L4 ports");
            *current = Some(path);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The interfaces the programs are attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Attached {
    bridge: (String, u32),
    wg: Option<(String, u32)>,
    external: Vec<(String, u32)>,
}

/// Names of the backends the kernel counts, for the metrics: backend address to
/// (`<stack>/<service>`, container).
pub type BackendNames = Arc<Mutex<BTreeMap<SocketAddrV4, (String, String)>>>;

/// The kernel path of the L4 ports.
pub(super) struct Kernel {
    options: KernelOptions,
    attached: Option<Attached>,
    /// Ports written to the map by this agent; None until the map's leftovers are read.
    written: Option<BTreeSet<(Protocol, u16)>>,
    names: BackendNames,
}

impl Kernel {
    pub(super) fn new(options: KernelOptions, names: BackendNames) -> Self {
        Self {
            options,
            attached: None,
            written: None,
            names,
        }
    }

    /// Steers the L4 ports of `routes` in the kernel; false when that cannot be done yet
    /// (the relay serves them meanwhile; the caller tries again shortly).
    pub(super) async fn follow(&mut self, routes: &Routes) -> bool {
        let attached = match self.attach().await {
            Ok(attached) => attached,
            Err(why) => {
                warn!("the L4 ports are relayed in userspace for now: {why}");
                self.options.path.set(format!("relay ({why})"));
                self.attached = None;
                return false;
            }
        };
        match self.write(routes, &attached) {
            Ok(()) => {
                let names: Vec<&str> = attached.external.iter().map(|(n, _)| n.as_str()).collect();
                self.options
                    .path
                    .set(format!("kernel ({})", names.join(", ")));
                true
            }
            Err(e) => {
                warn!("the L4 ports map could not be written: {e}");
                self.options.path.set(format!("relay ({e})"));
                false
            }
        }
    }

    /// Attaches the programs where they belong, unless they already are.
    async fn attach(&mut self) -> Result<Attached, KernelPathError> {
        let netlink = Netlink::connect()?;
        let interfaces = netlink.interfaces().await?;
        let wanted = self.choose(&interfaces)?;
        if self.attached.as_ref() == Some(&wanted) {
            return Ok(wanted);
        }
        let bpffs = &self.options.bpffs;
        let mut steps = vec![(program_names::L4_REPLY, &wanted.bridge)];
        if let Some(wg) = &wanted.wg {
            steps.push((program_names::L4_REPLY_L3, wg));
        }
        steps.extend(
            wanted
                .external
                .iter()
                .map(|external| (program_names::L4_INGRESS, external)),
        );
        for (program, (name, index)) in steps {
            let how = dataplane::attach_ingress(bpffs, program, name, *index)?;
            let how = match how {
                Attachment::Fresh => "attached",
                Attachment::Adopted => "adopted",
            };
            info!(interface = %name, "{program} {how}");
        }
        let keep: Vec<String> = wanted.external.iter().map(|(n, _)| n.clone()).collect();
        dataplane::detach_others(bpffs, program_names::L4_INGRESS, &keep)?;
        self.attached = Some(wanted.clone());
        Ok(wanted)
    }

    /// The interfaces each program belongs on, or why there are none yet.
    fn choose(&self, interfaces: &[Interface]) -> Result<Attached, KernelPathError> {
        let options = &self.options;
        let wg = interfaces
            .iter()
            .find(|i| i.name == options.wg_interface)
            .map(|i| (i.name.clone(), i.index));
        let bridge = interfaces
            .iter()
            .find(|i| i.name != options.wg_interface && i.ipv4.contains(&options.gateway))
            .map(|i| (i.name.clone(), i.index))
            .ok_or(KernelPathError::NoBridge {
                gateway: options.gateway,
            })?;
        let external: Vec<(String, u32)> = if options.interfaces.is_empty() {
            interfaces
                .iter()
                .filter(|i| {
                    i.up && !i.loopback
                        && !i.ipv4.is_empty()
                        && i.name != options.wg_interface
                        && i.name != bridge.0
                })
                .map(|i| (i.name.clone(), i.index))
                .collect()
        } else {
            options
                .interfaces
                .iter()
                .map(|name| {
                    interfaces
                        .iter()
                        .find(|i| &i.name == name)
                        .map(|i| (i.name.clone(), i.index))
                        .ok_or_else(|| KernelPathError::NoInterface { name: name.clone() })
                })
                .collect::<Result<_, _>>()?
        };
        if external.is_empty() {
            return Err(KernelPathError::NoExternal);
        }
        Ok(Attached {
            bridge,
            wg,
            external,
        })
    }

    /// Writes every L4 port of `routes` with its backends, and removes the others.
    fn write(&mut self, routes: &Routes, attached: &Attached) -> Result<(), L4TableError> {
        let map_dir = dataplane::map_dir(&self.options.bpffs);
        let mut table = L4Table::open(&map_dir)?;
        let mut written = match self.written.take() {
            Some(written) => written,
            // The previous agent's ports: whatever is not published any more goes.
            None => table.ports()?.into_keys().collect(),
        };
        let tcp = routes
            .ports()
            .filter(|(_, scheme)| *scheme == Scheme::Tcp)
            .filter_map(|(port, _)| Some((Protocol::Tcp, port, routes.route(port, None)?)));
        let udp = routes
            .udp_ports()
            .filter_map(|port| Some((Protocol::Udp, port, routes.udp(port)?)));
        let mut wanted = BTreeSet::new();
        let mut names = BTreeMap::new();
        let [a, b, c, _] = self.options.gateway.octets();
        for (protocol, port, target) in tcp.chain(udp) {
            let backends: Vec<L4Target> = target
                .backends
                .iter()
                .filter_map(|backend| {
                    names.insert(
                        backend.address,
                        (target.name.clone(), backend.container.clone()),
                    );
                    let [x, y, z, _] = backend.address.ip().octets();
                    if [x, y, z] == [a, b, c] {
                        return Some(L4Target {
                            address: backend.address,
                            ifindex: attached.bridge.1,
                            remote: false,
                        });
                    }
                    // Without the mesh, other servers' containers are out of reach.
                    attached.wg.as_ref().map(|(_, index)| L4Target {
                        address: backend.address,
                        ifindex: *index,
                        remote: true,
                    })
                })
                .collect();
            table.set(protocol, port, self.options.gateway, &backends)?;
            wanted.insert((protocol, port));
        }
        for (protocol, port) in written.difference(&wanted) {
            table.remove(*protocol, *port)?;
        }
        written = wanted;
        self.written = Some(written);
        *self.names.lock().unwrap_or_else(PoisonError::into_inner) = names;
        Ok(())
    }
}

/// Detaches the programs: the operator chose the userspace relay.
pub(super) fn relay_only(options: &KernelOptions) {
    if let Err(e) = dataplane::detach_all(&options.bpffs) {
        warn!("the L4 tc programs could not be detached: {e}");
    }
    options.path.set("relay (--l4-path relay)".into());
}
