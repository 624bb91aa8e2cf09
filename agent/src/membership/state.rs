//! Reading and writing the state directory.

use std::{
    fs,
    io::{self, Write as _},
    net::{Ipv4Addr, SocketAddr},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::mesh::wireguard::Key;

/// Name of the membership record.
/// The state directory a packaged agent uses, and `--state-dir`'s default.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ferry-agent";

pub const MEMBERSHIP: &str = "membership.json";
/// Name of the agent's credential.
pub const TOKEN: &str = "agent.token";
/// Name of the WireGuard private key.
pub const WIREGUARD_KEY: &str = "wireguard.key";
/// Name of central's pinned CA.
pub const CENTRAL_CA: &str = "central-ca.pem";

/// Who this server is to central.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Format version of this file.
    pub version: u32,
    /// Central's URL.
    pub central: String,
    /// This server's name.
    pub name: String,
    /// Third octet of this server's `/24`.
    pub subnet_index: u8,
    /// Where this server's WireGuard listens.
    pub wireguard_endpoint: SocketAddr,
}

impl Membership {
    /// This server's address on the container network: `.1` of its subnet, the bridge
    /// gateway and its WireGuard address.
    pub fn gateway(&self, container_net: Ipv4Addr) -> Ipv4Addr {
        let [a, b, _, _] = container_net.octets();
        Ipv4Addr::new(a, b, self.subnet_index, 1)
    }
}

/// Errors reading or writing the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a membership record this agent reads: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} has format version {found}; this agent reads version 1")]
    Version { path: PathBuf, found: u32 },
    #[error("{path} does not hold a WireGuard key")]
    BadKey { path: PathBuf },
    #[error("{path} does not hold a usable CA certificate: {source}")]
    BadCa {
        path: PathBuf,
        #[source]
        source: ferry_api::client::ClientError,
    },
    #[error(
        "this server has not joined a cluster ({path} is missing); run `ferry-agent join` first"
    )]
    NotJoined { path: PathBuf },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates the state directory, private to root.
pub fn create_dir(dir: &Path) -> Result<(), StateError> {
    fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
        .map_err(io_error(dir))
}

/// Writes `contents` to `dir/name` with mode 0600, replacing it atomically.
pub fn write_private(dir: &Path, name: &str, contents: &[u8]) -> Result<(), StateError> {
    let path = dir.join(name);
    let partial = dir.join(format!(".{name}.partial"));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .map_err(io_error(&partial))?;
    file.write_all(contents).map_err(io_error(&partial))?;
    file.sync_all().map_err(io_error(&partial))?;
    fs::rename(&partial, &path).map_err(io_error(&path))
}

/// Everything an agent needs to talk to central and run the mesh.
#[derive(Clone)]
pub struct Loaded {
    /// Who this server is.
    pub membership: Membership,
    /// Its WireGuard private key.
    pub private_key: Key,
    /// The state directory it was read from.
    pub state_dir: PathBuf,
    /// The one client of central every follower and report shares (clones share its
    /// connections).
    client: ferry_api::client::Client,
}

impl Loaded {
    /// The client of central with this server's credential, trusting only the pinned CA;
    /// every clone shares one pool of connections.
    pub fn client(&self) -> ferry_api::client::Client {
        self.client.clone()
    }
}

/// Loads the state directory of a joined agent.
pub fn load(dir: &Path) -> Result<Loaded, StateError> {
    let path = dir.join(MEMBERSHIP);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StateError::NotJoined { path });
        }
        Err(source) => return Err(StateError::Io { path, source }),
    };
    let membership: Membership =
        serde_json::from_str(&text).map_err(|source| StateError::Parse {
            path: path.clone(),
            source,
        })?;
    if membership.version != 1 {
        return Err(StateError::Version {
            path,
            found: membership.version,
        });
    }
    let read = |name: &str| {
        let path = dir.join(name);
        fs::read_to_string(&path).map_err(|source| StateError::Io { path, source })
    };
    let key_path = dir.join(WIREGUARD_KEY);
    let private_key = Key::from_base64(read(WIREGUARD_KEY)?.trim())
        .map_err(|_| StateError::BadKey { path: key_path })?;
    // The credential and the pinned CA live on in the client alone.
    let client = ferry_api::client::Client::new(
        &membership.central,
        read(TOKEN)?.trim(),
        ferry_api::client::Trust::CaPem(read(CENTRAL_CA)?),
    )
    .map_err(|source| StateError::BadCa {
        path: dir.join(CENTRAL_CA),
        source,
    })?;
    Ok(Loaded {
        membership,
        private_key,
        state_dir: dir.to_path_buf(),
        client,
    })
}
