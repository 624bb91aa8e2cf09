//! Host tier: the L4 ingress in the kernel. Three servers (namespaces, each with its Docker
//! Engine and agent, joined by the WireGuard mesh) run the site stack, whose shop service
//! publishes `tcp:` 7000 and `udp:` 7001 with a container on every server. A client
//! outside the servers (the test, on the bridge) uses server one's ports and sees:
//! every server says its L4 ports take the kernel path; 30 TCP and 30 UDP clients spread
//! 10/10/10 over the containers here and on the other servers, answers coming from the
//! address the client used; 4 MB echoed through a half-close; the kernel's per-backend
//! counters in the agent's metrics; the agent SIGKILLed under a continuous load of new
//! connections and long transfers without one failing, and the next agent adopting the
//! programs; a deploy under load sending new flows to the new generation at once while
//! open ones finish on the old; IP options and fragments; the relay taking over where the
//! operator asks for it (`--l4-path relay`), as `ferry servers list` shows; and a killed
//! container leaving the rotation (timed) with no connection failing meanwhile. The
//! programs' handling of malformed and hostile packets is `host_l4_packets`.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use ferry_tests::{
    central::Central,
    cluster::{Member, Operator, eventually},
    http::Conn,
    netns::Network,
    unique,
};

const MB: usize = 1 << 20;
const TCP_PORT: u16 = 7000;
const UDP_PORT: u16 = 7001;

/// `service generation container` as the app says it.
fn who(text: &str) -> (String, String, String) {
    let mut words = text.split_whitespace();
    let mut next = || words.next().unwrap_or_default().to_string();
    (next(), next(), next())
}

#[tokio::test(flavor = "multi_thread")]
async fn l4_ports_are_steered_in_the_kernel() -> Result<()> {
    let tag = unique("");
    let mut network = Network::new(&format!("fbl{tag}"), 161)?;
    let central_dir = std::env::temp_dir().join(format!("ferry-test-l4{tag}"));
    // Long enough for the transfers held open across the flip.
    let central = Central::start_with_drain(&central_dir, "10.250.161.1", "30s")?;
    let mut one = Member::join(&mut network, &central, "one", &tag).await?;
    let two = Member::join(&mut network, &central, "two", &tag).await?;
    let three = Member::join(&mut network, &central, "three", &tag).await?;
    let operator = Operator::login(&central, &tag)?;
    let site = Path::new(env!("CARGO_MANIFEST_DIR")).join("stacks/site");
    let site = site.to_string_lossy().into_owned();
    let (ok, out, err) = operator.run(&["deploy", "--stack", "site", &site])?;
    ensure!(ok, "deploy: {out}{err}");
    let ip = one.server.addr().context("server one has no address")?;
    let tcp = SocketAddr::new(ip.into(), TCP_PORT);
    let udp = SocketAddr::new(ip.into(), UDP_PORT);

    // Every server reports the kernel path once its bridge, mesh and ports are there.
    eventually(
        Duration::from_secs(30),
        "every server's L4 ports take the kernel path",
        || async {
            let (ok, out, _) = operator.run(&["servers", "list"])?;
            Ok(ok
                && out
                    .lines()
                    .skip(1)
                    .filter(|l| l.contains("kernel (eth0)"))
                    .count()
                    == 3)
        },
    )
    .await?;
    eventually(
        Duration::from_secs(30),
        "three shop containers answer on tcp 7000",
        || async {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..6 {
                seen.insert(greeting(tcp)?.2);
            }
            Ok(seen.len() == 3)
        },
    )
    .await?;

    spread_and_echo(tcp, udp)?;
    let metrics = kernel_counters(&one)?;
    ensure!(
        flows(&metrics, "tcp") >= 31 && flows(&metrics, "udp") >= 30,
        "the kernel counted {} TCP and {} UDP flows: {metrics:?}",
        flows(&metrics, "tcp"),
        flows(&metrics, "udp")
    );
    ensure!(
        metrics
            .iter()
            .any(|(series, value)| series.contains("direction=\"out\"")
                && series.contains("service=\"site/shop\"")
                && *value > 4 * MB as u64),
        "no backend's bytes out cover the 4 MB echo: {metrics:?}"
    );

    options_and_fragments(tcp, udp)?;

    killed_under_load(tcp, udp, &mut one).await?;

    deploy_under_load(tcp, &operator, &site).await?;

    relay_where_the_operator_asks(tcp, udp, &operator, &mut one).await?;

    // Server one relays now: through server two's port, a container on server three dies.
    let two_tcp = SocketAddr::new(
        two.server
            .addr()
            .context("server two has no address")?
            .into(),
        TCP_PORT,
    );
    killed_container_leaves_rotation(two_tcp, &three).await?;

    for member in [one, two, three] {
        member.clean_up().await;
    }
    drop(central);
    let _ = std::fs::remove_dir_all(&central_dir);
    Ok(())
}

/// One connection's first line: who answered.
fn greeting(tcp: SocketAddr) -> Result<(String, String, String)> {
    let stream = TcpStream::connect_timeout(&tcp, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    let answer = who(&line);
    ensure!(answer.0 == "shop", "tcp {tcp} reached {line:?}");
    Ok(answer)
}

/// 30 TCP connections and 30 UDP clients spread 10/10/10; a client's datagrams stay with
/// its container and come back from the address it sent to; 4 MB come back intact through
/// a TCP connection after a half-close.
fn spread_and_echo(tcp: SocketAddr, udp: SocketAddr) -> Result<()> {
    let mut counts = BTreeMap::<String, usize>::new();
    for _ in 0..30 {
        *counts.entry(greeting(tcp)?.2).or_default() += 1;
    }
    ensure!(
        counts.len() == 3 && counts.values().all(|n| *n == 10),
        "TCP connections uneven: {counts:?}"
    );
    echo(tcp, 4 * MB)?;

    let mut counts = BTreeMap::<String, usize>::new();
    // Kept open to the end, so no two clients share a source port (30 flows, not fewer).
    let mut clients = Vec::new();
    for i in 0..30 {
        clients.push(UdpSocket::bind("0.0.0.0:0")?);
        let socket = clients.last().context("no client")?;
        socket.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut first = None;
        for round in 0..2 {
            socket.send_to(format!("ping {i} {round}").as_bytes(), udp)?;
            let mut buf = [0u8; 512];
            let (n, from) = socket.recv_from(&mut buf).context("no UDP answer")?;
            ensure!(from == udp, "a UDP answer came from {from}, not {udp}");
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            ensure!(text.ends_with(&format!("ping {i} {round}")), "{text}");
            let container = who(&text).2;
            match &first {
                None => first = Some(container),
                Some(c) => ensure!(
                    *c == container,
                    "a UDP client moved from {c} to {container}"
                ),
            }
        }
        *counts.entry(first.unwrap_or_default()).or_default() += 1;
    }
    ensure!(
        counts.len() == 3 && counts.values().all(|n| *n == 10),
        "UDP clients uneven: {counts:?}"
    );
    Ok(())
}

/// The kernel's L4 counters from server one's metrics: (series with labels, value).
fn kernel_counters(member: &Member) -> Result<Vec<(String, u64)>> {
    let text = member.server.run(|| -> Result<String> {
        let mut m = Conn::open("127.0.0.1:9466".parse()?)?;
        Ok(m.get("localhost", "/metrics")?.text())
    })??;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("ferry_l4_kernel_"))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect())
}

/// Flows of `protocol` the kernel counted, over every backend.
fn flows(metrics: &[(String, u64)], protocol: &str) -> u64 {
    metrics
        .iter()
        .filter(|(series, _)| {
            series.starts_with("ferry_l4_kernel_flows_total")
                && series.contains(&format!("protocol=\"{protocol}\""))
        })
        .map(|(_, v)| *v)
        .sum()
}

/// A TCP connection whose every packet carries IP options (4 bytes: NOP NOP NOP EOL) is
/// steered and echoes; a UDP datagram too large for one packet arrives in fragments, which
/// the programs leave to the stack, and the relay answers it whole.
fn options_and_fragments(tcp: SocketAddr, udp: SocketAddr) -> Result<()> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    // SAFETY: a new socket, owned by the TcpStream below from here on.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a socket we own.
    let mut stream = unsafe { TcpStream::from_raw_fd(fd) };
    let options = [1u8, 1, 1, 0];
    // SAFETY: the option buffer outlives the call.
    let set = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_OPTIONS,
            options.as_ptr().cast(),
            options.len() as libc::socklen_t,
        )
    };
    ensure!(set == 0, "IP_OPTIONS: {}", std::io::Error::last_os_error());
    let SocketAddr::V4(v4) = tcp else {
        anyhow::bail!("{tcp} is not IPv4");
    };
    let address = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(v4.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: the address is a valid sockaddr_in for the call's duration.
    let connected = unsafe {
        libc::connect(
            stream.as_raw_fd(),
            (&raw const address).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    ensure!(
        connected == 0,
        "connect with IP options: {}",
        std::io::Error::last_os_error()
    );
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    ensure!(who(&line).0 == "shop", "with IP options: {line:?}");
    stream.write_all(b"options survive\n")?;
    let mut echo = String::new();
    reader.read_line(&mut echo)?;
    ensure!(
        echo == "options survive\n",
        "with IP options the echo was {echo:?}"
    );

    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    let big: Vec<u8> = (0..3000).map(|i| b'a' + (i % 26) as u8).collect();
    socket.send_to(&big, udp)?;
    let mut buf = vec![0u8; 8192];
    let (n, from) = socket
        .recv_from(&mut buf)
        .context("no answer to a fragmented datagram")?;
    ensure!(
        from == udp,
        "the fragmented datagram's answer came from {from}"
    );
    ensure!(
        buf[..n].ends_with(&big) && who(&String::from_utf8_lossy(&buf[..n])).0 == "shop",
        "the fragmented datagram's answer is {n} bytes, not the app's echo of it"
    );
    Ok(())
}

/// What a load saw: successes of each kind and every failure, as text.
struct Seen {
    started: std::time::Instant,
    connects: AtomicUsize,
    transfers: AtomicUsize,
    datagrams: AtomicUsize,
    failures: std::sync::Mutex<Vec<String>>,
    /// Datagrams answered only when sent again: when first sent, and who answered.
    resent: std::sync::Mutex<Vec<String>>,
}

impl Default for Seen {
    fn default() -> Self {
        Self {
            started: std::time::Instant::now(),
            connects: AtomicUsize::default(),
            transfers: AtomicUsize::default(),
            datagrams: AtomicUsize::default(),
            failures: std::sync::Mutex::default(),
            resent: std::sync::Mutex::default(),
        }
    }
}

impl Seen {
    fn failed(&self, what: &str, e: &anyhow::Error) {
        let at = self.started.elapsed();
        if let Ok(mut failures) = self.failures.lock() {
            failures.push(format!("{what} at {at:?} into the load: {e:#}"));
        }
    }

    fn resent(&self, what: String) {
        if let Ok(mut resent) = self.resent.lock() {
            resent.push(what);
        }
    }

    /// How long the load has run.
    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn counts(&self) -> (usize, usize, usize) {
        (
            self.connects.load(Ordering::Relaxed),
            self.transfers.load(Ordering::Relaxed),
            self.datagrams.load(Ordering::Relaxed),
        )
    }
}

/// A continuous load until stopped: new connections one after another, two clients
/// echoing 1 MB transfers one after another, and a UDP client. A datagram whose answer
/// does not come is sent once more, as DNS clients do (UDP promises no delivery, and two
/// cores moving wireguard-go's traffic drop some); a second loss is a failure.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Seen>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(tcp: SocketAddr, udp: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Seen::default());
        let mut threads = Vec::new();
        let spawn = |threads: &mut Vec<_>, body: Box<dyn Fn(&Seen) + Send>| {
            let (stop, seen) = (stop.clone(), seen.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    body(&seen);
                }
            }));
        };
        spawn(
            &mut threads,
            Box::new(move |seen: &Seen| match greeting(tcp) {
                Ok(_) => {
                    seen.connects.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => seen.failed("connection", &e),
            }),
        );
        for _ in 0..2 {
            spawn(
                &mut threads,
                Box::new(move |seen: &Seen| match echo(tcp, MB) {
                    Ok(()) => {
                        seen.transfers.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => seen.failed("transfer", &e),
                }),
            );
        }
        spawn(
            &mut threads,
            Box::new(move |seen: &Seen| {
                let asked = || -> Result<()> {
                    let socket = UdpSocket::bind("0.0.0.0:0")?;
                    socket.set_read_timeout(Some(Duration::from_secs(3)))?;
                    for i in 0..20 {
                        let wanted = format!("load {i}");
                        let mut answered = false;
                        let first = seen.elapsed();
                        for attempt in 0..2 {
                            socket.send_to(wanted.as_bytes(), udp)?;
                            let mut buf = [0u8; 512];
                            // A late answer to the previous datagram is skipped.
                            while let Ok((n, _)) = socket.recv_from(&mut buf) {
                                let answer = String::from_utf8_lossy(&buf[..n]);
                                if answer.ends_with(&wanted) {
                                    answered = true;
                                    if attempt > 0 {
                                        seen.resent(format!("{first:?}: {answer}"));
                                    }
                                    break;
                                }
                            }
                            if answered {
                                break;
                            }
                        }
                        ensure!(
                            answered,
                            "no answer to {wanted:?}, first sent at {first:?}, twice; from {}",
                            socket.local_addr()?
                        );
                        seen.datagrams.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                };
                if let Err(e) = asked() {
                    seen.failed("datagram", &e);
                }
            }),
        );
        Self {
            stop,
            seen,
            threads,
        }
    }

    /// Waits until every kind of traffic has moved on by at least `by` since `from`.
    async fn progressed(
        &self,
        from: (usize, usize, usize),
        by: (usize, usize, usize),
        what: &str,
    ) -> Result<()> {
        eventually(Duration::from_secs(60), what, || async {
            let now = self.seen.counts();
            Ok(now.0 >= from.0 + by.0 && now.1 >= from.1 + by.1 && now.2 >= from.2 + by.2)
        })
        .await
    }

    /// Stops the load; every failure it saw, if any.
    fn stop(self) -> Result<(usize, usize, usize)> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("a load thread panicked"))?;
        }
        let failures = self
            .seen
            .failures
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        let resent = self
            .seen
            .resent
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        println!("datagrams answered only when sent again: {resent:?}");
        ensure!(
            failures.is_empty(),
            "{} failed: {failures:#?}",
            failures.len()
        );
        Ok(self.seen.counts())
    }
}

/// `size` bytes through a connection and back after a half-close, compared.
fn echo(tcp: SocketAddr, size: usize) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&tcp, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let sent: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let writer = {
        let mut stream = stream.try_clone()?;
        let sent = sent.clone();
        std::thread::spawn(move || -> std::io::Result<()> {
            stream.write_all(&sent)?;
            stream.shutdown(std::net::Shutdown::Write)
        })
    };
    let mut back = Vec::new();
    let read = stream.read_to_end(&mut back);
    let written = writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))?;
    read.context("reading the echo")?;
    written.context("sending")?;
    let start = back
        .iter()
        .position(|b| *b == b'\n')
        .context("no greeting")?
        + 1;
    ensure!(
        back[start..] == sent[..],
        "the echo differs ({} bytes back)",
        back.len() - start
    );
    Ok(())
}

/// Under a continuous load, server one's agent is SIGKILLed: traffic keeps flowing with
/// no agent at all, nothing fails, and the next agent adopts the pinned link (the same
/// one, not a new one) and the maps (its counters go on from where they were).
async fn killed_under_load(tcp: SocketAddr, udp: SocketAddr, one: &mut Member) -> Result<()> {
    let link = one.paths.bpffs.join("tc-links/ferry_l4_ingress-eth0");
    let inode = |path: &Path| -> Result<u64> {
        use std::os::unix::fs::MetadataExt as _;
        Ok(std::fs::metadata(path)
            .with_context(|| format!("{}", path.display()))?
            .ino())
    };
    let pinned = inode(&link)?;
    let load = Load::start(tcp, udp);
    load.progressed((0, 0, 0), (50, 3, 20), "the load runs")
        .await?;
    let before = flows(&kernel_counters(one)?, "tcp");
    one.kill_agent()?;
    let at_kill = load.seen.counts();
    let killed_at = load.seen.elapsed();
    load.progressed(at_kill, (300, 6, 60), "the load goes on with no agent")
        .await?;
    one.start_agent()?;
    let started_at = load.seen.elapsed();
    eventually(
        Duration::from_secs(20),
        "the new agent serves metrics",
        || async { Ok(kernel_counters(one).is_ok_and(|m| flows(&m, "tcp") > before)) },
    )
    .await?;
    let restarted = load.seen.counts();
    load.progressed(restarted, (50, 3, 20), "the load goes on after the restart")
        .await?;
    let (connects, transfers, datagrams) = load.stop().with_context(|| {
        format!("agent killed at {killed_at:?}, started again at {started_at:?}")
    })?;
    ensure!(
        inode(&link)? == pinned,
        "the restarted agent made a new link instead of adopting the pinned one"
    );
    println!(
        "agent SIGKILLed under load: {connects} connections, {transfers} transfers of 1 MB, \
         {datagrams} datagrams, none failed ({} connections while no agent ran)",
        restarted.0 - at_kill.0
    );
    Ok(())
}

/// Three connections stay open, exchanging 64 KB at a time, while the stack is deployed
/// again: from the flip on every new connection reaches the new generation, while the
/// open ones go on, and finish, on the old one (within central's 30 s drain), every byte
/// intact.
async fn deploy_under_load(tcp: SocketAddr, operator: &Operator, site: &str) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let exchanged = Arc::new(AtomicUsize::new(0));
    let held: Vec<_> = (0..3)
        .map(|_| {
            let (stop, exchanged) = (stop.clone(), exchanged.clone());
            std::thread::spawn(move || -> Result<String> {
                let started = std::time::Instant::now();
                let mut stream = TcpStream::connect_timeout(&tcp, Duration::from_secs(5))?;
                stream.set_read_timeout(Some(Duration::from_secs(20)))?;
                let mut reader = BufReader::new(stream.try_clone()?);
                let mut line = String::new();
                reader.read_line(&mut line)?;
                let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 249) as u8).collect();
                let mut back = vec![0u8; chunk.len()];
                let mut mine = 0;
                while !stop.load(Ordering::Relaxed) {
                    let mut exchange = || -> Result<()> {
                        stream.write_all(&chunk)?;
                        reader.read_exact(&mut back)?;
                        ensure!(back == chunk, "an exchange came back different");
                        Ok(())
                    };
                    exchange().with_context(|| {
                        format!(
                            "held connection to {} after {mine} exchanges, {:?} in",
                            line.trim(),
                            started.elapsed()
                        )
                    })?;
                    mine += 1;
                    exchanged.fetch_add(1, Ordering::Relaxed);
                }
                Ok(who(&line).1)
            })
        })
        .collect();
    eventually(
        Duration::from_secs(20),
        "the held connections exchange",
        || async { Ok(exchanged.load(Ordering::Relaxed) >= 30) },
    )
    .await?;
    let old = greeting(tcp)?.1;
    // The deploy returns once the old generation has drained: the flip comes well before.
    let deploy = operator.spawn(&["deploy", "--stack", "site", site]);
    eventually(
        Duration::from_secs(90),
        "a new connection reaches the new generation",
        || async { Ok(greeting(tcp)?.1 != old) },
    )
    .await?;
    let at_flip = exchanged.load(Ordering::Relaxed);
    // The records of the new containers may reach the agent one by one.
    eventually(
        Duration::from_secs(10),
        "new connections reach the three new containers",
        || async {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..6 {
                let (_, generation, container) = greeting(tcp)?;
                ensure!(
                    generation != old,
                    "a new connection reached generation {old}"
                );
                seen.insert(container);
            }
            Ok(seen.len() == 3)
        },
    )
    .await?;
    let mut counts = BTreeMap::<(String, String), usize>::new();
    for _ in 0..30 {
        let (_, generation, container) = greeting(tcp)?;
        *counts.entry((generation, container)).or_default() += 1;
    }
    ensure!(
        counts.len() == 3 && counts.iter().all(|((g, _), n)| *g != old && *n == 10),
        "after the deploy new connections went to {counts:?}"
    );
    let went_on = eventually(
        Duration::from_secs(20),
        "the held connections go on after the flip",
        || async { Ok(exchanged.load(Ordering::Relaxed) >= at_flip + 30) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let generations: Vec<Result<String>> = held
        .into_iter()
        .map(|connection| {
            connection
                .join()
                .map_err(|_| anyhow::anyhow!("a held connection panicked"))?
        })
        .collect();
    went_on.with_context(|| format!("the held connections ended with {generations:?}"))?;
    for generation in generations {
        let generation = generation?;
        ensure!(
            generation == old,
            "a held connection was on generation {generation}"
        );
    }
    let (ok, out, err) = deploy
        .join()
        .map_err(|_| anyhow::anyhow!("the deploy panicked"))??;
    ensure!(ok, "deploy: {out}{err}");
    Ok(())
}

/// A shop container on `member` is killed: new connections to `tcp` stop reaching it
/// (measured), and every one made meanwhile is answered (a SYN that found the dead
/// container is sent again by the client and taken by the next one).
async fn killed_container_leaves_rotation(tcp: SocketAddr, member: &Member) -> Result<()> {
    let victim = member
        .containers()
        .await?
        .into_iter()
        .find(|c| c.service == "shop" && c.running)
        .context("no shop container runs there")?;
    member
        .docker
        .engine()
        .docker()
        .kill_container(
            &victim.id,
            None::<bollard::query_parameters::KillContainerOptions>,
        )
        .await?;
    let started = std::time::Instant::now();
    let mut in_a_row = 0;
    let mut connections = 0;
    while in_a_row < 12 {
        let (_, _, container) = greeting(tcp)?;
        connections += 1;
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "{} still reached {:?} after it was killed",
            container,
            started.elapsed()
        );
        in_a_row = if victim.id.starts_with(&container) {
            0
        } else {
            in_a_row + 1
        };
    }
    println!(
        "a killed container left the L4 rotation within {:?} ({connections} connections meanwhile, none failed)",
        started.elapsed()
    );
    Ok(())
}

/// Server one's agent restarted with `--l4-path relay`: the programs are detached, `ferry
/// servers list` says so, and the relay spreads the same clients the same way.
async fn relay_where_the_operator_asks(
    tcp: SocketAddr,
    udp: SocketAddr,
    operator: &Operator,
    one: &mut Member,
) -> Result<()> {
    one.stop_agent()?;
    one.paths
        .extra
        .extend(["--l4-path".to_string(), "relay".to_string()]);
    one.start_agent()?;
    eventually(
        Duration::from_secs(30),
        "server one reports the relay",
        || async {
            let (ok, out, _) = operator.run(&["servers", "list"])?;
            Ok(ok && out.lines().any(|l| l.contains("relay (--l4-path relay)")))
        },
    )
    .await?;
    ensure!(
        !one.paths
            .bpffs
            .join("tc-links/ferry_l4_ingress-eth0")
            .exists(),
        "the ingress program is still pinned on eth0"
    );
    let before = flows(&kernel_counters(one)?, "tcp");
    spread_and_echo(tcp, udp)?;
    ensure!(
        flows(&kernel_counters(one)?, "tcp") == before,
        "the kernel still steered flows"
    );
    Ok(())
}
