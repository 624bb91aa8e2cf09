//! Listening sockets that outlive the agent process, so a restart (planned, or after a
//! crash) never closes them: what arrives while no agent runs waits in the socket's queue
//! and is served by the next agent.
//!
//! The first agent to bind a listener starts a keeper: a small process (`ferry-agent
//! keep-sockets`) that holds a copy of the sockets and hands them, over a Unix socket in
//! the agent's state directory (root only), to each agent that starts. The keeper never
//! reads from them. Each agent keeps its connection to the keeper open while it runs (a
//! lease). The keeper exits when its Unix socket's file is removed (`ferry-agent down`),
//! or when no agent has held a lease for the orphan limit ([`ORPHAN_LIMIT`] by default):
//! a crashed agent that does not come back leaves no port that accepts and never answers.

mod keeper;
mod passing;

use std::{
    io,
    os::fd::{AsRawFd as _, OwnedFd},
    os::unix::net::UnixStream,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tracing::{info, warn};

pub use keeper::keep;

/// First descriptor number the keeper finds its sockets at.
pub const FIRST_FD: i32 = 3;

/// How long a keeper holds its sockets with no agent running, by default: longer than
/// any planned restart (systemd's restart of the unit takes seconds), short enough that
/// clients of a server whose agent died are refused within a minute.
pub const ORPHAN_LIMIT: Duration = Duration::from_secs(60);

/// The orphan limit the keepers this process starts get, in milliseconds.
static ORPHAN_LIMIT_MS: AtomicU64 = AtomicU64::new(ORPHAN_LIMIT.as_millis() as u64);

/// This process's leases: connections to its keepers, open until it exits.
static LEASES: Mutex<Vec<UnixStream>> = Mutex::new(Vec::new());

/// Sets the orphan limit of the keepers this process starts from now on.
pub fn set_orphan_limit(limit: Duration) {
    let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
    ORPHAN_LIMIT_MS.store(ms, Ordering::Relaxed);
}

/// Keeps `stream` open for the rest of this process's life.
fn hold(stream: UnixStream) {
    LEASES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(stream);
}

/// The sockets kept at `path`: taken from the keeper there, or made by `bind` and given to
/// a new keeper.
pub fn take_or_bind(
    path: &Path,
    bind: impl FnOnce() -> io::Result<Vec<OwnedFd>>,
) -> io::Result<Vec<OwnedFd>> {
    if let Ok(stream) = UnixStream::connect(path) {
        match passing::receive(&stream) {
            Ok(fds) => {
                info!(keeper = %path.display(), sockets = fds.len(), "took the listening sockets over");
                hold(stream);
                return Ok(fds);
            }
            Err(e) => {
                warn!(keeper = %path.display(), "the socket keeper did not hand over: {e}; binding anew")
            }
        }
    }
    let fds = bind()?;
    match spawn_keeper(path, &fds) {
        // The keeper's own copies come with the lease; these ones serve.
        Ok(lease) => hold(lease),
        // Serving goes on; only a restart would close the sockets.
        Err(e) => warn!(keeper = %path.display(), "starting the socket keeper: {e}"),
    }
    Ok(fds)
}

/// Starts a keeper of `fds` at `path`; returns this process's lease on it.
fn spawn_keeper(path: &Path, fds: &[OwnedFd]) -> io::Result<UnixStream> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("keep-sockets")
        .arg("--path")
        .arg(path)
        .arg("--count")
        .arg(raw.len().to_string())
        .arg("--orphan-limit-ms")
        .arg(ORPHAN_LIMIT_MS.load(Ordering::Relaxed).to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls (setsid, dup2, fcntl) between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            // Its own session: a signal to the agent's process group does not reach it.
            libc::setsid();
            // Move the sockets up first, out of the way of the numbers they go to.
            let mut high = Vec::with_capacity(raw.len());
            for fd in &raw {
                let moved = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100);
                if moved < 0 {
                    return Err(io::Error::last_os_error());
                }
                high.push(moved);
            }
            for (i, fd) in high.iter().enumerate() {
                // dup2 clears close-on-exec on the copy.
                if libc::dup2(*fd, FIRST_FD + i as i32) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // Wait until it listens, so an agent that dies right away still leaves a keeper; the
    // first connection is the lease (the copies it brings are closed at once).
    for _ in 0..100 {
        if let Ok(lease) = UnixStream::connect(path) {
            drop(passing::receive(&lease));
            info!(keeper = %path.display(), pid = child.id(), "socket keeper started");
            return Ok(lease);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "the keeper did not listen within a second",
    ))
}
