//! cgroup v2 directories standing in for containers.

use std::{
    ffi::CString,
    io,
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

/// The cgroup v2 mount point of this machine.
pub fn cgroup2_root() -> Result<PathBuf> {
    ferry_agent::dataplane::cgroup2_mount()
        .context("reading /proc/self/mounts")?
        .context("no cgroup2 filesystem is mounted; run `./x setup`")
}

/// A cgroup directory, removed (with everything in it killed) on drop.
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    /// Creates `<parent>/<name>`.
    pub fn new(parent: &Path, name: &str) -> Result<Self> {
        let path = parent.join(name);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Self { path })
    }

    /// Creates `<cgroup2 root>/<name>`.
    pub fn top_level(name: &str) -> Result<Self> {
        Self::new(&cgroup2_root()?, name)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `cmd`'s process join this cgroup before it execs.
    pub fn place(&self, cmd: &mut Command) -> Result<()> {
        let procs = CString::new(self.path.join("cgroup.procs").as_os_str().as_bytes())
            .context("cgroup path holds a NUL byte")?;
        // SAFETY: open, write and close are async-signal-safe; `procs` is moved into the
        // closure and outlives it.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // "0" means the writing process itself.
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let error = io::Error::last_os_error();
                libc::close(fd);
                if written != 1 {
                    return Err(error);
                }
                Ok(())
            });
        }
        Ok(())
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while remove_tree(&self.path).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Removes a cgroup directory and the ones below it, deepest first (cgroupfs removes only
/// empty directories, and their files go with them).
fn remove_tree(path: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    std::fs::remove_dir(path)
}
