//! `ferry services ...`: a stack's services as its serving generation runs them.

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use ferry_api::{
    client::Client,
    types::{ActionKind, ContainerReport, Generation},
};

use crate::{Output, follow, login, table};

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
    /// Run a service on COUNT servers (one container each; 0 stops it): a new generation,
    /// serving once healthy.
    Scale {
        /// The stack.
        #[arg(long)]
        stack: String,
        /// The service.
        service: String,
        /// How many servers run it.
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
                    "generation {} of {stack}: {service} on {count} servers; deploying",
                    done.generation
                );
            }
            follow(&client, &stack, done.generation, output).await
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
                && c.generation == generation.number
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
            let on: Vec<String> = containers
                .iter()
                .map(|c| {
                    format!(
                        "{} ({})",
                        c["server"].as_str().unwrap_or("?"),
                        c["state"].as_str().unwrap_or("?")
                    )
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
                    on.join(", ")
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
                c.state.clone(),
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
