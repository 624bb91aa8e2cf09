//! The Node base image, made locally because no registry is reachable: busybox plus the
//! host's `node` and the shared libraries `ldd` lists, imported with `docker import`.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::StreamExt as _;

use crate::docker::DockerEngine;

const NODE: &str = "/usr/bin/node";
const BUSYBOX: &str = "/bin/busybox";
const REPOSITORY: &str = "ferry/node-base";
/// The DNS clients the discovery tests ask with from inside containers: glibc's resolver
/// (`getent`) and `dig`.
const TOOLS: [&str; 2] = ["/usr/bin/getent", "/usr/bin/dig"];
/// Bumped whenever the image's contents change, so engines with an older one import anew.
const REVISION: u32 = 2;

/// Ensures the base image for the host's node version exists in `engine`; returns its
/// reference. Imports it only when missing.
pub async fn ensure(engine: &DockerEngine) -> Result<String> {
    let version = node_version()?;
    let tag = format!("{version}-r{REVISION}");
    let reference = format!("{REPOSITORY}:{tag}");
    let docker = engine.engine().docker();
    if docker.inspect_image(&reference).await.is_ok() {
        return Ok(reference);
    }
    let tarball = rootfs_tar()?;
    let options = CreateImageOptionsBuilder::new()
        .from_src("-")
        .repo(REPOSITORY)
        .tag(&tag)
        .build();
    let mut progress = docker.create_image(
        Some(options),
        Some(bollard::body_full(tarball.into())),
        None,
    );
    while let Some(step) = progress.next().await {
        step.with_context(|| format!("importing {reference}"))?;
    }
    docker
        .inspect_image(&reference)
        .await
        .with_context(|| format!("{reference} is missing after its import"))?;
    Ok(reference)
}

fn node_version() -> Result<String> {
    let out = Command::new(NODE)
        .arg("--version")
        .output()
        .with_context(|| format!("running {NODE}; install nodejs with `./x setup`"))?;
    let version = String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches('v')
        .to_string();
    if version.is_empty() {
        bail!("{NODE} --version printed nothing");
    }
    Ok(version)
}

/// The files of the image: node, its libraries (and the loader), busybox as /bin/sh.
fn rootfs_tar() -> Result<Vec<u8>> {
    let mut files: BTreeSet<PathBuf> = shared_libraries(Path::new(NODE))?;
    files.insert(PathBuf::from(NODE));
    for tool in TOOLS {
        let path = Path::new(tool);
        if !path.exists() {
            bail!("{tool} is missing; install bind9-dnsutils with `./x setup`");
        }
        files.extend(shared_libraries(path)?);
        files.insert(path.to_path_buf());
    }
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(true);
    for dir in ["tmp", "bin", "etc"] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(if dir == "tmp" { 0o1777 } else { 0o755 });
        header.set_size(0);
        tar.append_data(&mut header, dir, std::io::empty())
            .with_context(|| format!("adding /{dir}"))?;
    }
    for file in &files {
        let inside = file.strip_prefix("/").unwrap_or(file);
        tar.append_path_with_name(file, inside)
            .with_context(|| format!("adding {}", file.display()))?;
    }
    tar.append_path_with_name(BUSYBOX, "bin/busybox")
        .with_context(|| format!("adding {BUSYBOX}; install busybox-static with `./x setup`"))?;
    for applet in ["sh", "cat", "echo", "ls"] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        tar.append_link(&mut header, format!("bin/{applet}"), "busybox")
            .with_context(|| format!("adding /bin/{applet}"))?;
    }
    add_file(&mut tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")?;
    add_file(&mut tar, "etc/nsswitch.conf", b"hosts: files dns\n")?;
    tar.into_inner().context("finishing the image tarball")
}

fn add_file(tar: &mut tar::Builder<Vec<u8>>, path: &str, text: &[u8]) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(text.len() as u64);
    header.set_mode(0o644);
    tar.append_data(&mut header, path, text)
        .with_context(|| format!("adding /{path}"))
}

/// The absolute paths `ldd` prints for `binary`.
fn shared_libraries(binary: &Path) -> Result<BTreeSet<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .with_context(|| format!("running ldd {}", binary.display()))?;
    if !out.status.success() {
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}
