//! `ferry-agent join`: make this server's WireGuard key, register with central (pinning its
//! CA by fingerprint), and keep the credential it hands back.

use std::{net::SocketAddr, path::PathBuf};

use ferry_api::{
    client::{Client, ClientError, Trust},
    types::JoinRequest,
};

use super::state::{self, CENTRAL_CA, MEMBERSHIP, Membership, StateError, TOKEN, WIREGUARD_KEY};
use crate::mesh::wireguard::Key;

/// What `join` needs.
pub struct JoinOptions {
    /// Central's URL.
    pub central: String,
    /// The join token `ferry-central init` printed.
    pub token: String,
    /// The CA fingerprint `ferry-central init` printed.
    pub ca_fingerprint: String,
    /// This server's name.
    pub name: String,
    /// Where this server's WireGuard will listen, as other servers reach it.
    pub endpoint: SocketAddr,
    /// The agent's state directory.
    pub state_dir: PathBuf,
}

/// Why a join failed; nothing is left half-written.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "this server already joined {central} as {name:?} (see {path}); remove the state directory to join again"
    )]
    AlreadyJoined {
        central: String,
        name: String,
        path: PathBuf,
    },
    #[error(
        "{0:?} is not a CA fingerprint: expected sha256: and 64 hex digits, as `ferry-central init` printed it"
    )]
    BadFingerprint(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("joining central: {0}")]
    Central(#[from] ClientError),
    #[error("central accepted the join but its CA was not captured; try again")]
    NoCa,
}

/// Joins; returns the membership now saved in the state directory.
pub async fn join(options: &JoinOptions) -> Result<Membership, JoinError> {
    let fp = &options.ca_fingerprint;
    let hex = fp.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(JoinError::BadFingerprint(fp.clone()));
    }
    let dir = &options.state_dir;
    if let Ok(existing) = state::load(dir) {
        return Err(JoinError::AlreadyJoined {
            central: existing.membership.central,
            name: existing.membership.name,
            path: dir.join(MEMBERSHIP),
        });
    }
    state::create_dir(dir)?;
    // The private key is made and stored before anything goes out; only its public half
    // is sent.
    let private_key = Key::generate_private();
    let public_key = private_key.get_public();
    state::write_private(dir, WIREGUARD_KEY, private_key.to_base64().as_bytes())?;
    let client = Client::new(
        &options.central,
        &options.token,
        Trust::Fingerprint(fp.to_ascii_lowercase()),
    )?;
    let joined = client
        .join(&JoinRequest {
            name: options.name.clone(),
            wireguard_public_key: public_key.to_base64(),
            wireguard_endpoint: options.endpoint,
            memory_bytes: memory_bytes(),
        })
        .await?;
    let ca = client.pinned_ca_pem().ok_or(JoinError::NoCa)?;
    state::write_private(dir, TOKEN, joined.agent_token.as_bytes())?;
    state::write_private(dir, CENTRAL_CA, ca.as_bytes())?;
    let membership = Membership {
        version: 1,
        central: options.central.clone(),
        name: joined.server.name,
        subnet_index: joined.server.subnet_index,
        wireguard_endpoint: options.endpoint,
    };
    // Written last: its presence means the join completed.
    let record = serde_json::to_vec_pretty(&membership).map_err(|source| StateError::Parse {
        path: dir.join(MEMBERSHIP),
        source,
    })?;
    state::write_private(dir, MEMBERSHIP, &record)?;
    Ok(membership)
}

/// This server's memory (`MemTotal` in /proc/meminfo), for placement to keep containers'
/// memory limits within; None when it cannot be read, and placement then refuses nothing.
fn memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}
