//! Each container's cgroup v2 directory, whose id keys the data plane's per-caller maps.
//!
//! With Docker's systemd driver on a pure cgroup v2 host a container already has its own
//! v2 cgroup (its path names the container id), and ferry uses it as it is: moving the
//! processes out would lose the limits Docker set there. With cgroup v1 controllers (hybrid
//! hosts), every container's processes share their engine's v2 cgroup, so ferry gives each
//! container a leaf `ferry-<id>` under the agent's cgroup root and moves its processes in;
//! children inherit it. Leaves of containers that are gone are removed by [`sweep`].

use std::{
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use bollard::query_parameters::TopOptionsBuilder;

use super::Engine;

/// Errors placing a container in its cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("container {id} does not run, so it has no processes to place")]
    NotRunning { id: String },
    #[error("inspecting container {id}: {source}")]
    Engine {
        id: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How the Docker Engine names the cgroups it makes (`docker info`'s `CgroupDriver`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// Paths in the hierarchy: a parent `/a/b` puts a container at `/a/b/<id>`.
    Cgroupfs,
    /// systemd units: a parent must be a slice (`a-b.slice`, which systemd places at
    /// `/a.slice/a-b.slice`), and the container becomes `docker-<id>.scope` in it.
    Systemd,
}

impl Driver {
    /// The driver `docker info` names (systemd's, or cgroupfs for anything else).
    pub fn from_info(name: Option<&str>) -> Self {
        match name {
            Some("systemd") => Self::Systemd,
            _ => Self::Cgroupfs,
        }
    }
}

/// The `HostConfig.CgroupParent` that puts a container's cgroup below the agent's cgroup
/// `root` (a directory under the cgroup2 mount `cgroup2`), so that the data plane attached
/// there sees it from its first instruction; None when the engine's default already does
/// (`root` is the mount itself) or when `driver` cannot name `root` (systemd, and `root`
/// is not a slice at the place systemd would put it).
pub fn parent_for(root: &Path, cgroup2: &Path, driver: Driver) -> Option<String> {
    let relative = root.strip_prefix(cgroup2).ok()?;
    let relative = relative.to_str()?.trim_matches('/');
    if relative.is_empty() {
        return None;
    }
    match driver {
        Driver::Cgroupfs => Some(format!("/{relative}")),
        Driver::Systemd => {
            let slice = relative.rsplit('/').next()?;
            let stem = slice.strip_suffix(".slice")?;
            // systemd nests `a-b-c.slice` as a.slice/a-b.slice/a-b-c.slice.
            let mut expected = Vec::new();
            let mut prefix = String::new();
            for part in stem.split('-') {
                if !prefix.is_empty() {
                    prefix.push('-');
                }
                prefix.push_str(part);
                expected.push(format!("{prefix}.slice"));
            }
            (expected.join("/") == relative).then(|| slice.to_string())
        }
    }
}

/// The leaf ferry makes for container `id` under `root`.
pub fn leaf(root: &Path, id: &str) -> PathBuf {
    root.join(format!("ferry-{}", &id[..id.len().min(12)]))
}

/// Makes sure container `id` has a cgroup v2 directory of its own (see the module notes);
/// returns the cgroup's id, its directory's inode number.
pub async fn place(
    engine: &Engine,
    id: &str,
    root: &Path,
    cgroup2: &Path,
) -> Result<u64, CgroupError> {
    let pid = init_pid(engine, id).await?;
    let current = v2_path(id, pid, cgroup2)?;
    if current.to_string_lossy().contains(id) {
        if !current.starts_with(root) {
            tracing::warn!(
                container = id,
                cgroup = %current.display(),
                root = %root.display(),
                "the container's cgroup is outside the agent's cgroup root, so the data plane \
                 does not see its connections; give dockerd a --cgroup-parent below the root"
            );
        }
        return inode(&current);
    }
    let leaf = leaf(root, id);
    match std::fs::create_dir(&leaf) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_error(&leaf)(e)),
    }
    let procs = leaf.join("cgroup.procs");
    let top = engine
        .docker()
        .top_processes(id, Some(TopOptionsBuilder::new().ps_args("-o pid").build()))
        .await
        .map_err(|source| CgroupError::Engine {
            id: id.into(),
            source,
        })?;
    let mut pids: Vec<String> = top
        .processes
        .unwrap_or_default()
        .into_iter()
        .filter_map(|row| row.into_iter().next())
        .collect();
    if pids.is_empty() {
        pids.push(pid.to_string());
    }
    for pid in pids {
        match std::fs::write(&procs, &pid) {
            Ok(()) => {}
            // Exited between the listing and the move.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err(io_error(&procs)(e)),
        }
    }
    inode(&leaf)
}

/// The cgroup id of container `id` as it is now, if it runs.
pub async fn current_id(engine: &Engine, id: &str, cgroup2: &Path) -> Option<u64> {
    let pid = init_pid(engine, id).await.ok()?;
    inode(&v2_path(id, pid, cgroup2).ok()?).ok()
}

/// Removes the leaves under `root` whose containers are not in `live` (ids).
pub fn sweep(root: &Path, live: &[String]) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(short) = name.strip_prefix("ferry-") else {
            continue;
        };
        if !live.iter().any(|id| id.starts_with(short)) {
            // Fails harmlessly if a process is still inside.
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

async fn init_pid(engine: &Engine, id: &str) -> Result<i64, CgroupError> {
    engine
        .main_pid(id)
        .await
        .map_err(|source| CgroupError::Engine {
            id: id.into(),
            source,
        })?
        .ok_or_else(|| CgroupError::NotRunning { id: id.into() })
}

/// The v2 cgroup directory of `pid`, container `id`'s first process, from the `0::` line
/// of /proc/<pid>/cgroup; NotRunning when that process is gone already.
fn v2_path(id: &str, pid: i64, cgroup2: &Path) -> Result<PathBuf, CgroupError> {
    let file = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        // Exited between Docker's answer and the read (a command that fails at once).
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {
            return Err(CgroupError::NotRunning { id: id.into() });
        }
        Err(e) => return Err(io_error(&file)(e)),
    };
    let relative = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| {
            io_error(&file)(io::Error::new(
                io::ErrorKind::InvalidData,
                "no cgroup v2 line",
            ))
        })?;
    Ok(cgroup2.join(relative.trim_start_matches('/')))
}

fn inode(path: &Path) -> Result<u64, CgroupError> {
    Ok(std::fs::metadata(path).map_err(io_error(path))?.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_names_the_root_as_each_driver_wants_it() {
        let mount = Path::new("/sys/fs/cgroup");
        let ferry = mount.join("ferry.slice");
        assert_eq!(
            parent_for(&ferry, mount, Driver::Cgroupfs).as_deref(),
            Some("/ferry.slice")
        );
        assert_eq!(
            parent_for(&ferry, mount, Driver::Systemd).as_deref(),
            Some("ferry.slice")
        );
        let nested = mount.join("ferry.slice/ferry-web.slice");
        assert_eq!(
            parent_for(&nested, mount, Driver::Systemd).as_deref(),
            Some("ferry-web.slice")
        );
        // Not where systemd would put the slice, or not a slice: no parent it can name.
        assert_eq!(
            parent_for(&mount.join("web.slice/ferry.slice"), mount, Driver::Systemd),
            None
        );
        assert_eq!(
            parent_for(&mount.join("ferry"), mount, Driver::Systemd),
            None
        );
        assert_eq!(
            parent_for(&mount.join("ferry/containers"), mount, Driver::Cgroupfs).as_deref(),
            Some("/ferry/containers")
        );
        // The whole hierarchy, or outside it: the engine's own default is already inside.
        assert_eq!(parent_for(mount, mount, Driver::Cgroupfs), None);
        assert_eq!(
            parent_for(Path::new("/elsewhere"), mount, Driver::Cgroupfs),
            None
        );
    }
}
