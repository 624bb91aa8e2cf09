//! Where a stack's datasources are (admin only); each becomes a name on every server.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State},
};

use super::{ApiError, AppState, auth::Caller, types::DatasourcesChange};
use crate::{records, state::StackDatasources};

/// `GET /v1/stacks/{stack}/datasources`.
pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(stack): Path<String>,
) -> Result<Json<StackDatasources>, ApiError> {
    caller.admin("read stack datasources")?;
    state.stacks.check_name(&stack)?;
    Ok(Json(state.datasources.get(&stack)?))
}

/// `PUT /v1/stacks/{stack}/datasources`: sets and removes in one change, then the stack's
/// records follow, so the names resolve (or stop resolving) on every server at once.
pub async fn change(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(stack): Path<String>,
    Json(change): Json<DatasourcesChange>,
) -> Result<Json<StackDatasources>, ApiError> {
    caller.admin("change stack datasources")?;
    state.stacks.check_name(&stack)?;
    let all = state
        .datasources
        .change(&stack, &change.set, &change.unset)?;
    records::refresh(state.store.as_ref(), &state.stacks, &stack)?;
    tracing::info!(%stack, set = change.set.len(), unset = change.unset.len(), "stack datasources changed");
    Ok(Json(all))
}
