//! `ferry-central`: argument parsing and reporting around the library.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use ferry_central::init;
use tokio::signal::unix::{SignalKind, signal};

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
        /// The URL agents and the CLI will use, e.g. https://central.example.com:7443;
        /// for replicas, each one's, comma-separated (the certificate names every host, and
        /// clients move to the next when one does not answer).
        #[arg(long)]
        url: String,
        /// Address the API listens on.
        #[arg(long, default_value = "0.0.0.0:7443")]
        listen: SocketAddr,
        /// Keep the state in an etcd cluster, etcd://HOST:PORT[,HOST:PORT...], instead of
        /// SQLite in the data directory (written to central.toml's [store]).
        #[arg(long)]
        store: Option<String>,
        /// With --store: PEM file of the CA of the etcd members' certificates (TLS).
        #[arg(long, requires = "store")]
        etcd_ca: Option<PathBuf>,
        /// With --store: PEM files of this central's etcd client certificate and key.
        #[arg(long, requires_all = ["store", "etcd_key"])]
        etcd_cert: Option<PathBuf>,
        /// See --etcd-cert.
        #[arg(long, requires_all = ["store", "etcd_cert"])]
        etcd_key: Option<PathBuf>,
    },
    /// Show the state store: its backend, its revision and, on etcd, each member's health
    /// and which one leads.
    Status {
        /// The data directory `init` made.
        #[arg(long, default_value = "/var/lib/ferry-central")]
        data_dir: PathBuf,
    },
    /// Move a SQLite central's state into an etcd cluster that holds none, and point its
    /// data directory there. Stop central first; start it again (and its other replicas)
    /// after. Agents follow on their own; nothing is deployed again.
    Migrate {
        /// The data directory of the SQLite central.
        #[arg(long, default_value = "/var/lib/ferry-central")]
        data_dir: PathBuf,
        /// The etcd cluster, etcd://HOST:PORT[,HOST:PORT...].
        #[arg(long)]
        to: String,
        /// PEM file of the CA of the etcd members' certificates (TLS).
        #[arg(long)]
        etcd_ca: Option<PathBuf>,
        /// PEM files of this central's etcd client certificate and key.
        #[arg(long, requires = "etcd_key")]
        etcd_cert: Option<PathBuf>,
        /// See --etcd-cert.
        #[arg(long, requires = "etcd_cert")]
        etcd_key: Option<PathBuf>,
    },
    /// Serve the API until SIGINT or SIGTERM.
    Serve {
        /// The data directory `init` made.
        #[arg(long, default_value = "/var/lib/ferry-central")]
        data_dir: PathBuf,
        /// Listen here instead of the configured address.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// How long a retired generation's containers keep running for requests in
        /// flight, e.g. 30s (default: `drain_seconds` in central.toml, 10 s).
        #[arg(long, value_parser = parse_duration)]
        drain_period: Option<std::time::Duration>,
        /// Keep at least this many of the latest revisions of the change log; a follower
        /// further behind lists again.
        #[arg(long, default_value_t = ferry_central::store::compaction::Window::default().revisions)]
        history_revisions: u64,
        /// Keep at least this much of the change log's history, e.g. 1h.
        #[arg(long, value_parser = parse_duration, default_value = "1h")]
        history_age: std::time::Duration,
        /// How often the change log is compacted, e.g. 1m.
        #[arg(long, value_parser = parse_duration, default_value = "1m")]
        compaction_interval: std::time::Duration,
    },
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    ferry_api::servicefile::duration(text)
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
            store,
            etcd_ca,
            etcd_cert,
            etcd_key,
        } => {
            let store = store.map(|etcd| ferry_central::config::StoreConfig {
                etcd,
                ca: etcd_ca,
                cert: etcd_cert,
                key: etcd_key,
            });
            let done = init::init(&data_dir, &url, listen, store)?;
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
        Command::Status { data_dir } => status(&data_dir),
        Command::Migrate {
            data_dir,
            to,
            etcd_ca,
            etcd_cert,
            etcd_key,
        } => {
            let store = ferry_central::config::StoreConfig {
                etcd: to,
                ca: etcd_ca,
                cert: etcd_cert,
                key: etcd_key,
            };
            let done = ferry_central::migrate::migrate(&data_dir, store)
                .with_context(|| format!("migrating {}", data_dir.display()))?;
            println!(
                "copied {} keys into etcd (now at revision {}); {} names the cluster now",
                done.keys,
                done.revision,
                data_dir.join(ferry_central::config::FILE).display()
            );
            println!(
                "{} is left as it was, as a backup; start central again: ferry-central serve \
                 --data-dir {}",
                done.sqlite.display(),
                data_dir.display()
            );
            Ok(())
        }
        Command::Serve {
            data_dir,
            listen,
            drain_period,
            history_revisions,
            history_age,
            compaction_interval,
        } => serve(
            &data_dir,
            ferry_central::serve::Overrides {
                listen,
                drain: drain_period,
                history: Some(ferry_central::store::compaction::Window {
                    revisions: history_revisions,
                    age: history_age,
                }),
                compaction_interval: Some(compaction_interval),
            },
        ),
    }
}

fn status(data_dir: &std::path::Path) -> Result<()> {
    use ferry_central::store::Backend;
    let config = ferry_central::config::Config::load(data_dir)?;
    let store = Backend::open(data_dir, config.store.as_ref())
        .with_context(|| format!("opening the store of {}", data_dir.display()))?;
    let health = store.health()?;
    println!("store:    {}", store.describe());
    println!("revision: {}", health.revision);
    for member in &health.members {
        let state = match (&member.problem, member.leader) {
            (Some(problem), _) => format!("unhealthy: {problem}"),
            (None, true) => "healthy, leader".into(),
            (None, false) => "healthy".into(),
        };
        println!("member:   {} {} {state}", member.name, member.url);
    }
    Ok(())
}

fn serve(data_dir: &std::path::Path, overrides: ferry_central::serve::Overrides) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        let running = ferry_central::serve::start(data_dir, overrides)
            .await
            .with_context(|| format!("starting central from {}", data_dir.display()))?;
        println!("ferry-central listening on {}", running.local_addr());
        let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        drop(running);
        Ok(())
    })
}
