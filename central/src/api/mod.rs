//! The HTTP/JSON API, behind TLS (see [`crate::serve`]).
//!
//! Every route but `/v1/health` needs a bearer token; what it may do follows from the
//! token's [`Role`](crate::tokens::Role): the admin token everything, the join token only
//! `POST /v1/join`, an agent token only reads of what its own server needs.
//!
//! Routes:
//! - `GET /v1/health`: the store's revision.
//! - `POST /v1/join`: register a server; returns its subnet and its agent token.
//! - `GET /v1/servers`, `DELETE /v1/servers/{name}`: the operator's view.
//! - `GET /v1/list?prefix=`: keys under a prefix and the revision they are as of.
//! - `GET /v1/watch?prefix=&after=`: newline-delimited JSON batches of changes after a
//!   revision; a client resumes with the last revision it saw.

mod auth;
mod error;
mod routes;

pub use ferry_api::types;

use std::sync::Arc;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    routing::{delete, get, post},
};

pub use error::ApiError;

use crate::{
    state::{ContainerNet, Servers},
    store::sqlite::SqliteStore,
};

/// Largest request body the API reads (source uploads will have their own route and limit).
pub const MAX_BODY: usize = 64 * 1024;

/// What every handler shares.
pub struct AppState {
    /// The state store.
    pub store: Arc<SqliteStore>,
    /// Server bookkeeping.
    pub servers: Servers<SqliteStore>,
}

impl AppState {
    /// State over `store`.
    pub fn new(store: Arc<SqliteStore>) -> Arc<Self> {
        Arc::new(Self {
            servers: Servers::new(store.clone(), ContainerNet::default()),
            store,
        })
    }
}

/// The API's routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/health", get(routes::health))
        .route("/v1/join", post(routes::join))
        .route("/v1/servers", get(routes::list_servers))
        .route("/v1/servers/{name}", delete(routes::remove_server))
        .route("/v1/list", get(routes::list))
        .route("/v1/watch", get(routes::watch))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}
