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
//! - `PUT /v1/heartbeat/{server}`: an agent's word on its server every few seconds;
//!   `GET /v1/servers/status`: every server with its last contact and heartbeat.
//! - `GET /v1/list?prefix=`: keys under a prefix and the revision they are as of.
//! - `GET /v1/watch?prefix=&after=`: newline-delimited JSON batches of changes after a
//!   revision; a client resumes with the last revision it saw.
//! - `POST /v1/stacks/{stack}/deploy`: upload a source archive (tar.gz with service.yml at
//!   its root); a valid one becomes generation N+1. `GET /v1/stacks`,
//!   `GET /v1/stacks/{stack}/generations`. The new generation's placement is written to
//!   `desired/<server>/...` in the same transaction (see [`crate::deploy`]).
//! - `POST /v1/stacks/{stack}/rollback`: serve the previous generation again.
//! - `POST /v1/stacks/{stack}/services/{service}/scale`: the serving generation runs that
//!   many containers of the service, spread over the servers (no new generation).
//! - `GET|PUT /v1/stacks/{stack}/variables`: the values of `_env(NAME)` references.
//! - `GET|PUT /v1/stacks/{stack}/datasources`: where the stack's datasources are.
//! - `GET /v1/stacks/{stack}/certificates`, `PUT|DELETE .../certificates/{name}`: TLS
//!   certificates for the stack's HTTPS ports.
//! - `GET /v1/sources/{digest}`: a source archive, for the agents assigned it.
//! - `PUT /v1/status/{server}/{stack}/{N}`: an agent's report; settles the generation.
//! - `PUT /v1/progress/{server}/{stack}/{N}`: an agent's build and deploy_command output,
//!   for the CLI to show.
//! - `PUT /v1/containers/{server}`: an agent's list of its containers; `GET /v1/containers`
//!   every server's.
//! - `POST /v1/containers/{server}/{container}/actions`: logs, exec, stop or restart,
//!   relayed to that server's agent, which answers with `PUT /v1/results/{server}/{id}`.

mod actions;
mod auth;
mod certificates;
mod containers;
mod datasources;
mod error;
mod heartbeats;
mod routes;
mod variables;

pub use ferry_api::types;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::{
    Router,
    extract::DefaultBodyLimit,
    routing::{delete, get, post, put},
};

pub use error::ApiError;

use crate::{
    state::{Certificates, ContainerNet, Datasources, Servers, Stacks, Variables},
    store::Backend,
};

/// Largest request body the API reads (source uploads will have their own route and limit).
pub const MAX_BODY: usize = 64 * 1024;

/// Largest container report: room for `MAX_CONTAINERS_PER_SERVER` entries.
const CONTAINER_REPORT_BODY: usize = 1024 * 1024;

/// What every handler shares.
pub struct AppState {
    /// The state store.
    pub store: Arc<Backend>,
    /// Server bookkeeping.
    pub servers: Servers<Backend>,
    /// Stacks and generations.
    pub stacks: Stacks<Backend>,
    /// Stack variables.
    pub variables: Variables<Backend>,
    /// Stack datasources.
    pub datasources: Datasources<Backend>,
    /// Stack TLS certificates.
    pub certificates: Certificates<Backend>,
    /// The store's identity (see [`crate::store::identity`]).
    pub store_id: String,
    /// Where uploaded sources are kept.
    pub sources: PathBuf,
    /// How long a retired generation's containers keep running.
    pub drain: std::time::Duration,
    /// Each server's last heartbeat (in memory: see [`heartbeats`]).
    pub heartbeats: heartbeats::Heartbeats,
}

impl AppState {
    /// State over `store`, with sources under `data_dir`, draining retired generations for
    /// `drain`.
    pub fn new(
        store: Arc<Backend>,
        store_id: String,
        data_dir: &Path,
        drain: std::time::Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            store_id,
            drain,
            heartbeats: heartbeats::Heartbeats::default(),
            servers: Servers::new(store.clone(), ContainerNet::default()),
            stacks: Stacks::new(store.clone()),
            variables: Variables::new(store.clone()),
            datasources: Datasources::new(store.clone()),
            certificates: Certificates::new(store.clone()),
            sources: data_dir.join("sources"),
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
        .route("/v1/servers/status", get(heartbeats::status))
        .route("/v1/heartbeat/{server}", put(heartbeats::beat))
        .route("/v1/servers/{name}", delete(routes::remove_server))
        .route("/v1/servers/{name}/rotate-key", post(routes::rotate_key))
        .route("/v1/servers/{name}/wireguard-key", put(routes::publish_key))
        .route("/v1/list", get(routes::list))
        .route("/v1/watch", get(routes::watch))
        .route("/v1/stacks", get(routes::list_stacks))
        .route(
            "/v1/stacks/{stack}/generations",
            get(routes::list_generations),
        )
        .route(
            "/v1/stacks/{stack}/deploy",
            // Sources stream to disk with their own limit (see `sources`).
            post(routes::deploy).layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/stacks/{stack}/rollback", post(routes::rollback))
        .route(
            "/v1/stacks/{stack}/services/{service}/scale",
            post(routes::scale),
        )
        .route(
            "/v1/stacks/{stack}/variables",
            get(variables::get).put(variables::change),
        )
        .route(
            "/v1/stacks/{stack}/datasources",
            get(datasources::get).put(datasources::change),
        )
        .route("/v1/stacks/{stack}/certificates", get(certificates::list))
        .route(
            "/v1/stacks/{stack}/certificates/{name}",
            put(certificates::put).delete(certificates::delete),
        )
        .route("/v1/sources/{digest}", get(routes::source))
        .route(
            "/v1/status/{server}/{stack}/{generation}",
            put(routes::report_status),
        )
        .route(
            "/v1/progress/{server}/{stack}/{generation}",
            put(routes::report_progress),
        )
        .route("/v1/containers", get(containers::list))
        .route(
            "/v1/containers/{server}/{container}/actions",
            post(actions::request),
        )
        .route(
            "/v1/results/{server}/{id}",
            put(actions::answer).layer(DefaultBodyLimit::max(CONTAINER_REPORT_BODY)),
        )
        .route(
            "/v1/containers/{server}",
            put(containers::report).layer(DefaultBodyLimit::max(CONTAINER_REPORT_BODY)),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}
