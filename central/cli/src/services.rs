//! `ferry services ...`: a stack's services as its serving generation runs them.

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use ferry_api::{
    client::Client,
    types::{ActionKind, ContainerReport, ContainerState, Generation, ScaleResponse, StatusReport},
};

use crate::{Output, login, table};

#[derive(Subcommand)]
pub enum Command {
    /// The serving generation's services, with their containers per server.
    List {
        /// The stack.
        #[arg(long)]
        stack: String,
        #[command(flatten)]
        output: Output,
    },
    /// One service: its spec as deployed and its containers.
    Info {
        /// The stack.
        #[arg(long)]
        stack: String,
        /// The service.
        service: String,
        #[command(flatten)]
        output: Output,
    },
    /// Run COUNT containers of a service, spread over the servers (0 stops it), in the
    /// serving generation: no new build. New containers join rotation once they pass their
    /// health check; removed ones leave it at once, drain, then stop. Waits until done.
    Scale {
        /// The stack.
        #[arg(long)]
        stack: String,
        /// The service.
        service: String,
        /// How many containers run it, over all servers.
        count: u32,
        #[command(flatten)]
        output: Output,
    },
    /// The last lines of every container of the service, each line after its server and
    /// container; with --follow, then what they write next (new containers included).
    Logs {
        /// The stack.
        #[arg(long)]
        stack: String,
        /// The service.
        service: String,
        /// How many lines of each container.
        #[arg(long, default_value_t = 100)]
        lines: u32,
        /// Keep printing what they write, until interrupted.
        #[arg(long, short)]
        follow: bool,
    },
    /// Restart each of the service's serving containers in place.
    Restart {
        /// The stack.
        #[arg(long)]
        stack: String,
        /// The service.
        service: String,
    },
    /// Stop each of the service's serving containers; the next deploy starts them again.
    Stop {
        /// The stack.
        #[arg(long)]
        stack: String,
        /// The service.
        service: String,
    },
}

/// Runs one `ferry services` command.
pub async fn run(command: Command) -> Result<()> {
    let client = login::client()?;
    match command {
        Command::List { stack, output } => list(&client, &stack, output).await,
        Command::Info {
            stack,
            service,
            output,
        } => info(&client, &stack, &service, output).await,
        Command::Logs {
            stack,
            service,
            lines,
            follow,
        } => {
            crate::logs::show(
                &client,
                crate::logs::Select::Service { stack, service },
                lines,
                follow,
            )
            .await
        }
        Command::Scale {
            stack,
            service,
            count,
            output,
        } => {
            let done = client.scale(&stack, &service, count).await?;
            if !output.json {
                println!(
                    "{stack}/{service}: {} in generation {} ({})",
                    containers(count),
                    done.generation,
                    spread(&done.placement)
                );
            }
            wait_scaled(&client, &done, !output.json).await?;
            if output.json {
                println!("{}", serde_json::to_string_pretty(&done)?);
            } else {
                println!("{stack}/{service}: {} serving", containers(count));
            }
            Ok(())
        }
        Command::Restart { stack, service } => {
            act(&client, &stack, &service, ActionKind::Restart).await
        }
        Command::Stop { stack, service } => act(&client, &stack, &service, ActionKind::Stop).await,
    }
}

/// The serving generation of `stack`.
async fn serving(client: &Client, stack: &str) -> Result<Generation> {
    let record = client
        .stacks()
        .await?
        .into_iter()
        .find(|s| s.name == stack)
        .with_context(|| format!("no stack named {stack:?}; see `ferry stacks list`"))?;
    let number = record
        .serving
        .with_context(|| format!("{stack} has no serving generation yet"))?;
    client
        .generations(stack)
        .await?
        .into_iter()
        .find(|g| g.number == number)
        .with_context(|| format!("generation {number} of {stack} is missing"))
}

/// `1 container`, `3 containers`.
fn containers(n: u32) -> String {
    match n {
        1 => "1 container".into(),
        n => format!("{n} containers"),
    }
}

/// `one: 3, two: 2`.
fn spread(placement: &std::collections::BTreeMap<String, u32>) -> String {
    if placement.is_empty() {
        return "none".into();
    }
    placement
        .iter()
        .map(|(server, n)| format!("{server}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Waits until the scaled service has its count in rotation for its generation and no
/// container it removed runs, printing each change; a server that reports a container
/// failing its first check ends the wait with the reason.
async fn wait_scaled(client: &Client, done: &ScaleResponse, progress: bool) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15 * 60);
    let (stack, service, generation) = (&done.stack, &done.service, done.generation);
    let mut last = String::new();
    loop {
        let reports = client.containers().await?;
        let mut states: std::collections::BTreeMap<ContainerState, u32> = Default::default();
        for c in reports.values().flatten() {
            let ours = c.stack == *stack
                && c.service == *service
                && (c.generation == generation || c.serves.contains(&generation));
            if ours && c.state != ContainerState::Stopped {
                *states.entry(c.state).or_default() += 1;
            }
        }
        let now = states
            .iter()
            .map(|(state, n)| format!("{n} {state}"))
            .collect::<Vec<_>>()
            .join(", ");
        if progress && now != last {
            println!(
                "  {service}: {}",
                if now.is_empty() { "none" } else { &now }
            );
            last = now;
        }
        if states.get(&ContainerState::Running).copied().unwrap_or(0) == done.count
            && states.keys().all(|s| *s == ContainerState::Running)
        {
            return Ok(());
        }
        let suffix = ferry_api::keys::generation_suffix(stack, generation);
        for item in client.list(ferry_api::keys::STATUS).await?.items {
            let report = serde_json::from_value::<StatusReport>(item.value).ok();
            if item.key.ends_with(&suffix)
                && let Some(report) = report.filter(|r| !r.healthy)
            {
                let server = item.key.split('/').nth(1).unwrap_or("?");
                bail!(
                    "{stack}/{service}: {server}: {}\nthe containers that passed keep serving; \
                     see `ferry services info --stack {stack} {service}`",
                    report.detail
                );
            }
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "{stack}/{service} has not reached {} containers after 15 minutes; see `ferry services info --stack {stack} {service}`",
                done.count
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// (server, container) of the serving generation's `service`, or of all its services.
async fn containers_of(
    client: &Client,
    generation: &Generation,
    service: Option<&str>,
) -> Result<Vec<(String, ContainerReport)>> {
    Ok(client
        .containers()
        .await?
        .into_iter()
        .flat_map(|(server, cs)| cs.into_iter().map(move |c| (server.clone(), c)))
        .filter(|(_, c)| {
            c.stack == generation.stack
                && (c.generation == generation.number || c.serves.contains(&generation.number))
                && service.is_none_or(|s| c.service == s)
        })
        .collect())
}

async fn list(client: &Client, stack: &str, output: Output) -> Result<()> {
    let generation = serving(client, stack).await?;
    let running = containers_of(client, &generation, None).await?;
    let services: Vec<serde_json::Value> = generation
        .services
        .iter()
        .map(|(name, spec)| {
            let servers: Vec<serde_json::Value> = running
                .iter()
                .filter(|(_, c)| c.service == *name)
                .map(|(server, c)| serde_json::json!({ "server": server, "state": c.state }))
                .collect();
            let ports: Vec<u16> = spec.ports.iter().map(|p| p.container).collect();
            serde_json::json!({
                "service": name,
                "generation": generation.number,
                "ports": ports,
                "containers": servers,
            })
        })
        .collect();
    if output.json {
        println!("{}", serde_json::to_string_pretty(&services)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            let containers = s["containers"].as_array().cloned().unwrap_or_default();
            // `one: 2 running, two: 1 running, 1 draining`.
            let mut by_server: std::collections::BTreeMap<
                &str,
                std::collections::BTreeMap<&str, u32>,
            > = Default::default();
            for c in &containers {
                let (server, state) = (c["server"].as_str(), c["state"].as_str());
                *by_server
                    .entry(server.unwrap_or("?"))
                    .or_default()
                    .entry(state.unwrap_or("?"))
                    .or_default() += 1;
            }
            let on: Vec<String> = by_server
                .iter()
                .map(|(server, states)| {
                    let states: Vec<String> =
                        states.iter().map(|(s, n)| format!("{n} {s}")).collect();
                    format!("{server}: {}", states.join(", "))
                })
                .collect();
            vec![
                s["service"].as_str().unwrap_or("?").to_string(),
                generation.number.to_string(),
                containers.len().to_string(),
                s["ports"].to_string(),
                if on.is_empty() {
                    "-".into()
                } else {
                    on.join("; ")
                },
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &["SERVICE", "GENERATION", "CONTAINERS", "PORTS", "SERVERS"],
            &rows
        )
    );
    Ok(())
}

async fn info(client: &Client, stack: &str, service: &str, output: Output) -> Result<()> {
    let generation = serving(client, stack).await?;
    let spec = generation.services.get(service).with_context(|| {
        format!(
            "{stack} has no service {service:?}; it has {}",
            generation
                .services
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let running = containers_of(client, &generation, Some(service)).await?;
    if output.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "stack": stack, "service": service, "generation": generation.number,
                "spec": spec, "containers": running.iter().map(|(s, c)| serde_json::json!({"server": s, "container": c})).collect::<Vec<_>>(),
            }))?
        );
        return Ok(());
    }
    println!("{stack}/{service}, generation {}", generation.number);
    println!("{}", serde_json::to_string_pretty(spec)?);
    let rows: Vec<Vec<String>> = running
        .iter()
        .map(|(server, c)| {
            vec![
                server.clone(),
                c.state.to_string(),
                c.address.map_or("-".into(), |a| a.to_string()),
                c.id.chars().take(12).collect(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(&["SERVER", "STATE", "ADDRESS", "CONTAINER"], &rows)
    );
    Ok(())
}

async fn act(client: &Client, stack: &str, service: &str, kind: ActionKind) -> Result<()> {
    let generation = serving(client, stack).await?;
    let targets = containers_of(client, &generation, Some(service)).await?;
    if targets.is_empty() {
        bail!(
            "no container of {stack}/{service} in generation {}; see `ferry services list --stack {stack}`",
            generation.number
        );
    }
    let mut failed = 0;
    for (server, c) in &targets {
        let short: String = c.id.chars().take(12).collect();
        match client.container_action(server, &c.id, &kind).await {
            Ok(result) if result.ok => println!("{server}: {short} {}", result.output.trim()),
            Ok(result) => {
                failed += 1;
                eprintln!("{server}: {short}: {}", result.output.trim());
            }
            Err(e) => {
                failed += 1;
                eprintln!("{server}: {short}: {e}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} containers failed", targets.len());
    }
    Ok(())
}
