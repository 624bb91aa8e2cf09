//! Ingress: external traffic on the host ports services publish: HTTP and HTTPS routed per
//! request by host name, TCP and UDP relayed whole, each to the serving generation's
//! containers, round-robin (issue 5).
//!
//! The proxy runs on a thread of its own with a single-threaded runtime: one worker, like
//! the nginx and HAProxy it is measured against, and no locks on the per-request path (the
//! connection pool and routes are the thread's own).
//!
//! # Layout
//! - `routes`: which service a host name means on a port, and the next container.
//! - `head`: reading one HTTP/1.x request head with hard limits, refusing anything a
//!   backend could read differently (request smuggling).
//! - `chunked`: where a chunked body ends, refusing any framing but the RFC's exact one.
//! - `response`: a backend's response head: status, framing, keep-alive.
//! - `proxy`: one client connection, request after request.
//! - `kernel`: L4 ports in the kernel: tc programs attached to the server's interfaces,
//!   the ports map written from the routes.
//! - `relay`: L4 ports in userspace, where the kernel path cannot serve them: TCP
//!   connections spliced whole, UDP datagrams per client.
//! - `pool`: idle connections to containers, reused.
//! - `splice`, `socket`: moving bytes (zero-copy for large bodies), each wait bounded.
//! - `https`: HTTPS ports: rustls with certificates by SNI (`certificates`, followed from
//!   central), HTTP/2 and HTTP/1.1 through hyper.
//! - `listeners`: the listening sockets, kept across agent restarts.
//! - `metrics`, `scrape`: Prometheus figures and their endpoint.

mod certificates;
pub mod chunked;
pub mod head;
mod https;
mod kernel;
mod listeners;
mod metrics;
mod pool;
mod proxy;
mod relay;
pub mod response;
pub mod routes;
mod scrape;
mod socket;
mod splice;

use std::{
    cell::RefCell,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    rc::Rc,
    sync::Arc,
    time::Duration,
};

use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

pub use certificates::{Certificates, follow as follow_certificates};
pub use kernel::{KernelOptions, KernelPathError, L4Path};
pub use metrics::Metrics;
pub use scrape::serve_metrics;

use crate::discovery::Records;
use pool::Pool;
use routes::{OutOfRotation, Routes};

/// While the agent stops, how long an idle keep-alive connection is given to send one more
/// request (answered with `Connection: close`) before it is closed.
const CLOSING_GRACE: Duration = Duration::from_secs(1);

/// Where the ingress listens and keeps its sockets.
#[derive(Clone, Debug)]
pub struct IngressOptions {
    /// The address the host ports are bound on.
    pub address: Ipv4Addr,
    /// Directory of the keepers that hold the listening sockets across restarts (None:
    /// the sockets close with the process).
    pub sockets: Option<PathBuf>,
    /// The kernel path of the L4 ports (None: the userspace relay alone, as in tests of
    /// the proxy on its own).
    pub kernel: Option<KernelOptions>,
}

/// What every connection of the ingress thread shares.
struct Context {
    routes: watch::Receiver<Arc<Routes>>,
    out: OutOfRotation,
    pool: RefCell<Pool>,
    closing: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    /// Idle connections of the HTTPS side.
    https: https::Senders,
    /// The TLS side of HTTPS ports (None: the TLS configuration failed; logged).
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Context {
    fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }
}

/// The running ingress thread. Dropping it stops it as [`Ingress::finish`] does, without
/// waiting: it stops accepting, and open connections finish their requests.
pub struct Ingress {
    address: Ipv4Addr,
    /// Shared with the thread, so the connections' receivers never see it dropped.
    closing: Arc<watch::Sender<bool>>,
    finished: Option<oneshot::Receiver<()>>,
    metrics: Arc<Metrics>,
}

impl Ingress {
    /// Starts the ingress thread: it listens on the ports `records` publish, following them.
    pub fn start(
        options: IngressOptions,
        records: Records,
        certificates: Certificates,
    ) -> std::io::Result<Self> {
        let (closing, closing_rx) = watch::channel(false);
        let closing = Arc::new(closing);
        let held = closing.clone();
        let (done, finished) = oneshot::channel();
        let address = options.address;
        let mut metrics = Metrics::default();
        if let Some(kernel) = &options.kernel {
            metrics.count_kernel(crate::dataplane::map_dir(&kernel.bpffs));
        }
        let metrics = Arc::new(metrics);
        let thread_metrics = metrics.clone();
        std::thread::Builder::new()
            .name("ferry-ingress".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        warn!("the ingress runtime did not start: {e}");
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(
                    &runtime,
                    run(options, records, certificates, closing_rx, thread_metrics),
                );
                drop(held);
                let _ = done.send(());
            })?;
        Ok(Self {
            address,
            closing,
            finished: Some(finished),
            metrics,
        })
    }

    /// The address its host ports are bound on.
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// The ingress's figures.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Stops accepting (the sockets stay with their keepers for the next agent), lets open
    /// connections finish their requests, bounded by `limit`.
    pub async fn finish(mut self, limit: Duration) {
        let _ = self.closing.send(true);
        let open = self.metrics.open_connections();
        info!(
            open,
            "ingress: no longer accepting; finishing open connections"
        );
        let Some(finished) = self.finished.take() else {
            return;
        };
        if tokio::time::timeout(limit, finished).await.is_err() {
            warn!(
                open = self.metrics.open_connections(),
                "ingress: connections still open after {limit:?}; closing them"
            );
        }
    }
}

impl Drop for Ingress {
    fn drop(&mut self) {
        let _ = self.closing.send(true);
    }
}

async fn run(
    options: IngressOptions,
    records: Records,
    certificates: Certificates,
    mut closing: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) {
    let (routes_tx, routes_rx) = watch::channel(Arc::new(Routes::default()));
    let ctx = Rc::new(Context {
        routes: routes_rx,
        out: OutOfRotation::default(),
        pool: RefCell::new(Pool::default()),
        closing: closing.clone(),
        metrics,
        https: https::Senders::default(),
        tls: https::acceptor(certificates)
            .inspect_err(|e| warn!("HTTPS ports cannot be served: {e}"))
            .ok(),
    });
    let sweeper = {
        let ctx = ctx.clone();
        tokio::task::spawn_local(async move {
            loop {
                tokio::time::sleep(pool::IDLE_FOR / 4).await;
                ctx.pool.borrow_mut().sweep();
            }
        })
    };
    let mut changes = records.subscribe();
    let mut kernel = match options.kernel.clone() {
        Some(k) if k.relay_only => {
            kernel::relay_only(&k);
            None
        }
        Some(k) => Some(kernel::Kernel::new(k, ctx.metrics.kernel_names())),
        None => None,
    };
    let mut listening = listeners::Listeners::new(options);
    loop {
        let routes = Arc::new(Routes::build(&records.read()));
        // The routes first: a listener accepts the moment it is bound.
        let _ = routes_tx.send(routes.clone());
        let mut complete = listening.follow(&routes, &ctx).await;
        if let Some(kernel) = &mut kernel {
            complete &= kernel.follow(&routes).await;
        }
        // A port that could not be bound is tried again shortly; the kernel path looks at
        // the interfaces again now and then (the WireGuard link may come or be remade).
        let retry = async {
            match (complete, kernel.is_some()) {
                (false, _) => tokio::time::sleep(Duration::from_secs(2)).await,
                (true, true) => tokio::time::sleep(Duration::from_secs(10)).await,
                (true, false) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            r = changes.changed() => if r.is_err() { break },
            _ = closing.changed() => break,
            () = retry => {}
        }
    }
    listening.stop_accepting();
    sweeper.abort();
    while ctx.metrics.open_connections() > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Where the metrics endpoint listens by default.
pub const METRICS_LISTEN: SocketAddr =
    SocketAddr::V4(std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9466));
