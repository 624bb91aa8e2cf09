//! `ferry-central`: the control plane, and the types the `ferry` CLI shares with it.
//!
//! # Layout
//! - [`servicefile`]: reading a stack's `service.yml` (Cloud 66's format) into typed
//!   services, with every problem located by file, line and column.
//! - [`store`]: the revisioned key-value state (etcd's model) and its SQLite backend.
pub mod servicefile;
pub mod store;
