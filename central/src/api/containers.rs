//! Container reports: each agent replaces its server's list at `containers/<server>` after
//! every change; the operator reads all of them.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use axum::{
    Json,
    extract::{Path, State},
};
use serde_json::{Value, json};

use super::{
    ApiError, AppState,
    auth::Caller,
    types::{ContainerReport, MAX_CONTAINERS_PER_SERVER},
};
use crate::{records, store::Store as _};

/// Where a server's report is kept.
pub fn key(server: &str) -> String {
    ferry_api::keys::containers(server)
}

/// `PUT /v1/containers/{server}`: an agent, for its own server.
pub async fn report(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(server): Path<String>,
    Json(containers): Json<Vec<ContainerReport>>,
) -> Result<Json<Value>, ApiError> {
    caller.agent_of(&server, "report containers")?;
    if containers.len() > MAX_CONTAINERS_PER_SERVER {
        return Err(ApiError::BadRequest(format!(
            "{} containers reported; a server reports at most {MAX_CONTAINERS_PER_SERVER}",
            containers.len()
        )));
    }
    let value = serde_json::to_vec(&containers)
        .map_err(|e| ApiError::internal("encode a container report", e))?;
    // The stacks whose records this report may change: those it and the last one name.
    let mut touched: BTreeSet<String> = containers.iter().map(|c| c.stack.clone()).collect();
    if let Some(kv) = state.store.get(&key(&server))? {
        let before: Vec<ContainerReport> = super::error::decode(&kv.key, &kv.value)?;
        touched.extend(before.into_iter().map(|c| c.stack));
    }
    let revision = state.store.put(&key(&server), &value)?;
    for stack in touched {
        records::refresh(state.store.as_ref(), &state.stacks, &stack)?;
    }
    Ok(Json(json!({ "revision": revision })))
}

/// `GET /v1/containers`: every server's last report, by server (admin).
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<BTreeMap<String, Vec<ContainerReport>>>, ApiError> {
    caller.admin("list containers")?;
    Ok(Json(records::reports(state.store.as_ref())?))
}
