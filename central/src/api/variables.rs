//! Stack variables: the values `_env(NAME)` in service.yml refers to (admin only).

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Json,
    extract::{Path, State},
};

use super::{ApiError, AppState, auth::Caller, types::VariablesChange};

/// `GET /v1/stacks/{stack}/variables`.
pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(stack): Path<String>,
) -> Result<Json<BTreeMap<String, String>>, ApiError> {
    caller.admin("read stack variables")?;
    state.stacks.check_name(&stack)?;
    Ok(Json(state.variables.get(&stack)?))
}

/// `PUT /v1/stacks/{stack}/variables`: sets and removes in one change; a stack need not
/// have been deployed yet, so its variables can be in place for the first deploy.
pub async fn change(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(stack): Path<String>,
    Json(change): Json<VariablesChange>,
) -> Result<Json<BTreeMap<String, String>>, ApiError> {
    caller.admin("change stack variables")?;
    state.stacks.check_name(&stack)?;
    let vars = state.variables.change(&stack, &change.set, &change.unset)?;
    tracing::info!(%stack, set = change.set.len(), unset = change.unset.len(), "stack variables changed");
    Ok(Json(vars))
}
