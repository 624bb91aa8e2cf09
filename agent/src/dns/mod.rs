//! ferry's DNS server inside the agent: `<service>.cloud66.local` answered per caller from
//! the records, every other name forwarded to the server's own resolvers.
//!
//! The kernel sends containers' queries here whatever resolver they were given (see the
//! `dns` programs), and tells the server which cgroup sent each one.
//!
//! # Layout
//! - `wire`: reading queries and writing answers, bounds-checked.
//! - `answers`: the zone: which records a caller gets.
//! - `forward`: other names, to the upstream resolvers, cached by TTL.
//! - `server`: the UDP and TCP listeners.

mod answers;
mod forward;
mod server;
pub mod wire;

use std::{
    fs, io,
    net::{IpAddr, SocketAddr, SocketAddrV4},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{net::TcpListener, sync::watch};
use tracing::{error, info, warn};

pub use answers::{Answerer, Outcome, TTL, Who, ZONE};
pub use forward::Forwarder;

use crate::{
    dataplane::{DnsMaps, SeenPeers},
    discovery::{Callers, Records},
    handoff,
};

/// Longest a starting server holds queries back while it learns the records and callers.
const READY_WAIT: Duration = Duration::from_secs(5);

/// Where the DNS server listens and whom it asks for other names.
#[derive(Clone, Debug)]
pub struct DnsOptions {
    /// The listener: the container network's gateway, port 53.
    pub listen: SocketAddrV4,
    /// The resolvers the server had before ferry.
    pub upstreams: Vec<SocketAddr>,
    /// The pinned maps' directory.
    pub map_dir: PathBuf,
    /// This server's name (for `load_balancing: closest`).
    pub server: String,
    /// The Unix socket of the keeper that holds the listening sockets across restarts
    /// (None: bind, and let the sockets close with the process).
    pub keeper: Option<PathBuf>,
}

/// Why the DNS server could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("DNS maps: {0}")]
    Maps(#[from] crate::dataplane::ServiceTableError),
    #[error("pointing interception at {listen}: {source}")]
    Listener {
        listen: SocketAddrV4,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("DNS listener on {listen}: {source}")]
    Io {
        listen: SocketAddrV4,
        #[source]
        source: io::Error,
    },
}

/// What a [`DnsServer`] is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Binding its listener (retried until the container network has its gateway) and
    /// learning the records and callers.
    Starting,
    /// Answering on its address; the kernel sends containers' queries there.
    Answering,
    /// Failed (logged) or stopped.
    Stopped,
}

/// The running DNS server. Dropping it stops it: its sockets close (or stay with their
/// keeper, for the next agent), and the kernel's interception stays pointed at the
/// address, where the next server to bind it answers.
pub struct DnsServer {
    listen: SocketAddrV4,
    state: watch::Receiver<State>,
    task: tokio::task::JoinHandle<()>,
    /// Tells the UDP thread, which blocks in the kernel outside the runtime, to end.
    udp_stop: Arc<AtomicBool>,
}

/// The DNS server stopped before it answered (the reason is logged).
#[derive(Debug, thiserror::Error)]
#[error("the DNS server on {listen} stopped before it answered; its log says why")]
pub struct Stopped {
    /// Where it was to listen.
    pub listen: SocketAddrV4,
}

impl DnsServer {
    /// Starts the DNS server on `options.listen` in the current runtime. The listener's
    /// address appears when the container network is created, so binding is retried
    /// until it can; queries wait (at most 5 s) until the records and callers are known.
    pub fn start(options: DnsOptions, records: Records, callers: Callers) -> Self {
        let listen = options.listen;
        let (state_tx, state) = watch::channel(State::Starting);
        let udp_stop = Arc::new(AtomicBool::new(false));
        let stop = udp_stop.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = serve(options, records, callers, &state_tx, stop).await {
                error!(%listen, "DNS server stopped: {e}");
            }
            let _ = state_tx.send(State::Stopped);
        });
        Self {
            listen,
            state,
            task,
            udp_stop,
        }
    }

    /// The address it listens on (port 53 of the container network's gateway).
    pub fn address(&self) -> SocketAddrV4 {
        self.listen
    }

    /// What it is doing now.
    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    /// Waits until it answers on its address, and returns the address; Err if it stopped
    /// first.
    pub async fn answering(&mut self) -> Result<SocketAddrV4, Stopped> {
        let stopped = Stopped {
            listen: self.listen,
        };
        match self
            .state
            .wait_for(|s| *s != State::Starting)
            .await
            .map(|s| *s)
        {
            Ok(State::Answering) => Ok(self.listen),
            _ => Err(stopped),
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
        self.udp_stop.store(true, Ordering::Relaxed);
        if self.state() == State::Answering {
            // One datagram wakes the UDP thread from its blocking receive, to see the
            // stop: cheaper than a timeout or a poll on every receive of the hot path.
            let _ = std::net::UdpSocket::bind(SocketAddrV4::new(*self.listen.ip(), 0))
                .and_then(|s| s.send_to(&[], self.listen));
        }
    }
}

/// Binds, waits for the records and callers, points interception at the listener and
/// serves until dropped or failed, telling `state` as it goes.
async fn serve(
    options: DnsOptions,
    records: Records,
    callers: Callers,
    state: &watch::Sender<State>,
    udp_stop: Arc<AtomicBool>,
) -> Result<(), DnsError> {
    let maps = DnsMaps::open(&options.map_dir)?;
    // Pins of an older layout have no ring: the peers map alone then says who asked.
    let seen = SeenPeers::open(&options.map_dir)
        .inspect_err(|e| warn!("DNS senders read through the peers map only: {e}"))
        .ok();
    let (udp, tcp) = bind(options.listen, options.keeper.as_deref()).await;
    // Queries wait in the socket until the records and this server's containers are known:
    // answering "no such name" to a container of a running service would be worse than a
    // moment's delay. Bounded, so a central and Docker both out of reach still get answers.
    let deadline = tokio::time::Instant::now() + READY_WAIT;
    while !(records.is_loaded() && callers.is_loaded()) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let service = Arc::new(server::Service {
        answerer: Answerer::new(records, callers, options.server.clone()),
        forwarder: Forwarder::new(options.upstreams.clone()),
        maps: Mutex::new(maps),
        listen: options.listen,
    });
    // Only now that something listens do containers' queries come here.
    service
        .maps
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .set_listener(Some(options.listen))
        .map_err(|source| DnsError::Listener {
            listen: options.listen,
            source,
        })?;
    info!(listen = %options.listen, upstreams = ?options.upstreams, "DNS server answering");
    let _ = state.send(State::Answering);
    let listen = options.listen;
    let io = |source| DnsError::Io { listen, source };
    // UDP on a thread of its own, blocking in batched system calls: the hot path never
    // goes through the runtime's reactor. The thread ends with the process.
    let (failed, udp_failure) = tokio::sync::oneshot::channel();
    let (udp_service, runtime) = (service.clone(), tokio::runtime::Handle::current());
    std::thread::Builder::new()
        .name("ferry-dns-udp".into())
        .spawn(move || {
            let served = server::serve_udp(udp_service, Arc::new(udp), runtime, seen, &udp_stop);
            let _ = failed.send(served);
        })
        .map_err(io)?;
    let probing = service.clone();
    let probe = async move {
        loop {
            probing.forwarder.probe_loops().await;
            tokio::time::sleep(forward::PROBE_EVERY).await;
        }
    };
    tokio::select! {
        () = probe => Ok(()),
        r = udp_failure => match r {
            Ok(r) => r.map_err(io),
            Err(_) => Err(io(io::Error::other("the UDP thread ended"))),
        },
        r = server::serve_tcp(service, tcp) => r.map_err(io),
    }
}

async fn bind(listen: SocketAddrV4, keeper: Option<&Path>) -> (std::net::UdpSocket, TcpListener) {
    let mut warned = false;
    loop {
        let keeper = keeper.map(Path::to_path_buf);
        let taken = tokio::task::spawn_blocking(move || {
            let bind = || {
                let udp = std::net::UdpSocket::bind(listen)?;
                let tcp = std::net::TcpListener::bind(listen)?;
                Ok(vec![OwnedFd::from(udp), OwnedFd::from(tcp)])
            };
            match keeper {
                Some(keeper) => handoff::take_or_bind(&keeper, bind),
                None => bind(),
            }
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)));
        match taken.and_then(into_tokio) {
            Ok(bound) => return bound,
            Err(e) => {
                if !warned {
                    warn!(%listen, "DNS listener not bound yet ({e}); retrying until the container network has its gateway");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// The kept (or fresh) UDP socket (for the blocking UDP thread) and TCP listener (for tokio).
fn into_tokio(fds: Vec<OwnedFd>) -> io::Result<(std::net::UdpSocket, TcpListener)> {
    let mut fds = fds.into_iter();
    let (Some(udp), Some(tcp), None) = (fds.next(), fds.next(), fds.next()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the socket keeper holds other sockets than a DNS listener's",
        ));
    };
    let udp = std::net::UdpSocket::from(udp);
    let tcp = std::net::TcpListener::from(tcp);
    tcp.set_nonblocking(true)?;
    Ok((udp, TcpListener::from_std(tcp)?))
}

/// The resolvers in `resolv_conf` (port 53), but never `listen` itself.
pub fn upstreams_from(resolv_conf: &Path, listen: SocketAddrV4) -> io::Result<Vec<SocketAddr>> {
    let text = fs::read_to_string(resolv_conf)?;
    Ok(text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .filter(|upstream| {
            let own = reaches_listener(*upstream, listen);
            if own {
                warn!(%upstream, "{} names ferry's own DNS listener; not forwarding to it", resolv_conf.display());
            }
            !own
        })
        .collect())
}

/// Whether a query sent to `upstream` lands on the listener `listen` itself: its address,
/// or the unspecified address (which the kernel takes for "this host"), on its port.
pub fn reaches_listener(upstream: SocketAddr, listen: SocketAddrV4) -> bool {
    let SocketAddr::V4(upstream) = upstream else {
        return false;
    };
    upstream.port() == listen.port()
        && (upstream.ip() == listen.ip() || upstream.ip().is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listener_is_never_an_upstream() {
        let listen: SocketAddrV4 = "10.66.1.1:53".parse().unwrap();
        let dir = std::env::temp_dir().join(format!("ferry-resolv-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("resolv.conf");
        fs::write(
            &conf,
            "search example\nnameserver 10.66.1.1\nnameserver 192.0.2.53\nnameserver ::1\n",
        )
        .unwrap();
        let found = upstreams_from(&conf, listen).unwrap();
        assert_eq!(
            found,
            vec![
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert!(reaches_listener("0.0.0.0:53".parse().unwrap(), listen));
        assert!(!reaches_listener("10.66.1.1:5353".parse().unwrap(), listen));
        let _ = fs::remove_dir_all(dir);
    }
}
