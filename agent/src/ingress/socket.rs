//! Reads and writes on a shared `&TcpStream` (both directions of a proxied exchange run at
//! once on one task), each bounded by an idle timeout: a peer that stops sending or
//! reading is dropped, never waited on for ever.

use std::{io, time::Duration};

use tokio::{io::Interest, net::TcpStream};

/// Reads what is there (at least one byte, or 0 at end of stream), waiting at most `idle`.
pub async fn read_some(stream: &TcpStream, buf: &mut [u8], idle: Duration) -> io::Result<usize> {
    tokio::time::timeout(idle, async {
        loop {
            stream.readable().await?;
            match stream.try_read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Ok(n) if n > 0 && n < buf.len() => {
                    // A short read drained the socket: forget its readiness now, as nginx
                    // does, instead of learning it from one more read that fails with
                    // EAGAIN. Bytes arriving later raise a new edge in epoll.
                    let _ = stream.try_io(Interest::READABLE, || {
                        Err::<(), _>(io::ErrorKind::WouldBlock.into())
                    });
                    return Ok(n);
                }
                r => return r,
            }
        }
    })
    .await
    .map_err(|_| timed_out("reading"))?
}

/// Writes all of `bytes`, waiting at most `idle` for the peer to make room each time.
pub async fn write_all(stream: &TcpStream, mut bytes: &[u8], idle: Duration) -> io::Result<()> {
    while !bytes.is_empty() {
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::time::timeout(idle, stream.writable())
                    .await
                    .map_err(|_| timed_out("writing"))??;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Half-closes `stream` for writing (the peer reads end of stream).
pub fn shut_write(stream: &TcpStream) {
    let fd = std::os::fd::AsRawFd::as_raw_fd(stream);
    // SAFETY: fd is a live socket for the borrow's duration.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
}

/// Longest a lingering close reads what a client still sends (nginx's `lingering_time` is
/// 30 s; a client that keeps sending this long is cut off).
pub const LINGER_TIME: Duration = Duration::from_secs(10);
/// Longest a lingering close waits for the client's next bytes (nginx's
/// `lingering_timeout` is 5 s).
pub const LINGER_QUIET: Duration = Duration::from_secs(2);

/// Closes `stream` as nginx's lingering close does, for a client that may still be sending
/// (a body nobody read, a pipelined request): half-closes it for writing, then reads and
/// discards until the client closes, goes quiet for [`LINGER_QUIET`] or [`LINGER_TIME`]
/// passes. Closing with unread bytes in the socket would send a reset instead of a FIN,
/// and a reset can destroy the response the client has not read yet (RFC 9112 §9.6).
pub async fn linger(stream: &TcpStream) {
    shut_write(stream);
    let until = tokio::time::Instant::now() + LINGER_TIME;
    let mut sink = [0u8; 16 * 1024];
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return;
        }
        match read_some(stream, &mut sink, LINGER_QUIET.min(left)).await {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    }
}

/// Whether an idle pooled connection is still usable: nothing to read and not closed.
pub fn is_idle_and_open(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// The error an idle peer ends an exchange with.
pub fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
}
