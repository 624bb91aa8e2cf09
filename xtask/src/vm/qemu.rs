//! Booting the guest under QEMU and reading its serial console.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{
    initramfs::{BOOTED, EXIT_PREFIX},
    kernel::Kernel,
};
use crate::process;

/// How the CPU is emulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// What a boot printed and how it ended.
pub struct Run {
    /// Every console line.
    pub lines: Vec<String>,
    /// The guest program's exit code, if the guest got to report it.
    pub exit_code: Option<i32>,
}

impl Run {
    /// The guest's `N passed, M failed` line, as numbers (0, 0 if it printed none).
    pub fn counts(&self) -> (usize, usize) {
        self.lines
            .iter()
            .rev()
            .find_map(|l| parse_counts(l))
            .unwrap_or((0, 0))
    }

    /// The last `n` console lines.
    pub fn tail(&self, n: usize) -> String {
        let start = self.lines.len().saturating_sub(n);
        self.lines[start..].join("\n")
    }
}

fn parse_counts(line: &str) -> Option<(usize, usize)> {
    let (passed, rest) = line.trim().split_once(" passed, ")?;
    let failed = rest.strip_suffix(" failed")?;
    Some((passed.parse().ok()?, failed.parse().ok()?))
}

/// TCG unless a short trial boot proves KVM works here; the verdict is cached in `work`.
pub fn choose_accel(work: &Path, kernel: &Kernel, image: &Path) -> Result<Accel> {
    let cache = work.join("accel");
    if let Ok(text) = std::fs::read_to_string(&cache) {
        match text.trim() {
            "kvm" => return Ok(Accel::Kvm),
            "tcg" => return Ok(Accel::Tcg),
            _ => {}
        }
    }
    let accel = if Path::new("/dev/kvm").exists() {
        let trial = run_qemu(
            kernel,
            image,
            Accel::Kvm,
            "ferry.trial=1",
            Duration::from_secs(20),
            false,
        );
        match trial {
            Ok(run) if run.lines.iter().any(|l| l.contains(BOOTED)) => Accel::Kvm,
            _ => Accel::Tcg,
        }
    } else {
        Accel::Tcg
    };
    eprintln!(
        "vm: using {accel:?} (trial boot decides; cached in {})",
        cache.display()
    );
    std::fs::write(&cache, if accel == Accel::Kvm { "kvm" } else { "tcg" })
        .with_context(|| format!("writing {}", cache.display()))?;
    Ok(accel)
}

/// Boots the guest and waits for it to power off, killing it after `timeout`.
pub fn boot(kernel: &Kernel, image: &Path, accel: Accel, timeout: Duration) -> Result<Run> {
    run_qemu(kernel, image, accel, "", timeout, true)
}

fn run_qemu(
    kernel: &Kernel,
    image: &Path,
    accel: Accel,
    extra_cmdline: &str,
    timeout: Duration,
    echo: bool,
) -> Result<Run> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-machine",
        "q35",
        "-m",
        "1024",
        "-smp",
        "2",
        "-nodefaults",
        "-no-reboot",
    ])
    .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
    .args(["-accel", if accel == Accel::Kvm { "kvm" } else { "tcg" }])
    .arg("-kernel")
    .arg(&kernel.vmlinuz)
    .arg("-initrd")
    .arg(image)
    .args([
        "-append",
        &format!("console=ttyS0 panic=-1 loglevel=4 {extra_cmdline}"),
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let line = process::describe(&cmd);
    if echo {
        eprintln!("+ {line}");
    }
    let mut child = cmd.spawn().with_context(|| {
        format!("starting `{line}`; is qemu-system-x86 installed? (`./x setup`)")
    })?;
    let (tx, rx) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
    }
    if let Some(stderr) = child.stderr.take() {
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(format!("qemu: {l}"));
            }
        });
    }
    let deadline = Instant::now() + timeout;
    let mut lines = Vec::new();
    let mut exit_code = None;
    let mut timed_out = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => {
                // The serial console ends lines with \r\n.
                let l = l.trim_end_matches('\r').to_string();
                if echo {
                    println!("{l}");
                }
                if let Some(code) = l.strip_prefix(EXIT_PREFIX) {
                    exit_code = code.trim().parse().ok();
                }
                lines.push(l);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if Instant::now() > deadline {
            timed_out = true;
            let _ = child.kill();
            break;
        }
    }
    let _ = child.wait();
    if timed_out {
        lines.push(format!(
            "ferry-vm: guest killed after {}s",
            timeout.as_secs()
        ));
    }
    Ok(Run { lines, exit_code })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_guest_summary_line() {
        assert_eq!(parse_counts("3 passed, 0 failed"), Some((3, 0)));
        assert_eq!(parse_counts("[  1.2] random kernel line"), None);
        let run = Run {
            lines: vec![
                "ok 1 - x".into(),
                "1 passed, 1 failed".into(),
                "ferry-vm-exit: 1".into(),
            ],
            exit_code: Some(1),
        };
        assert_eq!(run.counts(), (1, 1));
        assert_eq!(run.tail(1), "ferry-vm-exit: 1");
    }
}
