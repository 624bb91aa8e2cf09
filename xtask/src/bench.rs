//! `bench`: benchmarks that set ferry beside the tool it replaces, in the same run, and
//! report ratios (absolute times drift on shared machines).
//!
//! - `control`: central's watch fan-out against etcd 3.4: the time from a write (a
//!   generation flip) until every watcher has it, at 10, 100 and 1000 watchers, and each
//!   server's memory. The load runs in `ferry-control-bench` (tests crate), built here in
//!   release mode with central.

use std::process::Command;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::{build_ebpf, process, workspace};

/// Options of `bench`.
#[derive(Args)]
pub struct Options {
    #[command(subcommand)]
    which: Which,
}

#[derive(Subcommand)]
enum Which {
    /// Central against etcd: write-to-every-watcher latency and memory.
    Control {
        /// Timed writes per server and watcher count.
        #[arg(long, default_value_t = 40)]
        writes: usize,
        /// Watcher counts, comma-separated.
        #[arg(long, default_value = "10,100,1000")]
        watchers: String,
    },
}

/// Runs one benchmark.
pub fn run(options: Options) -> Result<()> {
    match options.which {
        Which::Control { writes, watchers } => control(writes, &watchers),
    }
}

fn control(writes: usize, watchers: &str) -> Result<()> {
    // The tests crate links the agent, which embeds the eBPF object.
    build_ebpf::run(build_ebpf::Options::default())?;
    let build = |package: &str, bin: &str| {
        process::run(
            Command::new(workspace::cargo())
                .current_dir(workspace::root())
                .args(["build", "--release", "--package", package, "--bin", bin]),
        )
    };
    build("ferry-central", "ferry-central")?;
    build("ferry-tests", "ferry-control-bench")?;
    let release = workspace::target_dir().join("release");
    process::run(
        Command::new(release.join("ferry-control-bench"))
            .env("FERRY_CENTRAL_BIN", release.join("ferry-central"))
            .args(["--writes", &writes.to_string(), "--watchers", watchers]),
    )
}
