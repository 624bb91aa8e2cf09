//! HTTPS ports: TLS terminated with rustls (the certificate picked by SNI), HTTP/2 or
//! HTTP/1.1 as ALPN agrees, each request routed by its own host like plain HTTP's and sent
//! to the container over HTTP/1.1 on a reused connection. hyper does the framing here; the
//! bytes are decrypted in userspace anyway, so splice has nothing to offer.

use std::{
    cell::RefCell,
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, SocketAddrV4},
    os::fd::AsFd as _,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use ferry_api::hostname;
use http_body_util::{Either, Full};
use hyper::{
    Request, Response, StatusCode, Version,
    body::{Bytes, Incoming},
    client::conn::http1::SendRequest,
    header::{self, HeaderName, HeaderValue},
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::{ServerConfig, crypto::ring::default_provider};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::{Context, certificates::Resolver, metrics::Exchange, routes::Target, socket::linger};

/// Longest a TLS handshake may take.
const HANDSHAKE_TIME: Duration = Duration::from_secs(10);
/// Longest a request head may take (slowloris).
const HEAD_TIME: Duration = Duration::from_secs(10);
/// Largest HTTP/1.1 read buffer, which bounds a request head.
const MAX_BUFFER: usize = 32 * 1024;
/// Largest HTTP/2 header list.
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Most concurrent HTTP/2 streams per connection.
const MAX_STREAMS: u32 = 256;
/// Most idle backend connections kept per container.
const MAX_IDLE: usize = 64;

/// Headers that belong to one hop of a connection.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];
/// Headers ferry sets itself: a client's are never passed on.
const FORWARDING: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

type Body = Either<Incoming, Full<Bytes>>;

/// The TLS side of every HTTPS port: certificates by SNI, h2 and http/1.1 offered.
pub fn acceptor(certificates: super::Certificates) -> Result<TlsAcceptor, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(certificates)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Idle HTTP/1.1 connections to containers, by address.
#[derive(Default)]
pub struct Senders {
    idle: RefCell<HashMap<SocketAddrV4, Vec<SendRequest<Incoming>>>>,
}

impl Senders {
    fn take(&self, backend: SocketAddrV4) -> Option<SendRequest<Incoming>> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&backend)?;
        list.retain(|s| !s.is_closed());
        let ready = list.iter().position(SendRequest::is_ready)?;
        Some(list.swap_remove(ready))
    }

    fn put(&self, backend: SocketAddrV4, sender: SendRequest<Incoming>) {
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(backend).or_default();
        if list.len() < MAX_IDLE {
            list.push(sender);
        }
    }
}

/// Spawns onto the thread's local task set: the ingress's futures are not `Send`.
#[derive(Clone, Copy)]
struct Local;

impl<F: std::future::Future + 'static> hyper::rt::Executor<F> for Local {
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}

/// Serves one HTTPS connection until it ends.
pub async fn serve(
    ctx: Rc<Context>,
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: IpAddr,
    port: u16,
) {
    let metrics = ctx.metrics.clone();
    let _open = metrics.connection_opened();
    let _ = stream.set_nodelay(true);
    // A second descriptor of the socket, so it outlives hyper's and the TLS layer's: the
    // close after them lingers (see `socket::linger`) instead of resetting a client that
    // is still sending a body the container answered without reading.
    // Registered with the reactor only for the linger, once hyper is done.
    let socket = stream.as_fd().try_clone_to_owned();
    let tls = match tokio::time::timeout(HANDSHAKE_TIME, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            debug!(%peer, "TLS handshake: {e}");
            return;
        }
        Err(_) => return,
    };
    let mut closing = ctx.closing.clone();
    let service_ctx = ctx.clone();
    let service = service_fn(move |request| {
        let ctx = service_ctx.clone();
        async move { Ok::<_, Infallible>(forward(&ctx, request, peer, port).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(Local);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIME)
        .max_buf_size(MAX_BUFFER);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_LIST)
        .max_concurrent_streams(MAX_STREAMS);
    let mut connection = Box::pin(builder.serve_connection(TokioIo::new(tls), service));
    let stopping = async {
        if !*closing.borrow() {
            let _ = closing.changed().await;
        }
    };
    tokio::select! {
        r = connection.as_mut() => {
            if let Err(e) = r {
                debug!(%peer, "HTTPS connection: {e}");
            }
        }
        () = stopping => {
            // HTTP/2 GOAWAY or HTTP/1.1 `Connection: close`: requests in flight finish.
            connection.as_mut().graceful_shutdown();
            let _ = connection.as_mut().await;
        }
    }
    drop(connection);
    if let Ok(socket) = socket.and_then(|fd| TcpStream::from_std(std::net::TcpStream::from(fd))) {
        linger(&socket).await;
    }
}

fn plain(status: StatusCode, text: String) -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(text + "\n"))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

async fn forward(
    ctx: &Context,
    request: Request<Incoming>,
    peer: IpAddr,
    port: u16,
) -> Response<Body> {
    // The authority of an absolute-form (or HTTP/2) request decides, as on plain HTTP.
    let named = match request.uri().authority() {
        Some(authority) => Some(authority.as_str().as_bytes()),
        None => request
            .headers()
            .get(header::HOST)
            .map(HeaderValue::as_bytes),
    };
    let host = match named.map(hostname::from_authority).transpose() {
        Ok(host) => host,
        Err(e) => {
            ctx.metrics.refused(400);
            return plain(StatusCode::BAD_REQUEST, format!("malformed request: {e}"));
        }
    };
    let routes = ctx.routes.borrow().clone();
    let Some(target) = routes.route(port, host.as_deref()) else {
        ctx.metrics.refused(404);
        let host = host.as_deref().unwrap_or("(none)");
        return plain(
            StatusCode::NOT_FOUND,
            format!("no service answers for host {host} on port {port}"),
        );
    };
    let started = Instant::now();
    let Some((backend, container, sender)) = sender_for(ctx, target).await else {
        ctx.metrics.refused(503);
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{} has no container accepting connections", target.name),
        );
    };
    let mut exchange = Exchange::new(&target.name, container, started);
    let upstream = upstream_request(request, host.as_deref(), peer);
    let mut sender = sender;
    let response = sender.send_request(upstream).await;
    ctx.https.put(backend, sender);
    match response {
        Ok(mut response) => {
            exchange.status = response.status().as_u16();
            exchange.bytes_out = response
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(0);
            ctx.metrics.record(&exchange);
            for name in HOP_BY_HOP {
                response.headers_mut().remove(name);
            }
            response.map(Either::Left)
        }
        Err(e) => {
            exchange.status = 502;
            ctx.metrics.record(&exchange);
            plain(StatusCode::BAD_GATEWAY, format!("{}: {e}", target.name))
        }
    }
}

/// A ready connection to the next backend in rotation, reused or new; a backend that
/// refuses is taken out of rotation and the next one tried.
async fn sender_for<'t>(
    ctx: &Context,
    target: &'t Target,
) -> Option<(SocketAddrV4, &'t str, SendRequest<Incoming>)> {
    let (backend, sender) = target
        .first_open(&ctx.out, |backend, time| async move {
            if let Some(sender) = ctx.https.take(backend.address) {
                return Ok(sender);
            }
            let stream = super::proxy::connect(backend.address, time).await?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)?;
            tokio::task::spawn_local(async move {
                let _ = connection.await;
            });
            Ok(sender)
        })
        .await?;
    Some((backend.address, &backend.container, sender))
}

/// The request as the container gets it: HTTP/1.1, origin-form, its own host, without the
/// hop-by-hop and forwarding headers, plus ferry's `X-Forwarded-*`.
fn upstream_request(
    request: Request<Incoming>,
    host: Option<&str>,
    peer: IpAddr,
) -> Request<Incoming> {
    let (mut parts, body) = request.into_parts();
    let authority = parts.uri.authority().map(ToString::to_string);
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/")
        .parse()
        .unwrap_or_default();
    parts.version = Version::HTTP_11;
    for name in HOP_BY_HOP.iter().chain(&FORWARDING) {
        parts.headers.remove(*name);
    }
    // The target's authority replaces a `Host` that disagrees (RFC 9112 §3.2.2).
    let host_value = authority
        .and_then(|a| HeaderValue::from_str(&a).ok())
        .or_else(|| parts.headers.get(header::HOST).cloned())
        .or_else(|| host.and_then(|h| HeaderValue::from_str(h).ok()));
    if let Some(value) = host_value {
        parts.headers.insert(header::HOST, value.clone());
        parts
            .headers
            .insert(HeaderName::from_static("x-forwarded-host"), value);
    }
    if let Ok(value) = HeaderValue::from_str(&peer.to_string()) {
        parts
            .headers
            .insert(HeaderName::from_static("x-forwarded-for"), value);
    }
    parts.headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("https"),
    );
    Request::from_parts(parts, body)
}
