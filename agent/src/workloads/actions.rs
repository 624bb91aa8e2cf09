//! Operator actions central relays to this server (`actions/<server>/`): each is carried
//! out once, on a ferry container only, and answered.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    time::Duration,
};

use ferry_api::types::{Action, ActionKind, ActionResult, MAX_ACTION_OUTPUT};
use tracing::{info, warn};

use crate::{
    containers::{self, DEFAULT_STOP_GRACE, Engine, operate},
    membership::{
        follow::{Follower, Update},
        reconnect::Backoff,
        state::Loaded,
    },
};

/// How many answered ids are remembered, so a replayed watch does not act twice.
const REMEMBERED: usize = 1024;

/// Runs until the task is dropped; failures are logged and retried with backoff.
pub async fn run(loaded: Loaded, docker_socket: PathBuf) {
    let engine = connect(&docker_socket).await;
    let client = loaded.client();
    let server = loaded.membership.name.clone();
    let mut follower: Follower<Action> = Follower::new(
        client.clone(),
        ferry_api::keys::actions_of(&server),
        "actions",
        Duration::from_millis(500),
    );
    let mut done = VecDeque::new();
    loop {
        // An action stays listed until central has its answer: a snapshot repeats the
        // ones already carried out, which `done` skips.
        let actions: Vec<Action> = match follower.next().await {
            Update::Snapshot { items, .. } => items.into_iter().map(|(_, a)| a).collect(),
            Update::Changes { changes, .. } => changes.into_iter().filter_map(|(_, a)| a).collect(),
        };
        for action in actions {
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
    }
}

/// The Docker Engine at `socket`, waiting (with backoff) until it answers.
async fn connect(socket: &Path) -> Engine {
    let mut backoff = Backoff::new(Duration::from_millis(500));
    loop {
        backoff.attempt();
        match Engine::connect(socket).await {
            Ok(engine) => return engine,
            Err(e) => warn!("actions: {e}; reconnecting"),
        }
        tokio::time::sleep(backoff.wait()).await;
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
