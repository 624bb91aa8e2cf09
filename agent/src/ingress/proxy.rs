//! One client connection of a plain HTTP port: each request head read strictly, routed by its
//! own `Host` to the next container of the service it names, sent on a pooled connection
//! to that container with the proxy headers, its body and the response moved as they
//! arrive (large ones by splice), then the next request. A connection never carries a
//! request to a service its `Host` does not name.

use std::{
    io,
    net::{IpAddr, SocketAddrV4},
    rc::Rc,
    time::{Duration, Instant},
};

use tokio::{net::TcpStream, sync::watch};
use tracing::debug;

use super::{
    Context,
    chunked::Chunked,
    head::{self, Body, HeadError, RequestHead, Version},
    metrics::Exchange,
    response::{self, Framing, ResponseError},
    routes::{Backend, Target},
    socket::{linger, read_some, write_all},
    splice::{Pipe, SPLICE_MIN, pipe_for, relay, splice_between},
};

/// Longest wait for the next request on an idle keep-alive connection.
const KEEP_ALIVE: Duration = Duration::from_secs(60);
/// Longest a whole request head may take once its first byte arrived (slowloris).
const HEAD_TIME: Duration = Duration::from_secs(10);
/// Longest a peer may stay silent in the middle of a body or a response.
const IDLE: Duration = Duration::from_secs(60);
/// Longest a switched (WebSocket) connection may stay silent both ways.
const TUNNEL_IDLE: Duration = Duration::from_secs(600);
/// Size of each read buffer; a request head never exceeds it (see `head::Limits`).
const BUFFER: usize = 16 * 1024;

/// Serves one accepted connection on host port `port` until either side ends it.
pub async fn serve(ctx: Rc<Context>, client: TcpStream, peer: IpAddr, port: u16) {
    let _ = client.set_nodelay(true);
    let mut conn = Connection {
        closing: ctx.closing.clone(),
        peer_text: peer.to_string(),
        ctx,
        client,
        peer,
        port,
        buf: vec![0; BUFFER],
        filled: 0,
        upstream_buf: vec![0; response::MAX_BYTES],
        pipes: [None, None],
        head_out: Vec::with_capacity(1024),
    };
    let ctx = conn.ctx.clone();
    let _open = ctx.metrics.connection_opened();
    if let Err(e) = conn.run().await {
        debug!(peer = %peer, port, "connection ended: {e}");
    }
}

struct Connection {
    ctx: Rc<Context>,
    /// Set when the agent stops: finish the exchange at hand, then close.
    closing: watch::Receiver<bool>,
    client: TcpStream,
    peer: IpAddr,
    /// The peer's address as `X-Forwarded-For` carries it, written once per connection.
    peer_text: String,
    port: u16,
    /// The client's bytes: `..filled` have been read and not yet forwarded.
    buf: Vec<u8>,
    filled: usize,
    upstream_buf: Vec<u8>,
    /// Request-direction and response-direction pipes, made on the first large body.
    pipes: [Option<Pipe>; 2],
    head_out: Vec<u8>,
}

/// How an exchange ended for the client connection.
enum Next {
    /// Read the next request.
    KeepAlive,
    /// Close the client connection.
    Close,
    /// Close it with a lingering read: the client may still be sending a body nobody read.
    Linger,
}

/// A refusal the client is told about before the connection closes.
struct Refusal {
    status: u16,
    reason: &'static str,
    detail: String,
}

impl Connection {
    async fn run(&mut self) -> io::Result<()> {
        loop {
            let head = match self.next_head().await {
                Ok(Some(head)) => head,
                Ok(None) => return Ok(()),
                Err(refusal) => {
                    self.refuse(&refusal).await;
                    return Ok(());
                }
            };
            match self.exchange(&head).await? {
                Next::KeepAlive => continue,
                Next::Close if self.filled == 0 => return Ok(()),
                // Bytes the client sent past this exchange are unread.
                Next::Close | Next::Linger => {
                    linger(&self.client).await;
                    return Ok(());
                }
            }
        }
    }

    /// The next request head; None when the client closed (or went quiet) between requests.
    async fn next_head(&mut self) -> Result<Option<RequestHead>, Refusal> {
        let limits = head::Limits::default();
        let mut deadline = None;
        loop {
            if self.filled > 0 {
                match head::read(&self.buf[..self.filled], &limits) {
                    Ok(head) => return Ok(Some(head)),
                    Err(HeadError::Incomplete) => {}
                    Err(e @ (HeadError::TooLarge(_) | HeadError::TooManyHeaders(_))) => {
                        return Err(Refusal::new(431, "Request Header Fields Too Large", e));
                    }
                    Err(e) => return Err(Refusal::new(400, "Bad Request", e)),
                }
            }
            let wait = match deadline {
                Some(deadline) => deadline - Instant::now().min(deadline),
                None if self.ctx.is_closing() => super::CLOSING_GRACE,
                None => KEEP_ALIVE,
            };
            let filled = self.filled;
            let read = read_some(&self.client, &mut self.buf[filled..], wait);
            let read = if filled == 0 && !*self.closing.borrow() {
                // Idle between requests: a stopping agent cuts the wait short.
                tokio::select! {
                    r = read => r,
                    _ = self.closing.changed() => continue,
                }
            } else {
                read.await
            };
            match read {
                Ok(0) if filled == 0 => return Ok(None),
                Ok(0) => {
                    return Err(Refusal::new(
                        400,
                        "Bad Request",
                        "the request head ended early",
                    ));
                }
                Ok(n) => {
                    self.filled += n;
                    deadline.get_or_insert_with(|| Instant::now() + HEAD_TIME);
                }
                Err(_) if filled == 0 => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    return Err(Refusal::new(
                        408,
                        "Request Timeout",
                        "the request head took too long",
                    ));
                }
                Err(_) => return Ok(None),
            }
        }
    }

    async fn refuse(&mut self, refusal: &Refusal) {
        self.ctx.metrics.refused(refusal.status);
        debug!(peer = %self.peer, status = refusal.status, "refused: {}", refusal.detail);
        let body = format!("{}\n", refusal.detail);
        let text = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            refusal.status,
            refusal.reason,
            body.len()
        );
        if write_all(&self.client, text.as_bytes(), IDLE).await.is_ok() {
            linger(&self.client).await;
        }
    }

    async fn exchange(&mut self, head: &RequestHead) -> io::Result<Next> {
        let routes = self.ctx.routes.borrow().clone();
        let Some(target) = routes.route(self.port, head.host.as_deref()) else {
            let host = head.host.as_deref().unwrap_or("(none)");
            self.refuse(&Refusal::new(
                404,
                "Not Found",
                format!("no service answers for host {host} on port {}", self.port),
            ))
            .await;
            return Ok(Next::Close);
        };
        let started = Instant::now();
        let (backend, upstream) = match self.upstream(target).await {
            Ok(found) => found,
            Err(refusal) => {
                self.refuse(&refusal).await;
                return Ok(Next::Close);
            }
        };
        let to_head = &self.buf[head.method.clone()] == b"HEAD";
        self.write_head_out(head);
        let mut exchange = Exchange::new(&target.name, &backend.container, started);
        exchange.bytes_in = match head.body {
            Body::Length(n) => n,
            _ => 0,
        };
        let result = self.forward(head, &upstream, to_head, &mut exchange).await;
        match result {
            Ok(Forwarded::Done {
                reusable,
                client_close,
                unread_body,
            }) => {
                self.ctx.metrics.record(&exchange);
                if reusable {
                    self.ctx.pool.borrow_mut().put(backend.address, upstream);
                }
                Ok(if unread_body {
                    Next::Linger
                } else if client_close {
                    Next::Close
                } else {
                    Next::KeepAlive
                })
            }
            Ok(Forwarded::Switched) => {
                self.ctx.metrics.record(&exchange);
                self.tunnel(&upstream).await;
                Ok(Next::Close)
            }
            Ok(Forwarded::BadResponse(refusal)) => {
                exchange.status = refusal.status;
                self.ctx.metrics.record(&exchange);
                self.refuse(&refusal).await;
                Ok(Next::Close)
            }
            Err(e) => {
                exchange.status = 0;
                self.ctx.metrics.record(&exchange);
                Err(e)
            }
        }
    }

    /// A connection to the next backend in rotation: an idle pooled one, or a new one;
    /// a backend that refuses is taken out of rotation and the next one tried.
    async fn upstream<'t>(&self, target: &'t Target) -> Result<(&'t Backend, TcpStream), Refusal> {
        let ctx = &self.ctx;
        let opened = target
            .first_open(&ctx.out, |backend, time| async move {
                // Bound first: a borrow held across the connect's await would meet the
                // next connection's.
                let pooled = ctx.pool.borrow_mut().take(backend.address);
                match pooled {
                    Some(stream) => Ok(stream),
                    None => connect(backend.address, time).await,
                }
            })
            .await;
        opened.ok_or_else(|| {
            Refusal::new(
                503,
                "Service Unavailable",
                format!("{} has no container accepting connections", target.name),
            )
        })
    }

    /// The head as the backend gets it: the client's in origin-form, less the hop-by-hop
    /// and forwarding headers it may not set, plus ferry's `X-Forwarded-*`. An
    /// absolute-form request's authority replaces its `Host` (see `head`).
    fn write_head_out(&mut self, head: &RequestHead) {
        let buf = &self.buf;
        let out = &mut self.head_out;
        out.clear();
        let method = &buf[head.method.clone()];
        let target = &buf[head.target.clone()];
        out.extend_from_slice(method);
        out.push(b' ');
        if head.authority.is_some() && !target.starts_with(b"/") {
            // RFC 9112 §3.2.4: an empty path is `*` for OPTIONS and `/` otherwise.
            out.push(if target.is_empty() && method == b"OPTIONS" {
                b'*'
            } else {
                b'/'
            });
        }
        out.extend_from_slice(target);
        out.extend_from_slice(match head.version {
            Version::Http10 => b" HTTP/1.0\r\n",
            Version::Http11 => b" HTTP/1.1\r\n",
        });
        let mut host = head.authority.clone();
        if let Some(authority) = &head.authority {
            out.extend_from_slice(b"Host: ");
            out.extend_from_slice(&buf[authority.clone()]);
            out.extend_from_slice(b"\r\n");
        }
        for (name, value) in &head.headers {
            let n = &buf[name.clone()];
            let dropped = n.eq_ignore_ascii_case(b"x-forwarded-for")
                || n.eq_ignore_ascii_case(b"x-forwarded-proto")
                || n.eq_ignore_ascii_case(b"x-forwarded-host")
                || n.eq_ignore_ascii_case(b"forwarded")
                || n.eq_ignore_ascii_case(b"proxy-connection")
                // The connection to the backend is ferry's: kept alive unless switching.
                || (!head.upgrade
                    && (n.eq_ignore_ascii_case(b"connection") || n.eq_ignore_ascii_case(b"keep-alive")));
            if n.eq_ignore_ascii_case(b"host") {
                if head.authority.is_some() {
                    continue;
                }
                host = Some(value.clone());
            }
            if dropped {
                continue;
            }
            out.extend_from_slice(&buf[name.clone()]);
            out.extend_from_slice(b": ");
            out.extend_from_slice(&buf[value.clone()]);
            out.extend_from_slice(b"\r\n");
        }
        if head.version == Version::Http10 && !head.upgrade {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"X-Forwarded-For: ");
        out.extend_from_slice(self.peer_text.as_bytes());
        out.extend_from_slice(b"\r\nX-Forwarded-Proto: http\r\n");
        if let Some(host) = host {
            out.extend_from_slice(b"X-Forwarded-Host: ");
            out.extend_from_slice(&buf[host]);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Sends the request (head already in `head_out`) and relays the response, both ways at
    /// once: a backend may answer before it has read the whole body.
    async fn forward(
        &mut self,
        head: &RequestHead,
        upstream: &TcpStream,
        to_head: bool,
        exchange: &mut Exchange<'_>,
    ) -> io::Result<Forwarded> {
        let Connection {
            ctx,
            client,
            buf,
            filled,
            upstream_buf,
            pipes,
            head_out,
            ..
        } = self;
        let [request_pipe, response_pipe] = pipes;
        let client: &TcpStream = client;
        let client_close = head.close || ctx.is_closing();
        let request = send_request(client, upstream, head_out, buf, filled, head, request_pipe);
        let response = relay_response(
            upstream,
            client,
            upstream_buf,
            to_head,
            client_close,
            response_pipe,
            exchange,
        );
        tokio::pin!(request, response);
        let mut sent = None;
        let relayed = loop {
            tokio::select! {
                r = &mut request, if sent.is_none() => {
                    if let Err(e) = &r {
                        if e.kind() == io::ErrorKind::InvalidData {
                            // A body framed wrongly: nothing past the fault was forwarded.
                            return Ok(Forwarded::BadResponse(Refusal::new(400, "Bad Request", e)));
                        }
                        // The client went away mid-body: nothing more to relay.
                        return Err(io::Error::new(e.kind(), format!("request body: {e}")));
                    }
                    sent = Some(r);
                }
                r = &mut response => break r?,
            }
        };
        Ok(match relayed {
            Relayed::Complete {
                backend_close,
                client_close: close_after,
            } => {
                let whole = sent.is_some();
                Forwarded::Done {
                    reusable: whole && !backend_close,
                    // A response before the whole body was read leaves the client's
                    // stream mid-body: it cannot carry another request, and the rest of
                    // the body may still be on its way.
                    client_close: close_after || !whole,
                    unread_body: !whole,
                }
            }
            Relayed::Switched if head.upgrade => {
                if sent.is_none() {
                    request.await?;
                }
                Forwarded::Switched
            }
            Relayed::Switched => Forwarded::BadResponse(Refusal::new(
                502,
                "Bad Gateway",
                "the backend switched protocols unasked",
            )),
            Relayed::Bad(refusal) => Forwarded::BadResponse(refusal),
        })
    }

    /// After `101 Switching Protocols`: bytes both ways until both sides finish.
    async fn tunnel(&mut self, upstream: &TcpStream) {
        let leftover = &self.buf[..self.filled];
        if write_all(upstream, leftover, IDLE).await.is_err() {
            return;
        }
        self.filled = 0;
        if let Err(e) = relay(&self.client, upstream, &mut self.pipes, TUNNEL_IDLE).await {
            debug!(peer = %self.peer, "switched connection ended: {e}");
        }
    }
}

impl Refusal {
    fn new(status: u16, reason: &'static str, detail: impl ToString) -> Self {
        Self {
            status,
            reason,
            detail: detail.to_string(),
        }
    }
}

enum Forwarded {
    Done {
        reusable: bool,
        client_close: bool,
        unread_body: bool,
    },
    Switched,
    BadResponse(Refusal),
}

enum Relayed {
    Complete {
        backend_close: bool,
        client_close: bool,
    },
    Switched,
    Bad(Refusal),
}

/// A connection to a backend, given up after `time`.
pub(super) async fn connect(address: SocketAddrV4, time: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(time, TcpStream::connect(address))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {time:?}"),
            )
        })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Writes the head and the request's body to the backend. Leaves in `buf[..filled]` what
/// the client sent after the body (a pipelined request).
async fn send_request(
    client: &TcpStream,
    upstream: &TcpStream,
    head_out: &[u8],
    buf: &mut [u8],
    filled: &mut usize,
    head: &RequestHead,
    pipe: &mut Option<Pipe>,
) -> io::Result<()> {
    let at = head.len;
    let have = *filled - at;
    match head.body {
        Body::None => {
            write_all(upstream, head_out, IDLE).await?;
            consume(buf, filled, at);
        }
        Body::Length(length) => {
            let now = have.min(usize::try_from(length).unwrap_or(usize::MAX));
            write_both(upstream, head_out, &buf[at..at + now]).await?;
            consume(buf, filled, at + now);
            let left = length - now as u64;
            if left >= SPLICE_MIN {
                let pipe = pipe_for(pipe)?;
                splice_between(client, upstream, pipe, Some(left), IDLE).await?;
            } else {
                copy_exact(client, upstream, buf, left).await?;
            }
        }
        Body::Chunked => {
            write_all(upstream, head_out, IDLE).await?;
            consume(buf, filled, at);
            let mut chunked = Chunked::default();
            loop {
                let body = chunked
                    .feed(&buf[..*filled])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                write_all(upstream, &buf[..body], IDLE).await?;
                consume(buf, filled, body);
                if chunked.is_done() {
                    break;
                }
                let n = read_some(client, &mut buf[*filled..], IDLE).await?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                *filled += n;
            }
        }
    }
    Ok(())
}

/// Reads the response head(s) and relays the response to the client.
async fn relay_response(
    upstream: &TcpStream,
    client: &TcpStream,
    buf: &mut [u8],
    to_head: bool,
    client_close: bool,
    pipe: &mut Option<Pipe>,
    exchange: &mut Exchange<'_>,
) -> io::Result<Relayed> {
    let mut filled = 0;
    let head = loop {
        let n = read_some(upstream, &mut buf[filled..], IDLE).await?;
        if n == 0 {
            return Ok(Relayed::Bad(Refusal::new(
                502,
                "Bad Gateway",
                "the backend closed without a response",
            )));
        }
        filled += n;
        match response::read(&buf[..filled], to_head) {
            Ok(head) if (100..200).contains(&head.status) && head.status != 101 => {
                // 100 Continue and 103 Early Hints go through; the final head follows.
                write_all(client, &buf[..head.len], IDLE).await?;
                buf.copy_within(head.len..filled, 0);
                filled -= head.len;
                if filled > 0
                    && let Ok(next) = response::read(&buf[..filled], to_head)
                {
                    break next;
                }
            }
            Ok(head) => break head,
            Err(ResponseError::Incomplete) => {}
            Err(e) => return Ok(Relayed::Bad(Refusal::new(502, "Bad Gateway", e))),
        }
    };
    exchange.status = head.status;
    if head.status == 101 {
        write_all(client, &buf[..filled], IDLE).await?;
        return Ok(Relayed::Switched);
    }
    let close_after = client_close || head.close;
    let body_now = filled - head.len;
    // The part of the body already read goes out with the head, in one write.
    let mut chunked = Chunked::default();
    let first = match head.framing {
        Framing::None => 0,
        Framing::Length(length) => body_now.min(usize::try_from(length).unwrap_or(usize::MAX)),
        Framing::Chunked => chunked
            .feed(&buf[head.len..filled])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("backend's {e}")))?,
        Framing::UntilClose => body_now,
    };
    let with_body = &buf[head.len..head.len + first];
    // The client is told the connection closes when ferry will close it.
    if close_after && !head.close {
        write_both(client, &with_close(&buf[..head.len]), with_body).await?;
    } else {
        write_all(client, &buf[..head.len + first], IDLE).await?;
    }
    let mut sent = first as u64;
    // Bytes past the response's end mean the backend's stream cannot be trusted again.
    let mut backend_close = head.close || first < body_now;
    match head.framing {
        Framing::None => {}
        Framing::Length(length) => {
            let left = length - first as u64;
            if left >= SPLICE_MIN {
                splice_between(upstream, client, pipe_for(pipe)?, Some(left), IDLE).await?;
            } else {
                copy_exact(upstream, client, buf, left).await?;
            }
            sent = length;
        }
        Framing::Chunked => {
            while !chunked.is_done() {
                let n = read_some(upstream, buf, IDLE).await?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                let body = chunked.feed(&buf[..n]).map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("backend's {e}"))
                })?;
                write_all(client, &buf[..body], IDLE).await?;
                sent += body as u64;
                backend_close |= body < n;
            }
        }
        Framing::UntilClose => {
            sent += splice_between(upstream, client, pipe_for(pipe)?, None, IDLE).await?;
        }
    }
    exchange.bytes_out = sent;
    Ok(Relayed::Complete {
        backend_close,
        client_close: close_after,
    })
}

/// `head` with its `Connection` and `Keep-Alive` lines replaced by `Connection: close`.
fn with_close(head: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len() + 19);
    let body = &head[..head.len() - 2];
    for line in body.split_inclusive(|b| *b == b'\n') {
        let name = line.split(|b| *b == b':').next().unwrap_or(&[]);
        if name.eq_ignore_ascii_case(b"connection") || name.eq_ignore_ascii_case(b"keep-alive") {
            continue;
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out
}

/// Copies exactly `left` bytes through `buf`, never reading past them.
async fn copy_exact(
    from: &TcpStream,
    to: &TcpStream,
    buf: &mut [u8],
    mut left: u64,
) -> io::Result<()> {
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = read_some(from, &mut buf[..want], IDLE).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the peer closed with {left} bytes of the body still to come"),
            ));
        }
        write_all(to, &buf[..n], IDLE).await?;
        left -= n as u64;
    }
    Ok(())
}

/// Writes two slices, as one system call when both fit in the socket.
async fn write_both(to: &TcpStream, first: &[u8], second: &[u8]) -> io::Result<()> {
    if second.is_empty() {
        return write_all(to, first, IDLE).await;
    }
    let slices = [io::IoSlice::new(first), io::IoSlice::new(second)];
    let written = match to.try_write_vectored(&slices) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    if written < first.len() {
        write_all(to, &first[written..], IDLE).await?;
        write_all(to, second, IDLE).await
    } else {
        write_all(to, &second[written - first.len()..], IDLE).await
    }
}

fn consume(buf: &mut [u8], filled: &mut usize, n: usize) {
    buf.copy_within(n..*filled, 0);
    *filled -= n;
}
