//! `ferry containers ...`: every server's containers as their agents report them, and
//! actions on one of them, which central relays to its server's agent.

use anyhow::{Result, bail};
use clap::Subcommand;
use ferry_api::{
    client::Client,
    types::{ActionKind, ActionResult, ContainerReport},
};

use crate::{Output, login, table};

#[derive(Subcommand)]
pub enum Command {
    /// List every server's containers: stack, service, generation, state, address.
    List {
        /// Only this stack's.
        #[arg(long)]
        stack: Option<String>,
        #[command(flatten)]
        output: Output,
    },
    /// The last lines of a container's log; with --follow, then what it writes next.
    Logs {
        /// The container id, or a unique prefix of it.
        container: String,
        /// How many lines.
        #[arg(long, default_value_t = 100)]
        lines: u32,
        /// Keep printing what it writes, until interrupted.
        #[arg(long, short)]
        follow: bool,
    },
    /// Run a command in a container (no terminal): `ferry containers exec ID -- ls /app`.
    Exec {
        /// The container id, or a unique prefix of it.
        container: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Stop a container (SIGTERM, SIGKILL after 10 s); it is started again by the next
    /// deploy or agent restart.
    Stop {
        /// The container id, or a unique prefix of it.
        container: String,
    },
    /// Restart a container in place.
    Restart {
        /// The container id, or a unique prefix of it.
        container: String,
    },
}

/// Runs one `ferry containers` command.
pub async fn run(command: Command) -> Result<()> {
    let client = login::client()?;
    let (target, kind) = match command {
        Command::List { stack, output } => return list(&client, stack.as_deref(), output).await,
        Command::Logs {
            container,
            lines,
            follow,
        } => {
            let (server, found) = find(&client, &container).await?;
            return crate::logs::show(
                &client,
                crate::logs::Select::One(server, found),
                lines,
                follow,
            )
            .await;
        }
        Command::Exec { container, command } => (container, ActionKind::Exec { command }),
        Command::Stop { container } => (container, ActionKind::Stop),
        Command::Restart { container } => (container, ActionKind::Restart),
    };
    let (server, found) = find(&client, &target).await?;
    let result = client.container_action(&server, &found.id, &kind).await?;
    finish(&result)
}

/// Prints an action's output; fails, with it, if the action did not succeed.
pub fn finish(result: &ActionResult) -> Result<()> {
    if result.ok {
        println!("{}", result.output.trim_end());
        Ok(())
    } else {
        bail!("{}", result.output.trim_end())
    }
}

/// The server and report of the one container whose id starts with `prefix`.
pub async fn find(client: &Client, prefix: &str) -> Result<(String, ContainerReport)> {
    if prefix.len() < 4 {
        bail!("{prefix:?} is too short to pick a container; give at least 4 characters of its id");
    }
    let mut matches: Vec<(String, ContainerReport)> = client
        .containers()
        .await?
        .into_iter()
        .flat_map(|(server, cs)| cs.into_iter().map(move |c| (server.clone(), c)))
        .filter(|(_, c)| c.id.starts_with(prefix))
        .collect();
    match matches.len() {
        1 => Ok(matches.remove(0)),
        0 => bail!("no container's id starts with {prefix:?}; see `ferry containers list`"),
        n => bail!("{n} containers' ids start with {prefix:?}; give more of the id"),
    }
}

async fn list(client: &Client, stack: Option<&str>, output: Output) -> Result<()> {
    let mut reports = client.containers().await?;
    for containers in reports.values_mut() {
        containers.retain(|c| stack.is_none_or(|s| c.stack == s));
    }
    if output.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = reports
        .iter()
        .flat_map(|(server, containers)| {
            containers.iter().map(move |c| {
                vec![
                    server.clone(),
                    c.stack.clone(),
                    c.service.clone(),
                    c.generation.to_string(),
                    c.state.to_string(),
                    c.address.map_or("-".into(), |a| a.to_string()),
                    c.id.chars().take(12).collect(),
                ]
            })
        })
        .collect();
    let header = [
        "SERVER",
        "STACK",
        "SERVICE",
        "GENERATION",
        "STATE",
        "ADDRESS",
        "CONTAINER",
    ];
    print!("{}", table::render(&header, &rows));
    Ok(())
}
