//! The keeper process: holds the sockets it was started with and hands copies to whoever
//! connects to its Unix socket, until that socket's file is removed.

use std::{
    io,
    os::fd::{AsRawFd as _, RawFd},
    os::unix::{fs::PermissionsExt as _, net::UnixListener},
    path::Path,
    time::Duration,
};

use super::{FIRST_FD, passing};

/// How often the keeper checks that its socket file still exists.
const CHECK: Duration = Duration::from_secs(1);

/// Runs the keeper for the `count` sockets at descriptors 3.. until `path` is removed.
pub fn keep(path: &Path, count: usize) -> io::Result<()> {
    if count == 0 || count > passing::MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--count must be between 1 and 16",
        ));
    }
    let fds: Vec<RawFd> = (0..count).map(|i| FIRST_FD + i as i32).collect();
    let listener = UnixListener::bind(path)?;
    // Only root (the agent) may take the sockets.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let ours = std::fs::metadata(path)?;
    loop {
        let mut poll = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, CHECK.as_millis() as i32) };
        if ready > 0 {
            let (stream, _) = listener.accept()?;
            if peer_is_root(&stream) {
                // A failed hand-over leaves the agent to bind anew; keep serving.
                let _ = passing::send(&stream, &fds);
            }
        }
        // Gone or replaced (a new keeper bound the same path): this one retires.
        match std::fs::metadata(path) {
            Ok(now) if same_file(&now, &ours) => {}
            _ => return Ok(()),
        }
    }
}

fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    a.ino() == b.ino() && a.dev() == b.dev()
}

fn peer_is_root(stream: &std::os::unix::net::UnixStream) -> bool {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for the call.
    let ok = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    } == 0;
    // SAFETY: geteuid cannot fail.
    ok && (cred.uid == 0 || cred.uid == unsafe { libc::geteuid() })
}
