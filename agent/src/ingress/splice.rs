//! Moving body bytes socket to socket through a pipe with splice(2): the data stays in the
//! kernel. Measured before the proxy was written (see the ingress issue) it moved 10 MB
//! bodies at 0.93-1.0x a direct connection's rate, at half the CPU of a userspace copy.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

use tokio::{io::Interest, net::TcpStream};

use super::socket::{read_some, shut_write, timed_out, write_all};

/// Bodies at least this long (beyond what the head read already holds) go through splice;
/// shorter ones are cheaper to copy than to set a pipe up for.
pub const SPLICE_MIN: u64 = 64 * 1024;

/// The pipe size asked for; the kernel's pipe-max-size (1 MiB by default) caps it.
const PIPE_SIZE: i32 = 1024 * 1024;

/// A pipe, and how many bytes wait in it.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
    held: usize,
}

impl Pipe {
    /// A non-blocking pipe, as large as the kernel allows up to 1 MiB.
    pub fn new() -> io::Result<Self> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: fds has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are fresh descriptors owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: a plain fcntl on a descriptor we own; failure leaves the default size.
        let size = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        let capacity = if size > 0 { size as usize } else { 64 * 1024 };
        Ok(Self {
            read,
            write,
            capacity,
            held: 0,
        })
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are live for the call; null offsets mean "current position",
    // which pipes and sockets require.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Moves `len` bytes from `from` to `to` (None: until `from` ends), each wait for either
/// peer bounded by `idle`. Returns the bytes moved; a stream that ends before `len` is
/// an `UnexpectedEof` error. The task sleeps only when neither side can move.
pub async fn splice_between(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &mut Pipe,
    len: Option<u64>,
    idle: Duration,
) -> io::Result<u64> {
    let mut left = len.unwrap_or(u64::MAX);
    let mut moved = 0u64;
    let mut ended = false;
    // The pipe is filled only when empty: a pipe counts its room in page slots, and a
    // splice into a pipe with no free slot fails with EAGAIN, which tokio would take for
    // the socket having nothing to read and wait for an edge that may never come.
    loop {
        let mut progressed = false;
        let can_read = !ended && left > 0 && pipe.held == 0;
        if can_read {
            let want = left.min(pipe.capacity as u64) as usize;
            match from.try_io(Interest::READABLE, || {
                splice(from.as_raw_fd(), pipe.write.as_raw_fd(), want)
            }) {
                Ok(0) if len.is_some() => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the peer closed with {left} bytes of the body still to come"),
                    ));
                }
                Ok(0) => ended = true,
                Ok(n) => {
                    pipe.held += n;
                    left -= n as u64;
                    moved += n as u64;
                    progressed = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if pipe.held > 0 {
            match to.try_io(Interest::WRITABLE, || {
                splice(pipe.read.as_raw_fd(), to.as_raw_fd(), pipe.held)
            }) {
                Ok(n) => {
                    pipe.held -= n;
                    progressed |= n > 0;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if pipe.held == 0 && (ended || left == 0) {
            return Ok(moved);
        }
        if !progressed {
            let can_read = !ended && left > 0 && pipe.held == 0;
            let can_write = pipe.held > 0;
            let either = async {
                tokio::select! {
                    r = from.readable(), if can_read => r,
                    r = to.writable(), if can_write => r,
                }
            };
            tokio::time::timeout(idle, either)
                .await
                .map_err(|_| timed_out("moving a body"))??;
        }
    }
}

/// The pipe in `slot`, made on first use.
pub fn pipe_for(slot: &mut Option<Pipe>) -> io::Result<&mut Pipe> {
    if slot.is_none() {
        *slot = Some(Pipe::new()?);
    }
    slot.as_mut().ok_or_else(|| io::Error::other("no pipe"))
}

/// Bytes both ways between `a` and `b` until both directions end, each end passed on as
/// a half-close; an error either way ends both. Returns the bytes moved (a to b, b to a).
pub async fn relay(
    a: &TcpStream,
    b: &TcpStream,
    pipes: &mut [Option<Pipe>; 2],
    idle: Duration,
) -> io::Result<(u64, u64)> {
    let [forth_pipe, back_pipe] = pipes;
    let forth = async {
        let moved = pump(a, b, forth_pipe, idle).await?;
        shut_write(b);
        Ok::<_, io::Error>(moved)
    };
    let back = async {
        let moved = pump(b, a, back_pipe, idle).await?;
        shut_write(a);
        Ok::<_, io::Error>(moved)
    };
    tokio::try_join!(forth, back)
}

/// One direction until its end: copied while little has passed (most connections carry
/// a few small messages, and a pipe costs more to set up than they do), spliced once
/// [`SPLICE_MIN`] bytes have.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &mut Option<Pipe>,
    idle: Duration,
) -> io::Result<u64> {
    // On the heap: in the future itself it would be zeroed and moved with every task.
    let mut buf = vec![0u8; 16 * 1024];
    let mut moved = 0u64;
    while moved < SPLICE_MIN {
        let n = read_some(from, &mut buf, idle).await?;
        if n == 0 {
            return Ok(moved);
        }
        write_all(to, &buf[..n], idle).await?;
        moved += n as u64;
    }
    Ok(moved + splice_between(from, to, pipe_for(pipe)?, None, idle).await?)
}
