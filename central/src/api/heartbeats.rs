//! Heartbeats (see [`ferry_api::heartbeat`]), stamped with central's clock: kept in memory
//! by one central (on SQLite), and in the store by replicas (on etcd), so whichever
//! replica an agent reached, every replica tells the same last contact.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    Json,
    extract::{Path, State},
};
use ferry_api::heartbeat::{Heartbeat, ServerStatus};
use serde_json::{Value, json};

use super::{ApiError, AppState, auth::Caller};
use crate::store::{Backend, Store as _};

/// The last heartbeat of each server, with the Unix second it arrived.
#[derive(Default)]
pub struct Heartbeats(Mutex<HashMap<String, (u64, Heartbeat)>>);

impl Heartbeats {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Heartbeat)>> {
        // A panicked holder leaves plain data behind.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A heartbeat in the store, with the Unix second it arrived.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stamped {
    at: u64,
    heartbeat: Heartbeat,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `PUT /v1/heartbeat/{server}`: an agent, for its own server.
pub async fn beat(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(server): Path<String>,
    Json(heartbeat): Json<Heartbeat>,
) -> Result<Json<Value>, ApiError> {
    caller.agent_of(&server, "send heartbeats")?;
    if let Some(why) = heartbeat.out_of_bounds() {
        return Err(ApiError::BadRequest(format!(
            "a heartbeat out of bounds: {why}"
        )));
    }
    let at = now_unix();
    if matches!(*state.store, Backend::Etcd(_)) {
        let value = serde_json::to_vec(&Stamped { at, heartbeat })
            .map_err(|e| ApiError::internal("encode a heartbeat", e))?;
        state
            .store
            .put(&ferry_api::keys::heartbeat(&server), &value)?;
    } else {
        state.heartbeats.lock().insert(server, (at, heartbeat));
    }
    Ok(Json(json!({})))
}

/// `GET /v1/servers/status`: every server with its last contact and heartbeat (admin).
pub async fn status(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Vec<ServerStatus>>, ApiError> {
    caller.admin("read the servers' status")?;
    let servers = state.servers.list()?;
    let beats = match *state.store {
        Backend::Etcd(_) => {
            let (kvs, _) = state.store.list(ferry_api::keys::HEARTBEATS)?;
            kvs.iter()
                .map(|kv| {
                    let stamped: Stamped = super::error::decode(&kv.key, &kv.value)?;
                    let server = kv.key.trim_start_matches(ferry_api::keys::HEARTBEATS);
                    Ok((server.to_string(), (stamped.at, stamped.heartbeat)))
                })
                .collect::<Result<HashMap<_, _>, ApiError>>()?
        }
        Backend::Sqlite(_) => state.heartbeats.lock().clone(),
    };
    // A removed server's last heartbeat is dropped with it.
    Ok(Json(
        servers
            .into_iter()
            .map(|server| {
                let beat = beats.get(&server.name).cloned();
                ServerStatus {
                    last_contact_unix: beat.as_ref().map(|(at, _)| *at),
                    heartbeat: beat.map(|(_, h)| h),
                    server,
                }
            })
            .collect(),
    ))
}
