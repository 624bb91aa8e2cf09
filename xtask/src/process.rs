//! Running external commands: each is echoed before it runs, and every failure carries the
//! command line.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// The command line, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let _ = write!(line, " {}", arg.to_string_lossy());
    }
    line
}

/// Runs `cmd` with inherited stdio and fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    eprintln!("+ {line}");
    let status = cmd.status().with_context(|| format!("starting `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed: {status}");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout; fails with its stderr unless it exits 0.
pub fn output(cmd: &mut Command) -> Result<String> {
    let line = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd`, echoing its stdout line by line, and returns the lines; fails unless it
/// exits 0. Used where the caller must read what a test runner printed.
pub fn run_tee(cmd: &mut Command) -> Result<Vec<String>> {
    let line = describe(cmd);
    eprintln!("+ {line}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{line}`"))?;
    let mut lines = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        for l in BufReader::new(stdout).lines() {
            let l = l.with_context(|| format!("reading the output of `{line}`"))?;
            println!("{l}");
            lines.push(l);
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed: {status}");
    }
    Ok(lines)
}
