//! `central.toml`: what the operator chose at `init`. Config is kept apart from state
//! (`state.db`): the one is edited by people, the other only by central.

use std::{
    fs,
    io::{self, Write as _},
    net::SocketAddr,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::store::etcd::{EtcdConfig, EtcdConfigError, EtcdTls};

/// Name of the config file in the data directory.
pub const FILE: &str = "central.toml";

/// Central's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Version of this file's format.
    pub version: u32,
    /// Address the API listens on.
    pub listen: SocketAddr,
    /// The URL agents and the CLI use to reach central (`https://host:port`).
    pub url: String,
    /// Seconds a retired generation keeps its containers running for requests in flight
    /// before they are stopped.
    #[serde(default = "default_drain_seconds")]
    pub drain_seconds: u64,
    /// Where the state is kept: absent for SQLite in the data directory, or an etcd
    /// cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreConfig>,
}

/// `[store]` in central.toml: central's state in an etcd cluster.
///
/// ```toml
/// [store]
/// etcd = "etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379"
/// # With TLS to the members (all three optional; `ca` turns TLS on):
/// ca = "/etc/ferry-central/etcd-ca.pem"
/// cert = "/etc/ferry-central/etcd-client.pem"
/// key = "/etc/ferry-central/etcd-client-key.pem"
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The members: `etcd://HOST:PORT[,HOST:PORT...]`.
    pub etcd: String,
    /// PEM file of the CA that signed the members' certificates; TLS when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// PEM file of this replica's client certificate, for `--client-cert-auth` clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM file of its key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

impl StoreConfig {
    /// The etcd members and TLS this names.
    ///
    /// Errors: the URL's mistake, or a client certificate without its key (or the other
    /// way round).
    pub fn etcd(&self) -> Result<EtcdConfig, EtcdConfigError> {
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => return Err(EtcdConfigError::HalfIdentity),
        };
        let tls = match (&self.ca, identity) {
            (Some(ca), identity) => Some(EtcdTls {
                ca: ca.clone(),
                identity,
            }),
            (None, None) => None,
            (None, Some(_)) => return Err(EtcdConfigError::IdentityWithoutCa),
        };
        EtcdConfig::parse(&self.etcd, tls)
    }
}

/// Long enough for a typical request and for clients to stop picking old addresses.
pub const DEFAULT_DRAIN_SECONDS: u64 = 10;

fn default_drain_seconds() -> u64 {
    DEFAULT_DRAIN_SECONDS
}

/// Errors reading or writing the config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a valid central config: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{path} has format version {found}; this ferry-central reads version 1")]
    Version { path: PathBuf, found: u32 },
}

impl Config {
    /// Reads `<data_dir>/central.toml`.
    pub fn load(data_dir: &Path) -> Result<Self, ConfigError> {
        let path = data_dir.join(FILE);
        let text = fs::read_to_string(&path).map_err(|source| ConfigError::Io {
            path: path.clone(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.clone(),
            source,
        })?;
        if config.version != 1 {
            return Err(ConfigError::Version {
                path,
                found: config.version,
            });
        }
        Ok(config)
    }

    /// Writes `<data_dir>/central.toml`, which must not exist yet.
    pub fn create(&self, data_dir: &Path) -> Result<(), ConfigError> {
        let text = toml::to_string_pretty(self).map_err(|e| ConfigError::Io {
            path: data_dir.join(FILE),
            source: io::Error::other(e),
        })?;
        write_new(&data_dir.join(FILE), text.as_bytes(), 0o600)
    }
}

impl Config {
    /// Rewrites `<data_dir>/central.toml` in one step: a new file renamed over the old, so
    /// a crash leaves one or the other, never half of one.
    pub fn replace(&self, data_dir: &Path) -> Result<(), ConfigError> {
        let path = data_dir.join(FILE);
        let new = data_dir.join(format!(".{FILE}.new"));
        let _ = fs::remove_file(&new);
        let text = toml::to_string_pretty(self).map_err(|e| ConfigError::Io {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        write_new(&new, text.as_bytes(), 0o600)?;
        fs::rename(&new, &path).map_err(|source| ConfigError::Io { path, source })
    }
}

/// Creates `path` with `mode`, failing if it exists.
pub fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), ConfigError> {
    let io_error = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_error)?;
    file.write_all(contents).map_err(io_error)?;
    file.sync_all().map_err(io_error)
}
