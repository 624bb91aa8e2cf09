//! Host tier: the README's "Central and joining" commands, read from README.md and run as
//! written, with the agent's own defaults (no `--cgroup-root`, `--bpffs` or
//! `--state-dir`): central in a namespace of its own, one server namespace with its Docker
//! Engine, the operator on the host. Only what cannot exist here is replaced: the host
//! name and addresses (the namespaces'), the tokens and fingerprint (what `init` printed),
//! the Docker socket (the test's dockerd), central's data directory (a temporary one) and
//! the npm mirror (the test network's registry).
//!
//! Then, as a user would see it: the server and its containers resolve an outside name
//! through the server's own resolver (a dnsmasq the test runs, named in the resolv.conf
//! the agent and the server's processes read), `api.cloud66.local` resolves in the
//! container, and the kernel's DNS counter moves once per container query and never for
//! the server's own queries or the agent's forwarding (a forwarder that asked itself moved
//! it by 513 per query). Again with the data plane attached at the machine's cgroup2 root,
//! which holds every process, the agent included.
//!
//! When the README's commands change, this test changes with them: a command it does not
//! know how to run, or a placeholder it cannot fill, fails it.

use std::{
    net::SocketAddrV4,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use bollard::query_parameters::RemoveContainerOptionsBuilder;
use ferry_agent::containers::{FerryContainer, list};
use ferry_tests::{
    Running,
    agent::{Agent, agent_binary, agent_command_in, workspace_binary},
    central::{Printed, spawn_serve},
    cgroup::cgroup2_root,
    cluster::eventually,
    docker::DockerEngine,
    inside::{exec, http_get},
    netns::{Network, Server, ip},
    node_image,
    resolvers::dnsmasq,
    unique,
};

/// The README's section whose first `sh` block this test runs.
const SECTION: &str = "### Central and joining";
/// The name the server's resolver answers, and its address.
const OUTSIDE_NAME: &str = "registry.partner.example";
const OUTSIDE_ADDRESS: &str = "192.0.2.44";
/// The server's own resolver, where systemd-resolved's stub sits on many servers.
const RESOLVER: &str = "127.0.0.53";
/// The agent's defaults the README relies on, which this test therefore uses for real.
const STATE_DIR: &str = "/var/lib/ferry-agent";
const BPFFS: &str = "/sys/fs/bpf/ferry";
const CGROUP: &str = "ferry.slice";
/// Left while the test holds the defaults above, so a later run knows leftovers as its own.
const MARKER: &str = "/run/ferry-readme-test";

/// One command of the README's block, as words.
type Line = Vec<String>;

/// The commands of the first `sh` block after [`SECTION`]: comments dropped, continued
/// lines joined.
fn readme_commands() -> Result<Vec<Line>> {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = std::fs::read_to_string(&readme)
        .with_context(|| format!("reading {}", readme.display()))?;
    let after = text
        .split_once(SECTION)
        .with_context(|| format!("README.md has no section {SECTION:?}"))?
        .1;
    let block = after
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .with_context(|| format!("no ```sh block under {SECTION:?}"))?
        .0;
    let mut commands = Vec::new();
    let mut pending = String::new();
    for line in block.lines() {
        let line = line.split_once(" #").map_or(line, |(code, _)| code).trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(start) => {
                pending.push_str(start);
                pending.push(' ');
            }
            None => {
                pending.push_str(line);
                commands.push(pending.split_whitespace().map(String::from).collect());
                pending.clear();
            }
        }
    }
    ensure!(!commands.is_empty(), "the README's block holds no command");
    Ok(commands)
}

/// What stands in for the README's placeholders, filled as the commands run.
struct Fill(Vec<(String, String)>);

impl Fill {
    fn word(&self, word: &str) -> Result<String> {
        let mut filled = word.to_string();
        for (from, to) in &self.0 {
            filled = filled.replace(from, to);
        }
        for left in ["...", "example.com", "203.0.113."] {
            ensure!(
                !filled.contains(left),
                "the README's {word:?} has a placeholder this test cannot fill ({left}); \
                 teach host_readme what stands in for it"
            );
        }
        Ok(filled)
    }

    fn line(&self, line: &Line) -> Result<Vec<String>> {
        line.iter().map(|w| self.word(w)).collect()
    }
}

/// The README's defaults, claimed for the test's life and cleaned up after it.
struct Claim {
    containers: Vec<String>,
}

impl Claim {
    fn take() -> Result<Self> {
        let cgroup = cgroup2_root()?.join(CGROUP);
        let used: Vec<&Path> = [Path::new(STATE_DIR), Path::new(BPFFS), cgroup.as_path()]
            .into_iter()
            .filter(|p| p.exists())
            .collect();
        if !used.is_empty() && !Path::new(MARKER).exists() {
            bail!(
                "{used:?} exist and are not this test's: an agent installed on this machine \
                 uses the README's defaults. Stop it (`ferry-agent unpin`, remove {STATE_DIR}) \
                 and run the test again"
            );
        }
        std::fs::write(MARKER, "host_readme\n").with_context(|| format!("writing {MARKER}"))?;
        let claim = Self {
            containers: Vec::new(),
        };
        claim.clean();
        Ok(claim)
    }

    fn clean(&self) {
        let _ = agent_command_in(&["unpin"], None);
        let _ = std::fs::remove_dir(BPFFS);
        let _ = std::fs::remove_dir_all(STATE_DIR);
        if let Ok(root) = cgroup2_root() {
            let ferry = root.join(CGROUP);
            for dir in [&ferry, &root] {
                for id in &self.containers {
                    let _ = std::fs::remove_dir(dir.join(format!("ferry-{}", &id[..12])));
                }
            }
            if let Ok(leaves) = std::fs::read_dir(&ferry) {
                for leaf in leaves.flatten() {
                    let _ = std::fs::remove_dir(leaf.path());
                }
            }
            let _ = std::fs::remove_dir(&ferry);
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.clean();
        let _ = std::fs::remove_file(MARKER);
    }
}

/// `program args` in `server`, in a mount namespace of its own where /etc/resolv.conf is
/// `resolv_conf`: as on a server whose resolver is the test's, with the host untouched.
fn with_resolver(server: &Server, resolv_conf: &Path, program: &Path, args: &[String]) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"")
        .arg(resolv_conf)
        .arg(program)
        .args(args);
    server.enter(&mut cmd);
    cmd
}

/// Runs `cmd` to completion; its standard output, or an error with both streams.
fn run(mut cmd: Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    ensure!(out.status.success(), "{what} failed: {stdout}{stderr}");
    Ok(stdout)
}

/// The kernel's count of DNS queries sent to the agent's listener, from `ferry-agent
/// counters` as an operator reads it.
fn redirected(server: &Server) -> Result<u64> {
    let (ok, out, err) = agent_command_in(&["counters"], Some(server))?;
    ensure!(ok, "ferry-agent counters: {err}");
    out.lines()
        .find_map(|l| l.strip_prefix("DnsRedirected "))
        .context("no DnsRedirected counter")?
        .trim()
        .parse()
        .context("DnsRedirected is not a number")
}

/// `dig +short` once (no retry, so one query is one redirect) inside container `id`.
async fn dig_in(engine: &ferry_agent::containers::Engine, id: &str, name: &str) -> Result<String> {
    Ok(
        exec(engine, id, &["dig", "+short", "+time=3", "+tries=1", name])
            .await?
            .trim()
            .to_string(),
    )
}

/// The checks a user makes once the stack runs: outside names on the server and in a
/// container, `api.cloud66.local` in the container, and the redirect counter.
async fn resolution_works(
    server: &Server,
    resolv_conf: &Path,
    docker: &DockerEngine,
    web: &FerryContainer,
    api: &FerryContainer,
    how: &str,
) -> Result<()> {
    let engine = docker.engine();
    let before = redirected(server)?;
    // The server's own processes, through its resolv.conf, as before ferry.
    let getent = run(
        with_resolver(
            server,
            resolv_conf,
            Path::new("getent"),
            &["hosts".into(), OUTSIDE_NAME.into()],
        ),
        "getent hosts on the server",
    )?;
    ensure!(
        getent.starts_with(OUTSIDE_ADDRESS),
        "{how}: the server's getent of {OUTSIDE_NAME}: {getent:?}"
    );
    let dig = run(
        with_resolver(
            server,
            resolv_conf,
            Path::new("dig"),
            &["+short".into(), "+tries=1".into(), OUTSIDE_NAME.into()],
        ),
        "dig on the server",
    )?;
    ensure!(
        dig.trim() == OUTSIDE_ADDRESS,
        "{how}: the server's dig of {OUTSIDE_NAME}: {dig:?}"
    );
    ensure!(
        redirected(server)? == before,
        "{how}: the server's own queries were redirected"
    );
    // A container: its one query goes to the agent (one redirect), which forwards it to
    // the server's resolver with no redirect of its own.
    let before = redirected(server)?;
    let outside = dig_in(engine, &web.id, OUTSIDE_NAME).await?;
    ensure!(
        outside == OUTSIDE_ADDRESS,
        "{how}: web's dig of {OUTSIDE_NAME}: {outside:?}"
    );
    let moved = redirected(server)? - before;
    ensure!(
        moved == 1,
        "{how}: one query from the container moved DnsRedirected by {moved}, not 1 (the \
         agent's forwarding must not be redirected)"
    );
    let api_ip = api.address.context("api has no address")?.to_string();
    let named = dig_in(engine, &web.id, "api.cloud66.local").await?;
    ensure!(
        named == api_ip,
        "{how}: api.cloud66.local in web: {named:?}"
    );
    let getent = exec(engine, &web.id, &["getent", "hosts", OUTSIDE_NAME]).await?;
    ensure!(
        getent.starts_with(OUTSIDE_ADDRESS),
        "{how}: web's getent of {OUTSIDE_NAME}: {getent:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_commands_leave_every_name_resolvable() -> Result<()> {
    let mut claim = Claim::take()?;
    let commands = readme_commands()?;
    let tag = unique("");
    let work = std::env::temp_dir().join(format!("ferry-readme{tag}"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let mut network = Network::new(&format!("fbr{tag}"), 91)?;
    // The README's NPM_REGISTRY line names a mirror: the test network's registry.
    network.serve_registry()?;
    let central_ns = network.server(&format!("frc{tag}"))?;
    let server = network.server(&format!("frs{tag}"))?;
    let central_ip = central_ns.addr().context("central has no address")?;
    let server_ip = server.addr().context("the server has no address")?;

    // The server: its Docker Engine, the base image the README names, its resolver.
    let docker = DockerEngine::start(&format!("ferry-readme{tag}"), Some(&server)).await?;
    // The official Node image the agent asks for, made here since nothing can be pulled.
    node_image::ensure(docker.engine()).await?;
    let resolv_conf = work.join("resolv.conf");
    std::fs::write(&resolv_conf, format!("nameserver {RESOLVER}\n"))?;
    let names = [(OUTSIDE_NAME.to_string(), OUTSIDE_ADDRESS.to_string())];
    let mut resolver = dnsmasq(RESOLVER, 53, &names);
    resolver.stdin(Stdio::null()).stdout(Stdio::null());
    server.enter(&mut resolver);
    let _resolver = Running(resolver.spawn().context("starting dnsmasq")?);

    let mut fill = Fill(vec![
        (
            "https://npm.example.com".into(),
            network.registry_url().context("no registry")?.to_string(),
        ),
        ("central.example.com".into(), central_ip.to_string()),
        ("203.0.113.10".into(), server_ip.to_string()),
        (
            "/var/lib/ferry-central".into(),
            work.join("central").to_string_lossy().into_owned(),
        ),
        (
            "/run/docker.sock".into(),
            docker.socket().to_string_lossy().into_owned(),
        ),
    ]);
    let operator_config = work.join("operator");
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut central: Option<Running> = None;
    let mut agent: Option<(Agent, Vec<String>)> = None;
    for line in &commands {
        let words = fill.line(line)?;
        let (program, args) = words.split_first().context("an empty command")?;
        let shown = words.join(" ");
        match (program.as_str(), args.first().map(String::as_str)) {
            ("ferry-central", Some("init")) => {
                let mut cmd = Command::new(workspace_binary("ferry-central", "FERRY_CENTRAL_BIN")?);
                cmd.args(args);
                central_ns.enter(&mut cmd);
                let printed = Printed::parse(&run(cmd, &shown)?)?;
                fill.0.extend([
                    ("ferry-join-...".to_string(), printed.join_token),
                    ("ferry-admin-...".to_string(), printed.admin_token),
                    ("sha256:...".to_string(), printed.ca_fingerprint),
                ]);
            }
            ("ferry-central", Some("serve")) => {
                let mut cmd = Command::new(workspace_binary("ferry-central", "FERRY_CENTRAL_BIN")?);
                cmd.args(args);
                central_ns.enter(&mut cmd);
                central = Some(Running(spawn_serve(cmd)?.0));
            }
            ("ferry-agent", Some("join")) => {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let (ok, out, err) = agent_command_in(&args, Some(&server))?;
                ensure!(ok, "{shown}: {out}{err}");
            }
            ("ferry-agent", Some("run")) => {
                let cmd = with_resolver(&server, &resolv_conf, &agent_binary()?, args);
                agent = Some((Agent::spawn(cmd).context(shown.clone())?, args.to_vec()));
            }
            ("ferry", _) => {
                let mut cmd = Command::new(workspace_binary("ferry", "FERRY_CLI_BIN")?);
                cmd.args(args)
                    .env("FERRY_CONFIG", &operator_config)
                    .current_dir(&repository);
                let out = run(cmd, &shown)?;
                eprintln!("$ {shown}\n{out}");
            }
            _ => bail!("the README names {shown:?}, which host_readme does not know how to run"),
        }
    }
    ensure!(central.is_some(), "the README never starts central");
    let (agent, run_args) = agent.context("the README never starts the agent")?;

    // The stack the README deployed serves, and web reaches api by name.
    let running = || async { list(docker.engine()).await.map_err(anyhow::Error::from) };
    let containers = running().await?;
    claim.containers = containers.iter().map(|c| c.id.clone()).collect();
    let find = |service: &str| {
        containers
            .iter()
            .find(|c| c.service == service && c.running)
            .cloned()
            .with_context(|| format!("no running {service}: {containers:?}"))
    };
    let (web, api) = (find("web")?, find("api")?);
    let web_ip = web.address.context("web has no address")?;
    let answer = server.run(|| http_get(SocketAddrV4::new(web_ip, 3000), "/"))??;
    ensure!(answer.contains("api says: api of generation 1"), "{answer}");
    // The agent attached below a cgroup of ferry's own, not at the machine's root.
    let attached = std::fs::read_dir(Path::new(BPFFS).join("links"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    let ferry_cgroup = cgroup2_root()?.join(CGROUP);
    let ferry_id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&ferry_cgroup)?);
    ensure!(
        attached
            .iter()
            .all(|l| l.ends_with(&format!("-{ferry_id}"))),
        "links {attached:?} are not all on {}",
        ferry_cgroup.display()
    );
    resolution_works(
        &server,
        &resolv_conf,
        &docker,
        &web,
        &api,
        "README defaults",
    )
    .await?;
    // A host process may still ask the listener for ferry's names, as the README says.
    let listener = format!("@{}", api_gateway(&api)?);
    let host_dig = run(
        {
            let mut cmd = Command::new("dig");
            cmd.args(["+short", "+tries=1", &listener, "api.cloud66.local"]);
            server.enter(&mut cmd);
            cmd
        },
        "dig on the server at the listener",
    )?;
    ensure!(
        host_dig.trim() == api.address.map(|a| a.to_string()).unwrap_or_default(),
        "the server asking the listener: {host_dig:?}"
    );

    // Attached at the machine's cgroup2 root, which holds every process, the agent too:
    // still no loop, and still only containers intercepted.
    agent.terminate()?;
    agent.wait_exit(Duration::from_secs(40))?;
    let (ok, _, err) = agent_command_in(&["unpin"], None)?;
    ensure!(ok, "ferry-agent unpin: {err}");
    let mut root_args = run_args.clone();
    root_args.extend([
        "--cgroup-root".into(),
        cgroup2_root()?.to_string_lossy().into_owned(),
    ]);
    let _agent = Agent::spawn(with_resolver(
        &server,
        &resolv_conf,
        &agent_binary()?,
        &root_args,
    ))?;
    eventually(
        Duration::from_secs(20),
        "the restarted agent answers api.cloud66.local",
        || async {
            Ok(dig_in(docker.engine(), &web.id, "api.cloud66.local")
                .await
                .ok()
                .as_deref()
                == api.address.map(|a| a.to_string()).as_deref())
        },
    )
    .await?;
    resolution_works(
        &server,
        &resolv_conf,
        &docker,
        &web,
        &api,
        "attached at the cgroup2 root",
    )
    .await?;

    for c in running().await? {
        let _ = docker
            .engine()
            .docker()
            .remove_container(
                &c.id,
                Some(RemoveContainerOptionsBuilder::new().force(true).build()),
            )
            .await;
    }
    let _ = ip(&["-n", server.name(), "link", "del", "ferry0"]);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// The DNS listener of the server whose container `c` is: its network's gateway.
fn api_gateway(c: &FerryContainer) -> Result<std::net::Ipv4Addr> {
    let [a, b, n, _] = c.address.context("no address")?.octets();
    Ok(std::net::Ipv4Addr::new(a, b, n, 1))
}
