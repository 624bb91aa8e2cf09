//! `ferry`: the operator's command line. Each command is one function; the clap enum's
//! doc comments are the help.
//!
//! # Layout
//! - `certificates`: `ferry certificates ...`, TLS certificates for HTTPS ports.
//! - `containers`: `ferry containers ...`, each container through its server's agent.
//! - `deploy`: packing and checking a stack's source before upload.
//! - `login`: where central is and the operator's token, kept in the CLI's config.
//! - `services`: `ferry services ...`, over the serving generation.
//! - `table`: plain aligned tables, the default output (`--json` everywhere else).

mod apps;
mod certificates;
mod containers;
mod datasources;
mod deploy;
mod dockerignore;
mod login;
mod logs;
mod servers;
mod services;
mod table;

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use ferry_api::{
    servicefile,
    types::{Phase, VariablesChange},
};

/// ferry: run Node apps on your own servers.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Remember central's URL, CA fingerprint and your admin token (checked before saving).
    Login(login::LoginArgs),
    /// Servers that joined central.
    #[command(subcommand)]
    Servers(servers::Command),
    /// Upload a stack's source as its next generation (service.yml is checked here first).
    Deploy {
        /// The stack (default: the directory's name).
        #[arg(long)]
        stack: Option<String>,
        /// Return once the generation is recorded, without waiting for it to serve.
        #[arg(long)]
        no_wait: bool,
        /// The source directory, with service.yml at its root.
        #[arg(default_value = ".")]
        path: std::path::PathBuf,
        #[command(flatten)]
        output: Output,
    },
    /// Serve the generation that served before the current one.
    Rollback {
        /// The stack.
        #[arg(long)]
        stack: String,
        #[command(flatten)]
        output: Output,
    },
    /// Stacks and their generations.
    #[command(subcommand)]
    Stacks(StacksCommand),
    /// Stack variables: the values service.yml's `_env(NAME)` refers to.
    #[command(subcommand)]
    Env(EnvCommand),
    /// Where a stack's datasources are: NAME.cloud66.local for its containers.
    #[command(subcommand)]
    Datasources(datasources::Command),
    /// TLS certificates for the stack's HTTPS ports, picked by host name (SNI).
    #[command(subcommand)]
    Certificates(certificates::Command),
    /// Containers on every server: list them, read their logs, run commands, stop, restart.
    #[command(subcommand)]
    Containers(containers::Command),
    /// A stack's services: list, info, scale, restart, stop.
    #[command(subcommand)]
    Services(services::Command),
    /// Check a service.yml here, before any deploy: every error and warning, located.
    Validate {
        /// The file (default: service.yml in this directory).
        #[arg(default_value = "service.yml")]
        path: std::path::PathBuf,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Subcommand)]
enum StacksCommand {
    /// List stacks with their newest and serving generations.
    List(Output),
}

#[derive(Subcommand)]
enum EnvCommand {
    /// List a stack's variables.
    List {
        /// The stack.
        #[arg(long)]
        stack: String,
        #[command(flatten)]
        output: Output,
    },
    /// Set variables (NAME=VALUE ...); the next deploy uses them.
    Set {
        /// The stack (it need not be deployed yet).
        #[arg(long)]
        stack: String,
        /// NAME=VALUE pairs.
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Remove variables by name.
    Unset {
        /// The stack.
        #[arg(long)]
        stack: String,
        /// Names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Args)]
pub(crate) struct Output {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        match command {
            Command::Login(args) => login::login(args).await,
            Command::Servers(command) => servers::run(command).await,
            Command::Validate { path, output } => validate(&path, output),
            Command::Deploy {
                stack,
                no_wait,
                path,
                output,
            } => deploy(stack, &path, no_wait, output).await,
            Command::Stacks(StacksCommand::List(output)) => stacks_list(output).await,
            Command::Rollback { stack, output } => rollback(&stack, output).await,
            Command::Env(command) => env(command).await,
            Command::Containers(command) => containers::run(command).await,
            Command::Datasources(command) => datasources::run(command).await,
            Command::Certificates(command) => certificates::run(command).await,
            Command::Services(command) => services::run(command).await,
        }
    })
}

async fn env(command: EnvCommand) -> Result<()> {
    let client = login::client()?;
    match command {
        EnvCommand::List { stack, output } => {
            let vars = client.variables(&stack).await?;
            if output.json {
                println!("{}", serde_json::to_string_pretty(&vars)?);
            } else {
                let rows: Vec<Vec<String>> = vars
                    .into_iter()
                    .map(|(name, value)| vec![name, value])
                    .collect();
                print!("{}", table::render(&["NAME", "VALUE"], &rows));
            }
        }
        EnvCommand::Set { stack, pairs } => {
            let mut change = VariablesChange::default();
            for pair in pairs {
                let (name, value) = pair.split_once('=').with_context(|| {
                    format!("{pair:?} is not NAME=VALUE; write e.g. API_KEY=s3cret")
                })?;
                change.set.insert(name.to_string(), value.to_string());
            }
            let vars = client.change_variables(&stack, &change).await?;
            println!(
                "{stack}: {} set ({} variables); deploy again to use them",
                change.set.keys().cloned().collect::<Vec<_>>().join(", "),
                vars.len()
            );
        }
        EnvCommand::Unset { stack, names } => {
            let change = VariablesChange {
                unset: names.clone(),
                ..VariablesChange::default()
            };
            let vars = client.change_variables(&stack, &change).await?;
            println!(
                "{stack}: {} removed ({} variables left)",
                names.join(", "),
                vars.len()
            );
        }
    }
    Ok(())
}

async fn deploy(
    stack: Option<String>,
    dir: &std::path::Path,
    no_wait: bool,
    output: Output,
) -> Result<()> {
    // One reading of .dockerignore: what is planned is what is uploaded.
    let ignore = dockerignore::Ignore::of(dir)?;
    deploy::check(dir, &ignore)?;
    let stack = deploy::stack_name(stack, dir)?;
    let client = login::client()?;
    // Asked first, so a big upload is not sent to be refused (central refuses it unread,
    // which the client would only see as a broken pipe).
    if client.servers().await?.is_empty() {
        anyhow::bail!(
            "no server has joined central, so nothing could run {stack}; run `ferry-agent \
             join` on a server first (`ferry servers list` shows them)"
        );
    }
    let archive = deploy::pack(dir, &ignore)?;
    if !output.json {
        eprintln!(
            "uploading {} ({} bytes packed) as the next generation of {stack}",
            dir.display(),
            archive.len()
        );
    }
    let done = client.deploy(&stack, archive).await?;
    if !output.json {
        for warning in &done.warnings {
            eprintln!("{warning}");
        }
        println!(
            "generation {} of {} recorded (source {})",
            done.generation, done.stack, done.source
        );
    }
    if no_wait {
        if output.json {
            println!("{}", serde_json::to_string_pretty(&done)?);
        }
        return Ok(());
    }
    if !output.json {
        println!("servers are building, starting and checking its containers...");
    }
    follow(&client, &stack, done.generation, output).await
}

/// Waits for `generation` of `stack` to serve or fail and says which; fails if it failed.
pub(crate) async fn follow(
    client: &ferry_api::client::Client,
    stack: &str,
    generation: u64,
    output: Output,
) -> Result<()> {
    let phase = deploy::wait(client, stack, generation, !output.json).await?;
    if output.json {
        println!(
            "{}",
            serde_json::json!({ "stack": stack, "generation": generation, "phase": phase })
        );
    }
    match phase {
        Phase::Serving => {
            if !output.json {
                println!("generation {generation} of {stack} is serving");
            }
            let record = client.stacks().await?.into_iter().find(|s| s.name == stack);
            if let Some(old) = record.and_then(|s| s.previous) {
                if !output.json {
                    println!(
                        "draining generation {old}: it answers requests in flight, then stops"
                    );
                }
                let (stopped, kept) = deploy::wait_stopped(client, stack, old).await?;
                if !output.json {
                    let kept = match kept {
                        0 => String::new(),
                        n => format!(", {n} kept running: restart_on_deploy is false"),
                    };
                    println!(
                        "generation {old} of {stack} stopped ({stopped} containers removed{kept})"
                    );
                }
            }
            Ok(())
        }
        Phase::Failed { reason } => {
            let serving = client
                .stacks()
                .await?
                .into_iter()
                .find(|s| s.name == stack)
                .and_then(|s| s.serving);
            let keeps = serving.map_or("nothing serves yet".to_string(), |g| {
                format!("generation {g} keeps serving")
            });
            anyhow::bail!(
                "generation {generation} of {stack} failed and does not serve; {keeps}:\n{reason}"
            )
        }
        other => anyhow::bail!("generation {generation} of {stack} ended up {other:?}"),
    }
}

async fn rollback(stack: &str, output: Output) -> Result<()> {
    let client = login::client()?;
    let generation = client.rollback(stack).await?;
    if !output.json {
        println!(
            "{stack}: deploying generation {} again; it serves once its containers pass their checks",
            generation.number
        );
    }
    follow(&client, stack, generation.number, output).await
}

async fn stacks_list(output: Output) -> Result<()> {
    let stacks = login::client()?.stacks().await?;
    if output.json {
        println!("{}", serde_json::to_string_pretty(&stacks)?);
        return Ok(());
    }
    let show = |g: Option<u64>| g.map_or("-".to_string(), |g| g.to_string());
    let rows: Vec<Vec<String>> = stacks
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.latest.to_string(),
                show(s.serving),
                show(s.previous),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(&["STACK", "LATEST", "SERVING", "PREVIOUS"], &rows)
    );
    Ok(())
}

fn validate(path: &std::path::Path, output: Output) -> Result<()> {
    // A stack's directory means its service.yml, as `ferry deploy` takes it.
    let with_file;
    let path = if path.is_dir() {
        with_file = path.join("service.yml");
        with_file.as_path()
    } else {
        path
    };
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if size > servicefile::MAX_BYTES as u64 {
        anyhow::bail!(
            "{} is {size} bytes; service files may be at most {} bytes",
            path.display(),
            servicefile::MAX_BYTES
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.display().to_string();
    let (diagnostics, stack) = match servicefile::parse(&name, &text) {
        Ok(parsed) => (parsed.warnings, Some(parsed.stack)),
        Err(err) => (err.diagnostics, None),
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    // How each service will be built, once the file itself is valid.
    let planned = stack
        .as_ref()
        .map(|stack| apps::check(dir, stack, &dockerignore::Ignore::of(dir)?));
    if output.json {
        let mut problems: Vec<serde_json::Value> = diagnostics
            .iter()
            .map(|d| {
                serde_json::json!({
                    "severity": if d.severity == servicefile::Severity::Error { "error" } else { "warning" },
                    "file": d.file, "line": d.line, "column": d.column, "path": d.path, "message": d.message,
                })
            })
            .collect();
        let mut plans = Vec::new();
        match &planned {
            Some(Ok((lines, warnings))) => {
                plans.clone_from(lines);
                problems.extend(
                    warnings
                        .iter()
                        .map(|w| serde_json::json!({ "severity": "warning", "message": w })),
                );
            }
            Some(Err(e)) => problems
                .push(serde_json::json!({ "severity": "error", "message": format!("{e:#}") })),
            None => {}
        }
        let valid = matches!(planned, Some(Ok(_)));
        println!(
            "{}",
            serde_json::json!({ "valid": valid, "problems": problems, "plans": plans })
        );
    } else {
        for d in &diagnostics {
            eprintln!("{d}");
        }
    }
    let Some(stack) = stack else {
        anyhow::bail!("{name} is not valid; fix the errors above");
    };
    let (plans, warnings) = planned.unwrap_or_else(|| Ok(Default::default()))?;
    if !output.json {
        for warning in &warnings {
            eprintln!("{warning}");
        }
        let names: Vec<&str> = stack.services.keys().map(String::as_str).collect();
        println!("{name}: {} service(s): {}", names.len(), names.join(", "));
        for line in &plans {
            println!("  {line}");
        }
    }
    Ok(())
}
