//! `ferry-central`: the control plane, and the types the `ferry` CLI shares with it.
//!
//! # Layout
//! - [`store`]: the revisioned key-value state (etcd's model) and its backends, SQLite
//!   (embedded) and etcd (for replicas).
//! - [`state`]: central's typed records on the store: servers and their subnets, stacks,
//!   generations, stack variables.
//! - [`api`] and [`serve`]: the HTTP/JSON API with token checks, over TLS (its types and
//!   client are in the `ferry-api` crate, shared with the CLI and the agents).
//! - [`deploy`]: placing a generation on servers, and settling it from their reports.
//! - [`sources`]: uploaded source archives, content-addressed on disk.
//! - [`records`]: service discovery records derived from container reports and generations.
//! - [`init`]: making a data directory: [`pki`] (CA and TLS certificate), [`tokens`]
//!   (admin and join tokens, stored hashed) and [`config`] (`central.toml`).
//! - [`migrate`]: a SQLite central's state moved into an etcd cluster.
pub mod api;
pub mod config;
pub mod deploy;
pub mod init;
pub mod migrate;
pub mod pki;
pub mod placement;
pub mod records;
pub mod serve;
pub mod sources;
pub mod state;
pub mod store;
pub mod tokens;

/// A stack's `service.yml`, read with every problem located (lives in `ferry-api`, which
/// the CLI shares).
pub use ferry_api::servicefile;
