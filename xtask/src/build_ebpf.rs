//! Building the kernel programs for `bpfel-unknown-none`.
//!
//! Not aya-build: it fixes the rustflags, and ferry's programs need BPF cpu v3 (the first
//! ISA with fetching atomics, used by the round-robin cursor). The agent's build script
//! embeds the object from here and refuses a missing or stale one.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{process, workspace};

/// Options of `build-ebpf`.
#[derive(Args, Default)]
pub struct Options {}

/// The package holding the kernel programs.
const PACKAGE: &str = "ferry-ebpf";
const TARGET: &str = "bpfel-unknown-none";

/// Where the object lands; agent/build.rs reads the same path.
pub fn object_path() -> PathBuf {
    workspace::target_dir()
        .join("ebpf")
        .join(TARGET)
        .join("release")
        .join(PACKAGE)
}

/// Builds the eBPF object.
pub fn run(_options: Options) -> Result<()> {
    check_linker()?;
    // rustc joins these with 0x1f; they reach only this build, not the host crates.
    let rustflags = ["-Cdebuginfo=2", "-Clink-arg=--btf", "-Ctarget-cpu=v3"].join("\x1f");
    process::run(
        bpf_cargo("build", "ebpf")
            .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
            .arg("--release"),
    )?;
    let object = object_path();
    let size = std::fs::metadata(&object)
        .with_context(|| {
            format!(
                "the build reported success but {} is missing",
                object.display()
            )
        })?
        .len();
    eprintln!("eBPF object: {} ({size} bytes)", object.display());
    Ok(())
}

/// Runs clippy on the kernel programs, for their own target.
pub fn clippy() -> Result<()> {
    process::run(bpf_cargo("clippy", "ebpf-clippy").args(["--", "-D", "warnings"]))
}

/// `cargo <subcommand>` of the kernel programs for the BPF target, in its own target dir.
fn bpf_cargo(subcommand: &str, target_dir: &str) -> Command {
    let mut cmd = Command::new(workspace::cargo());
    cmd.current_dir(workspace::root())
        // build-std needs unstable flags; this lets the pinned stable toolchain take them,
        // for this build only.
        .env("RUSTC_BOOTSTRAP", "1")
        .env_remove("RUSTFLAGS")
        .args([subcommand, "--package", PACKAGE, "--target", TARGET])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(workspace::target_dir().join(target_dir));
    cmd
}

fn check_linker() -> Result<()> {
    let version = Command::new("bpf-linker").arg("--version").output();
    match version {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            if !text.contains(" 0.13.") {
                bail!(
                    "bpf-linker is {} but ferry needs 0.13 built for LLVM 22; run `./x setup`",
                    text.trim()
                );
            }
            Ok(())
        }
        _ => bail!("bpf-linker is not on PATH; run `./x setup` to build it against LLVM 22"),
    }
}
