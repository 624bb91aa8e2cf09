//! Reading `/proc/self/mounts`.

use std::path::PathBuf;

use anyhow::{Context as _, Result};

/// (mount point, filesystem type) of every mount.
fn entries() -> Result<Vec<(PathBuf, String)>> {
    let text = std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            Some((PathBuf::from(target), fstype.to_string()))
        })
        .collect())
}

/// The first mount point of filesystem type `fstype`.
pub fn first_of_type(fstype: &str) -> Result<Option<PathBuf>> {
    Ok(entries()?
        .into_iter()
        .find(|(_, t)| t == fstype)
        .map(|(p, _)| p))
}

/// Whether a filesystem of type `fstype` is mounted exactly at `path`.
pub fn is_mounted_at(path: &str, fstype: &str) -> Result<bool> {
    Ok(entries()?
        .iter()
        .any(|(p, t)| p.as_os_str() == path && t == fstype))
}
