//! The listening sockets of the published host ports (TCP for HTTP, HTTPS and `tcp:`
//! ports, UDP for `udp:` ports): opened as services publish ports,
//! closed when none does any more. Each is held by a keeper process too (see `handoff`),
//! so an agent that restarts takes the same socket over and no connection is refused in
//! between: they wait in its queue.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    net::SocketAddrV4,
    os::fd::{AsRawFd as _, OwnedFd},
    path::PathBuf,
    rc::Rc,
    time::Duration,
};

use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{info, warn};

use super::{
    Context, IngressOptions, https, proxy, relay,
    routes::{Routes, Scheme},
};
use crate::handoff;

/// Connections the kernel queues for a port before refusing: enough for a restart's gap.
const BACKLOG: i32 = 4096;

struct Listening {
    scheme: Scheme,
    accepting: JoinHandle<()>,
    keeper: Option<PathBuf>,
}

impl Listening {
    /// Stops serving the port for good: its keeper exits and the socket closes.
    fn close(&self) {
        self.accepting.abort();
        if let Some(keeper) = &self.keeper {
            let _ = std::fs::remove_file(keeper);
        }
    }
}

/// The ports listened on.
pub struct Listeners {
    options: IngressOptions,
    open: HashMap<u16, Listening>,
    udp: HashMap<u16, Listening>,
    /// Ports whose scheme this agent cannot serve, already warned about.
    unserved: BTreeMap<u16, Scheme>,
}

impl Listeners {
    /// None yet.
    pub fn new(options: IngressOptions) -> Self {
        Self {
            options,
            open: HashMap::new(),
            udp: HashMap::new(),
            unserved: BTreeMap::new(),
        }
    }

    /// Listens on the ports `routes` publish and closes the others; false when a port
    /// could not be bound (tried again on the next call).
    pub async fn follow(&mut self, routes: &Routes, ctx: &Rc<Context>) -> bool {
        let wanted: BTreeMap<u16, Scheme> = routes.ports().collect();
        self.open.retain(|port, listening| {
            let keep = wanted.get(port) == Some(&listening.scheme);
            if !keep {
                listening.close();
                info!(port, "no service publishes the port any more; closed");
            }
            keep
        });
        let mut complete = true;
        for (port, scheme) in wanted {
            if self.open.contains_key(&port) {
                continue;
            }
            if scheme == Scheme::Https && ctx.tls.is_none() {
                if self.unserved.insert(port, scheme).is_none() {
                    warn!(port, "no TLS configuration; the HTTPS port is not served");
                }
                continue;
            }
            let address = SocketAddrV4::new(self.options.address, port);
            let keeper = self.keeper(&address.to_string());
            match bind(address, keeper.clone()).await {
                Ok(listener) => {
                    info!(%address, "ingress listening");
                    let accepting =
                        tokio::task::spawn_local(accept(listener, port, scheme, ctx.clone()));
                    self.open.insert(
                        port,
                        Listening {
                            scheme,
                            accepting,
                            keeper,
                        },
                    );
                }
                Err(e) => {
                    warn!(%address, "cannot listen yet: {e}");
                    complete = false;
                }
            }
        }
        complete & self.follow_udp(routes, ctx).await
    }

    async fn follow_udp(&mut self, routes: &Routes, ctx: &Rc<Context>) -> bool {
        let wanted: Vec<u16> = routes.udp_ports().collect();
        self.udp.retain(|port, listening| {
            let keep = wanted.contains(port);
            if !keep {
                listening.close();
                info!(port, "no service publishes the UDP port any more; closed");
            }
            keep
        });
        let mut complete = true;
        for port in wanted {
            if self.udp.contains_key(&port) {
                continue;
            }
            let address = SocketAddrV4::new(self.options.address, port);
            let keeper = self.keeper(&format!("udp-{address}"));
            match bind_udp(address, keeper.clone()).await {
                Ok(socket) => {
                    info!(%address, "ingress relaying UDP");
                    let accepting =
                        tokio::task::spawn_local(relay::serve_udp(ctx.clone(), socket, port));
                    self.udp.insert(
                        port,
                        Listening {
                            scheme: Scheme::Tcp,
                            accepting,
                            keeper,
                        },
                    );
                }
                Err(e) => {
                    warn!(%address, "cannot listen on UDP yet: {e}");
                    complete = false;
                }
            }
        }
        complete
    }

    fn keeper(&self, name: &str) -> Option<PathBuf> {
        self.options
            .sockets
            .as_ref()
            .map(|dir| dir.join(format!("ingress-{name}")))
    }

    /// Stops accepting on every port; the keepers keep the sockets for the next agent.
    pub fn stop_accepting(&mut self) {
        for (_, listening) in self.open.drain().chain(self.udp.drain()) {
            listening.accepting.abort();
        }
    }
}

async fn accept(listener: TcpListener, port: u16, scheme: Scheme, ctx: Rc<Context>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => match (scheme, &ctx.tls) {
                (Scheme::Tcp, _) => {
                    tokio::task::spawn_local(relay::serve_tcp(
                        ctx.clone(),
                        stream,
                        peer.ip(),
                        port,
                    ));
                }
                (Scheme::Https, Some(tls)) => {
                    tokio::task::spawn_local(https::serve(
                        ctx.clone(),
                        tls.clone(),
                        stream,
                        peer.ip(),
                        port,
                    ));
                }
                _ => {
                    tokio::task::spawn_local(proxy::serve(ctx.clone(), stream, peer.ip(), port));
                }
            },
            Err(e) => {
                // Out of descriptors, most likely: give connections time to close.
                warn!(port, "accepting: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn bind(address: SocketAddrV4, keeper: Option<PathBuf>) -> io::Result<TcpListener> {
    let fd = kept_or_bound(keeper, move || {
        let listener = std::net::TcpListener::bind(address)?;
        // SAFETY: listen on a bound socket we own; it only raises the queue length.
        unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) };
        Ok(OwnedFd::from(listener))
    })
    .await?;
    let listener = std::net::TcpListener::from(fd);
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

async fn bind_udp(
    address: SocketAddrV4,
    keeper: Option<PathBuf>,
) -> io::Result<tokio::net::UdpSocket> {
    let fd = kept_or_bound(keeper, move || {
        Ok(OwnedFd::from(std::net::UdpSocket::bind(address)?))
    })
    .await?;
    let socket = std::net::UdpSocket::from(fd);
    socket.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(socket)
}

/// The one socket the keeper at `keeper` holds, or a new one from `bind` (given to a new
/// keeper); without a keeper, a new one.
async fn kept_or_bound(
    keeper: Option<PathBuf>,
    bind: impl FnOnce() -> io::Result<OwnedFd> + Send + 'static,
) -> io::Result<OwnedFd> {
    let fds = tokio::task::spawn_blocking(move || {
        let bind = || bind().map(|fd| vec![fd]);
        match keeper {
            Some(keeper) => handoff::take_or_bind(&keeper, bind),
            None => bind(),
        }
    })
    .await
    .map_err(io::Error::other)??;
    let mut fds = fds.into_iter();
    match (fds.next(), fds.next()) {
        (Some(fd), None) => Ok(fd),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the socket keeper holds other sockets than one",
        )),
    }
}
