//! The TLS certificates of every stack, followed from central's `certificates/` (a
//! listing, then a watch), and the resolver that picks one per TLS handshake by the
//! client's SNI: an exact host name first, then a `*.` wildcard of one label.

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use ferry_api::{hostname, types::TlsCertificate};
use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tracing::{info, warn};

use crate::membership::{
    follow::{Follower, Update},
    state::Loaded,
};

/// Keys by host name, as the handshakes read them.
#[derive(Debug, Default)]
struct ByHost {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the part after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

/// Every stack's certificates, shared by the follower and the HTTPS listeners.
#[derive(Clone, Debug, Default)]
pub struct Certificates {
    stored: Arc<RwLock<HashMap<String, TlsCertificate>>>,
    by_host: Arc<RwLock<ByHost>>,
}

impl Certificates {
    /// Replaces them all (a fresh listing).
    pub fn replace(&self, all: impl IntoIterator<Item = (String, TlsCertificate)>) {
        *self.stored.write().unwrap_or_else(PoisonError::into_inner) = all.into_iter().collect();
        self.rebuild();
    }

    /// Applies one change of `certificates/<stack>/<name>`.
    pub fn apply(&self, key: &str, value: Option<TlsCertificate>) {
        {
            let mut stored = self.stored.write().unwrap_or_else(PoisonError::into_inner);
            match value {
                Some(c) => stored.insert(key.to_string(), c),
                None => stored.remove(key),
            };
        }
        self.rebuild();
    }

    fn rebuild(&self) {
        let stored = self.stored.read().unwrap_or_else(PoisonError::into_inner);
        let mut by_host = ByHost::default();
        let mut keys: Vec<&String> = stored.keys().collect();
        // Deterministic when two certificates claim one name: the first key wins.
        keys.sort();
        for key in keys {
            let certificate = &stored[key];
            let certified = match certificate.certified_key() {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    warn!(%key, "certificate not served: {e}");
                    continue;
                }
            };
            for host in &certificate.hosts {
                let host = hostname::canonical(host).into_owned();
                let table = match host.strip_prefix("*.") {
                    Some(rest) => by_host.wildcard.entry(rest.to_string()),
                    None => by_host.exact.entry(host),
                };
                table.or_insert_with(|| certified.clone());
            }
        }
        *self.by_host.write().unwrap_or_else(PoisonError::into_inner) = by_host;
    }

    /// The key for `host` (any case, a trailing dot or not), if some certificate serves it.
    pub fn find(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let host = &*hostname::canonical(host);
        let by_host = self.by_host.read().unwrap_or_else(PoisonError::into_inner);
        by_host.exact.get(host).cloned().or_else(|| {
            let (_, parent) = host.split_once('.')?;
            by_host.wildcard.get(parent).cloned()
        })
    }
}

/// Picks the certificate for each handshake's SNI.
#[derive(Debug)]
pub struct Resolver(pub Certificates);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // No SNI, or a name no certificate serves: the handshake fails (rustls sends
        // unrecognized_name) rather than showing another site's certificate.
        self.0.find(hello.server_name()?)
    }
}

/// Follows `certificates/` on central until the task is dropped.
pub async fn follow(loaded: Loaded, certificates: Certificates) {
    let mut follower: Follower<TlsCertificate> = Follower::new(
        loaded.client(),
        ferry_api::keys::CERTIFICATES,
        "certificates",
        Duration::from_millis(500),
    );
    loop {
        match follower.next().await {
            Update::Snapshot { items, .. } => certificates.replace(items),
            Update::Changes { changes, .. } => {
                for (key, certificate) in changes {
                    if let Some(c) = &certificate {
                        info!(%key, hosts = ?c.hosts, "certificate changed");
                    }
                    certificates.apply(&key, certificate);
                }
            }
        }
    }
}
