//! The keeper process: holds the sockets it was started with and hands copies to whoever
//! connects to its Unix socket, until that socket's file is removed, or until no agent
//! has held it for its orphan limit.
//!
//! Each agent keeps the connection it took the sockets over open for as long as it runs
//! (its lease; see [`super::take_or_bind`]). While no agent holds a lease, connections
//! still queue in the listening sockets' backlog, which is what a planned restart needs;
//! but an agent that crashed and does not come back must not leave ports that accept and
//! never answer. So a keeper left without a lease for its orphan limit exits, and the
//! kernel closes the listeners: clients are refused, as when nothing runs.

use std::{
    io::{self, Read as _},
    os::fd::{AsRawFd as _, RawFd},
    os::unix::{
        fs::PermissionsExt as _,
        net::{UnixListener, UnixStream},
    },
    path::Path,
    time::{Duration, Instant},
};

use super::{FIRST_FD, passing};

/// How often the keeper checks that its socket file still exists.
const CHECK: Duration = Duration::from_secs(1);
/// Most agents holding a lease at once (a planned restart overlaps two).
const MAX_HOLDERS: usize = 8;

/// Runs the keeper for the `count` sockets at descriptors 3.. until `path` is removed, or
/// until no agent has held a lease for `orphan_limit`.
pub fn keep(path: &Path, count: usize, orphan_limit: Duration) -> io::Result<()> {
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
    let mut holders: Vec<UnixStream> = Vec::new();
    // The agent that started this keeper takes a lease right after.
    let mut orphaned_since = Some(Instant::now());
    loop {
        let mut polls: Vec<libc::pollfd> = std::iter::once(listener.as_raw_fd())
            .chain(holders.iter().map(|h| h.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `polls` is a valid array of `polls.len()` pollfds.
        let ready = unsafe {
            libc::poll(
                polls.as_mut_ptr(),
                polls.len() as libc::nfds_t,
                CHECK.as_millis() as i32,
            )
        };
        if ready > 0 {
            // A holder that became readable has gone (an agent never writes): EOF or reset.
            let mut index = 0;
            holders.retain_mut(|holder| {
                index += 1;
                let revents = polls[index].revents;
                if revents == 0 {
                    return true;
                }
                let mut byte = [0u8; 1];
                !matches!(holder.read(&mut byte), Ok(0) | Err(_))
            });
            if polls[0].revents & libc::POLLIN != 0 {
                let (stream, _) = listener.accept()?;
                // A failed hand-over leaves the agent to bind anew; keep serving.
                if peer_is_root(&stream) && passing::send(&stream, &fds).is_ok() {
                    if holders.len() == MAX_HOLDERS {
                        holders.remove(0);
                    }
                    holders.push(stream);
                }
            }
        }
        match (holders.is_empty(), orphaned_since) {
            (false, _) => orphaned_since = None,
            (true, None) => orphaned_since = Some(Instant::now()),
            (true, Some(since)) if since.elapsed() >= orphan_limit => return Ok(()),
            (true, Some(_)) => {}
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

fn peer_is_root(stream: &UnixStream) -> bool {
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
