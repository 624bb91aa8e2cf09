//! Key rotation: when central's record of this server asks for a rotation its key does not
//! answer yet (`key_requested` above `key_generation`, set by `ferry servers rotate-key`),
//! the agent makes a new keypair here and saves the private half in its state directory;
//! the interface takes it, and only then is the public half published. The other servers
//! replace this peer's key when the record changes, after this server has switched, so the
//! first of them with a packet for it starts a handshake that this server answers at once:
//! a flow sees roughly the time the change takes to reach its peer. (Publishing first
//! would let a peer switch before this server and have its handshake fail, and WireGuard
//! retries a failed handshake only after 5 s.)
//!
//! The private key is saved before anything else: an agent stopped before publishing finds
//! central still asking, with a key other than its own, and publishes the one it saved
//! rather than making another.

use ferry_api::{
    client::ClientError,
    types::{KeyUpdate, Server},
};
use tracing::{info, warn};

use super::wireguard::Key;
use crate::membership::state::{self, Loaded, StateError, WIREGUARD_KEY};

/// A rotation that could not be carried out; the next sync tries again.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("saving the new WireGuard key: {0}")]
    State(#[from] StateError),
    #[error("publishing the new WireGuard public key to central: {0}")]
    Central(#[from] ClientError),
}

/// The first half of the rotation `record` (this server as central has it) asks for, if
/// any: a new private key, made and saved unless an earlier run saved one it did not get
/// to publish, put in `private_key`. Returns the update to [`publish`] once the interface
/// has the key.
pub fn prepare(
    loaded: &Loaded,
    record: &Server,
    private_key: &mut Key,
) -> Result<Option<KeyUpdate>, RotationError> {
    let asked = record.key_requested > record.key_generation;
    let published = record.wireguard_public_key.trim() == private_key.get_public().to_base64();
    if !asked {
        if !published {
            warn!(
                server = %record.name,
                "central has another WireGuard public key for this server than its private \
                 key's; the other servers cannot reach it until `ferry servers rotate-key {}`",
                record.name
            );
        }
        return Ok(None);
    }
    if published {
        let new = Key::generate_private();
        state::write_private(&loaded.state_dir, WIREGUARD_KEY, new.to_base64().as_bytes())?;
        *private_key = new;
        info!(rotation = record.key_requested, "new WireGuard key made");
    }
    Ok(Some(KeyUpdate {
        wireguard_public_key: private_key.get_public().to_base64(),
        generation: record.key_requested,
    }))
}

/// The second half: tells central the new public key.
pub async fn publish(loaded: &Loaded, update: &KeyUpdate) -> Result<(), RotationError> {
    loaded
        .client()
        .publish_key(&loaded.membership.name, update)
        .await?;
    info!(
        rotation = update.generation,
        "new WireGuard public key published"
    );
    Ok(())
}
