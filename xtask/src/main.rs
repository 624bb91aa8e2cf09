//! `cargo xtask`: everything around the crates that cargo alone does not do.
//!
//! # Layout
//! - `bench`: the benchmarks, each against a peer in the same run.
//! - `setup`: install and check what the build and the test tiers need.
//! - `build_ebpf`: build the kernel programs the agent embeds.
//! - `test`: the tiers (lint, unit, host, vm), alone or in order.
//! - `vm`: the VM tier: a distribution kernel booted under QEMU.
//! - `demo`: ferry's main job on this machine, left running; `demo down` removes it.
//! - `package`: the Debian packages (cargo-deb).
//! - `mounts`: reading the mount table.
//! - `process`: running external commands with their command line in every error.
//! - `workspace`: paths of the workspace.

mod bench;
mod build_ebpf;
mod demo;
mod mounts;
mod package;
mod process;
mod setup;
mod test;
mod vm;
mod workspace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// ferry's developer tasks.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the packages, linker and mounts the build and the test tiers need (idempotent).
    Setup(setup::Options),
    /// Build the eBPF objects the agent embeds.
    BuildEbpf(build_ebpf::Options),
    /// Run the test tiers: lint, unit, host, vm (all of them, in order, by default).
    Test(test::Options),
    /// Run the VM tier alone: kernel WireGuard inside a QEMU guest.
    Vm(vm::Options),
    /// Run the main job here (central, an agent, the example stack deployed, redeployed
    /// under load, rolled back) and leave it running; `demo down` removes it.
    Demo(demo::Options),
    /// Build the Debian packages of ferry-agent, ferry-central and ferry into target/debian.
    Package(package::Options),
    /// Run a benchmark; it ends with `ratio NAME = X.XX` and `metric NAME = V UNIT` lines.
    Bench(bench::Options),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Setup(options) => setup::run(options),
        Command::BuildEbpf(options) => build_ebpf::run(options),
        Command::Test(options) => test::run(options),
        Command::Vm(options) => vm::run(options),
        Command::Demo(options) => demo::run(options),
        Command::Bench(options) => bench::run(options),
        Command::Package(options) => package::run(options).map(drop),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
