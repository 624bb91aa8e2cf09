//! The `ferry-agent` binary: argument parsing and error reporting around the library.

use std::{
    net::SocketAddrV4,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use ferry_agent::{
    containers::Engine,
    daemon,
    dataplane::{self, Callers, Counters, DataplaneConfig, ServiceTable},
    dns,
    membership::{self, JoinOptions, StateError},
    mesh::{sync::MeshOptions, wireguard::Backend},
    workloads::WorkloadOptions,
};
use ferry_ebpf_abi::Counter;
use tokio::signal::unix::{SignalKind, signal};

/// ferry's per-server agent.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the data plane and, once joined, keep the WireGuard mesh in step
    /// with central; run until SIGINT or SIGTERM.
    #[command(args_override_self = true)]
    Run(RunArgs),
    /// Join a cluster: make this server's WireGuard key and register it with central.
    Join(JoinArgs),
    /// Hold listening sockets across agent restarts (started by the agent itself).
    #[command(hide = true)]
    KeepSockets {
        /// The Unix socket to hand them out on.
        #[arg(long)]
        path: PathBuf,
        /// How many sockets, from descriptor 3 on.
        #[arg(long)]
        count: usize,
        /// Exit after this many milliseconds with no agent holding a lease.
        #[arg(long, default_value_t = ferry_agent::handoff::ORPHAN_LIMIT.as_millis() as u64)]
        orphan_limit_ms: u64,
    },
    /// Check that this machine can run the data plane, and say what is missing.
    Check(CheckArgs),
    /// Read or change the service addresses the kernel steers.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Print the data plane's event counters.
    Counters(Pins),
    /// Remove ferry's pinned programs and maps: steering stops.
    Unpin(Pins),
    /// After the agent stopped, end what it keeps for its next start: close the published
    /// ports and the DNS listener (their socket keepers end) and remove the WireGuard link
    /// (wireguard-go ends); say what is left. A restart keeps all of it.
    #[command(args_override_self = true)]
    Down(DownArgs),
}

#[derive(Args)]
struct DownArgs {
    /// Read flags from this TOML file first, as `run --config` does (keys `run` takes that
    /// `down` does not are skipped).
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    state: StateDir,
    /// Name of the WireGuard interface of the container network.
    #[arg(long, default_value = "ferry0")]
    wg_interface: String,
    #[command(flatten)]
    pins: Pins,
    /// Do nothing while ferry-agent.service is enabled (a restart, or a stop it comes back
    /// from): what the unit's ExecStopPost runs, so `systemctl stop` of a disabled unit
    /// is a full stop.
    #[arg(long)]
    if_disabled: bool,
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// Steer connects to SERVICE round-robin over BACKENDS (none: refuse them).
    Set {
        #[command(flatten)]
        pins: Pins,
        /// The service address, e.g. 10.96.0.10:80.
        service: SocketAddrV4,
        /// Backend addresses, e.g. 10.66.1.2:3000.
        backends: Vec<SocketAddrV4>,
        #[command(flatten)]
        callers: CallersArgs,
    },
    /// Stop steering SERVICE.
    Remove {
        #[command(flatten)]
        pins: Pins,
        /// The service address.
        service: SocketAddrV4,
        #[command(flatten)]
        callers: CallersArgs,
    },
    /// List steered services and their backends.
    List(Pins),
}

/// Which callers an entry of the service table is for.
#[derive(Args)]
struct CallersArgs {
    /// The service's stack (its containers may have entries of their own generation).
    #[arg(long, default_value = "")]
    stack: String,
    /// Only for containers of this generation of the stack (default: everyone else).
    #[arg(long)]
    generation: Option<u32>,
}

impl CallersArgs {
    fn callers(&self) -> Callers {
        self.generation
            .map_or(Callers::Everyone, Callers::Generation)
    }
}

#[derive(Args)]
struct RunArgs {
    /// Read flags from this TOML file first, one key per long flag
    /// (`docker-socket = "/run/docker.sock"`, a list for a repeated flag); flags on the
    /// command line win. The package's unit runs `run --config /etc/ferry/agent.toml`.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    paths: Paths,
    #[command(flatten)]
    state: StateDir,
    /// Name of the WireGuard interface of the container network.
    #[arg(long, default_value = "ferry0")]
    wg_interface: String,
    /// Use this WireGuard implementation instead of detecting one.
    #[arg(long, value_enum)]
    wg_backend: Option<WgBackend>,
    /// The WireGuard link's MTU in bytes, which the container network gets too (default:
    /// the MTU of the interface that routes to the other servers, minus WireGuard's 60
    /// bytes over IPv4 or 80 over IPv6).
    #[arg(long, value_parser = clap::value_parser!(u32).range(i64::from(ferry_agent::mesh::mtu::MINIMUM)..=65_535))]
    mesh_mtu: Option<u32>,
    /// Run this server's containers through the Docker Engine on this socket.
    #[arg(long)]
    docker_socket: Option<PathBuf>,
    /// Build every service without a Dockerfile on this image instead of the official
    /// Node image of its Node major (`node:<major>-bookworm-slim`, major from
    /// package.json's engines.node).
    #[arg(long)]
    base_image: Option<String>,
    /// The npm registry builds install from, e.g. a company mirror
    /// (default: npm's own, https://registry.npmjs.org/).
    #[arg(long)]
    npm_registry: Option<String>,
    /// The Docker network the build steps run on. `host` (the default) lets them reach the
    /// registry as the server itself does, whatever the engine's default bridge is.
    #[arg(long, default_value = "host")]
    build_network: String,
    /// The Docker network every container joins.
    #[arg(long, default_value = "ferry")]
    docker_network: String,
    /// The port of the DNS listener on the container network's gateway (containers' port-53
    /// queries are sent there whatever the port).
    #[arg(long, default_value_t = 53)]
    dns_port: u16,
    /// A resolver for names outside cloud66.local, e.g. 10.0.0.2 or 10.0.0.2:5353
    /// (repeatable; default: the nameservers of /etc/resolv.conf).
    #[arg(long = "dns-upstream")]
    dns_upstreams: Vec<String>,
    /// The address the published host ports (ingress) are bound on.
    #[arg(long, default_value_t = std::net::Ipv4Addr::UNSPECIFIED)]
    ingress_address: std::net::Ipv4Addr,
    /// How `tcp:` and `udp:` ports are served: `kernel` (tc programs steer the flows; the
    /// userspace relay serves what they cannot) or `relay` (the agent's userspace relay
    /// alone).
    #[arg(long, value_enum, default_value_t = L4PathArg::Kernel)]
    l4_path: L4PathArg,
    /// An interface clients reach the published `tcp:`/`udp:` ports through (repeatable;
    /// default: every interface that is up with an IPv4 address, except loopback, the
    /// WireGuard link and the container bridge).
    #[arg(long = "l4-interface")]
    l4_interfaces: Vec<String>,
    /// Where the Prometheus metrics are served (`GET /metrics`).
    #[arg(long, default_value_t = ferry_agent::ingress::METRICS_LISTEN)]
    metrics_listen: std::net::SocketAddr,
    /// How long, in seconds, the published ports and the DNS listener stay open while no
    /// agent runs: long enough for a restart; after a crash that is not restarted, clients
    /// are refused once it has passed instead of waiting on a port nobody serves.
    #[arg(long, default_value_t = ferry_agent::handoff::ORPHAN_LIMIT.as_secs())]
    keeper_orphan_limit_secs: u64,
    /// Seconds between the heartbeats that tell central how this server is (its agent's
    /// version, WireGuard peers, containers); three missed ones and `ferry servers list`
    /// calls it unreachable.
    #[arg(long, default_value_t = ferry_agent::membership::heartbeat::INTERVAL.as_secs())]
    heartbeat_interval_secs: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum L4PathArg {
    /// tc programs on the server's interfaces.
    Kernel,
    /// The agent's userspace relay.
    Relay,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum WgBackend {
    /// The kernel module.
    Kernel,
    /// wireguard-go.
    Userspace,
}

#[derive(Args)]
struct StateDir {
    /// Where the agent keeps its membership, credential and WireGuard key.
    #[arg(long, default_value = ferry_agent::membership::state::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

#[derive(Args)]
struct JoinArgs {
    #[command(flatten)]
    state: StateDir,
    /// Central's URL, as `ferry-central init` printed it: with replicas, each one's,
    /// comma-separated (a replica that does not answer is passed over for the next).
    #[arg(long)]
    central: String,
    /// The join token.
    #[arg(long)]
    token: String,
    /// The CA fingerprint (sha256:...).
    #[arg(long)]
    ca_fingerprint: String,
    /// This server's name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Address and port where other servers reach this server's WireGuard.
    #[arg(long)]
    endpoint: std::net::SocketAddr,
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    paths: Paths,
    /// Also check that a Docker Engine answers on this unix socket.
    #[arg(long)]
    docker_socket: Option<PathBuf>,
}

#[derive(Args)]
struct Pins {
    /// bpffs directory holding ferry's pinned programs and maps.
    #[arg(long, default_value = "/sys/fs/bpf/ferry")]
    bpffs: PathBuf,
}

#[derive(Args)]
struct Paths {
    #[command(flatten)]
    pins: Pins,
    /// The cgroup v2 directory the data plane attaches to; the agent creates its
    /// containers below it. Only ferry's containers have their DNS intercepted, whatever
    /// this is (default: `ferry.slice` under the cgroup2 mount, created if missing).
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
}

/// The agent's own cgroup under the cgroup2 mount, named as a systemd slice so that an
/// engine with the systemd cgroup driver can place containers in it too.
const DEFAULT_CGROUP: &str = "ferry.slice";

impl Paths {
    /// The configuration; with `create`, the default cgroup root is made if it is missing
    /// (one given with --cgroup-root must exist: a typo should not make a cgroup).
    fn config(self, create: bool) -> Result<DataplaneConfig> {
        let cgroup_root = match self.cgroup_root {
            Some(path) => path,
            None => {
                let root = dataplane::cgroup2_mount()
                    .context("finding the cgroup2 mount in /proc/self/mounts")?
                    .context("no cgroup2 filesystem is mounted; mount one or pass --cgroup-root")?
                    .join(DEFAULT_CGROUP);
                if create {
                    match std::fs::create_dir(&root) {
                        Ok(()) => {
                            tracing::info!(cgroup = %root.display(), "created ferry's cgroup")
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                        Err(e) => {
                            return Err(e).with_context(|| {
                                format!("creating ferry's cgroup {}", root.display())
                            });
                        }
                    }
                }
                root
            }
        };
        Ok(DataplaneConfig {
            cgroup_root,
            bpffs: self.pins.bpffs,
        })
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a unit's journal or a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let argv = match with_flags_files(std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("ferry-agent: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let from_file = std::env::args().any(|a| a == "--config" || a.starts_with("--config="));
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) if from_file && e.use_stderr() => {
            let _ = e.print();
            eprintln!(
                "note: the flags of the --config file were read before the command line's; \
                 the flag named above may come from it"
            );
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `argv` with the flags of `run --config FILE` and `down --config FILE` read in.
fn with_flags_files(
    argv: Vec<std::ffi::OsString>,
) -> Result<Vec<std::ffi::OsString>, ferry_agent::flags_file::FlagsFileError> {
    let cli = <Cli as clap::CommandFactory>::command();
    let flags_of = |name: &str| -> Vec<ferry_agent::flags_file::Flag> {
        cli.find_subcommand(name)
            .map(|c| {
                c.get_arguments()
                    .filter_map(|a| {
                        Some(ferry_agent::flags_file::Flag {
                            name: a.get_long()?.to_string(),
                            takes_value: a.get_action().takes_values(),
                            repeatable: matches!(a.get_action(), clap::ArgAction::Append),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let argv = ferry_agent::flags_file::expand(argv, "run", &flags_of("run"), true)?;
    ferry_agent::flags_file::expand(argv, "down", &flags_of("down"), false)
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run(args) => run(args),
        Command::Join(args) => join(args),
        Command::KeepSockets {
            path,
            count,
            orphan_limit_ms,
        } => ferry_agent::handoff::keep(&path, count, Duration::from_millis(orphan_limit_ms))
            .with_context(|| format!("keeping sockets at {}", path.display())),
        Command::Check(paths) => check(paths),
        Command::Service(command) => service(command),
        Command::Counters(pins) => counters(pins),
        Command::Unpin(pins) => unpin(pins),
        Command::Down(args) => down(args),
    }
}

fn down(args: DownArgs) -> Result<()> {
    if args.if_disabled {
        // Only a unit systemd says is disabled is stopped for good; no systemctl, no such
        // unit, or any other answer keeps everything, as for a restart.
        let disabled = std::process::Command::new("systemctl")
            .args(["is-enabled", "ferry-agent.service"])
            .stderr(std::process::Stdio::null())
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "disabled");
        if !disabled {
            println!(
                "ferry-agent.service is enabled (or systemd cannot tell): the agent comes back, \
                 so its listeners and WireGuard link stay"
            );
            return Ok(());
        }
    }
    let options = ferry_agent::down::DownOptions {
        state_dir: args.state.state_dir,
        wg_interface: args.wg_interface,
        bpffs: args.pins.bpffs,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let report = runtime.block_on(ferry_agent::down::down(&options))?;
    match report.closed.as_slice() {
        [] => println!("no listener was kept open"),
        closed => println!(
            "closed the listeners kept for a restart: {} (their keepers ended)",
            closed.join(", ")
        ),
    }
    match &report.link {
        Some(link) => println!("removed the WireGuard link {link}"),
        None => println!("no WireGuard link {} was up", options.wg_interface),
    }
    if let Some(pins) = &report.pins_left {
        println!(
            "left: the pinned data plane in {} (it keeps steering service addresses; \
             `ferry-agent unpin --bpffs {}` removes it)",
            pins.display(),
            pins.display()
        );
    }
    println!(
        "left: ferry's containers, if any, which run on (`docker ps --filter \
         label=ferry.stack` lists them; `docker rm -f` removes them)"
    );
    Ok(())
}

fn run(args: RunArgs) -> Result<()> {
    ferry_agent::handoff::set_orphan_limit(Duration::from_secs(args.keeper_orphan_limit_secs));
    let config = args.paths.config(true)?;
    let joined = match membership::load(&args.state.state_dir) {
        Ok(loaded) => Some(loaded),
        Err(StateError::NotJoined { .. }) => None,
        Err(e) => return Err(e).context("reading the agent's state directory"),
    };
    let chosen = std::sync::Arc::new(std::sync::OnceLock::new());
    let (mtu_chosen, mtu) = tokio::sync::watch::channel(None);
    let heartbeat_mtu = mtu.clone();
    let l4_path = ferry_agent::ingress::L4Path::default();
    let joined = match joined {
        None => None,
        Some(loaded) => {
            let workloads = match args.docker_socket.clone() {
                None => None,
                Some(docker_socket) => {
                    let options = WorkloadOptions {
                        docker_socket,
                        base_image: args.base_image,
                        npm_registry: args.npm_registry,
                        build_network: Some(args.build_network),
                        network: args.docker_network,
                        container_net: ferry_api::keys::CONTAINER_NET,
                        cgroup_root: config.cgroup_root.clone(),
                        cgroup2: dataplane::cgroup2_mount()
                            .context("finding the cgroup2 mount in /proc/self/mounts")?
                            .context("no cgroup2 filesystem is mounted")?,
                        mtu,
                    };
                    let [a, b, _, _] = options.container_net.octets();
                    let listen = SocketAddrV4::new(
                        std::net::Ipv4Addr::new(a, b, loaded.membership.subnet_index, 1),
                        args.dns_port,
                    );
                    let sockets = args.state.state_dir.join("sockets");
                    Some(daemon::Workloads {
                        options,
                        dns: dns::DnsOptions {
                            listen,
                            upstreams: upstreams(&args.dns_upstreams, listen)?,
                            map_dir: dataplane::map_dir(&config.bpffs),
                            server: loaded.membership.name.clone(),
                            keeper: Some(sockets.join(format!("dns-{listen}"))),
                        },
                        ingress: ferry_agent::ingress::IngressOptions {
                            address: args.ingress_address,
                            sockets: Some(sockets),
                            kernel: Some(ferry_agent::ingress::KernelOptions {
                                bpffs: config.bpffs.clone(),
                                interfaces: args.l4_interfaces,
                                wg_interface: args.wg_interface.clone(),
                                gateway: *listen.ip(),
                                path: l4_path.clone(),
                                relay_only: args.l4_path == L4PathArg::Relay,
                            }),
                        },
                        metrics_listen: args.metrics_listen,
                    })
                }
            };
            Some(daemon::Joined {
                heartbeat: ferry_agent::membership::heartbeat::HeartbeatOptions {
                    interval: Duration::from_secs(args.heartbeat_interval_secs.max(1)),
                    wg_interface: args.wg_interface.clone(),
                    backend: chosen.clone(),
                    docker_socket: args.docker_socket.clone(),
                    l4_path: workloads.as_ref().map(|_| l4_path.clone()),
                    mtu: heartbeat_mtu,
                },
                mesh: MeshOptions {
                    chosen: chosen.clone(),
                    mtu: args.mesh_mtu,
                    mtu_chosen: std::sync::Arc::new(mtu_chosen),
                    interface: args.wg_interface,
                    container_net: ferry_api::keys::CONTAINER_NET,
                    backend: args.wg_backend.map(|b| match b {
                        WgBackend::Kernel => Backend::Kernel,
                        WgBackend::Userspace => Backend::Userspace,
                    }),
                },
                workloads,
                loaded,
            })
        }
    };
    let state_dir = args.state.state_dir.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        daemon::run(config, joined, &state_dir, shutdown)
            .await
            .context("starting the data plane")
    })
}

/// The upstream resolvers: as given, or the server's own from /etc/resolv.conf.
fn upstreams(given: &[String], listen: SocketAddrV4) -> Result<Vec<std::net::SocketAddr>> {
    if given.is_empty() {
        let path = Path::new("/etc/resolv.conf");
        let found = dns::upstreams_from(path, listen).with_context(|| {
            format!(
                "reading the upstream resolvers from {}; pass --dns-upstream",
                path.display()
            )
        })?;
        if found.is_empty() {
            tracing::warn!(
                "{} names no resolver but ferry's own listener, so names outside cloud66.local \
                 get SERVFAIL; pass --dns-upstream",
                path.display()
            );
        }
        return Ok(found);
    }
    given
        .iter()
        .map(|u| {
            let upstream = u
                .parse::<std::net::SocketAddr>()
                .or_else(|_| u.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
                .with_context(|| {
                    format!("--dns-upstream {u}: not an address (e.g. 10.0.0.2 or 10.0.0.2:5353)")
                })?;
            if dns::reaches_listener(upstream, listen) {
                anyhow::bail!(
                    "--dns-upstream {u}: that is ferry's own DNS listener ({listen}), so every \
                     forwarded query would come back to it; name the resolver the server used \
                     before ferry (see /etc/resolv.conf)"
                );
            }
            Ok(upstream)
        })
        .collect()
}

fn join(args: JoinArgs) -> Result<()> {
    let name = match args.name {
        Some(name) => name,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("reading the host name; pass --name")?
            .trim()
            .to_string(),
    };
    let options = JoinOptions {
        central: args.central,
        token: args.token,
        ca_fingerprint: args.ca_fingerprint,
        name,
        endpoint: args.endpoint,
        state_dir: args.state.state_dir,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let membership = runtime.block_on(membership::join(&options))?;
    println!(
        "joined {} as {:?}: container subnet 10.66.{}.0/24, WireGuard at {}",
        membership.central, membership.name, membership.subnet_index, membership.wireguard_endpoint
    );
    println!(
        "start the agent: ferry-agent run --state-dir {}",
        options.state_dir.display()
    );
    Ok(())
}

fn check(args: CheckArgs) -> Result<()> {
    let defaulted = args.paths.cgroup_root.is_none();
    let config = args.paths.config(false)?;
    dataplane::check_bpffs(&config.bpffs)?;
    println!("ok: {} is on a bpf filesystem", config.bpffs.display());
    if defaulted && !config.cgroup_root.exists() {
        let mount = config.cgroup_root.parent().unwrap_or(&config.cgroup_root);
        dataplane::check_cgroup_root(mount)?;
        println!(
            "ok: {} is a cgroup v2 directory; `run` creates ferry's cgroup {} in it",
            mount.display(),
            config.cgroup_root.display()
        );
    } else {
        dataplane::check_cgroup_root(&config.cgroup_root)?;
        println!(
            "ok: {} is a cgroup v2 directory",
            config.cgroup_root.display()
        );
    }
    dataplane::check_program_types()?;
    println!("ok: the kernel loads cgroup sock_addr programs");
    if let Some(socket) = args.docker_socket {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the tokio runtime")?;
        let engine = runtime.block_on(Engine::connect(&socket))?;
        println!(
            "ok: a Docker Engine answers at {}",
            engine.socket().display()
        );
    }
    Ok(())
}

fn service(command: ServiceCommand) -> Result<()> {
    match command {
        ServiceCommand::Set {
            pins,
            service,
            backends,
            callers,
        } => {
            let mut table = ServiceTable::open(&map_dir(&pins))?;
            let stack = ferry_ebpf_abi::stack_id(&callers.stack);
            table.set(service, stack, callers.callers(), &backends)?;
            println!("{service} -> {}", describe_backends(&backends));
        }
        ServiceCommand::Remove {
            pins,
            service,
            callers,
        } => {
            ServiceTable::open(&map_dir(&pins))?.remove(service, callers.callers())?;
            println!("{service} removed");
        }
        ServiceCommand::List(pins) => {
            for ((service, callers), backends) in ServiceTable::open(&map_dir(&pins))?.list()? {
                let whom = match callers {
                    Callers::Everyone => String::new(),
                    Callers::Generation(g) => format!(" (generation {g})"),
                };
                println!("{service}{whom} -> {}", describe_backends(&backends));
            }
        }
    }
    Ok(())
}

fn counters(pins: Pins) -> Result<()> {
    let counters = Counters::open(&map_dir(&pins))?;
    for counter in Counter::ALL {
        println!("{counter:?} {}", counters.get(counter)?);
    }
    Ok(())
}

fn unpin(pins: Pins) -> Result<()> {
    dataplane::unpin(&pins.bpffs)
        .with_context(|| format!("removing pins under {}", pins.bpffs.display()))?;
    println!("removed ferry's pins under {}", pins.bpffs.display());
    Ok(())
}

fn map_dir(pins: &Pins) -> PathBuf {
    dataplane::map_dir(&pins.bpffs)
}

fn describe_backends(backends: &[SocketAddrV4]) -> String {
    if backends.is_empty() {
        return "(no backends: connects refused)".into();
    }
    backends
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
