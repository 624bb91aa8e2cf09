//! `demo`: ferry's main job on this machine (see `ferry_tests::demo`): setup when it has
//! not been done, the eBPF objects and the binaries built, then `ferry-demo up`, which
//! leaves the example stack running; `demo down` removes all of it.

use std::process::Command;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

use crate::{process, setup, workspace};

/// Options of `demo`.
#[derive(Args)]
pub struct Options {
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(Subcommand)]
enum Action {
    /// Remove everything the demo made: containers, images, the network, the processes,
    /// pins, the WireGuard link, its dockerd if it started one, state directories.
    Down,
}

/// Runs the demo, or removes it.
pub fn run(options: Options) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo loads eBPF programs and runs containers: run it as root");
    }
    let verb = match options.action {
        Some(Action::Down) => "down",
        None => {
            // Idempotent: quick when done. It builds the eBPF objects and the agent too.
            setup::run(setup::Options::default())?;
            "up"
        }
    };
    process::run(
        Command::new(workspace::cargo())
            .current_dir(workspace::root())
            .args([
                "build",
                "--package",
                "ferry-agent",
                "--package",
                "ferry-central",
            ])
            .args([
                "--package",
                "ferry-cli",
                "--package",
                "ferry-tests",
                "--bin",
            ])
            .args([
                "ferry-agent",
                "--bin",
                "ferry-central",
                "--bin",
                "ferry",
                "--bin",
            ])
            .arg("ferry-demo"),
    )?;
    let demo = workspace::target_dir().join("debug/ferry-demo");
    process::run(Command::new(demo).arg(verb))
}
