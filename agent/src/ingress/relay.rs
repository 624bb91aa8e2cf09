//! L4 ports (`tcp:` and `udp:` in `ports`): each TCP connection relayed whole to the next
//! container of the port's service, round-robin, spliced both ways; each UDP client (by
//! source address) kept on the container its first datagram went to while it keeps
//! talking. Cloud 66 allowed one container per server for such ports; here every
//! container of the serving generation takes its share.

use std::{
    cell::Cell,
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    rc::Rc,
    time::{Duration, Instant},
};

use tokio::{
    net::{TcpStream, UdpSocket},
    task::JoinHandle,
};
use tracing::debug;

use super::{Context, proxy::connect, splice::relay};

/// Longest a relayed TCP connection may stay silent both ways.
const TCP_IDLE: Duration = Duration::from_secs(3600);
/// Longest a UDP client keeps its container without sending.
const UDP_IDLE: Duration = Duration::from_secs(30);
/// Most UDP clients followed at once per port; datagrams of further ones are dropped.
const MAX_UDP_FLOWS: usize = 16 * 1024;
/// Longest the relay waits to pass one datagram on.
const SEND_WAIT: Duration = Duration::from_millis(50);
/// Largest datagram relayed.
const MAX_DATAGRAM: usize = 65_535;

/// Relays one TCP connection on host port `port` until both sides finish.
pub async fn serve_tcp(ctx: Rc<Context>, client: TcpStream, peer: IpAddr, port: u16) {
    let metrics = ctx.metrics.clone();
    let _open = metrics.connection_opened();
    let routes = ctx.routes.borrow().clone();
    let Some(target) = routes.route(port, None) else {
        return;
    };
    let opened = target
        .first_open(&ctx.out, |backend, time| connect(backend.address, time))
        .await;
    if let Some((backend, upstream)) = opened {
        let _ = client.set_nodelay(true);
        let mut pipes = [None, None];
        match relay(&client, &upstream, &mut pipes, TCP_IDLE).await {
            Ok((sent, received)) => {
                metrics.relayed(&target.name, &backend.container, sent, received);
            }
            Err(e) => debug!(%peer, port, "relayed connection ended: {e}"),
        }
        return;
    }
    // No container: the client sees its connection closed at once.
    metrics.refused(503);
}

struct Flow {
    upstream: Rc<UdpSocket>,
    last: Rc<Cell<Instant>>,
    replies: JoinHandle<()>,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.replies.abort();
    }
}

/// Relays the datagrams of UDP host port `port` until the task is dropped.
pub async fn serve_udp(ctx: Rc<Context>, socket: UdpSocket, port: u16) {
    let socket = Rc::new(socket);
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut sweep = tokio::time::interval(UDP_IDLE / 2);
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = received else { continue };
                if !flows.contains_key(&from) {
                    if flows.len() >= MAX_UDP_FLOWS {
                        continue;
                    }
                    let Some(flow) = open_flow(&ctx, &socket, port, from).await else { continue };
                    flows.insert(from, flow);
                }
                if let Some(flow) = flows.get(&from) {
                    flow.last.set(Instant::now());
                    // Not try_send: a socket the reactor has not seen writable yet would
                    // refuse a new flow's first datagram. A send that cannot go within
                    // the bound is dropped, as the network would.
                    let _ = tokio::time::timeout(SEND_WAIT, flow.upstream.send(&buf[..n])).await;
                }
            }
            _ = sweep.tick() => flows.retain(|_, f| f.last.get().elapsed() < UDP_IDLE),
        }
    }
}

/// A socket to the next container for client `from`, and the task that sends its replies
/// back from the host port.
async fn open_flow(
    ctx: &Rc<Context>,
    socket: &Rc<UdpSocket>,
    port: u16,
    from: SocketAddr,
) -> Option<Flow> {
    let routes = ctx.routes.borrow().clone();
    let backend = routes.udp(port)?.next(&ctx.out)?.address;
    let upstream = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
        .await
        .ok()?;
    upstream.connect(backend).await.ok()?;
    let upstream = Rc::new(upstream);
    let last = Rc::new(Cell::new(Instant::now()));
    let replies = {
        let (upstream, socket, last) = (upstream.clone(), socket.clone(), last.clone());
        tokio::task::spawn_local(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while let Ok(n) = upstream.recv(&mut buf).await {
                last.set(Instant::now());
                let _ = socket.send_to(&buf[..n], from).await;
            }
        })
    };
    Some(Flow {
        upstream,
        last,
        replies,
    })
}
