//! The guest's initramfs: busybox, the module closure (decompressed, in modprobe's order),
//! and an init script that makes the host root the guest's own and runs the guest program
//! in it.
//!
//! The host root comes over 9p, read-only, under an overlay whose upper layer is the
//! guest's memory: the guest writes anywhere (its /etc, /var/lib, /tmp) as a server does,
//! and the host sees none of it. What the guest program gets besides its built-in
//! arguments comes from the kernel command line: `ferry.args=a,b` appends words, and
//! `ferry.shared=1` mounts the host folder QEMU shares as `shared` at `/run/shared`, the
//! one place guests of one run can all write.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use super::kernel::Kernel;
use crate::process;

const BUSYBOX: &str = "/bin/busybox";

/// The line init prints before anything else; the KVM trial waits for it.
pub const BOOTED: &str = "ferry-vm: booted";
/// The prefix of the line that carries the guest program's exit code.
pub const EXIT_PREFIX: &str = "ferry-vm-exit: ";

/// Host directories the guest covers with its own mounts (/run must be writable for
/// `ip netns`); the guest program cannot live under them. /tmp is left as the host has it,
/// since CI may clone the workspace there.
const COVERED: [&str; 4] = ["/run", "/proc", "/sys", "/dev"];

/// What the guest runs: a program of the host root, its arguments and environment.
pub struct Guest<'a> {
    /// The program, outside the directories the guest mounts over.
    pub program: &'a Path,
    /// Its first arguments (words without spaces or quotes); `ferry.args=` adds more.
    pub args: &'a [&'a str],
    /// Variables it gets besides init's (plain words as values).
    pub env: &'a [(&'a str, String)],
}

/// Builds `<work>/<name>.cpio` for `kernel` that runs `guest` and powers off.
pub fn build(
    work: &Path,
    name: &str,
    kernel: &Kernel,
    modules: &[&str],
    guest: &Guest,
) -> Result<PathBuf> {
    let plain = |word: &str| {
        !word.is_empty() && !word.contains(|c: char| c.is_whitespace() || "'\"\\$`".contains(c))
    };
    if let Some(arg) = guest.args.iter().find(|a| !plain(a)) {
        bail!("the guest's argument {arg:?} must be one plain word");
    }
    if let Some((var, value)) = guest
        .env
        .iter()
        .find(|(var, value)| !plain(var) || !plain(value))
    {
        bail!("the guest's variable {var}={value:?} must be plain words");
    }
    let guest_program = guest.program;
    if let Some(dir) = COVERED.iter().find(|d| guest_program.starts_with(d)) {
        bail!(
            "the guest program {} is under {dir}, which the guest mounts over; build the \
             workspace elsewhere (or set CARGO_TARGET_DIR)",
            guest_program.display()
        );
    }
    let staging = work.join(name);
    let _ = fs::remove_dir_all(&staging);
    for dir in ["bin", "dev", "proc", "sys", "host", "modules"] {
        fs::create_dir_all(staging.join(dir))
            .with_context(|| format!("creating {}", staging.join(dir).display()))?;
    }
    let busybox = Path::new(BUSYBOX);
    if !busybox.exists() {
        bail!("{BUSYBOX} is missing; install busybox-static (`./x setup`)");
    }
    fs::copy(busybox, staging.join("bin/busybox")).context("copying busybox")?;

    let order = module_closure(kernel, modules)?;
    let mut names = Vec::new();
    for (index, module) in order.iter().enumerate() {
        let stem = module
            .file_name()
            .and_then(|n| n.to_str())
            .map(|n| n.trim_end_matches(".xz").trim_end_matches(".ko"))
            .with_context(|| format!("odd module path {}", module.display()))?;
        let name = format!("{index:02}-{stem}.ko");
        decompress(module, &staging.join("modules").join(&name))?;
        names.push(name);
    }
    fs::write(staging.join("modules/order"), names.join("\n") + "\n")
        .context("writing the module order")?;

    let init = staging.join("init");
    fs::write(&init, init_script(guest)).context("writing init")?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755)).context("chmod init")?;

    let image = work.join(format!("{name}.cpio"));
    let out = fs::File::create(&image).with_context(|| format!("creating {}", image.display()))?;
    let mut cpio = Command::new("sh");
    cpio.current_dir(&staging)
        .args([
            "-c",
            "find . -print0 | cpio --null --create --format=newc --quiet",
        ])
        .stdout(Stdio::from(out));
    process::run(&mut cpio).context("packing the initramfs; is cpio installed? (`./x setup`)")?;
    Ok(image)
}

/// The modules to load, dependencies first, each once (modprobe repeats shared ones).
fn module_closure(kernel: &Kernel, modules: &[&str]) -> Result<Vec<PathBuf>> {
    let text = process::output(
        Command::new("modprobe")
            .arg("-d")
            .arg(&kernel.root)
            .args(["-S", &kernel.release, "--all", "--show-depends"])
            .args(modules),
    )
    .context("resolving module dependencies; is kmod installed? (`./x setup`)")?;
    let mut order: Vec<PathBuf> = Vec::new();
    for line in text.lines() {
        if let Some(path) = line.strip_prefix("insmod ") {
            let path = PathBuf::from(path.trim());
            if !order.contains(&path) {
                order.push(path);
            }
        }
    }
    Ok(order)
}

fn decompress(from: &Path, to: &Path) -> Result<()> {
    if from.extension().is_some_and(|e| e == "xz") {
        let out = fs::File::create(to).with_context(|| format!("creating {}", to.display()))?;
        let mut xz = Command::new("xz");
        xz.arg("-dc").arg(from).stdout(Stdio::from(out));
        let status = xz
            .status()
            .context("running xz; install xz-utils (`./x setup`)")?;
        if !status.success() {
            bail!("xz -dc {} failed: {status}", from.display());
        }
        Ok(())
    } else {
        fs::copy(from, to)
            .map(drop)
            .with_context(|| format!("copying {}", from.display()))
    }
}

fn init_script(guest: &Guest) -> String {
    let exports: String = guest
        .env
        .iter()
        .map(|(var, value)| format!("export {var}={value}\n"))
        .collect();
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "{BOOTED}"
if grep -q ferry.trial=1 /proc/cmdline; then poweroff -f; fi
for m in $(cat /modules/order); do
  insmod /modules/$m || echo "ferry-vm: insmod $m failed"
done
mkdir -p /lower /upper
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 hostroot /lower || echo "ferry-vm: 9p mount failed"
mount -t tmpfs -o size=80% upper /upper
mkdir -p /upper/data /upper/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work /host || echo "ferry-vm: overlay mount failed"
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mount -t tmpfs run /host/run
mount -t cgroup2 cgroup2 /host/sys/fs/cgroup
mount -t bpf bpf /host/sys/fs/bpf
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs shm /host/dev/shm
# Docker keeps its layers with overlayfs, which takes no overlay as its upper layer.
for d in /var/lib/docker /var/lib/ferry-test; do
  mkdir -p /host$d && mount -t tmpfs -o size=80% layers /host$d
done
if grep -q ferry.shared=1 /proc/cmdline; then
  mkdir -p /host/run/shared
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 shared /host/run/shared || echo "ferry-vm: shared mount failed"
fi
MORE=$(sed -n 's/.*ferry.args=\([^ ]*\).*/\1/p' /proc/cmdline | tr , ' ')
# switch_root, not chroot: runc cannot enter a container's mount namespace from a chroot
# ("chdir to cwd ... no such file or directory" on every exec).
{exports}exec switch_root /host /bin/sh -c "{program} {args} $MORE; echo {EXIT_PREFIX}\$?; {BUSYBOX} poweroff -f"
"#,
        program = guest.program.display(),
        args = guest.args.join(" ")
    )
}
