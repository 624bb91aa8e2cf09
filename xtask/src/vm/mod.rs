//! The VM tier: the distribution's kernel (which has WireGuard as a module, unlike this
//! machine's) booted under QEMU with a busybox initramfs. The guest mounts the host root
//! read-only over 9p and runs a test program from it; results come back as lines on the
//! serial console plus an exit code.

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
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

/// The modules the guest loads, with their dependencies resolved by modprobe.
const MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "veth", "wireguard"];

/// Runs the VM tier alone.
pub fn run(options: Options) -> Result<()> {
    let passed = run_with(Duration::from_secs(options.timeout))?;
    eprintln!("vm: {passed} passed");
    Ok(())
}

/// Runs the VM tier as part of `test`; returns how many guest tests passed.
pub fn run_tier() -> Result<usize> {
    run_with(Duration::from_secs(600))
}

fn run_with(timeout: Duration) -> Result<usize> {
    let work = workspace::target_dir().join("vm");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let kernel = kernel::fetch(&work)?;
    let guest = build_guest()?;
    let image = initramfs::build(&work, &kernel, MODULES, &guest, &[])?;
    let accel = qemu::choose_accel(&work, &kernel, &image)?;
    let run = qemu::boot(&kernel, &image, accel, timeout)?;
    let (passed, failed) = run.counts();
    if run.exit_code != Some(0) || failed > 0 || passed == 0 {
        bail!(
            "the VM tier failed: guest exit code {:?}, {passed} passed, {failed} failed\n\
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
    let image = initramfs::build(&work, &kernel, MODULES, program, args)?;
    let accel = qemu::choose_accel(&work, &kernel, &image)?;
    let run = qemu::boot(&kernel, &image, accel, timeout)?;
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

/// Builds the guest test program; the guest runs it from the host root it mounts.
fn build_guest() -> Result<PathBuf> {
    process::run(
        Command::new(workspace::cargo())
            .current_dir(workspace::root())
            .args([
                "build",
                "--package",
                "ferry-tests",
                "--bin",
                "ferry-vm-guest",
            ]),
    )?;
    let path = workspace::target_dir().join("debug/ferry-vm-guest");
    let path = path
        .canonicalize()
        .with_context(|| format!("the guest program {} was not built", path.display()))?;
    Ok(path)
}
