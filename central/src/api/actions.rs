//! Operator actions on one container (logs, exec, stop, restart), relayed to the agent of
//! its server: central cannot reach a server's Docker Engine, and must not.
//!
//! The request is written at `actions/<server>/<id>`, which only that server's agent may
//! read; the agent answers with `PUT /v1/results/<server>/<id>`, stored at
//! `results/<server>/<id>`; the operator's request, waiting on a watch of that key, returns
//! it. Both keys are removed when the answer arrives or the wait ends.

use std::{sync::Arc, time::Duration};

use axum::{
    Json,
    extract::{Path, State},
};
use serde_json::{Value, json};

use super::{
    ApiError, AppState,
    auth::Caller,
    containers,
    types::{Action, ActionKind, ActionResult, ContainerReport, MAX_ACTION_OUTPUT, MAX_LOG_LINES},
};
use crate::store::{Op, Store as _, Watch};

/// How long the operator's request waits for the agent.
const WAIT: Duration = Duration::from_secs(90);

use ferry_api::keys::{action as action_key, result as result_key};

/// `POST /v1/containers/{server}/{container}/actions` (admin): waits for the agent's answer.
pub async fn request(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((server, container)): Path<(String, String)>,
    Json(kind): Json<ActionKind>,
) -> Result<Json<ActionResult>, ApiError> {
    caller.admin("act on containers")?;
    match &kind {
        ActionKind::Logs { lines, .. } if *lines > MAX_LOG_LINES => {
            return Err(ApiError::BadRequest(format!(
                "{lines} log lines asked; at most {MAX_LOG_LINES}"
            )));
        }
        ActionKind::Exec { command } if command.is_empty() => {
            return Err(ApiError::BadRequest(
                "exec needs a command, e.g. `ferry containers exec ID -- ls /app`".into(),
            ));
        }
        _ => {}
    }
    let reported: Vec<ContainerReport> = match state.store.get(&containers::key(&server))? {
        Some(kv) => super::error::decode(&kv.key, &kv.value)?,
        None => Vec::new(),
    };
    if !reported.iter().any(|c| c.id == container) {
        return Err(ApiError::NotFound(format!(
            "server {server:?} has reported no container {container}; see `ferry containers list`"
        )));
    }
    let id = new_id()?;
    let (akey, rkey) = (action_key(&server, &id), result_key(&server, &id));
    let action = Action {
        id: id.clone(),
        container,
        kind,
    };
    let value =
        serde_json::to_vec(&action).map_err(|e| ApiError::internal("encode an action", e))?;
    // Watch from before the request exists, so an answer cannot slip past.
    let mut watch = Watch::new(state.store.clone(), rkey.clone(), state.store.revision()?);
    state.store.put(&akey, &value)?;
    let answer = tokio::time::timeout(WAIT, async {
        loop {
            let events = watch
                .next()
                .await
                .map_err(|e| ApiError::internal("watch for the agent's answer", e))?;
            if let Some(value) = events.into_iter().find_map(|e| e.value) {
                return super::error::decode::<ActionResult>(&rkey, &value);
            }
        }
    })
    .await;
    state
        .store
        .txn(&[], &[Op::Delete(akey), Op::Delete(rkey.clone())])?;
    match answer {
        Ok(Ok(result)) => Ok(Json(result)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::Timeout(format!(
            "the agent on {server:?} did not answer within {}s; is it running? (`ferry servers list`)",
            WAIT.as_secs()
        ))),
    }
}

/// `PUT /v1/results/{server}/{id}`: the agent's answer, for its own server.
pub async fn answer(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((server, id)): Path<(String, String)>,
    Json(mut result): Json<ActionResult>,
) -> Result<Json<Value>, ApiError> {
    caller.agent_of(&server, "answer actions")?;
    if state.store.get(&action_key(&server, &id))?.is_none() {
        return Err(ApiError::NotFound(format!(
            "no pending action {id} for {server:?} (it may have timed out)"
        )));
    }
    if result.output.len() > MAX_ACTION_OUTPUT {
        let mut cut = MAX_ACTION_OUTPUT;
        while !result.output.is_char_boundary(cut) {
            cut -= 1;
        }
        result.output.truncate(cut);
        result.output.push_str("\n[output cut at 512 KiB]");
    }
    let value = serde_json::to_vec(&result)
        .map_err(|e| ApiError::internal("encode an action's result", e))?;
    let revision = state.store.put(&result_key(&server, &id), &value)?;
    Ok(Json(json!({ "revision": revision })))
}

/// 16 random hex digits.
fn new_id() -> Result<String, ApiError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::internal("draw an action id", e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
