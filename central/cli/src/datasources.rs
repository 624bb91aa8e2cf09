//! `ferry datasources ...`: where a stack's datasources (`mysql`, `postgresql`, `mongodb`,
//! `redis`) are, so `redis.cloud66.local` resolves in its containers.

use anyhow::{Context as _, Result};
use clap::Subcommand;
use ferry_api::types::DatasourcesChange;

use crate::{Output, login, table};

/// The datasources subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// List a stack's datasources and their addresses.
    List {
        /// The stack.
        #[arg(long)]
        stack: String,
        #[command(flatten)]
        output: Output,
    },
    /// Point NAME (mysql, postgresql, mongodb or redis) at ADDRESS...; every server resolves
    /// NAME.cloud66.local to them at once.
    Set {
        /// The stack (it need not be deployed yet).
        #[arg(long)]
        stack: String,
        /// The datasource.
        name: String,
        /// Its IPv4 addresses.
        #[arg(required = true)]
        addresses: Vec<String>,
    },
    /// Remove datasources by name.
    Unset {
        /// The stack.
        #[arg(long)]
        stack: String,
        /// The datasources.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Runs one datasources subcommand.
pub async fn run(command: Command) -> Result<()> {
    let client = login::client()?;
    match command {
        Command::List { stack, output } => {
            let all = client.datasources(&stack).await?;
            if output.json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                let rows: Vec<Vec<String>> = all
                    .into_iter()
                    .map(|(name, addresses)| {
                        let addresses: Vec<String> =
                            addresses.iter().map(ToString::to_string).collect();
                        vec![format!("{name}.cloud66.local"), addresses.join(", ")]
                    })
                    .collect();
                print!("{}", table::render(&["NAME", "ADDRESSES"], &rows));
            }
        }
        Command::Set {
            stack,
            name,
            addresses,
        } => {
            let parsed = addresses
                .iter()
                .map(|a| {
                    a.parse()
                        .with_context(|| format!("{a:?} is not an IPv4 address, e.g. 10.0.0.5"))
                })
                .collect::<Result<Vec<std::net::Ipv4Addr>>>()?;
            let mut change = DatasourcesChange::default();
            change.set.insert(name.clone(), parsed);
            client.change_datasources(&stack, &change).await?;
            println!("{stack}: {name}.cloud66.local -> {}", addresses.join(", "));
        }
        Command::Unset { stack, names } => {
            let change = DatasourcesChange {
                unset: names.clone(),
                ..DatasourcesChange::default()
            };
            let left = client.change_datasources(&stack, &change).await?;
            println!(
                "{stack}: {} removed ({} datasources left)",
                names.join(", "),
                left.len()
            );
        }
    }
    Ok(())
}
