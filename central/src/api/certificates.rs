//! A stack's TLS certificates for HTTPS (admin only). Agents read them from the store.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Json,
    extract::{Path, State},
};
use ferry_api::types::TlsCertificate;

use super::{ApiError, AppState, auth::Caller};

/// `GET /v1/stacks/{stack}/certificates`: names and hosts, never the keys.
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(stack): Path<String>,
) -> Result<Json<BTreeMap<String, Vec<String>>>, ApiError> {
    caller.admin("read stack certificates")?;
    state.stacks.check_name(&stack)?;
    Ok(Json(state.certificates.list(&stack)?))
}

/// `PUT /v1/stacks/{stack}/certificates/{name}`: checked, then stored; every server's
/// HTTPS ports serve it from then on.
pub async fn put(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((stack, name)): Path<(String, String)>,
    Json(certificate): Json<TlsCertificate>,
) -> Result<Json<BTreeMap<String, Vec<String>>>, ApiError> {
    caller.admin("change stack certificates")?;
    state.stacks.check_name(&stack)?;
    let all = state.certificates.put(&stack, &name, &certificate)?;
    tracing::info!(%stack, %name, hosts = ?certificate.hosts, "certificate stored");
    Ok(Json(all))
}

/// `DELETE /v1/stacks/{stack}/certificates/{name}`.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((stack, name)): Path<(String, String)>,
) -> Result<Json<BTreeMap<String, Vec<String>>>, ApiError> {
    caller.admin("change stack certificates")?;
    state.stacks.check_name(&stack)?;
    let all = state.certificates.delete(&stack, &name)?;
    tracing::info!(%stack, %name, "certificate removed");
    Ok(Json(all))
}
