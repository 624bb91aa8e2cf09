//! Names that are not ferry's go to the resolvers the server had before ferry, with a cache
//! that honours their TTLs. The upstreams are fixed at start and never include ferry's own
//! listener, so a query can never loop back here.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{DNSClass, Name, RecordType},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
    sync::Semaphore,
};
use tracing::debug;

use super::wire::{self, rcode};

/// How long one upstream gets to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Most answers kept in the cache.
const CACHE_ENTRIES: usize = 10_000;
/// Most queries forwarded at once; more get SERVFAIL rather than unbounded work.
const IN_FLIGHT: usize = 512;
/// Longest TTL the cache honours.
const MAX_TTL: u32 = 86_400;

type Key = (Name, RecordType, DNSClass);

struct Cached {
    response: Message,
    stored: Instant,
    ttl: u32,
}

/// Forwards to upstream resolvers and caches what they say.
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    cache: Mutex<HashMap<Key, Cached>>,
    in_flight: Semaphore,
}

impl Forwarder {
    /// A forwarder to `upstreams`, tried in order.
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        Self {
            upstreams,
            cache: Mutex::new(HashMap::new()),
            in_flight: Semaphore::new(IN_FLIGHT),
        }
    }

    /// The response to `query` (at most `limit` bytes), or None when there is nothing to
    /// send back.
    pub async fn forward(&self, query: &[u8], limit: usize) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let Ok(message) = Message::from_vec(query) else {
            wire::error_response(&mut out, query, rcode::FORMERR)?;
            return Some(out);
        };
        let Some(key) = message
            .queries
            .first()
            .map(|q| (q.name.to_lowercase(), q.query_type, q.query_class))
        else {
            wire::error_response(&mut out, query, rcode::FORMERR)?;
            return Some(out);
        };
        if let Some(response) = self.cached(&key, message.metadata.id) {
            return fit(response, query, limit);
        }
        let Ok(_permit) = self.in_flight.try_acquire() else {
            wire::error_response(&mut out, query, rcode::SERVFAIL)?;
            return Some(out);
        };
        for upstream in &self.upstreams {
            match ask(*upstream, query).await {
                Ok(response) => {
                    self.store(key, &response);
                    return fit(response, query, limit);
                }
                Err(e) => debug!(%upstream, "upstream resolver: {e}"),
            }
        }
        wire::error_response(&mut out, query, rcode::SERVFAIL)?;
        Some(out)
    }

    fn cached(&self, key: &Key, id: u16) -> Option<Message> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = cache.get(key)?;
        let age = u32::try_from(entry.stored.elapsed().as_secs()).unwrap_or(u32::MAX);
        if age >= entry.ttl {
            return None;
        }
        let mut response = entry.response.clone();
        response.metadata.id = id;
        for record in response
            .answers
            .iter_mut()
            .chain(response.authorities.iter_mut())
            .chain(response.additionals.iter_mut())
        {
            record.ttl = record.ttl.saturating_sub(age);
        }
        Some(response)
    }

    fn store(&self, key: Key, response: &Message) {
        let code = response.metadata.response_code;
        if code != ResponseCode::NoError && code != ResponseCode::NXDomain {
            return;
        }
        if response.metadata.truncation {
            return;
        }
        // Positive answers live as long as their shortest record; negative ones as the
        // SOA's minimum says (RFC 2308).
        let ttl = response
            .answers
            .iter()
            .map(|r| r.ttl)
            .min()
            .or_else(|| response.authorities.iter().map(|r| r.ttl).min())
            .unwrap_or(0)
            .min(MAX_TTL);
        if ttl == 0 {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, c| c.stored.elapsed().as_secs() < u64::from(c.ttl));
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(
            key,
            Cached {
                response: response.clone(),
                stored: Instant::now(),
                ttl,
            },
        );
    }
}

/// `response` encoded for the client that sent `query`: its id, and truncated to the
/// question (TC set) when longer than the client can take.
fn fit(mut response: Message, query: &[u8], limit: usize) -> Option<Vec<u8>> {
    response.metadata.id = u16::from_be_bytes([*query.first()?, *query.get(1)?]);
    let bytes = response.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    response.metadata.truncation = true;
    response.answers.clear();
    response.authorities.clear();
    response.additionals.clear();
    response.to_vec().ok()
}

/// Asks `upstream` over UDP, then over TCP if the answer was truncated.
async fn ask(upstream: SocketAddr, query: &[u8]) -> Result<Message, String> {
    let mut sent = query.to_vec();
    // A fresh id per upstream query, so a forged reply has to guess it.
    let id: u16 = rand_id();
    sent[..2].copy_from_slice(&id.to_be_bytes());
    let bind: SocketAddr = match upstream {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().map_err(|_| "bind address")?,
        SocketAddr::V6(_) => "[::]:0".parse().map_err(|_| "bind address")?,
    };
    let socket = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    socket.connect(upstream).await.map_err(|e| e.to_string())?;
    socket.send(&sent).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65_535];
    let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
    let response = loop {
        let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .map_err(|_| "no answer in time".to_string())?
            .map_err(|e| e.to_string())?;
        let Ok(response) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if response.metadata.id == id {
            break response;
        }
    };
    if !response.metadata.truncation {
        return Ok(response);
    }
    let mut stream = tokio::time::timeout(UPSTREAM_TIMEOUT, TcpStream::connect(upstream))
        .await
        .map_err(|_| "TCP connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let length = u16::try_from(sent.len()).map_err(|_| "query too long for TCP")?;
    let exchange = async {
        stream.write_all(&length.to_be_bytes()).await?;
        stream.write_all(&sent).await?;
        let n = usize::from(stream.read_u16().await?);
        let mut answer = vec![0u8; n];
        stream.read_exact(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .map_err(|_| "TCP answer timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Message::from_vec(&answer).map_err(|e| e.to_string())
}

/// An unpredictable query id from the kernel's random pool.
fn rand_id() -> u16 {
    let mut bytes = [0u8; 2];
    // SAFETY: the buffer is valid for its length; getrandom with no flags only fills it.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != 2 {
        // getrandom on a booted kernel does not fail for two bytes; fall back to the clock.
        let nanos = Instant::now().elapsed().subsec_nanos();
        return nanos as u16;
    }
    u16::from_be_bytes(bytes)
}
