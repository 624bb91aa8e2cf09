//! `ferry deploy`: check service.yml here, pack the source, upload it as the next
//! generation.
//!
//! The archive is a gzip-compressed tar with service.yml as its first entry (central reads
//! it without unpacking anything); `.git` is left out.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use ferry_api::{servicefile, types::MAX_SOURCE_BYTES};

/// Packs `dir` into a source archive.
pub fn pack(dir: &Path) -> Result<Vec<u8>> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(encoder);
    tar.follow_symlinks(false);
    tar.append_path_with_name(dir.join("service.yml"), "service.yml")
        .with_context(|| format!("adding {}", dir.join("service.yml").display()))?;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&current)
            .with_context(|| format!("reading {}", current.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading {}", current.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let relative = path.strip_prefix(dir).context("walking the source")?;
            if relative == Path::new("service.yml") || relative == Path::new(".git") {
                continue;
            }
            let kind = entry
                .file_type()
                .with_context(|| format!("reading {}", path.display()))?;
            if kind.is_dir() {
                tar.append_dir(relative, &path)
                    .with_context(|| format!("adding {}", path.display()))?;
                stack.push(path);
            } else {
                tar.append_path_with_name(&path, relative)
                    .with_context(|| format!("adding {}", path.display()))?;
            }
        }
    }
    let archive = tar
        .into_inner()
        .context("finishing the archive")?
        .finish()
        .context("compressing the archive")?;
    if archive.len() as u64 > MAX_SOURCE_BYTES {
        bail!(
            "the source is {} bytes packed; the limit is {MAX_SOURCE_BYTES}; leave build output \
             and dependencies out of {}",
            archive.len(),
            dir.display()
        );
    }
    Ok(archive)
}

/// Reads and checks `dir/service.yml`; prints its warnings; fails on errors.
pub fn check(dir: &Path) -> Result<()> {
    let path = dir.join("service.yml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}; a stack needs a service.yml", path.display()))?;
    match servicefile::parse(&path.display().to_string(), &text) {
        Ok(parsed) => {
            for warning in &parsed.warnings {
                eprintln!("{warning}");
            }
            Ok(())
        }
        Err(err) => bail!("{err}"),
    }
}

/// The stack name to use: the one given, or the directory's name.
pub fn stack_name(given: Option<String>, dir: &Path) -> Result<String> {
    if let Some(name) = given {
        return Ok(name);
    }
    let absolute = dir
        .canonicalize()
        .with_context(|| format!("finding {}", dir.display()))?;
    absolute
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .context("the source directory has no name; pass --stack")
}

/// Waits until generation `number` of `stack` serves or fails (at most 15 minutes).
pub async fn wait(
    client: &ferry_api::client::Client,
    stack: &str,
    number: u64,
) -> Result<ferry_api::types::Phase> {
    use ferry_api::types::Phase;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15 * 60);
    loop {
        let generation = client
            .generations(stack)
            .await?
            .into_iter()
            .find(|g| g.number == number)
            .with_context(|| format!("generation {number} of {stack} disappeared"))?;
        match generation.phase {
            Phase::Serving | Phase::Failed { .. } | Phase::Retired => return Ok(generation.phase),
            Phase::Deploying | Phase::Healthy => {}
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "generation {number} of {stack} is still deploying after 15 minutes; see `ferry stacks list`"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
