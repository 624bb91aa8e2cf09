//! The listening sockets of the published host ports: opened as services publish ports,
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
    Context, IngressOptions, https, proxy,
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

/// The ports listened on.
pub struct Listeners {
    options: IngressOptions,
    open: HashMap<u16, Listening>,
    /// Ports whose scheme this agent cannot serve, already warned about.
    unserved: BTreeMap<u16, Scheme>,
}

impl Listeners {
    /// None yet.
    pub fn new(options: IngressOptions) -> Self {
        Self {
            options,
            open: HashMap::new(),
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
                listening.accepting.abort();
                if let Some(keeper) = &listening.keeper {
                    // The keeper exits and the socket closes.
                    let _ = std::fs::remove_file(keeper);
                }
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
            let keeper = self
                .options
                .sockets
                .as_ref()
                .map(|dir| dir.join(format!("ingress-{address}")));
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
        complete
    }

    /// Stops accepting on every port; the keepers keep the sockets for the next agent.
    pub fn stop_accepting(&mut self) {
        for (_, listening) in self.open.drain() {
            listening.accepting.abort();
        }
    }
}

async fn accept(listener: TcpListener, port: u16, scheme: Scheme, ctx: Rc<Context>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => match (scheme, &ctx.tls) {
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
                    tokio::task::spawn_local(proxy::serve(
                        ctx.clone(),
                        stream,
                        peer.ip(),
                        port,
                        scheme,
                    ));
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
    let fds = tokio::task::spawn_blocking(move || {
        let bind = || {
            let listener = std::net::TcpListener::bind(address)?;
            // SAFETY: listen on a bound socket we own; it only raises the queue length.
            unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) };
            Ok(vec![OwnedFd::from(listener)])
        };
        match keeper {
            Some(keeper) => handoff::take_or_bind(&keeper, bind),
            None => bind(),
        }
    })
    .await
    .map_err(io::Error::other)??;
    let mut fds = fds.into_iter();
    let (Some(fd), None) = (fds.next(), fds.next()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the socket keeper holds other sockets than one listener",
        ));
    };
    let listener = std::net::TcpListener::from(fd);
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}
