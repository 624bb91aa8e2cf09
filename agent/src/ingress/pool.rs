//! Idle connections to backends, kept for the next request to the same container: a
//! connect per request would cost more than the request itself.

use std::{
    collections::HashMap,
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use tokio::net::TcpStream;

use super::socket::is_idle_and_open;

/// Longest a connection waits idle in the pool; under Node's default keep-alive timeout
/// (5 s), so the backend never closes one just as it is taken.
pub const IDLE_FOR: Duration = Duration::from_secs(4);
/// Most idle connections kept per backend.
const MAX_PER_BACKEND: usize = 512;

/// The idle connections, by backend.
#[derive(Debug, Default)]
pub struct Pool {
    idle: HashMap<SocketAddrV4, Vec<(TcpStream, Instant)>>,
}

impl Pool {
    /// An idle connection to `backend` that is still open, if there is one.
    pub fn take(&mut self, backend: SocketAddrV4) -> Option<TcpStream> {
        let idle = self.idle.get_mut(&backend)?;
        while let Some((stream, since)) = idle.pop() {
            if since.elapsed() < IDLE_FOR && is_idle_and_open(&stream) {
                return Some(stream);
            }
        }
        None
    }

    /// Keeps `stream` for the next request to `backend`.
    pub fn put(&mut self, backend: SocketAddrV4, stream: TcpStream) {
        let idle = self.idle.entry(backend).or_default();
        if idle.len() == MAX_PER_BACKEND {
            idle.remove(0);
        }
        idle.push((stream, Instant::now()));
    }

    /// Closes connections idle too long, and forgets backends with none left.
    pub fn sweep(&mut self) {
        for idle in self.idle.values_mut() {
            idle.retain(|(_, since)| since.elapsed() < IDLE_FOR);
        }
        self.idle.retain(|_, idle| !idle.is_empty());
    }
}
