//! `package`: the Debian packages of `ferry-agent`, `ferry-central` and `ferry` (the CLI),
//! made by cargo-deb (which setup installs) from each crate's `[package.metadata.deb]`:
//! release binaries, systemd units, `/etc/ferry/agent.toml`, the state directories.
//! They land in `target/debian/`.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result};
use clap::Args;

use crate::{build_ebpf, process, workspace};

/// Options of `package`.
#[derive(Args, Default)]
pub struct Options {}

/// The crates packaged, with the package each makes.
pub const PACKAGES: [(&str, &str); 3] = [
    ("ferry-agent", "ferry-agent"),
    ("ferry-central", "ferry-central"),
    ("ferry-cli", "ferry"),
];

/// Where the packages land.
pub fn dir() -> PathBuf {
    workspace::target_dir().join("debian")
}

/// Builds every package; returns their paths.
pub fn run(_options: Options) -> Result<Vec<PathBuf>> {
    // The agent embeds the kernel programs.
    build_ebpf::run(build_ebpf::Options::default())?;
    let dir = dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut made = Vec::new();
    for (crate_name, _) in PACKAGES {
        let printed = process::output(
            Command::new(workspace::cargo())
                .current_dir(workspace::root())
                .args(["deb", "--package", crate_name, "--output"])
                .arg(&dir),
        )
        .with_context(|| format!("packaging {crate_name}; `./x setup` installs cargo-deb"))?;
        let deb = printed
            .lines()
            .rev()
            .find(|l| l.trim_end().ends_with(".deb"))
            .map(|l| PathBuf::from(l.trim()))
            .with_context(|| format!("cargo deb printed no package path for {crate_name}"))?;
        eprintln!("package: {}", deb.display());
        made.push(deb);
    }
    Ok(made)
}
