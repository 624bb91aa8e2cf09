//! `ferry-central`: argument parsing and reporting around the library.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};
use ferry_central::init;

/// ferry's control plane.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the data directory: CA, TLS certificate, admin and join tokens, config.
    Init {
        /// Where central keeps its config, certificates and state.
        #[arg(long, default_value = "/var/lib/ferry-central")]
        data_dir: PathBuf,
        /// The URL agents and the CLI will use, e.g. https://central.example.com:7443.
        #[arg(long)]
        url: String,
        /// Address the API listens on.
        #[arg(long, default_value = "0.0.0.0:7443")]
        listen: SocketAddr,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-central: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Init {
            data_dir,
            url,
            listen,
        } => {
            let done = init::init(&data_dir, &url, listen)?;
            println!("ferry-central initialised in {}", done.data_dir.display());
            println!();
            println!("Admin token (for the ferry CLI; shown once, keep it secret):");
            println!("  {}", done.admin_token);
            println!();
            println!("Join an agent on each server with:");
            println!(
                "  ferry-agent join --central {} --token {} --ca-fingerprint {}",
                done.url, done.join_token, done.ca_fingerprint
            );
            println!();
            println!(
                "Then start the API: ferry-central serve --data-dir {}",
                done.data_dir.display()
            );
            Ok(())
        }
    }
}
