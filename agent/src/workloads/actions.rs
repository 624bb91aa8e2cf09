//! Operator actions central relays to this server (`actions/<server>/`): each is carried
//! out once, on a ferry container only, and answered.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    time::Duration,
};

use ferry_api::types::{Action, ActionKind, ActionResult, MAX_ACTION_OUTPUT};
use futures_util::StreamExt as _;
use tracing::{info, warn};

use crate::{
    containers::{self, DEFAULT_STOP_GRACE, Engine, operate},
    membership::{reconnect::Backoff, state::Loaded},
};

/// How many answered ids are remembered, so a replayed watch does not act twice.
const REMEMBERED: usize = 1024;

/// Runs until the task is dropped; failures are logged and retried with backoff.
pub async fn run(loaded: Loaded, docker_socket: PathBuf) {
    let mut done = VecDeque::new();
    let mut backoff = Backoff::new(Duration::from_millis(500));
    loop {
        backoff.attempt();
        if let Err(e) = follow(&loaded, &docker_socket, &mut done).await {
            warn!("actions: {e}; reconnecting");
        }
        tokio::time::sleep(backoff.wait()).await;
    }
}

async fn follow(
    loaded: &Loaded,
    docker_socket: &Path,
    done: &mut VecDeque<String>,
) -> Result<(), String> {
    let engine = Engine::connect(docker_socket)
        .await
        .map_err(|e| e.to_string())?;
    let client = loaded.client().map_err(|e| e.to_string())?;
    let server = loaded.membership.name.clone();
    let prefix = format!("actions/{server}/");
    let list = client.list(&prefix).await.map_err(|e| e.to_string())?;
    let mut pending: Vec<Action> = list
        .items
        .into_iter()
        .filter_map(|item| serde_json::from_value(item.value).ok())
        .collect();
    let mut watch = Box::pin(
        client
            .watch(&prefix, list.revision)
            .await
            .map_err(|e| e.to_string())?,
    );
    loop {
        for action in pending.drain(..) {
            if done.contains(&action.id) {
                continue;
            }
            done.push_back(action.id.clone());
            if done.len() > REMEMBERED {
                done.pop_front();
            }
            let (engine, client, server) = (engine.clone(), client.clone(), server.clone());
            tokio::spawn(async move {
                let result = carry_out(&engine, &action).await;
                info!(action = %action.id, container = %action.container, ok = result.ok, "action done");
                if let Err(e) = client.answer_action(&server, &action.id, &result).await {
                    warn!(action = %action.id, "answering central: {e}");
                }
            });
        }
        match watch.next().await {
            Some(Ok(line)) => pending.extend(
                line.events
                    .into_iter()
                    .filter_map(|e| e.value)
                    .filter_map(|v| serde_json::from_value(v).ok()),
            ),
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("central ended the watch".into()),
        }
    }
}

async fn carry_out(engine: &Engine, action: &Action) -> ActionResult {
    let fail = |output: String| ActionResult { ok: false, output };
    // Only ferry's own containers: the relay is no way into anything else on the server.
    match containers::list(engine).await {
        Ok(all) if all.iter().any(|c| c.id == action.container) => {}
        Ok(_) => {
            return fail(format!(
                "{} is not a ferry container here",
                action.container
            ));
        }
        Err(e) => return fail(e.to_string()),
    }
    let id = &action.container;
    match &action.kind {
        ActionKind::Logs {
            lines,
            since,
            timestamps,
        } => ActionResult {
            ok: true,
            output: containers::logs(engine, id, *lines as usize, *since, *timestamps).await,
        },
        ActionKind::Exec { command } => {
            match operate::exec(engine, id, command, MAX_ACTION_OUTPUT).await {
                Ok((Some(code), output)) => ActionResult {
                    ok: code == 0,
                    output: format!("{output}[exit code {code}]"),
                },
                Ok((None, output)) => fail(format!(
                    "{output}[still running after {}s; left running]",
                    operate::EXEC_LIMIT.as_secs()
                )),
                Err(e) => fail(e.to_string()),
            }
        }
        ActionKind::Stop => match operate::stop(engine, id, DEFAULT_STOP_GRACE).await {
            Ok(()) => ActionResult {
                ok: true,
                output: "stopped".into(),
            },
            Err(e) => fail(e.to_string()),
        },
        ActionKind::Restart => match operate::restart(engine, id, DEFAULT_STOP_GRACE).await {
            Ok(()) => ActionResult {
                ok: true,
                output: "restarted".into(),
            },
            Err(e) => fail(e.to_string()),
        },
    }
}
