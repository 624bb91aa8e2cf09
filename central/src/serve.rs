//! Serving the API over TLS: `start` binds, returns a handle with the bound address, and
//! the server stops when the handle is dropped (omicron's dns-server does the same).

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinHandle};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::{
    api::{self, AppState},
    config::{Config, ConfigError},
    store::{
        Backend, StoreError,
        compaction::{self, Window},
        identity,
    },
};

/// Most connections served at once; more wait in the kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 4096;
/// A TLS handshake that takes longer is dropped, so idle sockets cannot pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why central could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("read {path}: {source}")]
    Pem {
        path: std::path::PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("the TLS certificate or key in {dir} is unusable: {source}")]
    Tls {
        dir: std::path::PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("listen on {addr}: {source}; is another central running, or is the port taken?")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running central. Dropping it stops accepting and closes every connection.
pub struct Running {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
    compaction: JoinHandle<()>,
}

impl Running {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
        self.compaction.abort();
    }
}

/// What `serve` may override in the configuration.
#[derive(Clone, Copy, Debug, Default)]
pub struct Overrides {
    /// Listen here instead of the configured address.
    pub listen: Option<SocketAddr>,
    /// Drain retired generations this long instead of the configured period.
    pub drain: Option<std::time::Duration>,
    /// Keep this much of the change log instead of [`Window::default`].
    pub history: Option<Window>,
    /// Compact this often instead of [`compaction::INTERVAL`].
    pub compaction_interval: Option<std::time::Duration>,
}

/// Starts central from `data_dir`, with the configuration's values unless overridden.
pub async fn start(data_dir: &Path, overrides: Overrides) -> Result<Running, ServeError> {
    let config = Config::load(data_dir)?;
    let listen = overrides.listen;
    let drain = overrides
        .drain
        .unwrap_or(std::time::Duration::from_secs(config.drain_seconds));
    let tls = tls_config(&data_dir.join("tls"))?;
    let store = Arc::new(Backend::open(data_dir, config.store.as_ref())?);
    info!(store = %store.describe(), "state store open");
    let addr = listen.unwrap_or(config.listen);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    let compaction = tokio::spawn(compaction::run(
        store.clone(),
        overrides.history.unwrap_or_default(),
        overrides
            .compaction_interval
            .unwrap_or(compaction::INTERVAL),
    ));
    let store_id = identity::ensure(store.as_ref())?;
    let router = api::router(AppState::new(store, store_id, data_dir, drain));
    info!(%local_addr, "central listening");
    let task = tokio::spawn(accept_loop(listener, TlsAcceptor::from(tls), router));
    Ok(Running {
        local_addr,
        task,
        compaction,
    })
}

fn tls_config(dir: &Path) -> Result<Arc<ServerConfig>, ServeError> {
    let pem = |name: &str| dir.join(name);
    let server =
        CertificateDer::from_pem_file(pem("server.pem")).map_err(|source| ServeError::Pem {
            path: pem("server.pem"),
            source,
        })?;
    // The CA goes out with the server certificate so a joining agent can pin it by
    // fingerprint before it trusts anything else.
    let ca = CertificateDer::from_pem_file(pem("ca.pem")).map_err(|source| ServeError::Pem {
        path: pem("ca.pem"),
        source,
    })?;
    let key =
        PrivateKeyDer::from_pem_file(pem("server-key.pem")).map_err(|source| ServeError::Pem {
            path: pem("server-key.pem"),
            source,
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| {
            b.with_no_client_auth()
                .with_single_cert(vec![server, ca], key)
        })
        .map_err(|source| ServeError::Tls {
            dir: dir.to_path_buf(),
            source,
        })?;
    Ok(Arc::new(config))
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, router: axum::Router) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        connections.spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    debug!(%peer, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // A client that never finishes its request head is dropped, so slow or idle
            // connections cannot hold slots forever.
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
                debug!(%peer, "connection ended: {e}");
            }
        });
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }
}
