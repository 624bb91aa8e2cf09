//! The handlers.

use std::sync::Arc;

use axum::{
    Json,
    body::Body,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use futures_util::stream;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    ApiError, AppState,
    auth::{Caller, agent_token_key, forbidden},
    types::{
        Assignment, DeployResponse, Item, JoinRequest, JoinResponse, ListResponse,
        MAX_SOURCE_BYTES, ProgressReport, Reason, ScaleRequest, ScaleResponse, StatusReport,
        WatchEvent, WatchLine,
    },
};
use crate::{
    deploy, records, servicefile, sources,
    state::{Generation, Phase, Server, Stack},
    store::{Backend, Event, Op, Revision, Store as _, StoreError, Watch, WatchError},
    tokens::{self, Role},
};

/// `GET /v1/health`: the revision (what probes read) and the store: its backend and, on
/// etcd, each member's health and which one leads.
pub async fn health(
    State(state): State<Arc<AppState>>,
) -> Result<Json<ferry_api::types::Health>, ApiError> {
    let store = state.store.health()?;
    Ok(Json(ferry_api::types::Health {
        revision: store.revision,
        store,
    }))
}

pub async fn join(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Json(request): Json<JoinRequest>,
) -> Result<(StatusCode, Json<JoinResponse>), ApiError> {
    if caller.0 != Role::Join && caller.0 != Role::Admin {
        return Err(forbidden("join a server (use the join token)"));
    }
    check_public_key(&request.wireguard_public_key)?;
    let agent_token =
        tokens::generate("agent").map_err(|e| ApiError::internal("draw an agent token", e))?;
    let token_key = tokens::key(&agent_token);
    let role = Role::Agent {
        server: request.name.clone(),
    };
    let extra = vec![
        Op::Put(
            token_key.clone(),
            serde_json::to_vec(&role)
                .map_err(|e| ApiError::internal("encode a token's role", e))?,
        ),
        Op::Put(agent_token_key(&request.name), token_key.into_bytes()),
    ];
    let server = state.servers.register_with(
        &request.name,
        &request.wireguard_public_key,
        request.wireguard_endpoint,
        request.memory_bytes,
        extra,
    )?;
    let (subnet, prefix) = state.servers.subnet_of(&server);
    tracing::info!(server = %server.name, %subnet, "server joined");
    Ok((
        StatusCode::CREATED,
        Json(JoinResponse {
            server,
            subnet: format!("{subnet}/{prefix}"),
            agent_token,
        }),
    ))
}

pub async fn list_servers(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Vec<Server>>, ApiError> {
    caller.admin("list servers")?;
    Ok(Json(state.servers.list()?))
}

/// `POST /v1/servers/{name}/rotate-key` (admin): asks the server's agent for a new
/// WireGuard keypair; the record as written comes back (its `key_requested` bumped).
pub async fn rotate_key(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Server>, ApiError> {
    caller.admin("rotate servers' keys")?;
    let server = state.servers.request_rotation(&name)?;
    tracing::info!(server = %name, rotation = server.key_requested, "key rotation asked");
    Ok(Json(server))
}

/// `PUT /v1/servers/{name}/wireguard-key` (that server's agent): its new public key.
pub async fn publish_key(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    Json(update): Json<ferry_api::types::KeyUpdate>,
) -> Result<Json<Server>, ApiError> {
    caller.agent_of(&name, "publish another server's key")?;
    check_public_key(&update.wireguard_public_key)?;
    let server =
        state
            .servers
            .publish_key(&name, &update.wireguard_public_key, update.generation)?;
    tracing::info!(server = %name, rotation = update.generation, "new WireGuard key published");
    Ok(Json(server))
}

/// A WireGuard public key as the API takes it: base64 of 32 bytes.
fn check_public_key(key: &str) -> Result<(), ApiError> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key.trim())
        .ok()
        .filter(|k| k.len() == 32);
    match decoded {
        Some(_) => Ok(()),
        None => Err(ApiError::BadRequest(
            "wireguard_public_key must be a base64 WireGuard public key (32 bytes)".into(),
        )),
    }
}

pub async fn remove_server(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Server>, ApiError> {
    caller.admin("remove servers")?;
    // The agent's token goes with its server, in the same transaction.
    let mut extra = vec![
        Op::Delete(agent_token_key(&name)),
        Op::Delete(super::containers::key(&name)),
        Op::Delete(ferry_api::keys::heartbeat(&name)),
    ];
    if let Some(kv) = state.store.get(&agent_token_key(&name))? {
        extra.push(Op::Delete(String::from_utf8_lossy(&kv.value).into_owned()));
    }
    let reported: Vec<ferry_api::types::ContainerReport> =
        match state.store.get(&super::containers::key(&name))? {
            Some(kv) => super::error::decode(&kv.key, &kv.value)?,
            None => Vec::new(),
        };
    let removed = state.servers.remove_with(&name, extra)?;
    // Its containers leave the records of every stack they were in.
    let stacks: std::collections::BTreeSet<String> =
        reported.into_iter().map(|c| c.stack).collect();
    for stack in stacks {
        records::refresh(state.store.as_ref(), &state.stacks, &stack)?;
    }
    Ok(Json(removed))
}

/// `?prefix=&after=`.
#[derive(Debug, Deserialize)]
pub struct PrefixQuery {
    prefix: String,
    #[serde(default)]
    after: Revision,
    /// The identity of the store a resumed list was of (`ListResponse::store`).
    #[serde(default)]
    store: Option<String>,
}

fn check_prefix(prefix: &str) -> Result<(), ApiError> {
    if prefix.len() > 512
        || prefix.starts_with(ferry_api::keys::AUTH)
        || prefix.starts_with(ferry_api::keys::SOURCES)
    {
        return Err(ApiError::BadRequest(format!(
            "{prefix:?} cannot be read through the API"
        )));
    }
    Ok(())
}

/// Whether `key` may leave central through the list and watch API: never credentials, the
/// store's identity or source chunks, even under a wider prefix such as `""`.
fn served(key: &str) -> bool {
    !key.starts_with(ferry_api::keys::AUTH) && !key.starts_with(ferry_api::keys::SOURCES)
}

fn value_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

fn watch_event(event: &Event) -> WatchEvent {
    WatchEvent {
        revision: event.revision,
        key: event.key.clone(),
        value: event.value.as_deref().map(value_json),
    }
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(query): Query<PrefixQuery>,
) -> Result<Json<ListResponse>, ApiError> {
    check_prefix(&query.prefix)?;
    caller.may_read(&query.prefix)?;
    let (items, revision) = state.store.list(&query.prefix)?;
    let items = items
        .into_iter()
        .filter(|kv| served(&kv.key))
        .map(|kv| Item {
            value: value_json(&kv.value),
            key: kv.key,
            mod_revision: kv.mod_revision,
        })
        .collect();
    Ok(Json(ListResponse {
        revision,
        items,
        store: state.store_id.clone(),
    }))
}

pub async fn watch(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(query): Query<PrefixQuery>,
) -> Result<Response, ApiError> {
    check_prefix(&query.prefix)?;
    caller.may_read(&query.prefix)?;
    // A start this store cannot resume is refused with a status, before the stream
    // begins: compacted, from another store's list, or past this store's revision (which
    // only another store's history has).
    if query.store.as_ref().is_some_and(|s| *s != state.store_id) {
        return Err(StoreError::OtherStore.into());
    }
    let current = state.store.revision()?;
    if query.after > current {
        return Err(StoreError::FutureRevision {
            requested: query.after,
            current,
        }
        .into());
    }
    state.store.changes(&query.prefix, query.after, 1)?;
    let watch = Watch::new(state.store.clone(), query.prefix, query.after);
    let lines = stream::unfold(Some(watch), |watch| async move {
        let mut watch = watch?;
        match watch.next().await {
            Ok(events) => {
                let line = WatchLine {
                    revision: watch.revision(),
                    events: events
                        .iter()
                        .filter(|e| served(&e.key))
                        .map(watch_event)
                        .collect(),
                    error: None,
                    reason: None,
                };
                let line = serde_json::to_string(&line).unwrap_or_default();
                Some((
                    Ok::<_, std::convert::Infallible>(format!("{line}\n")),
                    Some(watch),
                ))
            }
            // Say why the stream ends, then end it; the client resumes or re-lists.
            Err(e) => {
                let reason = matches!(e, WatchError::Store(StoreError::Compacted { .. }))
                    .then_some(Reason::Compacted);
                let line = WatchLine {
                    revision: watch.revision(),
                    events: Vec::new(),
                    error: Some(e.to_string()),
                    reason,
                };
                let line = serde_json::to_string(&line).unwrap_or_default();
                Some((Ok(format!("{line}\n")), None))
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

pub async fn list_stacks(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Vec<Stack>>, ApiError> {
    caller.admin("list stacks")?;
    Ok(Json(state.stacks.list()?))
}

pub async fn list_generations(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(stack): Path<String>,
) -> Result<Json<Vec<Generation>>, ApiError> {
    caller.admin("list generations")?;
    state.stacks.stack(&stack)?;
    Ok(Json(state.stacks.generations(&stack)?))
}

/// Stores the archive, reads and checks its service.yml, and records generation N+1.
/// A refused upload changes nothing but a content-addressed file on disk.
pub async fn deploy(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(stack): Path<String>,
    body: Body,
) -> Result<(StatusCode, Json<DeployResponse>), ApiError> {
    caller.admin("deploy")?;
    // Refuse a bad stack name, or a cluster with nowhere to run, before reading a byte of
    // the upload.
    state.stacks.check_name(&stack)?;
    if state.servers.list()?.is_empty() {
        return Err(ApiError::Conflict(
            "no server has joined central; run `ferry-agent join` on a server first".into(),
        ));
    }
    let stored = sources::store(&state.sources, body.into_data_stream(), MAX_SOURCE_BYTES).await?;
    let path = stored.path.clone();
    let text = tokio::task::spawn_blocking(move || sources::service_file(&path))
        .await
        .map_err(|e| ApiError::internal("read the uploaded archive", e))??;
    let parsed = servicefile::parse("service.yml", &text)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if matches!(*state.store, Backend::Etcd(_)) {
        // Before the generation is recorded: an agent may fetch it from any replica.
        let (store, digest, path) = (
            state.store.clone(),
            stored.digest.clone(),
            stored.path.clone(),
        );
        tokio::task::spawn_blocking(move || sources::put_chunks(store.as_ref(), &digest, &path))
            .await
            .map_err(|e| ApiError::internal("share the uploaded archive", e))?
            .map_err(|e| ApiError::internal("share the uploaded archive with the replicas", e))?;
    }
    let generation = record_generation(&state, &stack, parsed.stack.services, &stored.digest)?;
    Ok((
        StatusCode::CREATED,
        Json(DeployResponse {
            stack,
            generation: generation.number,
            source: format!("sha256:{}", stored.digest),
            warnings: parsed.warnings.iter().map(ToString::to_string).collect(),
        }),
    ))
}

/// Records the next generation of `stack` with `services` from source `digest`, placed on
/// the servers that joined. `_env(NAME)` references are resolved now, so a missing
/// variable refuses it before anything is recorded; the generation keeps the references.
/// A count that cannot be placed refuses it too, with the reason.
fn record_generation(
    state: &AppState,
    stack: &str,
    services: std::collections::BTreeMap<String, crate::servicefile::Service>,
    digest: &str,
) -> Result<Generation, ApiError> {
    let resolved = state.variables.resolve(stack, &services)?;
    let npm = state.variables.npm(stack)?;
    let servers = state.servers.list()?;
    let store = state.store.as_ref();
    // Placed in the transaction's own attempt: a scale that lands meanwhile changes the
    // stack record, so the attempt is made again from the counts it left.
    let generation =
        state
            .stacks
            .create_generation_with(stack, services, digest, |generation| {
                deploy::generation_ops(store, &state.stacks, &servers, generation, &resolved, &npm)
                    .map_err(ApiError::from)
            })?;
    tracing::info!(%stack, generation = generation.number, source = %digest, "generation created");
    Ok(generation)
}

/// `POST /v1/stacks/{stack}/services/{service}/scale`: the serving generation runs
/// `count` containers of the service from now on, with no new build or generation: the
/// servers that gain some start and check them (they join rotation once healthy); those
/// that lose some take them out of rotation, let them drain, and stop them.
pub async fn scale(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((stack, service)): Path<(String, String)>,
    Json(request): Json<ScaleRequest>,
) -> Result<Json<ScaleResponse>, ApiError> {
    caller.admin("scale services")?;
    let servers = state.servers.list()?;
    let store = state.store.as_ref();
    let (_, (generation, spread)) = state.stacks.change_with(&stack, |record| {
        let serving = record.serving.ok_or_else(|| {
            ApiError::Conflict(format!(
                "{stack:?} has no serving generation to scale; deploy it first"
            ))
        })?;
        if record.latest != serving
            && state.stacks.generation(&stack, record.latest)?.phase == Phase::Deploying
        {
            return Err(ApiError::Conflict(format!(
                "generation {} of {stack} is deploying; scale once it serves or fails \
                 (`ferry stacks list`)",
                record.latest
            )));
        }
        let current = state.stacks.generation(&stack, serving)?;
        let spec = current.services.get(&service).ok_or_else(|| {
            let names: Vec<&str> = current.services.keys().map(String::as_str).collect();
            ApiError::NotFound(format!(
                "stack {stack:?} has no service {service:?}; it has {}",
                names.join(", ")
            ))
        })?;
        let bad = |e: crate::placement::PlacementError| ApiError::BadRequest(e.to_string());
        crate::placement::check_bounds(&service, spec, request.count).map_err(bad)?;
        let mut rooms = deploy::rooms(store, &servers, &stack, &[serving])?;
        let scaled = deploy::scale_ops(
            store,
            &mut rooms,
            &current,
            &service,
            request.count,
            state.drain,
        )?
        .map_err(bad)?;
        Ok((scaled.ops, (serving, scaled.spread)))
    })?;
    tracing::info!(%stack, %service, generation, count = request.count, ?spread, "scaled");
    Ok(Json(ScaleResponse {
        stack,
        generation,
        service,
        count: request.count,
        placement: spread,
    }))
}

/// `GET /v1/sources/{digest}`: the admin, or an agent whose server is assigned that source.
pub async fn source(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(digest): Path<String>,
) -> Result<Response, ApiError> {
    if digest.len() != 64 || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ApiError::BadRequest(format!(
            "{digest:?} is not a source digest (64 hex digits)"
        )));
    }
    match &caller.0 {
        Role::Admin => {}
        Role::Agent { server } => {
            let (assigned, _) = state.store.list(&ferry_api::keys::desired_of(server))?;
            let mine = assigned.iter().any(|kv| {
                serde_json::from_slice::<Assignment>(&kv.value)
                    .is_ok_and(|a| a.source_digest == digest)
            });
            if !mine {
                return Err(forbidden("fetch a source its server is not assigned"));
            }
        }
        Role::Join => return Err(forbidden("fetch sources")),
    }
    let path = state.sources.join(format!("{digest}.tar.gz"));
    let bytes = match tokio::fs::read(&path).await {
        Ok(bytes) => bytes,
        // Uploaded to another replica: from the store.
        Err(_) => sources::read_chunks(state.store.as_ref(), &digest)?
            .ok_or_else(|| ApiError::NotFound(format!("no source {digest}")))?,
    };
    Ok(([(header::CONTENT_TYPE, "application/gzip")], bytes).into_response())
}

/// `PUT /v1/status/{server}/{stack}/{generation}`: an agent reports on its own server.
pub async fn report_status(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((server, stack, generation)): Path<(String, String, u64)>,
    Json(report): Json<StatusReport>,
) -> Result<Json<Value>, ApiError> {
    caller.agent_of(&server, "report")?;
    assigned(&state, &server, &stack, generation)?;
    let phase = deploy::record_status(
        state.store.as_ref(),
        &state.stacks,
        (&server, &stack, generation),
        &report,
        state.drain,
    )?;
    // A flip changes which generation hosts and unversioned callers get.
    if phase == ferry_api::types::Phase::Serving {
        records::refresh(state.store.as_ref(), &state.stacks, &stack)?;
    }
    tracing::info!(%server, %stack, generation, healthy = report.healthy, ?phase, "status reported");
    Ok(Json(json!({ "phase": phase })))
}

/// Refuses a report on a generation `server` is not assigned.
fn assigned(state: &AppState, server: &str, stack: &str, generation: u64) -> Result<(), ApiError> {
    if state
        .store
        .get(&deploy::assignment_key(server, stack, generation))?
        .is_none()
    {
        return Err(ApiError::NotFound(format!(
            "server {server:?} is not assigned generation {generation} of {stack:?}"
        )));
    }
    Ok(())
}

/// `PUT /v1/progress/{server}/{stack}/{generation}`: an agent shows its work on its own
/// server's share of a generation (replacing what it showed before).
pub async fn report_progress(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((server, stack, generation)): Path<(String, String, u64)>,
    Json(report): Json<ProgressReport>,
) -> Result<Json<Value>, ApiError> {
    caller.agent_of(&server, "report progress")?;
    if !report.is_bounded() {
        return Err(ApiError::BadRequest(format!(
            "a progress report holds at most {} lines of {} bytes, and total counts them all",
            ProgressReport::MAX_LINES,
            ProgressReport::MAX_LINE
        )));
    }
    assigned(&state, &server, &stack, generation)?;
    let key = deploy::progress_key(&server, &stack, generation);
    let value = crate::state::encode(&key, &report)?;
    state.store.put(&key, &value)?;
    Ok(Json(json!({})))
}

/// `POST /v1/stacks/{stack}/rollback`: deploy the generation that served before again;
/// it takes over once its containers pass their checks, like any deploy.
pub async fn rollback(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(stack): Path<String>,
) -> Result<Json<Generation>, ApiError> {
    caller.admin("roll back")?;
    let generation = state
        .stacks
        .rollback(&stack, |g| deploy::rerun_ops(state.store.as_ref(), g))?;
    tracing::info!(%stack, generation = generation.number, "rolling back");
    Ok(Json(generation))
}
