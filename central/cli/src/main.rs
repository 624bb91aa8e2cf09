//! `ferry`: the operator's command line. Each command is one function; the clap enum's
//! doc comments are the help.
//!
//! # Layout
//! - `login`: where central is and the operator's token, kept in the CLI's config.
//! - `table`: plain aligned tables, the default output (`--json` everywhere else).

mod login;
mod table;

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use ferry_api::types::Server;

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
    Servers(ServersCommand),
}

#[derive(Subcommand)]
enum ServersCommand {
    /// List servers with their container subnets and WireGuard endpoints.
    List(Output),
    /// Remove a server: its subnet is released and its agent's token revoked.
    Remove {
        /// The server's name.
        name: String,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Args)]
struct Output {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
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
            Command::Servers(ServersCommand::List(output)) => servers_list(output).await,
            Command::Servers(ServersCommand::Remove { name, output }) => {
                servers_remove(&name, output).await
            }
        }
    })
}

async fn servers_list(output: Output) -> Result<()> {
    let client = login::client()?;
    let servers = client.servers().await?;
    if output.json {
        println!("{}", serde_json::to_string_pretty(&servers)?);
        return Ok(());
    }
    print_servers(&servers);
    Ok(())
}

async fn servers_remove(name: &str, output: Output) -> Result<()> {
    let client = login::client()?;
    let removed = client.remove_server(name).await?;
    if output.json {
        println!("{}", serde_json::to_string_pretty(&removed)?);
    } else {
        println!(
            "removed {}: subnet 10.66.{}.0/24 released, its agent token revoked",
            removed.name, removed.subnet_index
        );
    }
    Ok(())
}

fn print_servers(servers: &[Server]) {
    let rows: Vec<Vec<String>> = servers
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                format!("10.66.{}.0/24", s.subnet_index),
                s.wireguard_endpoint.to_string(),
                s.wireguard_public_key.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(&["NAME", "SUBNET", "WIREGUARD", "PUBLIC KEY"], &rows)
    );
}
