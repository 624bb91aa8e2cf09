//! Fetching and unpacking the distribution's kernel package, without installing it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::process;

/// The meta package whose dependency names the newest 6.12 kernel.
const META_PACKAGE: &str = "linux-image-6.12-amd64";

/// An unpacked kernel package.
pub struct Kernel {
    /// The unpacked tree (`boot/`, `lib/modules/<release>/`).
    pub root: PathBuf,
    /// The kernel release, e.g. `6.12.117+deb12-amd64`.
    pub release: String,
    /// The kernel image.
    pub vmlinuz: PathBuf,
}

/// Downloads (once) and unpacks (once) the kernel package into `work`.
pub fn fetch(work: &Path) -> Result<Kernel> {
    let package = resolve_package()?;
    let release = package
        .strip_prefix("linux-image-")
        .with_context(|| format!("unexpected kernel package name {package}"))?
        .to_string();
    let root = work.join(format!("kernel-{release}"));
    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.exists() {
        let deb = download(work, &package)?;
        let staging = work.join(format!("kernel-{release}.partial"));
        let _ = std::fs::remove_dir_all(&staging);
        process::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&staging))?;
        std::fs::rename(&staging, &root)
            .with_context(|| format!("moving {} to {}", staging.display(), root.display()))?;
    }
    if !vmlinuz.exists() {
        bail!("the package {package} has no {}", vmlinuz.display());
    }
    let modules = root.join("lib/modules").join(&release);
    if !modules.join("modules.dep").exists() {
        process::run(Command::new("depmod").arg("-b").arg(&root).arg(&release))
            .context("depmod failed; is kmod installed? (`./x setup`)")?;
    }
    eprintln!("vm: kernel {release}");
    Ok(Kernel {
        root,
        release,
        vmlinuz,
    })
}

/// Names the concrete kernel package, e.g. `linux-image-6.12.117+deb12-amd64`. Refreshes
/// apt's lists once if they do not know the meta package yet (a fresh machine).
fn resolve_package() -> Result<String> {
    let ask = || process::output(Command::new("apt-cache").args(["depends", META_PACKAGE]));
    let depends = match ask() {
        Ok(depends) => depends,
        Err(_) => {
            process::run(Command::new("apt-get").args(["update", "-q"]))
                .context("apt-get update failed; the distribution's mirror must be reachable")?;
            ask().context("apt knows no 6.12 kernel package even after apt-get update")?
        }
    };
    depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-6.12.") && p.ends_with("-amd64"))
        .map(str::to_string)
        .with_context(|| format!("apt names no kernel package for {META_PACKAGE}:\n{depends}"))
}

/// Downloads the .deb into `work` unless it is there.
fn download(work: &Path, package: &str) -> Result<PathBuf> {
    let find = || -> Option<PathBuf> {
        std::fs::read_dir(work)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
    };
    if let Some(deb) = find() {
        return Ok(deb);
    }
    eprintln!("vm: downloading {package} (cached in {})", work.display());
    process::run(
        Command::new("apt-get")
            .current_dir(work)
            .args(["download", package]),
    )
    .context("apt-get download failed")?;
    find().with_context(|| {
        format!(
            "apt-get download left no {package}_*.deb in {}",
            work.display()
        )
    })
}
