//! wireguard-go's UDP socket buffers, raised to what wireguard-go sets itself since 2023.
//!
//! The wireguard-go that distributions ship (Debian's 0.0.20220316) leaves its UDP sockets
//! at the system's default buffer (`net.core.rmem_default`, 208 KiB): on a busy server it
//! cannot drain the socket as fast as its peers fill it, and the kernel drops datagrams
//! (`RcvbufErrors` in `/proc/net/snmp`). Measured on the host tier under two 1 MB
//! transfers: 11,545 datagrams dropped on one server in a minute, and a UDP client of a
//! published port saw an answer lost, then its retry lost too. Upstream fixed it in
//! wireguard-go itself (commit f26efb6, "conn: set SO_{SND,RCV}BUF to 7MB on the Bind UDP
//! socket", first released in 0.0.20250515), with `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` so
//! `net.core.rmem_max` does not cap it.
//!
//! The agent does the same from outside: it finds the wireguard-go serving the interface
//! (by its arguments; the UAPI socket's `SO_PEERCRED` names the parent that exited after
//! starting it), takes a duplicate of each of that process's UDP sockets bound to the
//! listen port (`pidfd_getfd(2)`, Linux 5.6) and sets both buffers on it, which sets them
//! on the socket wireguard-go reads. Done once per process and port: later sync passes
//! only check that process still runs, and a wireguard-go started again or a socket
//! reopened on another port is raised anew. The kernel module
//! needs none of this: it receives in the network stack's softirq, with no socket queue.

use std::{
    collections::BTreeMap,
    fs, io,
    os::fd::AsFd,
    sync::{Mutex, PoisonError},
};

use rustix::{
    net::{SocketType, getsockname, sockopt},
    process::{Pid, PidfdFlags, PidfdGetfdFlags, pidfd_getfd, pidfd_open},
};

use super::interface::wireguard_go_serving;
use crate::down::alive;

/// Per interface, the wireguard-go process and listen port whose sockets were raised.
static RAISED: Mutex<BTreeMap<String, (u32, u16)>> = Mutex::new(BTreeMap::new());

/// Bytes of receive and of send buffer each socket gets: wireguard-go's own
/// `socketBufferSize` (7 MiB) since upstream's fix. The kernel doubles what is set for its
/// bookkeeping, so a socket reads back twice this.
pub const SOCKET_BUFFER: usize = 7 << 20;

/// Why the buffers could not be raised.
#[derive(Debug, thiserror::Error)]
pub enum SocketBufferError {
    #[error("no wireguard-go process serves {interface}")]
    NoProcess { interface: String },
    #[error("{action} of wireguard-go (process {pid}): {source}")]
    Process {
        action: &'static str,
        pid: u32,
        #[source]
        source: io::Error,
    },
}

/// Raises the buffers of the UDP sockets bound to `listen_port` of the wireguard-go that
/// serves `interface` to [`SOCKET_BUFFER`]. Returns how many sockets it raised: 0 when
/// they already had it or this process already raised them, so it can run on every sync
/// pass.
///
/// Errors: [`SocketBufferError::NoProcess`] when no wireguard-go runs for the interface,
/// and [`SocketBufferError::Process`] when its file descriptors cannot be read or taken
/// (a kernel before 5.6, or no `CAP_SYS_PTRACE`).
pub fn raise(interface: &str, listen_port: u16) -> Result<usize, SocketBufferError> {
    let mut raised = RAISED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(&(pid, port)) = raised.get(interface)
        && port == listen_port
        && alive(pid)
    {
        return Ok(0);
    }
    let pid = wireguard_go_serving(interface).ok_or_else(|| SocketBufferError::NoProcess {
        interface: interface.into(),
    })?;
    let count = raise_sockets(pid, listen_port)?;
    raised.insert(interface.into(), (pid, listen_port));
    Ok(count)
}

/// Raises the buffers of process `pid`'s UDP sockets bound to `listen_port`.
fn raise_sockets(pid: u32, listen_port: u16) -> Result<usize, SocketBufferError> {
    let failed = |action, source| SocketBufferError::Process {
        action,
        pid,
        source,
    };
    let pidfd = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| failed("its process id", io::ErrorKind::InvalidInput.into()))
        .and_then(|p| {
            pidfd_open(p, PidfdFlags::empty()).map_err(|e| failed("pidfd_open", e.into()))
        })?;
    let entries = fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| failed("listing the descriptors", e))?;
    let mut raised = 0;
    for entry in entries.flatten() {
        let Some(number) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // A descriptor closed since it was listed is skipped, not a failure; one that is
        // not a socket fails `is_listen_socket`'s first question.
        let Ok(socket) = pidfd_getfd(&pidfd, number, PidfdGetfdFlags::empty()) else {
            continue;
        };
        if !is_listen_socket(&socket, listen_port) {
            continue;
        }
        let mut changed = false;
        if sockopt::socket_recv_buffer_size(&socket).is_ok_and(|now| now < SOCKET_BUFFER) {
            sockopt::set_socket_recv_buffer_size_force(&socket, SOCKET_BUFFER)
                .map_err(|e| failed("SO_RCVBUFFORCE on its socket", e.into()))?;
            changed = true;
        }
        if sockopt::socket_send_buffer_size(&socket).is_ok_and(|now| now < SOCKET_BUFFER) {
            sockopt::set_socket_send_buffer_size_force(&socket, SOCKET_BUFFER)
                .map_err(|e| failed("SO_SNDBUFFORCE on its socket", e.into()))?;
            changed = true;
        }
        raised += usize::from(changed);
    }
    Ok(raised)
}

/// Whether `socket` is a UDP socket bound to `port` (IPv4 or IPv6).
fn is_listen_socket(socket: impl AsFd, port: u16) -> bool {
    let socket = socket.as_fd();
    if sockopt::socket_type(socket).ok() != Some(SocketType::DGRAM) {
        return false;
    }
    getsockname(socket)
        .ok()
        .and_then(|address| std::net::SocketAddr::try_from(address).ok())
        .is_some_and(|address| address.port() == port)
}
