//! Booting the guest under QEMU and reading its serial console.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
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
        let machine = Machine {
            cmdline: "ferry.trial=1".into(),
            ..Machine::default()
        };
        let trial = run_qemu(
            kernel,
            image,
            Accel::Kvm,
            &machine,
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

/// A guest's machine, besides its kernel and initramfs.
pub struct Machine {
    /// What its console lines are prefixed with when echoed (empty: nothing).
    pub label: String,
    /// Its memory in MiB; the guest's writes to its root live there too.
    pub memory_mib: u32,
    /// Its virtual CPUs.
    pub cpus: u32,
    /// More words for the kernel command line (`ferry.args=...`, say).
    pub cmdline: String,
    /// A network card joined to another guest's.
    pub link: Option<Link>,
    /// A host folder the guest mounts writable (with `ferry.shared=1`).
    pub shared: Option<PathBuf>,
}

impl Default for Machine {
    fn default() -> Self {
        Self {
            label: String::new(),
            memory_mib: 1024,
            cpus: 2,
            cmdline: String::new(),
            link: None,
            shared: None,
        }
    }
}

/// A virtio network card whose frames go, as datagrams on a Unix socket of the host, to
/// the guest bound at `remote`: a wire between two guests that touches no host interface.
pub struct Link {
    /// This guest's end.
    pub local: PathBuf,
    /// The other guest's end.
    pub remote: PathBuf,
    /// The card's MAC address.
    pub mac: String,
}

/// Boots the guest and waits for it to power off, killing it after `timeout`.
pub fn boot(
    kernel: &Kernel,
    image: &Path,
    accel: Accel,
    machine: &Machine,
    timeout: Duration,
) -> Result<Run> {
    run_qemu(kernel, image, accel, machine, timeout, true)
}

fn run_qemu(
    kernel: &Kernel,
    image: &Path,
    accel: Accel,
    machine: &Machine,
    timeout: Duration,
    echo: bool,
) -> Result<Run> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-machine", "q35", "-m", &machine.memory_mib.to_string()])
        .args([
            "-smp",
            &machine.cpus.to_string(),
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
            &format!("console=ttyS0 panic=-1 loglevel=4 {}", machine.cmdline),
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ]);
    if let Some(link) = &machine.link {
        // A socket left by an earlier run would keep QEMU from binding.
        let _ = std::fs::remove_file(&link.local);
        cmd.args([
            "-netdev",
            &format!(
                "dgram,id=link,local.type=unix,local.path={},remote.type=unix,remote.path={}",
                link.local.display(),
                link.remote.display()
            ),
            "-device",
            &format!("virtio-net-pci,netdev=link,mac={}", link.mac),
        ]);
    }
    if let Some(shared) = &machine.shared {
        cmd.args([
            "-virtfs",
            &format!(
                "local,path={},mount_tag=shared,security_model=none,multidevs=remap",
                shared.display()
            ),
        ]);
    }
    cmd.stdin(Stdio::null())
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
                    println!("{}{l}", machine.label);
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
