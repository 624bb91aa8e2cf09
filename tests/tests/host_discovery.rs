//! Host tier: version-aware discovery with real clients inside real containers. The example
//! stack's containers resolve `.cloud66.local` through whatever resolver Docker gave them
//! (glibc, Node's two resolvers, dig): the kernel sends the query to the agent, which
//! answers per the caller's cgroup, datasources included. During a deploy old and new `web` each reach their own
//! `api`, by name and through the service address; two processes with one source address
//! in different cgroups get different answers; a connection held across the flip stays on
//! its backend while new ones go to the new generation; outsiders get nothing; hostile packets are
//! survived; an agent killed and restarted keeps names and service addresses working.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};
use ferry_agent::containers::{Engine, FerryContainer};
use ferry_api::client::{Client, Trust};
use ferry_tests::{
    central::Central,
    cgroup::cgroup2_root,
    cluster::{Member, Operator, UPSTREAM, eventually},
    inside::{exec, get_from, http_get, node},
    netns::{Network, Server, ip},
    resolvers::dnsmasq,
    unique,
};

/// The name the test's upstream resolver answers, and its address.
const OUTSIDE_NAME: &str = "shop-partner.example";
const OUTSIDE_ADDRESS: &str = "192.0.2.7";
/// Where the test points the stack's redis datasource (only ever resolved, never reached).
const DATASOURCE_ADDRESS: &str = "192.0.2.10";

/// dnsmasq inside the server's namespace, at the address every member's agent forwards to.
struct Upstream(Child);

impl Upstream {
    fn start(server: &Server) -> Result<Self> {
        let port = UPSTREAM
            .rsplit(':')
            .next()
            .context("UPSTREAM has no port")?;
        let names = [(OUTSIDE_NAME.to_string(), OUTSIDE_ADDRESS.to_string())];
        let mut cmd = dnsmasq("127.0.0.1", port.parse()?, &names);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        server.enter(&mut cmd);
        let child = cmd
            .spawn()
            .context("starting dnsmasq; install dnsmasq-base with `./x setup`")?;
        Ok(Self(child))
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn container(one: &Member, service: &str, generation: u64) -> Result<FerryContainer> {
    one.containers()
        .await?
        .into_iter()
        .find(|c| c.service == service && c.generation == generation && c.running)
        .with_context(|| format!("no running {service} of generation {generation}"))
}

/// `dig +short ARGS` inside container `id`.
async fn dig(engine: &Engine, id: &str, args: &[&str]) -> Result<String> {
    let mut command = vec!["dig", "+short", "+time=3", "+tries=2"];
    command.extend_from_slice(args);
    exec(engine, id, &command).await
}

/// The cgroup v2 directory container `id`'s processes are in.
async fn cgroup_of(engine: &Engine, id: &str) -> Result<PathBuf> {
    let pid = ferry_tests::inside::pid(engine, id).await?;
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .context("no cgroup v2 line")?;
    Ok(cgroup2_root()?.join(path.trim_start_matches('/')))
}

/// `dig +short` run in `server`'s namespace as a host process, or, given `cgroup`, as a
/// process placed in that cgroup before it starts.
fn dig_on_host(server: &Server, cgroup: Option<&Path>, args: &[&str]) -> Result<String> {
    let mut script = String::new();
    if let Some(cgroup) = cgroup {
        script.push_str(&format!("echo $$ > {}/cgroup.procs && ", cgroup.display()));
    }
    script.push_str("exec dig +short +time=2 +tries=1 \"$@\"");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script, "dig"]).args(args);
    server.enter(&mut cmd);
    let out = cmd.output().context("running dig")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A Node process in a fresh cgroup below the agent's root (steered, but no container):
/// it keeps one connection to a service address, asking on it every 300 ms and printing
/// `kept N` for generation N's answers, and on each line of input opens a new connection
/// and prints `new N`.
struct HeldConnection {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    cgroup: PathBuf,
}

impl HeldConnection {
    fn open(member: &Member, target: SocketAddrV4) -> Result<Self> {
        let cgroup = member.paths.cgroup_root.join("held-connection");
        std::fs::create_dir_all(&cgroup)?;
        let (host, port) = (target.ip(), target.port());
        let script = format!(
            r#"const net = require('net');
const answers = (socket, label) => {{
  let buf = '';
  socket.on('data', d => {{
    buf += d;
    let m;
    while ((m = buf.match(/api of generation (\d+)/))) {{
      console.log(label + ' ' + m[1]);
      buf = buf.slice(m.index + m[0].length);
    }}
  }});
}};
const kept = net.connect({port}, '{host}');
answers(kept, 'kept');
kept.on('close', () => console.log('kept closed'));
setInterval(() => kept.write('GET / HTTP/1.1\r\nHost: api\r\n\r\n'), 300);
require('readline').createInterface({{ input: process.stdin }}).on('line', () => {{
  const s = net.connect({port}, '{host}', () => s.write('GET / HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n'));
  answers(s, 'new');
}});"#
        );
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            &format!(
                "echo $$ > {}/cgroup.procs && exec node -e \"$0\"",
                cgroup.display()
            ),
            &script,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        member.server.enter(&mut cmd);
        let mut child = cmd.spawn().context("starting node")?;
        let stdout = child.stdout.take().context("node's stdout")?;
        let lines = ferry_tests::lines_of(stdout);
        Ok(Self {
            child,
            lines,
            cgroup,
        })
    }

    /// Waits for the line `wanted`; fails on `kept closed` or a kept answer of another
    /// generation than the first.
    fn expect(&mut self, wanted: &str, within: Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .with_context(|| format!("no {wanted:?} within {within:?}"))?;
            anyhow::ensure!(
                line != "kept closed" && !(line.starts_with("kept") && line != "kept 1"),
                "the held connection changed: {line}"
            );
            if line == wanted {
                return Ok(());
            }
        }
    }

    fn ask_new(&mut self) -> Result<()> {
        use std::io::Write as _;
        let stdin = self.child.stdin.as_mut().context("node's stdin")?;
        stdin.write_all(b"new\n")?;
        Ok(())
    }
}

impl Drop for HeldConnection {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

/// From inside a container, through the kernel's interception: a name with names below it
/// is NODATA (never NXDOMAIN), the apex answers its SOA, EDNS(0) is answered with ferry's
/// own OPT (BADVERS for version 1), DNS over TCP gets the caller's own generation like UDP,
/// and Node's default `dns.lookup` (A and AAAA at once) and `fetch` find the api in one
/// attempt: the AAAA half gets an immediate NODATA, not a timeout.
async fn dns_edges_answer_as_the_rfcs_say(engine: &Engine, web: &str, api_ip: &str) -> Result<()> {
    let full = |args: &'static [&'static str]| {
        let mut command = vec!["dig", "+time=3", "+tries=1"];
        command.extend_from_slice(args);
        async move { exec(engine, web, &command).await }
    };
    let empty = full(&["address.cloud66.local"]).await?;
    assert!(
        empty.contains("status: NOERROR") && empty.contains("ANSWER: 0"),
        "address.cloud66.local has names below it:\n{empty}"
    );
    assert!(empty.contains("AUTHORITY: 1"), "{empty}");
    let soa = dig(engine, web, &["SOA", "cloud66.local"]).await?;
    assert!(
        soa.starts_with("ns.cloud66.local. hostmaster.cloud66.local. "),
        "the apex's SOA in the answer: {soa:?}"
    );
    // dig sends EDNS(0) with a 1232-byte payload and a cookie: ferry's OPT comes back.
    let edns = full(&["api.cloud66.local"]).await?;
    assert!(
        edns.contains("EDNS: version: 0") && edns.contains("udp: 1232"),
        "{edns}"
    );
    assert!(
        !edns.contains("COOKIE"),
        "the client's cookie was echoed:\n{edns}"
    );
    let badvers = full(&["+edns=1", "+noednsnegotiation", "api.cloud66.local"]).await?;
    assert!(badvers.contains("status: BADVERS"), "{badvers}");
    // Over TCP: intercepted too, and the same generation's answer.
    assert_eq!(
        dig(engine, web, &["+tcp", "api.cloud66.local"]).await?,
        api_ip
    );
    // Node's default lookup asks A and AAAA; ContainerNet is IPv4, so AAAA is NODATA at once.
    let lookup = node(
        engine,
        web,
        "const t = Date.now(); require('dns').lookup('api.cloud66.local', { all: true }, \
         (e, a) => console.log(e ? e.code : a.map(x => x.address + '/' + x.family).join(','), Date.now() - t))",
    )
    .await?;
    let (found, millis) = lookup.split_once(' ').context("lookup printed no time")?;
    assert_eq!(found, format!("{api_ip}/4"));
    let millis: u64 = millis.parse().context("lookup's time")?;
    // A lost AAAA would cost the resolver's 5 s timeout (resolv.conf's default).
    assert!(
        millis < 5000,
        "dns.lookup took {millis} ms: the AAAA half waited for a timeout"
    );
    let fetched = node(
        engine,
        web,
        "fetch('http://api.cloud66.local:4000/').then(r => r.text()).then(t => console.log(t.trim()), e => console.log('error', e.cause ? e.cause.code : e))",
    )
    .await?;
    assert!(
        fetched.starts_with("api of generation 1"),
        "fetch got {fetched:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_resolve_their_own_generation_through_the_kernel() -> Result<()> {
    let tag = unique("");
    let mut network = Network::new(&format!("fbs{tag}"), 71)?;
    // The example stack's web installs Express: from the registry on the test network.
    network.serve_registry()?;
    let central_dir = std::env::temp_dir().join(format!("ferry-test-discovery{tag}"));
    // Long enough to look at both generations side by side after the flip.
    let central = Central::start_with_drain(&central_dir, "10.250.71.1", "15s")?;
    let mut one = Member::join(&mut network, &central, "one", &tag).await?;
    let _upstream = Upstream::start(&one.server)?;
    let operator = Operator::login(&central, &tag)?;
    let shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop");
    let shop = shop.to_string_lossy();
    let (ok, out, err) = operator.run(&["deploy", "--stack", "shop", &shop])?;
    assert!(ok, "{out}{err}");
    let admin = Client::new(
        &central.url,
        &central.admin_token,
        Trust::Fingerprint(central.ca_fingerprint.clone()),
    )?;
    let engine = one.docker.engine().clone();
    let (api1, web1) = (
        container(&one, "api", 1).await?,
        container(&one, "web", 1).await?,
    );
    let api1_ip = api1.address.context("api has no address")?.to_string();
    let web1_ip = web1.address.context("web has no address")?;

    // Every client in the container asks its usual resolver (Docker's 127.0.0.11) and gets
    // ferry's answer.
    let getent = exec(&engine, &web1.id, &["getent", "hosts", "api.cloud66.local"]).await?;
    assert_eq!(
        getent.split_whitespace().next(),
        Some(api1_ip.as_str()),
        "{getent}"
    );
    let lookup = node(
        &engine,
        &web1.id,
        "require('dns').lookup('api.cloud66.local', 4, (e, a) => console.log(e ? e.code : a))",
    )
    .await?;
    assert_eq!(lookup, api1_ip);
    let resolve4 = node(
        &engine,
        &web1.id,
        "require('dns').resolve4('api.cloud66.local', (e, a) => console.log(e ? e.code : a.join(',')))",
    )
    .await?;
    assert_eq!(resolve4, api1_ip);
    assert_eq!(
        dig(&engine, &web1.id, &["api.cloud66.local"]).await?,
        api1_ip
    );
    assert_eq!(
        dig(&engine, &web1.id, &["SRV", "api.cloud66.local"]).await?,
        "0 1 4000 api.cloud66.local."
    );
    let missing = exec(
        &engine,
        &web1.id,
        &["dig", "+time=3", "nosuch.cloud66.local"],
    )
    .await?;
    assert!(missing.contains("status: NXDOMAIN"), "{missing}");
    dns_edges_answer_as_the_rfcs_say(&engine, &web1.id, &api1_ip).await?;
    // Names that are not ferry's go to the server's own resolver (the test's dnsmasq).
    assert_eq!(
        dig(&engine, &web1.id, &[OUTSIDE_NAME]).await?,
        OUTSIDE_ADDRESS
    );
    let outside = exec(&engine, &web1.id, &["getent", "hosts", OUTSIDE_NAME]).await?;
    assert!(outside.starts_with(OUTSIDE_ADDRESS), "{outside}");
    // A datasource the stack points at resolves too (the example's REDIS_HOST).
    let (ok, out, err) = operator.run(&[
        "datasources",
        "set",
        "--stack",
        "shop",
        "redis",
        DATASOURCE_ADDRESS,
    ])?;
    assert!(ok, "{out}{err}");
    eventually(
        Duration::from_secs(5),
        "redis.cloud66.local resolves",
        || async {
            Ok(dig(&engine, &web1.id, &["redis.cloud66.local"]).await? == DATASOURCE_ADDRESS)
        },
    )
    .await?;
    let redis = exec(
        &engine,
        &web1.id,
        &["getent", "hosts", "redis.cloud66.local"],
    )
    .await?;
    assert!(redis.starts_with(DATASOURCE_ADDRESS), "{redis}");
    // The service address has a name of its own.
    let address: Ipv4Addr = dig(&engine, &web1.id, &["api.address.cloud66.local"])
        .await?
        .parse()
        .context("api.address.cloud66.local is not an address")?;
    assert_eq!(address.octets()[..2], [10, 96]);
    let service_address = SocketAddrV4::new(address, 4000);
    // And the app itself: web's request to http://api.cloud66.local:4000 (Node's http,
    // glibc-style lookup) reaches the api.
    let web1_answer = one
        .server
        .run(|| http_get(SocketAddrV4::new(web1_ip, 3000), "/"))??;
    assert!(
        web1_answer.ends_with("api says: api of generation 1\n"),
        "{web1_answer}"
    );

    // Outsiders get nothing: a query routed in from another namespace is dropped, while
    // the server's own processes are answered.
    let outsider = network.server(&format!("fout{tag}"))?;
    let via = one.server.addr().context("server one has no address")?;
    ip(&[
        "-n",
        outsider.name(),
        "route",
        "add",
        "10.66.1.0/24",
        "via",
        &via.to_string(),
    ])?;
    let listener = "@10.66.1.1";
    for name in ["api.cloud66.local", OUTSIDE_NAME] {
        let out = dig_on_host(&outsider, None, &[listener, name])?;
        assert!(
            out.contains("timed out") && !out.contains(&api1_ip) && !out.contains(OUTSIDE_ADDRESS),
            "an outsider asking for {name} got: {out}"
        );
    }
    assert_eq!(
        dig_on_host(&one.server, None, &[listener, "api.cloud66.local"])?,
        api1_ip
    );

    // Hostile packets: truncated, oversized, a compression loop. None crashes the server.
    let hostile = one.server.run(|| -> Result<Vec<usize>> {
        let socket = UdpSocket::bind("10.66.1.1:0")?;
        socket.set_read_timeout(Some(Duration::from_millis(500)))?;
        socket.connect("10.66.1.1:53")?;
        let mut loop_query = vec![0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        loop_query.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        let packets: [Vec<u8>; 4] = [
            vec![0x12],
            vec![0x12, 0x34, 1, 0, 0, 1],
            vec![0; 9000],
            loop_query,
        ];
        let mut answers = Vec::new();
        for packet in packets {
            socket.send(&packet)?;
            let mut buf = [0u8; 1024];
            answers.push(socket.recv(&mut buf).unwrap_or(0));
        }
        Ok(answers)
    })??;
    // Too short for a header: silence; a header with no question, or a looping name:
    // an error response of header size only.
    assert_eq!(hostile[0], 0, "{hostile:?}");
    assert!(hostile[1] == 0 || hostile[1] == 12, "{hostile:?}");
    assert!(hostile[3] == 0 || hostile[3] == 12, "{hostile:?}");
    assert_eq!(
        dig(&engine, &web1.id, &["api.cloud66.local"]).await?,
        api1_ip
    );

    // A process in a cgroup of ferry's tree that is no container of the stack holds a
    // connection to the service address across the deploy.
    let mut held = HeldConnection::open(&one, service_address)?;
    held.expect("kept 1", Duration::from_secs(10))?;

    // A deploy: after the flip, while generation 1 drains, each web reaches its own api,
    // by name and through the service address.
    let deploy = operator.spawn(&["deploy", "--stack", "shop", &shop]);
    eventually(Duration::from_secs(90), "generation 2 serves", || async {
        Ok(admin.stacks().await?[0].serving == Some(2))
    })
    .await?;
    // The held connection stays on its generation-1 backend; a new one goes to the new
    // generation.
    held.ask_new()?;
    held.expect("new 2", Duration::from_secs(10))?;
    held.expect("kept 1", Duration::from_secs(5))?;
    drop(held);
    let (api2, web2) = (
        container(&one, "api", 2).await?,
        container(&one, "web", 2).await?,
    );
    let api2_ip = api2.address.context("api 2 has no address")?.to_string();
    let web2_ip = web2.address.context("web 2 has no address")?;
    assert_eq!(
        dig(&engine, &web1.id, &["api.cloud66.local"]).await?,
        api1_ip
    );
    assert_eq!(
        dig(&engine, &web2.id, &["api.cloud66.local"]).await?,
        api2_ip
    );
    let (old, new) = one.server.run(|| {
        (
            http_get(SocketAddrV4::new(web1_ip, 3000), "/"),
            http_get(SocketAddrV4::new(web2_ip, 3000), "/"),
        )
    })?;
    assert!(old?.ends_with("api says: api of generation 1\n"));
    assert!(new?.ends_with("api says: api of generation 2\n"));
    assert_eq!(
        get_from(&engine, &web1.id, service_address).await?,
        "api of generation 1"
    );
    assert_eq!(
        get_from(&engine, &web2.id, service_address).await?,
        "api of generation 2"
    );
    // The server's own processes get the serving generation.
    assert_eq!(
        dig_on_host(&one.server, None, &[listener, "api.cloud66.local"])?,
        api2_ip
    );
    // Same source address (both ask from the server's namespace), different cgroups:
    // each gets its cgroup's generation.
    let (cgroup1, cgroup2) = (
        cgroup_of(&engine, &web1.id).await?,
        cgroup_of(&engine, &web2.id).await?,
    );
    assert_eq!(
        dig_on_host(
            &one.server,
            Some(&cgroup1),
            &[listener, "api.cloud66.local"]
        )?,
        api1_ip
    );
    assert_eq!(
        dig_on_host(
            &one.server,
            Some(&cgroup2),
            &[listener, "api.cloud66.local"]
        )?,
        api2_ip
    );

    // Once generation 1 is gone, everyone gets generation 2.
    let (ok, out, err) = deploy
        .join()
        .map_err(|_| anyhow::anyhow!("deploy thread"))??;
    assert!(
        ok && out.contains("generation 1 of shop stopped"),
        "{out}{err}"
    );
    assert_eq!(
        dig(&engine, &web2.id, &["api.cloud66.local"]).await?,
        api2_ip
    );

    // The agent killed: service addresses keep steering; a query asked while it is down is
    // answered once it is back, from the same listening socket.
    one.kill_agent()?;
    assert_eq!(
        get_from(&engine, &web2.id, service_address).await?,
        "api of generation 2"
    );
    let counters =
        ferry_agent::dataplane::Counters::open(&ferry_agent::dataplane::map_dir(&one.paths.bpffs))?;
    let redirected = || counters.get(ferry_ebpf_abi::Counter::DnsRedirected);
    let before = redirected()?;
    let asked = {
        let engine = engine.clone();
        let id = web2.id.clone();
        tokio::spawn(async move { dig(&engine, &id, &["api.cloud66.local"]).await })
    };
    // The query has left for the listener (the kernel redirected it) before any agent runs.
    eventually(
        Duration::from_secs(10),
        "dig's query redirected",
        || async { Ok(redirected()? > before) },
    )
    .await?;
    one.start_agent()?;
    assert_eq!(asked.await??, api2_ip);
    assert_eq!(
        dig(&engine, &web2.id, &["api.cloud66.local"]).await?,
        api2_ip
    );
    let web2_answer = one
        .server
        .run(|| http_get(SocketAddrV4::new(web2_ip, 3000), "/"))??;
    assert!(
        web2_answer.ends_with("api says: api of generation 2\n"),
        "{web2_answer}"
    );

    one.clean_up().await;
    Ok(())
}
