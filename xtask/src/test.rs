//! `test`: the tiers, in order. A tier fails when its runner fails or when it ran no test,
//! so a tier that silently lost its tests cannot pass.

use std::process::Command;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};

use crate::{build_ebpf, package, process, setup, vm, workspace};

/// Options of `test`.
#[derive(Args)]
pub struct Options {
    /// Run only this tier.
    tier: Option<Tier>,
}

/// The test tiers, in the order `test` runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Tier {
    /// `cargo fmt --check`, and clippy with `-D warnings` on the host crates and the
    /// kernel programs.
    Lint,
    /// Unit and integration tests that need no privileges.
    Unit,
    /// Privileged tests on this machine's kernel: eBPF, cgroups, namespaces, Docker.
    Host,
    /// Tests inside a QEMU guest running the distribution's kernel.
    Vm,
}

const ALL: [Tier; 4] = [Tier::Lint, Tier::Unit, Tier::Host, Tier::Vm];

/// Runs the chosen tier, or all of them.
pub fn run(options: Options) -> Result<()> {
    // A fresh machine needs only `./x test`: setup first (idempotent, quick when done).
    // It needs root, as the host and VM tiers do; lint and unit alone run without.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        setup::run(setup::Options::default())?;
    } else {
        eprintln!(
            "test: not root, so setup is not run; `sudo ./x setup` installs what the tiers need"
        );
    }
    // Every tier compiles the agent, which embeds the kernel programs.
    build_ebpf::run(build_ebpf::Options::default())?;
    let tiers = match options.tier {
        Some(tier) => vec![tier],
        None => ALL.to_vec(),
    };
    let mut summary = Vec::new();
    for tier in tiers {
        eprintln!("\n== tier {tier:?} ==");
        let passed = match tier {
            Tier::Lint => lint().map(|()| 0)?,
            Tier::Unit => unit()?,
            Tier::Host => host()?,
            Tier::Vm => vm::run_tier()?,
        };
        summary.push((tier, passed));
    }
    eprintln!();
    let mut total = 0;
    for (tier, passed) in &summary {
        match tier {
            Tier::Lint => eprintln!("tier {tier:?}: clean"),
            _ => eprintln!("tier {tier:?}: {passed} passed"),
        }
        total += passed;
    }
    // The plain closing line CI reads; a lint-only run ran no test and claims none.
    if summary.iter().any(|(tier, _)| *tier != Tier::Lint) {
        println!("{total} passed, 0 failed");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut cmd = Command::new(workspace::cargo());
    cmd.current_dir(workspace::root());
    cmd
}

fn lint() -> Result<()> {
    process::run(cargo().args(["fmt", "--all", "--check"]))?;
    process::run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    build_ebpf::clippy()
}

/// Every test of every host crate, except the privileged tiers' integration tests, which
/// live in ferry-tests (its own unit tests run here too).
fn unit() -> Result<usize> {
    let mut lines = process::run_tee(cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "ferry-ebpf",
        "--exclude",
        "ferry-tests",
    ]))?;
    lines.extend(process::run_tee(cargo().args([
        "test",
        "--package",
        "ferry-tests",
        "--lib",
        "--bins",
    ]))?);
    require_tests("unit", &lines)
}

fn host() -> Result<usize> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the host tier loads eBPF programs, creates namespaces and runs dockerd: run it as \
             root (it fails rather than skips, in CI and out)"
        );
    }
    process::run(cargo().args([
        "build",
        "--package",
        "ferry-agent",
        "--package",
        "ferry-central",
    ]))?;
    // host_packages installs these into a scratch root.
    package::run(package::Options::default())?;
    let debug = workspace::target_dir().join("debug");
    let lines = process::run_tee(
        cargo()
            .env("FERRY_AGENT_BIN", debug.join("ferry-agent"))
            .env("FERRY_CENTRAL_BIN", debug.join("ferry-central"))
            .env("FERRY_CLI_BIN", debug.join("ferry"))
            .args(["test", "--package", "ferry-tests", "--test", "host_*"])
            .args(["--", "--test-threads=1"]),
    )?;
    require_tests("host", &lines)
}

/// Sums the `test result: ok. N passed` lines of a cargo test run; zero is a failure.
fn require_tests(tier: &str, lines: &[String]) -> Result<usize> {
    let passed = count_passed(lines);
    if passed == 0 {
        bail!("the {tier} tier ran no test");
    }
    Ok(passed)
}

fn count_passed(lines: &[String]) -> usize {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("test result: ok. "))
        .filter_map(|rest| rest.split(' ').next()?.parse::<usize>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_test_binary() {
        let lines: Vec<String> = [
            "running 2 tests",
            "test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
            "test result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(count_passed(&lines), 7);
    }

    #[test]
    fn a_tier_that_ran_nothing_fails() {
        let lines = vec!["test result: ok. 0 passed; 0 failed".to_string()];
        let err = require_tests("unit", &lines).unwrap_err();
        assert!(err.to_string().contains("ran no test"));
    }
}
