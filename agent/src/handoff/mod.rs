//! Listening sockets that outlive the agent process, so a restart (planned, or after a
//! crash) never closes them: what arrives while no agent runs waits in the socket's queue
//! and is served by the next agent.
//!
//! The first agent to bind a listener starts a keeper: a small process (`ferry-agent
//! keep-sockets`) that holds a copy of the sockets and hands them, over a Unix socket in
//! the agent's state directory (root only), to each agent that starts. The keeper never
//! reads from them. It exits when its Unix socket's file is removed.

mod keeper;
mod passing;

use std::{
    io,
    os::fd::{AsRawFd as _, OwnedFd},
    os::unix::net::UnixStream,
    path::Path,
    process::{Command, Stdio},
};

use tracing::{info, warn};

pub use keeper::keep;

/// First descriptor number the keeper finds its sockets at.
pub const FIRST_FD: i32 = 3;

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
                return Ok(fds);
            }
            Err(e) => {
                warn!(keeper = %path.display(), "the socket keeper did not hand over: {e}; binding anew")
            }
        }
    }
    let fds = bind()?;
    if let Err(e) = spawn_keeper(path, &fds) {
        // Serving goes on; only a restart would close the sockets.
        warn!(keeper = %path.display(), "starting the socket keeper: {e}");
    }
    Ok(fds)
}

fn spawn_keeper(path: &Path, fds: &[OwnedFd]) -> io::Result<()> {
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
    // Wait until it listens, so an agent that dies right away still leaves a keeper.
    for _ in 0..100 {
        if UnixStream::connect(path).is_ok() {
            info!(keeper = %path.display(), pid = child.id(), "socket keeper started");
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "the keeper did not listen within a second",
    ))
}
