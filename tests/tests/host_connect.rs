//! Host tier: east-west steering by `cgroup/connect4` on this machine's kernel.
//!
//! Each test builds a server namespace with two TCP backends on its own address, a cgroup
//! for "containers", and a real agent attached to that cgroup. The service address has no
//! route in the namespace, so a connect that is not steered fails at once and nothing can
//! leave the machine.

use std::{net::SocketAddrV4, process::Command};

use anyhow::{Context as _, Result};
use ferry_agent::dataplane::{Callers, ServiceTable};
use ferry_tests::{
    Running,
    agent::{Agent, AgentPaths, Pins, agent_command},
    cgroup::TestCgroup,
    netns::{Network, Server},
    probe::{Backend, Probe},
    unique,
};

const SERVICE: &str = "10.96.0.10:80";

struct Setup {
    probe: Probe,
    server: Server,
    cgroup: TestCgroup,
    pins: Pins,
    backend_a: SocketAddrV4,
    backend_b: SocketAddrV4,
    _backends: Vec<Backend>,
    _network: Network,
}

impl Setup {
    fn new(subnet: u8) -> Result<Self> {
        let tag = unique("fc");
        let mut network = Network::new(&format!("fb{tag}"), subnet)?;
        let server = network.server(&format!("fs{tag}"))?;
        let ip = server.addr().expect("servers on a network have an address");
        let probe = Probe::new(env!("CARGO_BIN_EXE_ferry-probe"));
        let backend_a = SocketAddrV4::new(ip, 9001);
        let backend_b = SocketAddrV4::new(ip, 9002);
        let backends = vec![
            probe.serve(backend_a, "A", |cmd| server.enter(cmd))?,
            probe.serve(backend_b, "B", |cmd| server.enter(cmd))?,
        ];
        Ok(Self {
            probe,
            cgroup: TestCgroup::top_level(&format!("ferry-test-{tag}"))?,
            pins: Pins::new(&format!("ferry-test-{tag}"))?,
            server,
            backend_a,
            backend_b,
            _backends: backends,
            _network: network,
        })
    }

    fn paths(&self) -> AgentPaths {
        AgentPaths {
            cgroup_root: self.cgroup.path().to_path_buf(),
            bpffs: self.pins.path().to_path_buf(),
            // Never joined: the agent runs the data plane only.
            state_dir: std::env::temp_dir()
                .join(format!("ferry-test-state-{}", std::process::id())),
            wg_interface: "ferry0".into(),
            extra: Vec::new(),
        }
    }

    fn table(&self) -> Result<ServiceTable> {
        Ok(ServiceTable::open(&ferry_agent::dataplane::map_dir(
            self.pins.path(),
        ))?)
    }

    /// Steers the service address to backends A and B for everyone, and checks the first
    /// two connects go to A, then B.
    fn steer_to_both(&self) -> Result<()> {
        self.table()?.set(
            service(),
            0,
            Callers::Everyone,
            &[self.backend_a, self.backend_b],
        )?;
        anyhow::ensure!(self.connect_inside(service(), 2)? == strings(&["A", "B"]));
        Ok(())
    }

    /// Connects `count` times from a process in the namespace and in the test cgroup.
    fn connect_inside(&self, addr: SocketAddrV4, count: usize) -> Result<Vec<String>> {
        let mut placed = Ok(());
        let answers = self.probe.connect(addr, count, |cmd: &mut Command| {
            self.server.enter(cmd);
            placed = self.cgroup.place(cmd);
        })?;
        placed?;
        Ok(answers)
    }

    /// Connects `count` times from a process in the namespace but outside the cgroup.
    fn connect_outside(&self, addr: SocketAddrV4, count: usize) -> Result<Vec<String>> {
        self.probe
            .connect(addr, count, |cmd| self.server.enter(cmd))
    }
}

fn service() -> SocketAddrV4 {
    SERVICE.parse().expect("valid service address")
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn connects_in_the_cgroup_round_robin_over_backends_and_others_are_untouched() -> Result<()> {
    let setup = Setup::new(11)?;
    let agent = Agent::start(&setup.paths())?;
    assert!(
        agent.ready_line.contains("attached"),
        "{}",
        agent.ready_line
    );
    setup.table()?.set(
        service(),
        0,
        Callers::Everyone,
        &[setup.backend_a, setup.backend_b],
    )?;

    let answers = setup.connect_inside(service(), 6)?;
    assert_eq!(answers, strings(&["A", "B", "A", "B", "A", "B"]));

    // Outside the cgroup the service address is just an address with no route.
    let outside = setup.connect_outside(service(), 2)?;
    assert!(
        outside.iter().all(|a| a.contains("errno 101")),
        "expected ENETUNREACH outside the cgroup, got {outside:?}"
    );
    // Inside the cgroup, a connect to a plain address is not rewritten.
    assert_eq!(
        setup.connect_inside(setup.backend_b, 3)?,
        strings(&["B", "B", "B"])
    );
    Ok(())
}

#[test]
fn round_robin_is_even_over_many_connects_and_follows_backend_changes() -> Result<()> {
    let setup = Setup::new(12)?;
    let _agent = Agent::start(&setup.paths())?;
    let mut table = setup.table()?;
    table.set(
        service(),
        0,
        Callers::Everyone,
        &[setup.backend_a, setup.backend_b],
    )?;
    let answers = setup.connect_inside(service(), 40)?;
    let a = answers.iter().filter(|x| *x == "A").count();
    let b = answers.iter().filter(|x| *x == "B").count();
    assert_eq!((a, b), (20, 20), "{answers:?}");

    table.set(service(), 0, Callers::Everyone, &[setup.backend_b])?;
    assert_eq!(
        setup.connect_inside(service(), 3)?,
        strings(&["B", "B", "B"])
    );
    assert_eq!(
        table.get(service(), Callers::Everyone)?,
        Some(vec![setup.backend_b])
    );

    // A known service with no backend refuses at once instead of hanging.
    table.set(service(), 0, Callers::Everyone, &[])?;
    let refused = setup.connect_inside(service(), 1)?;
    assert!(
        refused[0].contains("errno 111)"),
        "expected ECONNREFUSED, got {refused:?}"
    );

    table.remove(service(), Callers::Everyone)?;
    assert_eq!(table.get(service(), Callers::Everyone)?, None);
    let unsteered = setup.connect_inside(service(), 1)?;
    assert!(unsteered[0].contains("errno 101"), "{unsteered:?}");
    Ok(())
}

#[test]
fn steering_survives_an_agent_kill_and_the_restarted_agent_adopts_it() -> Result<()> {
    let setup = Setup::new(13)?;
    let agent = Agent::start(&setup.paths())?;
    setup.steer_to_both()?;

    agent.kill()?;
    // No agent at all: the pinned link and maps keep steering.
    assert_eq!(
        setup.connect_inside(service(), 4)?,
        strings(&["A", "B", "A", "B"])
    );

    let agent = Agent::start(&setup.paths())?;
    assert!(agent.ready_line.contains("adopted"), "{}", agent.ready_line);
    // The maps kept their contents, the cursor included.
    assert_eq!(setup.connect_inside(service(), 2)?, strings(&["A", "B"]));
    setup
        .table()?
        .set(service(), 0, Callers::Everyone, &[setup.backend_a])?;
    assert_eq!(setup.connect_inside(service(), 2)?, strings(&["A", "A"]));

    // The adopted link is still the only one: one connect is counted once, not twice.
    let (ok, out, err) =
        agent_command(&["counters", "--bpffs", &setup.pins.path().to_string_lossy()])?;
    assert!(ok, "{err}");
    assert!(out.contains("Steered 10"), "{out}");
    Ok(())
}

#[test]
fn bad_paths_are_refused_with_the_fix_and_nothing_is_pinned() -> Result<()> {
    let pins = Pins::new(&unique("ferry-test-bad"))?;
    let bpffs = pins.path().to_string_lossy().into_owned();

    let (ok, _, err) = agent_command(&[
        "run",
        "--cgroup-root",
        "/nonexistent/ferry",
        "--bpffs",
        &bpffs,
    ])?;
    assert!(!ok);
    assert!(
        err.contains("/nonexistent/ferry") && err.contains("--cgroup-root"),
        "{err}"
    );
    assert!(
        !pins.path().exists(),
        "a refused start must not create pins"
    );

    let cgroup = TestCgroup::top_level(&unique("ferry-test-bad"))?;
    let not_bpffs = std::env::temp_dir().join(unique("ferry-not-bpffs"));
    let (ok, _, err) = agent_command(&[
        "run",
        "--cgroup-root",
        &cgroup.path().to_string_lossy(),
        "--bpffs",
        &not_bpffs.to_string_lossy(),
    ])?;
    assert!(!ok);
    assert!(
        err.contains("not on a bpf filesystem") && err.contains("mount -t bpf"),
        "{err}"
    );
    assert!(!not_bpffs.exists());

    let (ok, _, err) = agent_command(&[
        "run",
        "--cgroup-root",
        &std::env::temp_dir().to_string_lossy(),
        "--bpffs",
        &bpffs,
    ])?;
    assert!(!ok);
    assert!(err.contains("not a cgroup v2 directory"), "{err}");

    let (ok, _, err) = agent_command(&["service", "list", "--bpffs", &bpffs])?;
    assert!(!ok);
    assert!(err.contains("is the agent running"), "{err}");
    Ok(())
}

/// `ferry-probe udp-listen ADDR` in `server`; its lines arrive on the receiver.
fn udp_listener(
    server: &Server,
    addr: SocketAddrV4,
) -> Result<(Running, std::sync::mpsc::Receiver<String>)> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry-probe"));
    cmd.args(["udp-listen", &addr.to_string()])
        .stdout(std::process::Stdio::piped());
    server.enter(&mut cmd);
    let mut child = Running(cmd.spawn()?);
    let stdout = child.0.stdout.take().context("its output")?;
    let rx = ferry_tests::lines_of(stdout);
    let first = rx.recv_timeout(std::time::Duration::from_secs(5))?;
    anyhow::ensure!(first.starts_with("listening"), "{first}");
    Ok((child, rx))
}

#[test]
fn dns_goes_to_the_listener_only_from_containers_and_never_from_the_agents_sockets() -> Result<()> {
    let setup = Setup::new(14)?;
    let _agent = Agent::start(&setup.paths())?;
    let ip = setup.server.addr().context("no address")?;
    // The server's resolver, and the agent's listener (here a plain socket).
    let resolver = SocketAddrV4::new(ip, 53);
    let listener = SocketAddrV4::new(ip, 5353);
    let (_resolver, at_resolver) = udp_listener(&setup.server, resolver)?;
    let (_listener, at_listener) = udp_listener(&setup.server, listener)?;
    let maps = ferry_agent::dataplane::map_dir(setup.pins.path());
    ferry_agent::dataplane::DnsMaps::open(&maps)?.set_listener(Some(listener))?;
    let counters = ferry_agent::dataplane::Counters::open(&maps)?;
    let redirected = || counters.get(ferry_ebpf_abi::Counter::DnsRedirected);
    let send = |text: &str, mark: Option<&str>| -> Result<()> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry-probe"));
        cmd.args(["udp-send", &resolver.to_string(), text]);
        cmd.args(mark);
        setup.server.enter(&mut cmd);
        setup.cgroup.place(&mut cmd)?;
        anyhow::ensure!(cmd.status()?.success(), "ferry-probe udp-send failed");
        Ok(())
    };
    let wait = std::time::Duration::from_secs(5);

    // A process in the attach root that is no container: its query goes where it was sent.
    let before = redirected()?;
    send("host", None)?;
    let arrived = |at: &std::sync::mpsc::Receiver<String>, what: &str| {
        at.recv_timeout(wait)
            .with_context(|| format!("the {what} datagram did not arrive where it should"))
    };
    assert_eq!(arrived(&at_resolver, "host's")?, "host");
    // The cgroup registered as a container's: its query goes to the listener.
    let cgroup = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(setup.cgroup.path())?);
    ferry_agent::dataplane::CallerTable::open(&maps)?.set(cgroup, 1, 1)?;
    send("container", None)?;
    assert_eq!(arrived(&at_listener, "container's")?, "container");
    // A socket with the agent's mark, even in a container's cgroup: never redirected.
    let mark = format!("0x{:x}", ferry_ebpf_abi::AGENT_SOCKET_MARK);
    send("marked", Some(&mark))?;
    assert_eq!(arrived(&at_resolver, "marked")?, "marked");
    assert_eq!(
        redirected()? - before,
        1,
        "only the container's query was redirected"
    );
    assert!(
        at_listener.try_recv().is_err(),
        "nothing else reached the listener"
    );
    Ok(())
}

/// Creates a map of the given shape and pins it at `path`, with raw `bpf(2)` calls: the shapes
/// of an older layout are declared by no object this build has. Types: 1 hash, 6 per-CPU array.
fn pin_raw_map(
    path: &std::path::Path,
    kind: u32,
    key: u32,
    value: u32,
    entries: u32,
) -> Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    // union bpf_attr, as BPF_MAP_CREATE reads it: type, key size, value size, max entries.
    let mut attr = [0u32; 32];
    attr[..4].copy_from_slice(&[kind, key, value, entries]);
    // SAFETY: attr is a zeroed bpf_attr of 128 bytes whose first fields are set.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    anyhow::ensure!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let fd = fd as u32;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // BPF_OBJ_PIN: the path's address (64 bits), then the fd.
    let mut attr = [0u32; 32];
    let address = path.as_ptr() as u64;
    attr[0] = address as u32;
    attr[1] = (address >> 32) as u32;
    attr[2] = fd;
    // SAFETY: attr is a bpf_attr for BPF_OBJ_PIN pointing at `path`, alive across the call.
    let pinned = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            6,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    let error = std::io::Error::last_os_error();
    // SAFETY: fd is the map's descriptor from above; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
    anyhow::ensure!(pinned == 0, "BPF_OBJ_PIN {path:?}: {error}");
    Ok(())
}

/// An agent upgraded in place over the pins of ferry's first release (layout 1: services
/// keyed by address and port alone, three counters) converts them before its programs run:
/// the first connects after it is ready are steered by the converted entries, round-robin
/// cursor included, with no help from anyone, and the older pins are gone.
#[test]
fn an_agent_upgraded_over_the_first_layouts_pins_converts_them_and_steers_at_once() -> Result<()> {
    use aya::maps::{HashMap, Map, MapData, PerCpuArray, PerCpuValues};
    use ferry_ebpf_abi::{Backend, BackendKey, MAX_SERVICES, Service, legacy::ServiceKeyV1};

    let setup = Setup::new(15)?;
    let old = setup.pins.path().join("maps");
    std::fs::create_dir_all(&old)?;
    let services = old.join(ferry_ebpf_abi::map_names::SERVICES);
    let backends = old.join(ferry_ebpf_abi::map_names::BACKENDS);
    let counters = old.join(ferry_ebpf_abi::map_names::COUNTERS);
    pin_raw_map(&services, 1, 8, 24, MAX_SERVICES)?;
    pin_raw_map(&backends, 1, 8, 8, MAX_SERVICES * 4)?;
    pin_raw_map(&counters, 6, 4, 8, 3)?;
    let service = service();
    let key = ServiceKeyV1 {
        addr: u32::from_ne_bytes(service.ip().octets()),
        port: service.port().to_be(),
        _pad: 0,
    };
    // Two backends, and a cursor that has moved once: the next connect goes to B.
    let entry = Service {
        id: 7,
        count: 2,
        bank: 0,
        stack: 0,
        cursor: 1,
    };
    let mut table: HashMap<MapData, ServiceKeyV1, Service> =
        HashMap::try_from(Map::HashMap(MapData::from_pin(&services)?))?;
    table.insert(&key, &entry, 0)?;
    let mut slots: HashMap<MapData, BackendKey, Backend> =
        HashMap::try_from(Map::HashMap(MapData::from_pin(&backends)?))?;
    for (slot, backend) in [setup.backend_a, setup.backend_b].into_iter().enumerate() {
        let at = BackendKey {
            service: 7,
            slot: slot as u32,
        };
        let to = Backend {
            addr: u32::from_ne_bytes(backend.ip().octets()),
            port: backend.port().to_be(),
            _pad: 0,
        };
        slots.insert(&at, &to, 0)?;
    }
    let mut steered: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(MapData::from_pin(&counters)?))?;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?.get() as usize;
    let mut five = vec![0u64; cpus];
    five[0] = 5;
    steered.set(0, PerCpuValues::try_from(five)?, 0)?;
    drop((table, slots, steered));

    let agent = Agent::start(&setup.paths())?;
    assert!(
        agent.ready_line.contains("attached"),
        "{}",
        agent.ready_line
    );
    assert_eq!(setup.connect_inside(service, 2)?, strings(&["B", "A"]));
    assert!(!old.exists(), "the first layout's pins are removed");
    assert_eq!(
        setup.table()?.get(service, Callers::Everyone)?,
        Some(vec![setup.backend_a, setup.backend_b]),
        "the entry is today's entry for every caller"
    );
    let (ok, out, err) =
        agent_command(&["counters", "--bpffs", &setup.pins.path().to_string_lossy()])?;
    assert!(ok, "{err}");
    assert!(out.contains("Steered 7"), "5 carried and 2 new: {out}");
    Ok(())
}

/// An agent upgraded in place over pins in the unversioned directory every release before
/// versioned layouts used (same shapes as today's) carries the very maps: connects made
/// continuously across the start are all steered, and the counters keep counting.
#[test]
fn an_agent_upgraded_over_unversioned_pins_carries_them_with_no_failed_connect() -> Result<()> {
    let setup = Setup::new(16)?;
    let agent = Agent::start(&setup.paths())?;
    setup.steer_to_both()?;
    agent.kill()?;
    // What the release before this layout left: its maps under `<bpffs>/maps`.
    let current = ferry_agent::dataplane::map_dir(setup.pins.path());
    let old = setup.pins.path().join("maps");
    std::fs::rename(&current, &old)?;

    let stop = std::sync::atomic::AtomicBool::new(false);
    let (agent, answers) = std::thread::scope(|scope| -> Result<_> {
        let connects = scope.spawn(|| -> Result<Vec<String>> {
            let mut answers = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                answers.extend(setup.connect_inside(service(), 1)?);
            }
            Ok(answers)
        });
        // Connects are under way before the new agent starts, and go on after it is ready.
        let before = setup.connect_inside(service(), 1)?;
        let agent = Agent::start(&setup.paths());
        let after = setup.connect_inside(service(), 1)?;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut answers = connects.join().expect("the connect loop does not panic")?;
        answers.extend(before.into_iter().chain(after));
        Ok((agent?, answers))
    })?;
    assert!(agent.ready_line.contains("adopted"), "{}", agent.ready_line);
    let failed: Vec<_> = answers.iter().filter(|a| *a != "A" && *a != "B").collect();
    assert!(
        failed.is_empty(),
        "{} connects, failed: {failed:?}",
        answers.len()
    );
    assert!(!old.exists(), "the unversioned pins are removed");
    // One kernel map all along: every steered connect is counted, the first two included.
    let (ok, out, err) =
        agent_command(&["counters", "--bpffs", &setup.pins.path().to_string_lossy()])?;
    assert!(ok, "{err}");
    let expected = format!("Steered {}", answers.len() + 2);
    assert!(out.contains(&expected), "expected {expected}: {out}");
    Ok(())
}
