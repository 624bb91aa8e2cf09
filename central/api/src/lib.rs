//! `ferry-api`: what central, the `ferry` CLI and the agents agree on.
//!
//! # Layout
//! - [`types`]: request and response bodies.
//! - [`buildpack`]: how a Node service without a Dockerfile is built and started.
//! - [`servicefile`]: a stack's `service.yml` (Cloud 66's format), read with located
//!   errors; the CLI checks it before upload, central again on receipt.
//! - [`client`]: the HTTPS client, which pins central's CA.
//! - [`records`]: service discovery records and the versioned lookup rule.
//! - [`heartbeat`]: what agents say of their servers every few seconds.
//! - [`fingerprint`]: how a CA certificate is named in `--ca-fingerprint`.
//! - [`hostname`]: how host names are compared (case, a trailing dot, a port).
//! - [`keys`]: every key of central's store, who writes and who reads it.

pub mod buildpack;
pub mod client;
pub mod heartbeat;
pub mod hostname;
pub mod keys;
pub mod records;
pub mod servicefile;
pub mod types;

use sha2::{Digest as _, Sha256};

/// A revision of central's state.
pub type Revision = u64;

/// `sha256:` and the hex digest of a certificate's DER bytes.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}
