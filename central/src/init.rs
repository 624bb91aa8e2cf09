//! `ferry-central init`: a data directory with a CA, central's certificate, the admin and
//! join tokens, and the config. All or nothing: everything is made in a staging directory
//! that is renamed into place at the end.

use std::{
    fs,
    net::SocketAddr,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{
    config::StoreConfig,
    config::{self, Config, ConfigError},
    pki::{self, PkiError},
    store::{Backend, Compare, Op, Store, StoreError, TxnOutcome, identity},
    tokens::{self, Role},
};

/// Name of the state database in the data directory.
pub const STATE_DB: &str = "state.db";

/// What `init` made that the operator must see once.
#[derive(Debug)]
pub struct Initialised {
    /// Where everything is.
    pub data_dir: PathBuf,
    /// For the `ferry` CLI.
    pub admin_token: String,
    /// For `ferry-agent join`.
    pub join_token: String,
    /// For agents to pin central's CA.
    pub ca_fingerprint: String,
    /// Central's URL.
    pub url: String,
}

/// Errors from `init`.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(
        "{path} already exists and is not empty; ferry-central is initialised there (or choose an empty directory)"
    )]
    Exists { path: PathBuf },
    #[error(
        "{url:?} is not a central URL: expected https://HOST[:PORT] (replicas: several, \
         comma-separated)"
    )]
    BadUrl { url: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{store} already holds a central's state; to run another replica, copy that \
         central's data directory (its CA, certificate and central.toml) instead of \
         running init again"
    )]
    InUse { store: String },
    #[error("no randomness for tokens: {0}")]
    Entropy(getrandom::Error),
}

/// Initialises `data_dir` for a central reachable at `url` (several replicas:
/// comma-separated URLs, one each) and listening on `listen`, with
/// its state in SQLite there or, given `store`, in an etcd cluster (which must not hold a
/// central's state already).
pub fn init(
    data_dir: &Path,
    url: &str,
    listen: SocketAddr,
    store: Option<StoreConfig>,
) -> Result<Initialised, InitError> {
    // Replicas: one URL each, comma-separated; the certificate names every host.
    let hosts = url
        .split(',')
        .map(|one| host_of(one.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    if fs::read_dir(data_dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(InitError::Exists {
            path: data_dir.to_path_buf(),
        });
    }
    let parent = data_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "central".into());
    let staging = parent.join(format!(".{name}.init-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    let result = populate(&staging, url, &hosts, listen, store);
    match result {
        Ok((admin_token, join_token, ca_fingerprint)) => {
            // An empty target directory may exist (made by the operator); rename replaces it.
            let _ = fs::remove_dir(data_dir);
            fs::rename(&staging, data_dir).map_err(|source| InitError::Io {
                path: data_dir.to_path_buf(),
                source,
            })?;
            Ok(Initialised {
                data_dir: data_dir.to_path_buf(),
                admin_token,
                join_token,
                ca_fingerprint,
                url: url.into(),
            })
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

fn populate(
    dir: &Path,
    url: &str,
    hosts: &[String],
    listen: SocketAddr,
    store_config: Option<StoreConfig>,
) -> Result<(String, String, String), InitError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InitError::Io { path, source }
    };
    fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir.join("tls"))
        .map_err(io(dir))?;

    let mut names = hosts.to_vec();
    for local in ["localhost", "127.0.0.1"] {
        if !names.iter().any(|n| n == local) {
            names.push(local.into());
        }
    }
    let pki = pki::create(&names)?;
    let tls = dir.join("tls");
    config::write_new(&tls.join("ca.pem"), pki.ca_cert_pem.as_bytes(), 0o644)?;
    config::write_new(&tls.join("ca-key.pem"), pki.ca_key_pem.as_bytes(), 0o600)?;
    config::write_new(
        &tls.join("server.pem"),
        pki.server_cert_pem.as_bytes(),
        0o644,
    )?;
    config::write_new(
        &tls.join("server-key.pem"),
        pki.server_key_pem.as_bytes(),
        0o600,
    )?;

    let admin = tokens::generate("admin").map_err(InitError::Entropy)?;
    let join = tokens::generate("join").map_err(InitError::Entropy)?;
    let store = Arc::new(Backend::open(dir, store_config.as_ref())?);
    let role = |role: &Role| {
        serde_json::to_vec(role).map_err(|e| InitError::Io {
            path: dir.join(STATE_DB),
            source: std::io::Error::other(e),
        })
    };
    // The tokens and the mark together, only where no init wrote before: an etcd cluster
    // holds one central's state.
    let first = Compare::ModRevision(ferry_api::keys::STORE_ID.into(), 0);
    let outcome = store.txn(
        &[first],
        &[
            Op::Put(
                ferry_api::keys::STORE_ID.into(),
                identity::fresh()?.into_bytes(),
            ),
            Op::Put(tokens::key(&admin), role(&Role::Admin)?),
            Op::Put(tokens::key(&join), role(&Role::Join)?),
        ],
    )?;
    if let TxnOutcome::Failed(_) = outcome {
        return Err(InitError::InUse {
            store: store.describe(),
        });
    }
    drop(store);

    Config {
        version: 1,
        listen,
        url: url.into(),
        drain_seconds: crate::config::DEFAULT_DRAIN_SECONDS,
        store: store_config,
    }
    .create(dir)?;
    Ok((admin, join, pki.ca_fingerprint))
}

/// The host of `https://HOST[:PORT][/]`.
fn host_of(url: &str) -> Result<String, InitError> {
    let bad = || InitError::BadUrl { url: url.into() };
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(bad)?
        .trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        return Err(bad());
    }
    let host = match rest.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        Some(_) => return Err(bad()),
        None => rest,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok(host.to_string())
}
