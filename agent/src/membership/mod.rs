//! This server's membership of a ferry cluster: joining central, and the credentials that
//! come of it, kept in the agent's state directory.
//!
//! State directory layout (all files mode 0600, the directory 0700):
//! - `membership.json`: who this server is to central (versioned);
//! - `agent.token`: its credential;
//! - `wireguard.key`: its WireGuard private key, made here and never sent anywhere;
//! - `central-ca.pem`: central's CA, pinned at join by its fingerprint.
//!
//! Once joined, the agent's [`heartbeat`] tells central how the server is, and every part
//! that acts on central's state follows it through a [`follow::Follower`].

pub mod follow;
pub mod heartbeat;
mod join;
pub mod reconnect;
pub mod state;

pub use join::{JoinError, JoinOptions, join};
pub use state::{Membership, StateError, load};
