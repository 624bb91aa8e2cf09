//! The VM tier: the distribution's kernel (which has WireGuard as a module, unlike this
//! machine's) booted under QEMU with a busybox initramfs. The guest takes the host root
//! (over 9p, its writes kept in its own memory) and runs a test program from it; results
//! come back as lines on the serial console plus an exit code. Two stages: one guest
//! checks the mesh's kernel WireGuard verbs between namespaces, then two guests are two
//! servers of one cluster ([`cluster`]).

mod cluster;
mod initramfs;
mod kernel;
mod qemu;

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{process, workspace};

/// Options of `vm`.
#[derive(Args)]
pub struct Options {
    /// Seconds before a guest that has not powered off is killed.
    #[arg(long, default_value_t = 1200)]
    timeout: u64,
    /// Run only this stage.
    #[arg(long)]
    only: Option<Stage>,
}

/// The VM tier's stages, in the order it runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// One guest: the mesh's kernel WireGuard verbs between namespaces.
    Mesh,
    /// Two guests, two servers of one cluster: the whole system across them.
    Cluster,
}

/// The modules the guest loads, with their dependencies resolved by modprobe: the host
/// root's transport, WireGuard, the guests' network card, and what Docker needs (overlay
/// for its layers, bridge for the containers' network).
const MODULES: &[&str] = &[
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "veth",
    "wireguard",
    "virtio_net",
    "overlay",
    "bridge",
];

/// Runs the VM tier alone.
pub fn run(options: Options) -> Result<()> {
    let passed = run_with(Duration::from_secs(options.timeout), options.only)?;
    eprintln!("vm: {passed} passed");
    Ok(())
}

/// Runs the VM tier as part of `test`; returns how many guest tests passed.
pub fn run_tier() -> Result<usize> {
    run_with(Duration::from_secs(1200), None)
}

fn run_with(timeout: Duration, only: Option<Stage>) -> Result<usize> {
    let work = workspace::target_dir().join("vm");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let kernel = kernel::fetch(&work)?;
    let built = build_guests()?;
    let guest = initramfs::Guest {
        program: &built.join("ferry-vm-guest"),
        args: &[],
        env: &[],
    };
    let image = initramfs::build(&work, "initramfs", &kernel, MODULES, &guest)?;
    let accel = qemu::choose_accel(&work, &kernel, &image)?;
    let mut passed = 0;
    if only.is_none_or(|stage| stage == Stage::Mesh) {
        let run = qemu::boot(&kernel, &image, accel, &qemu::Machine::default(), timeout)?;
        passed += passed_of("the mesh guest", &run)?;
    }
    if only.is_none_or(|stage| stage == Stage::Cluster) {
        passed += cluster::run(&work, &kernel, accel, &built, timeout)?;
    }
    Ok(passed)
}

/// How many checks `run` passed; an error unless it passed some, failed none and exited 0.
fn passed_of(guest: &str, run: &qemu::Run) -> Result<usize> {
    let (passed, failed) = run.counts();
    if run.exit_code != Some(0) || failed > 0 || passed == 0 {
        bail!(
            "the VM tier failed in {guest}: exit code {:?}, {passed} passed, {failed} failed\n\
             --- console tail ---\n{}",
            run.exit_code,
            run.tail(40)
        );
    }
    Ok(passed)
}

/// Boots a guest that runs `program` (from the host root, so built outside the directories
/// the guest mounts over) with `args`, and returns its console lines once it powered off
/// with exit code 0.
pub fn run_program(
    program: &std::path::Path,
    args: &[&str],
    timeout: Duration,
) -> Result<Vec<String>> {
    let work = workspace::target_dir().join("vm");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let kernel = kernel::fetch(&work)?;
    let guest = initramfs::Guest {
        program,
        args,
        env: &[],
    };
    let image = initramfs::build(&work, "initramfs", &kernel, MODULES, &guest)?;
    let accel = qemu::choose_accel(&work, &kernel, &image)?;
    let run = qemu::boot(&kernel, &image, accel, &qemu::Machine::default(), timeout)?;
    if run.exit_code != Some(0) {
        bail!(
            "{} in the guest failed: exit code {:?}\n--- console tail ---\n{}",
            program.display(),
            run.exit_code,
            run.tail(40)
        );
    }
    Ok(run.lines)
}

/// Builds the guests' test programs and the binaries the cluster's guests run (agent,
/// central, CLI); returns the folder holding them. The guests run them from the host root.
fn build_guests() -> Result<PathBuf> {
    process::run(
        Command::new(workspace::cargo())
            .current_dir(workspace::root())
            .args(["build", "--package", "ferry-tests"])
            .args(["--bin", "ferry-vm-guest", "--bin", "ferry-vm-cluster"])
            .args(["--package", "ferry-agent", "--package", "ferry-central"])
            .args(["--package", "ferry-cli"]),
    )?;
    let path = workspace::target_dir().join("debug");
    path.canonicalize().with_context(|| {
        format!(
            "the guest programs' folder {} was not built",
            path.display()
        )
    })
}
