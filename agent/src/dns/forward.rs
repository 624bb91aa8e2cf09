//! Names that are not ferry's go to the resolvers the server had before ferry, with a cache
//! that honours their TTLs.
//!
//! Loops are impossible by construction where ferry can see them and detected where it
//! cannot:
//! - every socket the forwarder opens carries [`AGENT_SOCKET_MARK`], which the kernel's DNS
//!   hooks never redirect, so its own queries cannot come back to the listener whatever
//!   cgroup the agent runs in;
//! - the upstreams never include the listener itself (refused when the agent starts);
//! - an upstream that forwards back to the listener (a resolver configured with ferry's
//!   listener as its own upstream) is found by a probe, as CoreDNS's `loop` plugin does: a
//!   query for a random name nobody else asks is sent to each upstream, and if it arrives
//!   here the upstream is left out and the agent says so. Probes run at start and every
//!   [`PROBE_EVERY`], so a corrected resolver is used again.

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use ferry_ebpf_abi::AGENT_SOCKET_MARK;
use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{DNSClass, Name, RecordType},
    serialize::binary::DecodeError,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, UdpSocket},
    sync::Semaphore,
};
use tracing::{debug, error, info};

use super::wire::{self, rcode};

/// How long one upstream gets to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Most answers kept in the cache.
const CACHE_ENTRIES: usize = 10_000;
/// Most queries forwarded at once; more get SERVFAIL rather than unbounded work.
const IN_FLIGHT: usize = 512;
/// Longest TTL the cache honours.
const MAX_TTL: u32 = 86_400;
/// How often the upstreams are probed for a loop back to the listener.
pub const PROBE_EVERY: Duration = Duration::from_secs(300);

/// The question, and the DO bit (a DNSSEC-aware client's answer carries signatures).
type Key = (Name, RecordType, DNSClass, bool);

struct Cached {
    response: Message,
    // tokio's clock, so a test can move it instead of sleeping through a TTL.
    stored: tokio::time::Instant,
    ttl: u32,
}

/// One upstream resolver, and whether the last probe found it forwarding back to us.
struct Upstream {
    address: SocketAddr,
    looping: AtomicBool,
}

/// Why one upstream gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{call} for upstream {upstream}: {source}")]
    Io {
        call: &'static str,
        upstream: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("upstream {upstream} did not answer within {UPSTREAM_TIMEOUT:?} over {transport}")]
    Timeout {
        upstream: SocketAddr,
        transport: &'static str,
    },
    #[error("upstream {upstream}'s answer over TCP does not parse: {source}")]
    Malformed {
        upstream: SocketAddr,
        #[source]
        source: DecodeError,
    },
    #[error("a query of {len} bytes is too long to send over TCP")]
    TooLong { len: usize },
}

/// Forwards to upstream resolvers and caches what they say.
pub struct Forwarder {
    upstreams: Vec<Upstream>,
    cache: Mutex<HashMap<Key, Cached>>,
    in_flight: Semaphore,
    /// Names of the loop probes under way, and how often each reached the listener.
    probes: Mutex<HashMap<Name, usize>>,
}

impl Forwarder {
    /// A forwarder to `upstreams`, tried in order.
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        Self {
            upstreams: upstreams
                .into_iter()
                .map(|address| Upstream {
                    address,
                    looping: AtomicBool::new(false),
                })
                .collect(),
            cache: Mutex::new(HashMap::new()),
            in_flight: Semaphore::new(IN_FLIGHT),
            probes: Mutex::default(),
        }
    }

    /// The response to `query`, or None when there is nothing to send back. `limit` is
    /// the transport's for a client without EDNS (see [`super::Answerer::answer`]); an
    /// EDNS client's payload size raises it up to [`wire::EDNS_PAYLOAD`]. Every error
    /// response echoes the question.
    ///
    /// EDNS(0): a client's OPT is never passed on as it came (its options may be a cookie
    /// or a client subnet meant for ferry, not for the upstream): the upstream gets
    /// ferry's own OPT instead, and the client gets ferry's OPT back. Version above 0 is
    /// BADVERS and two OPTs FORMERR (RFC 6891 §6.1.1, §6.1.3).
    pub async fn forward(&self, query: &[u8], limit: usize) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let Ok(mut message) = Message::from_vec(query) else {
            wire::error_response(&mut out, query, rcode::FORMERR)?;
            return Some(out);
        };
        let client_edns = message.edns.take();
        let dnssec_ok = client_edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        if client_edns.as_ref().is_some_and(|e| e.version() > 0) {
            wire::error_response(&mut out, query, rcode::NOERROR)?;
            wire::append_opt(&mut out, rcode::BADVERS_HIGH, dnssec_ok);
            return Some(out);
        }
        let limit = match &client_edns {
            Some(edns) => limit.max(wire::udp_limit(edns.max_payload())),
            None => limit,
        };
        let reply_edns = client_edns.is_some().then(|| own_edns(dnssec_ok));
        let Some(key) = message.queries.first().map(|q| {
            (
                q.name.to_lowercase(),
                q.query_type,
                q.query_class,
                dnssec_ok,
            )
        }) else {
            wire::error_response(&mut out, query, rcode::FORMERR)?;
            return Some(out);
        };
        if let Some(response) = self.cached(&key, message.metadata.id) {
            return fit(response, reply_edns, query, limit);
        }
        // Only a miss can be a probe (nothing stores a probe's answer), so a cache hit
        // never takes the probes' lock.
        if self.probe_arrived(&key.0) {
            // One of our own probes came back through an upstream: never send it out
            // again, or it would go round until the in-flight bound stopped it.
            wire::error_response(&mut out, query, rcode::SERVFAIL)?;
            return Some(out);
        }
        let Ok(_permit) = self.in_flight.try_acquire() else {
            wire::error_response(&mut out, query, rcode::SERVFAIL)?;
            return Some(out);
        };
        let sent = match &reply_edns {
            // The client's OPT replaced by ferry's.
            Some(edns) => {
                message.edns = Some(edns.clone());
                match message.to_vec() {
                    Ok(bytes) => bytes,
                    Err(_) => {
                        wire::error_response(&mut out, query, rcode::FORMERR)?;
                        return Some(out);
                    }
                }
            }
            None => query.to_vec(),
        };
        for upstream in self
            .upstreams
            .iter()
            .filter(|u| !u.looping.load(Ordering::Relaxed))
        {
            match ask(upstream.address, &sent).await {
                Ok(response) => {
                    self.store(key, &response);
                    return fit(response, reply_edns, query, limit);
                }
                Err(e) => debug!("{e}"),
            }
        }
        wire::error_response(&mut out, query, rcode::SERVFAIL)?;
        Some(out)
    }

    /// Asks each upstream for a random name and watches whether that query reaches this
    /// forwarder (through the listener that serves it): an upstream that sends it back is
    /// left out until a later probe finds it fixed. Must run while the listener answers.
    /// Returns the upstreams found looping.
    pub async fn probe_loops(&self) -> Vec<SocketAddr> {
        let mut looping = Vec::new();
        for upstream in &self.upstreams {
            let name = probe_name();
            self.probes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(name.clone(), 0);
            let mut probe = Message::new(rand_u16(), MessageType::Query, OpCode::Query);
            probe.metadata.recursion_desired = true;
            probe.add_query(Query::query(name.clone(), RecordType::HINFO));
            let sent = match probe.to_vec() {
                Ok(bytes) => ask(upstream.address, &bytes).await.map(|_| ()),
                Err(e) => {
                    debug!("encoding a loop probe: {e}");
                    continue;
                }
            };
            let arrived = self
                .probes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&name)
                .unwrap_or(0);
            let was = upstream.looping.swap(arrived > 0, Ordering::Relaxed);
            if arrived > 0 {
                looping.push(upstream.address);
                if !was {
                    error!(
                        upstream = %upstream.address,
                        "the upstream resolver sends queries back to ferry's DNS listener (a \
                         forwarding loop), so it is not used; give the agent a resolver that \
                         does not forward to ferry (--dns-upstream)"
                    );
                }
            } else if was {
                info!(upstream = %upstream.address, "the upstream resolver no longer loops back; using it again");
            }
            if let Err(e) = sent {
                debug!("loop probe: {e}");
            }
        }
        looping
    }

    /// Whether `name` is one of the probes under way; counts its arrival.
    fn probe_arrived(&self, name: &Name) -> bool {
        let mut probes = self.probes.lock().unwrap_or_else(PoisonError::into_inner);
        match probes.get_mut(name) {
            Some(count) => {
                *count += 1;
                true
            }
            None => false,
        }
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
                stored: tokio::time::Instant::now(),
                ttl,
            },
        );
    }
}

/// `response` encoded for the client that sent `query`: its id, `edns` in place of the
/// upstream's OPT (None: the client sent none, so it gets none), and truncated to the
/// question (TC set) when longer than the client can take.
fn fit(mut response: Message, edns: Option<Edns>, query: &[u8], limit: usize) -> Option<Vec<u8>> {
    response.metadata.id = u16::from_be_bytes([*query.first()?, *query.get(1)?]);
    response.edns = edns;
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

/// ferry's own OPT record: payload [`wire::EDNS_PAYLOAD`], version 0, no options.
fn own_edns(dnssec_ok: bool) -> Edns {
    let mut edns = Edns::new();
    edns.set_max_payload(wire::EDNS_PAYLOAD)
        .set_version(0)
        .set_dnssec_ok(dnssec_ok);
    edns
}

/// A socket for talking to `upstream`, marked so the kernel's DNS hooks let it pass.
fn marked_socket(
    upstream: SocketAddr,
    kind: Type,
    protocol: Protocol,
) -> Result<Socket, UpstreamError> {
    let io = |call| {
        move |source| UpstreamError::Io {
            call,
            upstream,
            source,
        }
    };
    let socket =
        Socket::new(Domain::for_address(upstream), kind, Some(protocol)).map_err(io("socket"))?;
    socket
        .set_mark(AGENT_SOCKET_MARK)
        .map_err(io("setsockopt(SO_MARK)"))?;
    socket
        .set_nonblocking(true)
        .map_err(io("set_nonblocking"))?;
    Ok(socket)
}

/// Asks `upstream` over UDP, then over TCP if the answer was truncated.
async fn ask(upstream: SocketAddr, query: &[u8]) -> Result<Message, UpstreamError> {
    let io = |call| {
        move |source| UpstreamError::Io {
            call,
            upstream,
            source,
        }
    };
    let mut sent = query.to_vec();
    // A fresh id per upstream query, so a forged reply has to guess it.
    let id = rand_u16();
    if let Some(head) = sent.get_mut(..2) {
        head.copy_from_slice(&id.to_be_bytes());
    }
    let socket = marked_socket(upstream, Type::DGRAM, Protocol::UDP)?;
    let socket = UdpSocket::from_std(socket.into()).map_err(io("register"))?;
    socket.connect(upstream).await.map_err(io("connect"))?;
    socket.send(&sent).await.map_err(io("send"))?;
    let mut buf = vec![0u8; 65_535];
    let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
    let response = loop {
        let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .map_err(|_| UpstreamError::Timeout {
                upstream,
                transport: "UDP",
            })?
            .map_err(io("recv"))?;
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
    let length =
        u16::try_from(sent.len()).map_err(|_| UpstreamError::TooLong { len: sent.len() })?;
    let exchange = async {
        let socket = marked_socket(upstream, Type::STREAM, Protocol::TCP)?;
        // Not connected yet, as tokio's TcpSocket wants it.
        let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
        let mut stream = socket.connect(upstream).await.map_err(io("connect"))?;
        let mut framed = length.to_be_bytes().to_vec();
        framed.extend_from_slice(&sent);
        stream.write_all(&framed).await.map_err(io("write"))?;
        let n = usize::from(stream.read_u16().await.map_err(io("read"))?);
        let mut answer = vec![0u8; n];
        stream.read_exact(&mut answer).await.map_err(io("read"))?;
        Ok(answer)
    };
    let answer = tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .map_err(|_| UpstreamError::Timeout {
            upstream,
            transport: "TCP",
        })??;
    Message::from_vec(&answer).map_err(|source| UpstreamError::Malformed { upstream, source })
}

/// A name nobody else asks: two random labels under a random top-level label, as CoreDNS's
/// `loop` plugin makes its probes, so no cache anywhere holds it and a real upstream
/// forwards it on rather than answering locally.
fn probe_name() -> Name {
    let label = || format!("{:04x}{:04x}", rand_u16(), rand_u16());
    let text = format!("{}.{}.ferry-loop-probe-{}.", label(), label(), label());
    // Hex labels with dashes always make a valid name; the fallback is never used.
    Name::from_ascii(&text).unwrap_or_else(|_| Name::root())
}

/// An unpredictable 16-bit number from the kernel's random pool.
fn rand_u16() -> u16 {
    let mut bytes = [0u8; 2];
    // SAFETY: the buffer is valid for its length; getrandom with no flags only fills it.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != 2 {
        // getrandom on a booted kernel does not fail for two bytes; fall back to the clock.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        return nanos as u16;
    }
    u16::from_be_bytes(bytes)
}
