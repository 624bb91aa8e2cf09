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
    workspace::target_dir().join("ebpf").join(TARGET).join("release").join(PACKAGE)
}

/// Builds the eBPF object.
pub fn run(_options: Options) -> Result<()> {
    check_linker()?;
    // rustc joins these with 0x1f; they reach only this build, not the host crates.
    let rustflags = ["-Cdebuginfo=2", "-Clink-arg=--btf", "-Ctarget-cpu=v3"].join("\x1f");
    let target_dir = workspace::target_dir().join("ebpf");
    process::run(
        Command::new(workspace::cargo())
            .current_dir(workspace::root())
            .env("RUSTC_BOOTSTRAP", "1")
            .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
            .env_remove("RUSTFLAGS")
            .args(["build", "--package", PACKAGE, "--release", "--target", TARGET])
            .args(["-Z", "build-std=core", "--target-dir"])
            .arg(&target_dir),
    )?;
    let object = object_path();
    let size = std::fs::metadata(&object)
        .with_context(|| format!("the build reported success but {} is missing", object.display()))?
        .len();
    eprintln!("eBPF object: {} ({size} bytes)", object.display());
    Ok(())
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
