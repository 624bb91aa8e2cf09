//! Network namespaces as servers, joined by a bridge in the host namespace.
//!
//! A test network is `10.250.N.0/24`: the bridge holds `.1`, servers `.2` and up. No
//! namespace gets a default route, so nothing a test sends can leave the machine.

use std::{
    fs::File, io, net::Ipv4Addr, os::fd::AsRawFd as _, os::unix::process::CommandExt as _,
    path::PathBuf, process::Command,
};

use anyhow::{Context as _, Result, bail};

/// Runs `ip` with `args`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2); install it with `./x setup`")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A bridge in the host namespace that servers attach to.
pub struct Network {
    bridge: String,
    subnet: u8,
    next_host: u8,
    registry: Option<crate::registry::Registry>,
    mtu: Option<u32>,
}

impl Network {
    /// Creates bridge `name` with `10.250.<subnet>.1/24`.
    pub fn new(name: &str, subnet: u8) -> Result<Self> {
        let _ = ip(&["link", "del", name]);
        ip(&["link", "add", name, "type", "bridge"])?;
        let network = Self {
            bridge: name.into(),
            subnet,
            next_host: 2,
            registry: None,
            mtu: None,
        };
        ip(&["addr", "add", &format!("10.250.{subnet}.1/24"), "dev", name])?;
        ip(&["link", "set", name, "up"])?;
        Ok(network)
    }

    /// Gives the bridge, and the links of every server made from now on, MTU `mtu` bytes:
    /// an underlay smaller than Ethernet's 1500, as on many clouds (1400 on this machine's
    /// own `eth0`).
    pub fn with_mtu(mut self, mtu: u32) -> Result<Self> {
        ip(&["link", "set", &self.bridge, "mtu", &mtu.to_string()])?;
        self.mtu = Some(mtu);
        Ok(self)
    }

    /// Changes the MTU of `server`'s link to this network, on both ends.
    pub fn set_server_mtu(&self, server: &Server, mtu: u32) -> Result<()> {
        let mtu = mtu.to_string();
        ip(&["link", "set", &host_end(server.name()), "mtu", &mtu])?;
        ip(&["-n", server.name(), "link", "set", "eth0", "mtu", &mtu])
    }

    /// The host's end of `server`'s link to this network: a capture there sees all its
    /// traffic (one on the bridge would miss what the bridge forwards between servers).
    pub fn uplink_of(&self, server: &Server) -> String {
        host_end(server.name())
    }

    /// Serves the npm registry (the seeded Verdaccio) on the bridge's address, port 4873,
    /// for the servers' builds; [`registry_url`](Self::registry_url) names it.
    pub fn serve_registry(&mut self) -> Result<&crate::registry::Registry> {
        let listen = std::net::SocketAddrV4::new(Ipv4Addr::new(10, 250, self.subnet, 1), 4873);
        Ok(self
            .registry
            .insert(crate::registry::Registry::serve(listen)?))
    }

    /// The npm registry this network serves, if it serves one.
    pub fn registry(&self) -> Option<&crate::registry::Registry> {
        self.registry.as_ref()
    }

    /// Its URL.
    pub fn registry_url(&self) -> Option<&str> {
        self.registry().map(crate::registry::Registry::url)
    }

    /// Creates a server namespace attached to this bridge, with the next free address.
    pub fn server(&mut self, name: &str) -> Result<Server> {
        let addr = Ipv4Addr::new(10, 250, self.subnet, self.next_host);
        self.next_host += 1;
        let server = Server::create(name, Some((&self.bridge, addr)))?;
        if let Some(mtu) = self.mtu {
            self.set_server_mtu(&server, mtu)?;
        }
        Ok(server)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// The host's end of server `name`'s veth (interface names are at most 15 bytes).
fn host_end(name: &str) -> String {
    let mut end = format!("v{name}");
    end.truncate(15);
    end
}

/// A named network namespace (`/run/netns/<name>`).
pub struct Server {
    name: String,
    netns: File,
    addr: Option<Ipv4Addr>,
}

impl Server {
    /// Creates a namespace with loopback up and, if `uplink` is given, a veth `eth0` whose
    /// peer joins that bridge.
    pub fn create(name: &str, uplink: Option<(&str, Ipv4Addr)>) -> Result<Self> {
        let _ = ip(&["netns", "del", name]);
        ip(&["netns", "add", name])?;
        let path = PathBuf::from("/run/netns").join(name);
        let netns = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let server = Self {
            name: name.into(),
            netns,
            addr: uplink.map(|(_, a)| a),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        if let Some((bridge, addr)) = uplink {
            let host_end = &host_end(name);
            ip(&[
                "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", name,
            ])?;
            ip(&["link", "set", host_end, "master", bridge, "up"])?;
            ip(&[
                "-n",
                name,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", name, "link", "set", "eth0", "up"])?;
        }
        Ok(server)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's address on its test network, if it has one.
    pub fn addr(&self) -> Option<Ipv4Addr> {
        self.addr
    }

    /// Makes `cmd` run inside this namespace (as `nsenter --net` would: /sys is not
    /// remounted, so a dockerd started this way still finds its cgroups).
    pub fn enter(&self, cmd: &mut Command) {
        let fd = self.netns.as_raw_fd();
        // SAFETY: setns is async-signal-safe, and the fd stays open in the parent until
        // spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// UDP datagrams the kernel dropped in this namespace because a socket's receive
    /// buffer was full (`RcvbufErrors` of `/proc/net/snmp`, counted since the namespace
    /// was made).
    pub fn udp_receive_buffer_errors(&self) -> Result<u64> {
        // /proc/self/net is the main thread's namespace; thread-self is this thread's.
        let snmp = self.run(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))??;
        let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
        let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
            bail!("no Udp lines in /proc/net/snmp");
        };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(name, _)| *name == "RcvbufErrors")
            .context("no RcvbufErrors in /proc/net/snmp")?
            .1
            .parse()
            .context("RcvbufErrors in /proc/net/snmp")
    }

    /// Runs `f` on a thread that has entered this namespace; sockets it opens live there.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let fd = self.netns.as_raw_fd();
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: the fd is valid for the scope; setns affects this thread only.
                    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error()).context("setns");
                    }
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the thread in netns {} panicked", self.name))?
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
