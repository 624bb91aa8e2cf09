//! The DNS listener on the server's container-network gateway, UDP and TCP: who asked
//! (from the kernel's record of the sender's cgroup), then an answer from the records or
//! from the upstream resolvers. Queries from anyone but this server's containers and host
//! are dropped unanswered.

use std::{
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::{debug, warn};

use super::{
    answers::{Answerer, Outcome, Who},
    forward::Forwarder,
    wire,
};
use crate::dataplane::{DnsMaps, SeenPeers, Sender, Transport};

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
        self.who_of(peer, cgroup)
    }

    /// Who sent from `peer` given the cgroup the kernel saw (None: none of ferry's).
    fn who_of(&self, peer: SocketAddrV4, cgroup: Option<u64>) -> Option<Who> {
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

/// How many datagrams one system call reads or writes.
const BATCH: usize = 32;
/// Room for one datagram's control messages, in 8-byte words: a timestamp (16 bytes of
/// `timespec` after a 16-byte header) and spare.
const CONTROL_WORDS: usize = 8;

/// The kernel's receive timestamp of the datagram `header` describes (`SO_TIMESTAMPNS`),
/// if it came with one.
fn queued_at(header: &libc::msghdr) -> Option<SystemTime> {
    // SAFETY: the kernel filled the control buffer the header points at and set its
    // length; the CMSG macros walk it within that length.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let time: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                let since = Duration::new(
                    u64::try_from(time.tv_sec).ok()?,
                    u32::try_from(time.tv_nsec).ok()?,
                );
                return SystemTime::UNIX_EPOCH.checked_add(since);
            }
            cmsg = libc::CMSG_NXTHDR(header, cmsg);
        }
    }
    None
}

/// Serves UDP queries on `socket` (blocking) on the calling thread until an error that is
/// not a single bad packet, or until `stop` is set (seen when a receive returns, so the
/// one who sets it sends a datagram to wake the thread). Datagrams are read and answered
/// in batches (recvmmsg, sendmmsg): one pair of system calls for up to [`BATCH`] queries
/// under load, and no wait at all when only one is there. Each sender is found in `seen`
/// (shared memory, no system call) where it can say, else in the peers map. Forwarded
/// names leave the loop for `runtime`.
pub fn serve_udp(
    service: Arc<Service>,
    socket: Arc<std::net::UdpSocket>,
    runtime: tokio::runtime::Handle,
    mut seen: Option<SeenPeers>,
    stop: &AtomicBool,
) -> io::Result<()> {
    socket.set_nonblocking(false)?;
    let fd = socket.as_raw_fd();
    let mut bufs = vec![[0u8; UDP_BUFFER]; BATCH];
    let mut outs: Vec<Vec<u8>> = (0..BATCH)
        .map(|_| Vec::with_capacity(wire::UDP_LIMIT))
        .collect();
    // SAFETY: all-zero sockaddr_in is a valid value.
    let mut peers: Vec<libc::sockaddr_in> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut reply_to: Vec<libc::sockaddr_in> = peers.clone();
    // The headers are made once: the buffers they point at never move.
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: all-zero mmsghdr is a valid value; the pointers are set below.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    // Each datagram's receive timestamp, for the senders' mirror (see `SeenPeers`).
    if seen.is_some() {
        let on: libc::c_int = 1;
        // SAFETY: a plain setsockopt with a live int; on failure no timestamps come and
        // every miss in the mirror is asked of the peers map.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                (&raw const on).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
    }
    let mut controls = vec![[0u64; CONTROL_WORDS]; BATCH];
    for (i, msg) in msgs.iter_mut().enumerate() {
        msg.msg_hdr.msg_iov = &mut iovs[i];
        msg.msg_hdr.msg_iovlen = 1;
        msg.msg_hdr.msg_name = (&raw mut peers[i]).cast();
        msg.msg_hdr.msg_control = controls[i].as_mut_ptr().cast();
    }
    let mut reply_iovs: Vec<libc::iovec> = Vec::with_capacity(BATCH);
    // SAFETY: as above.
    let mut sends: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    loop {
        for msg in &mut msgs {
            // The kernel shortens them to what it wrote.
            msg.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            msg.msg_hdr.msg_controllen = CONTROL_WORDS * 8;
        }
        // SAFETY: every header points at live buffers of the sizes it states.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted | io::ErrorKind::ConnectionRefused => continue,
                _ => return Err(e),
            }
        }
        if let Some(seen) = &mut seen {
            seen.read();
        }
        let mut replies = 0;
        for i in 0..n as usize {
            let (addr, port) = (peers[i].sin_addr.s_addr, peers[i].sin_port);
            let peer_v4 = SocketAddrV4::new(Ipv4Addr::from(u32::from_be(addr)), u16::from_be(port));
            let peer = SocketAddr::V4(peer_v4);
            // The timestamp is read only for a source the mirror does not have.
            let sender = seen.as_ref().map_or(Sender::Unknown, |s| {
                s.sender(addr, port, || queued_at(&msgs[i].msg_hdr))
            });
            let who = match sender {
                Sender::Container(cgroup) => service.who_of(peer_v4, Some(cgroup)),
                Sender::NotContainer => service.who_of(peer_v4, None),
                Sender::Unknown => service.who(peer, Transport::Udp),
            };
            let Some(who) = who else {
                debug!(%peer, "DNS query from outside this server dropped");
                continue;
            };
            // A datagram longer than the buffer was cut: not a query ferry reads whole.
            let len = (msgs[i].msg_len as usize).min(UDP_BUFFER);
            let query = &bufs[i][..len];
            let out = &mut outs[replies];
            match service.answerer.answer(query, &who, out, wire::UDP_LIMIT) {
                Outcome::Answered => {
                    reply_to[replies] = peers[i];
                    replies += 1;
                }
                Outcome::Ignore => {}
                Outcome::Forward => {
                    let (service, socket, query) =
                        (service.clone(), socket.clone(), query.to_vec());
                    runtime.spawn(async move {
                        if let Some(reply) =
                            service.forwarder.forward(&query, wire::UDP_LIMIT).await
                            && let Err(e) = socket.send_to(&reply, peer)
                        {
                            debug!(%peer, "DNS reply: {e}");
                        }
                    });
                }
            }
        }
        if replies == 0 {
            continue;
        }
        reply_iovs.clear();
        for out in &mut outs[..replies] {
            reply_iovs.push(libc::iovec {
                iov_base: out.as_mut_ptr().cast(),
                iov_len: out.len(),
            });
        }
        for (i, send) in sends[..replies].iter_mut().enumerate() {
            send.msg_hdr.msg_iov = &mut reply_iovs[i];
            send.msg_hdr.msg_iovlen = 1;
            send.msg_hdr.msg_name = (&raw mut reply_to[i]).cast();
            send.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        }
        // SAFETY: every header points at a live reply and address. A reply the kernel
        // refuses (a full buffer) is lost, as UDP allows; the client asks again.
        unsafe { libc::sendmmsg(fd, sends.as_mut_ptr(), replies as u32, 0) };
    }
}

/// Serves TCP connections on `listener`.
pub async fn serve_tcp(service: Arc<Service>, listener: TcpListener) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(TCP_CONNECTIONS));
    // The connections end with this task.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = listener.accept().await?;
        while connections.try_join_next().is_some() {}
        let Some(who) = service.who(peer, Transport::Tcp) else {
            debug!(%peer, "DNS connection from outside this server closed");
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!(%peer, "too many DNS connections; closing this one");
            continue;
        };
        let service = service.clone();
        connections.spawn(async move {
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
