//! `ferry certificates ...`: the TLS certificates a stack's HTTPS ports serve, chosen by
//! the client's SNI. Central checks each before storing it.

use anyhow::{Context as _, Result};
use clap::Subcommand;
use ferry_api::types::TlsCertificate;

use crate::{Output, login, table};

/// The certificates subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// List a stack's certificates and the host names each serves.
    List {
        /// The stack.
        #[arg(long)]
        stack: String,
        #[command(flatten)]
        output: Output,
    },
    /// Store certificate NAME for the given host names (replacing one of that name).
    Set {
        /// The stack.
        #[arg(long)]
        stack: String,
        /// A name for the certificate, e.g. shop.
        name: String,
        /// The certificate chain, PEM, leaf first.
        #[arg(long)]
        cert: std::path::PathBuf,
        /// Its private key, PEM.
        #[arg(long)]
        key: std::path::PathBuf,
        /// A host name it serves (exact or *.example.com); repeatable.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
    },
    /// Remove certificate NAME.
    Unset {
        /// The stack.
        #[arg(long)]
        stack: String,
        /// The certificate.
        name: String,
    },
}

/// Runs one certificates subcommand.
pub async fn run(command: Command) -> Result<()> {
    let client = login::client()?;
    match command {
        Command::List { stack, output } => {
            let all = client.certificates(&stack).await?;
            if output.json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                let rows: Vec<Vec<String>> = all
                    .into_iter()
                    .map(|(name, hosts)| vec![name, hosts.join(", ")])
                    .collect();
                print!("{}", table::render(&["NAME", "HOSTS"], &rows));
            }
        }
        Command::Set {
            stack,
            name,
            cert,
            key,
            hosts,
        } => {
            let read = |path: &std::path::Path| {
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
            };
            let certificate = TlsCertificate {
                hosts: hosts.clone(),
                chain_pem: read(&cert)?,
                key_pem: read(&key)?,
            };
            client.put_certificate(&stack, &name, &certificate).await?;
            println!("{stack}: certificate {name} serves {}", hosts.join(", "));
        }
        Command::Unset { stack, name } => {
            let left = client.delete_certificate(&stack, &name).await?;
            println!("{stack}: certificate {name} removed ({} left)", left.len());
        }
    }
    Ok(())
}
