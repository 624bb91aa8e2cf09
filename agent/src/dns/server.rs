//! The DNS listener on the server's container-network gateway, UDP and TCP: who asked
//! (from the kernel's record of the sender's cgroup), then an answer from the records or
//! from the upstream resolvers. Queries from anyone but this server's containers and host
//! are dropped unanswered.

use std::{
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
};
use tracing::{debug, warn};

use super::{
    answers::{Answerer, Outcome, Who},
    forward::Forwarder,
    wire,
};
use crate::dataplane::{DnsMaps, Transport};

/// Most TCP connections served at once.
const TCP_CONNECTIONS: usize = 128;
/// How long a TCP connection may sit idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Largest UDP datagram read; anything longer is not a DNS query ferry answers.
const UDP_BUFFER: usize = 4096;

/// Everything a query needs: who is asking, and the answers.
pub struct Service {
    /// The zone's answers.
    pub answerer: Answerer,
    /// Names outside the zone.
    pub forwarder: Forwarder,
    /// The kernel's record of which cgroup sent from where.
    pub maps: std::sync::Mutex<DnsMaps>,
    /// The listener's own address: host processes ask from it.
    pub listen: SocketAddrV4,
}

impl Service {
    /// Who sent from `peer`, or None for an outsider, whose query gets no answer.
    fn who(&self, peer: SocketAddr, transport: Transport) -> Option<Who> {
        let SocketAddr::V4(peer) = peer else {
            return None;
        };
        let cgroup = self
            .maps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .cgroup_of(peer, transport);
        if cgroup.is_none() && !self.is_host(*peer.ip()) {
            return None;
        }
        Some(self.answerer.who(cgroup, peer))
    }

    /// Whether `ip` is this server's own: a host process asking the listener directly.
    fn is_host(&self, ip: Ipv4Addr) -> bool {
        ip.is_loopback() || ip == *self.listen.ip()
    }

    /// The response to `query` from `who`, or None for nothing to send.
    pub async fn respond(&self, query: &[u8], who: &Who, limit: usize) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(limit.min(wire::UDP_LIMIT));
        match self.answerer.answer(query, who, &mut out, limit) {
            Outcome::Answered => Some(out),
            Outcome::Ignore => None,
            Outcome::Forward => self.forwarder.forward(query, limit).await,
        }
    }
}

/// Serves UDP queries on `socket` until an error that is not a single bad packet.
pub async fn serve_udp(service: Arc<Service>, socket: Arc<UdpSocket>) -> io::Result<()> {
    let mut buf = vec![0u8; UDP_BUFFER];
    let mut out = Vec::with_capacity(wire::UDP_LIMIT);
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            // An ICMP error from an earlier reply's destination: not this server's problem.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(e),
        };
        let Some(who) = service.who(peer, Transport::Udp) else {
            debug!(%peer, "DNS query from outside this server dropped");
            continue;
        };
        let query = &buf[..n];
        // The fast path answers in place; only forwarded names leave this loop.
        match service
            .answerer
            .answer(query, &who, &mut out, wire::UDP_LIMIT)
        {
            Outcome::Answered => {
                if let Err(e) = socket.send_to(&out, peer).await {
                    debug!(%peer, "DNS reply: {e}");
                }
            }
            Outcome::Ignore => {}
            Outcome::Forward => {
                let (service, socket, query) = (service.clone(), socket.clone(), query.to_vec());
                tokio::spawn(async move {
                    if let Some(reply) = service.forwarder.forward(&query, wire::UDP_LIMIT).await
                        && let Err(e) = socket.send_to(&reply, peer).await
                    {
                        debug!(%peer, "DNS reply: {e}");
                    }
                });
            }
        }
    }
}

/// Serves TCP connections on `listener`.
pub async fn serve_tcp(service: Arc<Service>, listener: TcpListener) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(TCP_CONNECTIONS));
    loop {
        let (stream, peer) = listener.accept().await?;
        let Some(who) = service.who(peer, Transport::Tcp) else {
            debug!(%peer, "DNS connection from outside this server closed");
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!(%peer, "too many DNS connections; closing this one");
            continue;
        };
        let service = service.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_connection(&service, stream, &who).await {
                debug!(%peer, "DNS over TCP: {e}");
            }
            drop(slot);
        });
    }
}

async fn serve_connection(service: &Service, mut stream: TcpStream, who: &Who) -> io::Result<()> {
    loop {
        let length = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(length)) => usize::from(length),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        };
        let mut query = vec![0u8; length];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "query cut short"))??;
        let Some(reply) = service.respond(&query, who, usize::from(u16::MAX)).await else {
            return Ok(());
        };
        // At most u16::MAX by the limit given above.
        let length = u16::try_from(reply.len()).unwrap_or(u16::MAX);
        stream.write_all(&length.to_be_bytes()).await?;
        stream.write_all(&reply).await?;
    }
}
