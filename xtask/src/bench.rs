//! `bench`: benchmarks that set ferry beside the tool it replaces, in the same run, and
//! report ratios (absolute times drift on shared machines).
//!
//! - `control`: central's watch fan-out against etcd 3.4: the time from a write (a
//!   generation flip) until every watcher has it, at 10, 100 and 1000 watchers, and each
//!   server's memory. The load runs in `ferry-control-bench` (tests crate), built here in
//!   release mode with central.
//! - `dns`: the agent's DNS server against dnsmasq, unbound and a bare UDP responder, with
//!   dnsperf; the load and the servers run in `ferry-dns-bench` (tests crate).
//! - `connect`: a connect to a service address through connect4 against a direct connect
//!   and an iptables DNAT rule (`ferry-connect-bench`).
//! - `ingress`: the agent's HTTP ingress against nginx, HAProxy and a direct connection,
//!   under wrk (`ferry-ingress-bench`); then its L4 side, a `tcp:` port through the tc
//!   program and through the userspace relay against HAProxy in TCP mode and a direct
//!   connection, on a topology of namespaces (`ferry-l4-bench`).
//! - `mesh`: a path through the WireGuard mesh (wireguard-go here; kernel WireGuard in a
//!   VM with `--vm`) against the same path in clear over the same link: iperf3 throughput
//!   and round trips; then how long a joining server takes to be every other server's
//!   peer with a route, at 10 and 50 servers (`ferry-mesh-bench`).

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
    /// The agent's DNS server against dnsmasq, unbound and a bare UDP responder (dnsperf).
    Dns {
        /// Runs per server; medians are reported.
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// Seconds of dnsperf per run.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
    },
    /// A connect to a service address through connect4 against a direct connect and an
    /// iptables DNAT rule.
    Connect {
        /// Runs per path; medians are reported.
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// Connections per run.
        #[arg(long, default_value_t = 20_000)]
        connections: u32,
    },
    /// The HTTP ingress against nginx, HAProxy and a direct connection, then the L4 side
    /// (tc program and relay) against HAProxy in TCP mode and a direct connection (wrk).
    Ingress {
        /// Runs per proxy and load; medians are reported.
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// Seconds of wrk per load.
        #[arg(long, default_value_t = 4)]
        seconds: u32,
        /// Which part: `http`, `l4`, or both.
        #[arg(long, value_enum, default_value_t = Part::All)]
        part: Part,
    },
    /// The WireGuard mesh (wireguard-go on this kernel) against plain routing over the
    /// same link: throughput (iperf3) and round-trip latency.
    Mesh {
        /// Runs per path; medians are reported.
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// Seconds of iperf3 per run.
        #[arg(long, default_value_t = 3)]
        seconds: u32,
        /// Also run it inside a VM (the VM tier's kernel, TCG) on kernel WireGuard.
        #[arg(long)]
        vm: bool,
        /// Then the convergence of a joining server, at these server counts.
        #[arg(long, default_value = "10,50")]
        convergence: String,
        /// Servers that join, one after another, at each count.
        #[arg(long, default_value_t = 5)]
        joins: u32,
    },
}

/// Which part of the ingress benchmark runs.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// HTTP: `ferry-ingress-bench`.
    Http,
    /// L4: `ferry-l4-bench`.
    L4,
    /// Both.
    All,
}

/// Runs one benchmark.
pub fn run(options: Options) -> Result<()> {
    match options.which {
        Which::Control { writes, watchers } => control(writes, &watchers),
        Which::Dns { runs, seconds } => {
            build_ebpf::run(build_ebpf::Options::default())?;
            build("ferry-tests", "ferry-dns-bench")?;
            process::run(
                Command::new(workspace::target_dir().join("release/ferry-dns-bench")).args([
                    "--runs",
                    &runs.to_string(),
                    "--seconds",
                    &seconds.to_string(),
                ]),
            )
        }
        Which::Connect { runs, connections } => {
            build_ebpf::run(build_ebpf::Options::default())?;
            build("ferry-tests", "ferry-connect-bench")?;
            process::run(
                Command::new(workspace::target_dir().join("release/ferry-connect-bench")).args([
                    "--runs",
                    &runs.to_string(),
                    "--connections",
                    &connections.to_string(),
                ]),
            )
        }
        Which::Ingress {
            runs,
            seconds,
            part,
        } => {
            build_ebpf::run(build_ebpf::Options::default())?;
            build("ferry-tests", "ferry-ingress-bench")?;
            build("ferry-tests", "ferry-l4-bench")?;
            let flags = [
                "--runs".to_string(),
                runs.to_string(),
                "--seconds".to_string(),
                seconds.to_string(),
            ];
            if part != Part::L4 {
                process::run(
                    Command::new(workspace::target_dir().join("release/ferry-ingress-bench"))
                        .args(&flags),
                )?;
            }
            if part != Part::Http {
                process::run(
                    Command::new(workspace::target_dir().join("release/ferry-l4-bench"))
                        .args(&flags),
                )?;
            }
            Ok(())
        }
        Which::Mesh {
            runs,
            seconds,
            vm,
            convergence,
            joins,
        } => {
            build_ebpf::run(build_ebpf::Options::default())?;
            build("ferry-tests", "ferry-mesh-bench")?;
            let bench = workspace::target_dir().join("release/ferry-mesh-bench");
            let (runs, seconds) = (runs.to_string(), seconds.to_string());
            let mut lines = process::run_tee(Command::new(&bench).args([
                "--runs",
                &runs,
                "--seconds",
                &seconds,
            ]))?;
            if vm {
                // Under TCG every figure is many times slower than on the host; the ratios
                // between the two paths of one run are what the VM tells.
                let args = ["--kernel", "--runs", &runs, "--seconds", &seconds];
                lines.extend(crate::vm::run_program(
                    &bench.canonicalize()?,
                    &args,
                    std::time::Duration::from_secs(1800),
                )?);
            }
            lines.extend(process::run_tee(Command::new(&bench).args([
                "--convergence",
                &convergence,
                "--joins",
                &joins.to_string(),
            ]))?);
            // Every figure once more, together at the end (the VM's `kernel_` ones under
            // TCG: their absolute values are distorted, their ratios are the result).
            println!();
            for line in lines
                .iter()
                .filter(|l| l.starts_with("ratio ") || l.starts_with("metric "))
            {
                println!("{line}");
            }
            Ok(())
        }
    }
}

/// `cargo build --release` of one binary.
fn build(package: &str, bin: &str) -> Result<()> {
    process::run(
        Command::new(workspace::cargo())
            .current_dir(workspace::root())
            .args(["build", "--release", "--package", package, "--bin", bin]),
    )
}

fn control(writes: usize, watchers: &str) -> Result<()> {
    // The tests crate links the agent, which embeds the eBPF object.
    build_ebpf::run(build_ebpf::Options::default())?;
    build("ferry-central", "ferry-central")?;
    build("ferry-tests", "ferry-control-bench")?;
    let release = workspace::target_dir().join("release");
    process::run(
        Command::new(release.join("ferry-control-bench"))
            .env("FERRY_CENTRAL_BIN", release.join("ferry-central"))
            .args(["--writes", &writes.to_string(), "--watchers", watchers]),
    )
}
