//! `ferry deploy`: check service.yml here, pack the source, upload it as the next
//! generation.
//!
//! The archive is a gzip-compressed tar with service.yml as its first entry (central reads
//! it without unpacking anything); `node_modules/`, `.git/` and what `.dockerignore` names
//! are left out (see `dockerignore`).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::dockerignore::Ignore;
use ferry_api::{
    client::{Client, ClientError},
    keys, servicefile,
    types::{MAX_SOURCE_BYTES, Phase, ProgressReport, StatusReport},
};

/// Packed archives above this size get a list of their largest parts.
const BIG: usize = 10 << 20;

/// Packs `dir` into a source archive, leaving out what `ignore` says. Says how big it is,
/// and when it is big, what takes the room.
pub fn pack(dir: &Path, ignore: &Ignore) -> Result<Vec<u8>> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(encoder);
    tar.follow_symlinks(false);
    tar.append_path_with_name(dir.join("service.yml"), "service.yml")
        .with_context(|| format!("adding {}", dir.join("service.yml").display()))?;
    // Bytes by the first two levels of their path, to name the largest parts.
    let mut sizes: BTreeMap<PathBuf, u64> = BTreeMap::new();
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
            if relative == Path::new("service.yml") || ignore.excludes(relative) {
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
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                *sizes.entry(relative.iter().take(2).collect()).or_default() += size;
            }
        }
    }
    let archive = tar
        .into_inner()
        .context("finishing the archive")?
        .finish()
        .context("compressing the archive")?;
    let largest = || {
        let total: u64 = sizes.values().sum();
        let mut parts: Vec<_> = sizes.iter().filter(|(_, s)| **s * 100 >= total).collect();
        parts.sort_by(|a, b| b.1.cmp(a.1));
        parts
            .iter()
            .take(5)
            .map(|(p, s)| format!("{} ({})", p.display(), megabytes(**s)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if archive.len() as u64 > MAX_SOURCE_BYTES {
        bail!(
            "the source is {} packed; the limit is {}. The largest parts: {}. Leave build \
             output and data out with a .dockerignore in {}",
            megabytes(archive.len() as u64),
            megabytes(MAX_SOURCE_BYTES),
            largest(),
            dir.display()
        );
    }
    if archive.len() > BIG {
        eprintln!(
            "the source is {} packed; the largest parts: {}. Leave out what the app does not \
             need with a .dockerignore",
            megabytes(archive.len() as u64),
            largest()
        );
    }
    Ok(archive)
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// Reads and checks `dir/service.yml` and plans its services from what the upload will
/// hold (`ignore`); prints warnings and plans; fails on errors.
pub fn check(dir: &Path, ignore: &Ignore) -> Result<()> {
    let path = dir.join("service.yml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}; a stack needs a service.yml", path.display()))?;
    match servicefile::parse(&path.display().to_string(), &text) {
        Ok(parsed) => {
            for warning in &parsed.warnings {
                eprintln!("{warning}");
            }
            let (plans, warnings) = crate::apps::check(dir, &parsed.stack, ignore)?;
            for line in warnings.iter().chain(&plans) {
                eprintln!("{line}");
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

/// Waits until generation `number` of `stack` serves or fails (at most 15 minutes),
/// printing each server's progress as its containers start and its report arrives.
pub async fn wait(client: &Client, stack: &str, number: u64, progress: bool) -> Result<Phase> {
    let deadline = Instant::now() + Duration::from_secs(15 * 60);
    let mut seen = Seen::default();
    let mut unreachable_since: Option<Instant> = None;
    loop {
        // Central restarting is no reason to give up on a deploy that goes on without us.
        let polled = async {
            // The phase first, then the progress: the report that settles a generation
            // commits with its flip, so progress read after a terminal phase holds every
            // server's report (read the other way round, the last one could be missed).
            let generations = client.generations(stack).await?;
            let lines = if progress {
                progress_lines(client, stack, number, &mut seen).await?
            } else {
                Vec::new()
            };
            Ok::<_, anyhow::Error>((lines, generations))
        }
        .await;
        let (lines, generations) = match polled {
            Ok(polled) => {
                unreachable_since = None;
                polled
            }
            Err(e) if is_transport(&e) => {
                let since = *unreachable_since.get_or_insert_with(|| {
                    eprintln!("central is unreachable ({e:#}); still waiting");
                    Instant::now()
                });
                if since.elapsed() > Duration::from_secs(120) {
                    return Err(e.context("central has been unreachable for 2 minutes"));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        for line in lines {
            println!("  {line}");
        }
        let generation = generations
            .into_iter()
            .find(|g| g.number == number)
            .with_context(|| format!("generation {number} of {stack} disappeared"))?;
        match generation.phase {
            Phase::Serving | Phase::Failed { .. } | Phase::Retired => return Ok(generation.phase),
            Phase::Deploying | Phase::Healthy => {}
        }
        if Instant::now() > deadline {
            bail!(
                "generation {number} of {stack} is still deploying after 15 minutes; see `ferry stacks list`"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn is_transport(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<ClientError>(),
        Some(ClientError::Transport { .. })
    )
}

/// What happened since the last call: containers started, servers reported.
/// What `ferry deploy` has printed already.
#[derive(Default)]
struct Seen {
    /// Containers and reports shown once.
    once: BTreeSet<String>,
    /// Progress lines shown, by record.
    lines: BTreeMap<String, u64>,
}

async fn progress_lines(
    client: &Client,
    stack: &str,
    number: u64,
    seen: &mut Seen,
) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let ours = |key: &str, prefix: &str| {
        keys::per_server_generation(prefix, key)
            .filter(|(_, of, n)| *of == stack && *n == number)
            .map(|(server, _, _)| server.to_string())
    };
    // What each server's agent shows of its build and deploy_command, each line once.
    for item in client.list(keys::PROGRESS).await?.items {
        let Some(server) = ours(&item.key, keys::PROGRESS) else {
            continue;
        };
        let report: ProgressReport = serde_json::from_value(item.value)
            .with_context(|| format!("central's record at {}", item.key))?;
        let printed = seen.lines.entry(item.key.clone()).or_default();
        let first = report.total - report.lines.len() as u64;
        if *printed < first {
            lines.push(format!(
                "{server}: ... {} lines not shown",
                first - *printed
            ));
            *printed = first;
        }
        for line in report.lines.iter().skip((*printed - first) as usize) {
            lines.push(format!("{server}: {line}"));
        }
        *printed = report.total;
    }
    for (server, containers) in client.containers().await? {
        for c in containers {
            // Once per state: `starting`, then `running` once its check passed.
            let state_seen = format!("{} {}", c.id, c.state);
            if c.stack == stack && c.generation == number && seen.once.insert(state_seen) {
                let address = c.address.map_or("no address".into(), |a| a.to_string());
                lines.push(format!("{server}: {} {} ({address})", c.service, c.state));
            }
        }
    }
    for item in client.list(keys::STATUS).await?.items {
        let Some(server) = ours(&item.key, keys::STATUS) else {
            continue;
        };
        if !seen.once.insert(item.key.clone()) {
            continue;
        }
        let report: StatusReport = serde_json::from_value(item.value)
            .with_context(|| format!("central's record at {}", item.key))?;
        lines.push(if report.healthy {
            format!("{server}: every container passed its health check")
        } else {
            format!("{server}: failed")
        });
    }
    Ok(lines)
}

/// Waits until no container of generation `old` of `stack` is left on any server but those
/// a later generation kept (`restart_on_deploy: false`). Returns (removed, kept).
pub async fn wait_stopped(client: &Client, stack: &str, old: u64) -> Result<(usize, usize)> {
    let deadline = Instant::now() + Duration::from_secs(15 * 60);
    let mut most = 0;
    loop {
        let reports = client.containers().await?;
        let of_old: Vec<_> = reports
            .values()
            .flatten()
            .filter(|c| c.stack == stack && c.generation == old)
            .collect();
        let kept = of_old
            .iter()
            .filter(|c| c.serves.iter().any(|g| *g > old))
            .count();
        let left = of_old.len() - kept;
        most = most.max(left);
        if left == 0 {
            return Ok((most, kept));
        }
        if Instant::now() > deadline {
            bail!(
                "{left} containers of generation {old} of {stack} still run after 15 minutes; \
                 see `ferry containers list`"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
