//! A cluster as the deploy tests need it: servers that joined a real central, each with its
//! own Docker Engine and agent inside its namespace, and the operator's real CLI.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use bollard::query_parameters::RemoveContainerOptionsBuilder;
use ferry_agent::containers::{FerryContainer, list};

use crate::{
    agent::{Agent, AgentPaths, Pins, workspace_binary},
    central::Central,
    cgroup::{TestCgroup, cgroup2_root},
    docker::DockerEngine,
    netns::{Network, Server},
    node_image,
};

/// The upstream resolver every member's agent forwards other names to, in its namespace.
pub const UPSTREAM: &str = "127.0.0.1:5353";

/// One server of the cluster: its namespace, Docker Engine, agent and what they keep.
pub struct Member {
    /// The server's namespace.
    pub server: Server,
    /// Its Docker Engine.
    pub docker: DockerEngine,
    /// Where its agent attaches and keeps state.
    pub paths: AgentPaths,
    agent: Option<Agent>,
    docker_network: String,
    _cgroup: TestCgroup,
    _pins: Pins,
}

impl Member {
    /// Creates server `name` on `network`, starts its Docker Engine (with no ferry
    /// container left from an earlier run), joins it to `central` and starts its agent.
    pub async fn join(
        network: &mut Network,
        central: &Central,
        name: &str,
        tag: &str,
    ) -> Result<Self> {
        Self::join_with(network, central, name, tag, &[]).await
    }

    /// [`join`](Self::join), with more arguments for its `ferry-agent run` (e.g. the npm
    /// registry its builds use).
    pub async fn join_with(
        network: &mut Network,
        central: &Central,
        name: &str,
        tag: &str,
        more: &[String],
    ) -> Result<Self> {
        let server = network.server(&format!("f{name}{tag}"))?;
        // Containers' cgroups go under the agent's cgroup root, as on a real server where
        // the agent attaches at the root of the hierarchy.
        let cgroup = TestCgroup::top_level(&format!("ferry-test-{name}{tag}"))?;
        let parent = cgroup
            .path()
            .strip_prefix(cgroup2_root()?)
            .context("the test cgroup is outside the cgroup2 mount")?
            .join("containers");
        let docker = DockerEngine::start_with_cgroups(
            &format!("ferry-cluster-{name}"),
            Some(&server),
            &format!("/{}", parent.display()),
        )
        .await?;
        remove_leftovers(&docker).await?;
        // The base image the agent asks for, made here since nothing can be pulled.
        node_image::ensure(docker.engine()).await?;
        let pins = Pins::new(&format!("ferry-test-{name}{tag}"))?;
        let state_dir = std::env::temp_dir().join(format!("ferry-test-{name}{tag}"));
        let _ = std::fs::remove_dir_all(&state_dir);
        let (ok, _, err) = central.join(&server, name, &state_dir)?;
        anyhow::ensure!(ok, "joining {name}: {err}");
        let docker_network = format!("ferry-{tag}");
        let paths = AgentPaths {
            cgroup_root: cgroup.path().to_path_buf(),
            bpffs: pins.path().to_path_buf(),
            state_dir,
            wg_interface: format!("fw{name}{tag}"),
            extra: vec![
                "--docker-socket".into(),
                docker.socket().to_string_lossy().into_owned(),
                "--docker-network".into(),
                docker_network.clone(),
                // Names outside cloud66.local go here, inside the server's namespace: a
                // test that needs them starts a resolver there (never the host's own).
                "--dns-upstream".into(),
                UPSTREAM.into(),
            ]
            .into_iter()
            // Builds install from the network's registry when it serves one.
            .chain(
                network
                    .registry_url()
                    .map(|url| ["--npm-registry".to_string(), url.to_string()])
                    .into_iter()
                    .flatten(),
            )
            .chain(more.iter().cloned())
            .collect(),
        };
        let agent = Agent::start_in(&paths, Some(&server))?;
        Ok(Self {
            server,
            docker,
            paths,
            agent: Some(agent),
            docker_network,
            _cgroup: cgroup,
            _pins: pins,
        })
    }

    /// Kills the agent with SIGKILL, as a crash would.
    pub fn kill_agent(&mut self) -> Result<()> {
        match self.agent.take() {
            Some(agent) => agent.kill(),
            None => Ok(()),
        }
    }

    /// A planned restart: the running agent is asked to stop (SIGTERM) and a new one starts
    /// at once, taking the listening sockets over while the old one finishes its
    /// connections. Returns when the old one has exited, with its status.
    pub fn restart_agent(&mut self) -> Result<std::process::ExitStatus> {
        let old = self.agent.take().context("no agent runs")?;
        old.terminate()?;
        self.agent = Some(Agent::start_in(&self.paths, Some(&self.server))?);
        old.wait_exit(Duration::from_secs(40))
    }

    /// Stops the agent as `systemctl stop` does (SIGTERM, nothing started after it), and
    /// waits until it has exited.
    pub fn stop_agent(&mut self) -> Result<std::process::ExitStatus> {
        let agent = self.agent.take().context("no agent runs")?;
        agent.terminate()?;
        agent.wait_exit(Duration::from_secs(40))
    }

    /// Starts the agent again from its state directory.
    pub fn start_agent(&mut self) -> Result<()> {
        self.agent = Some(Agent::start_in(&self.paths, Some(&self.server))?);
        Ok(())
    }

    /// The ferry containers its Docker Engine has, running or not.
    pub async fn containers(&self) -> Result<Vec<FerryContainer>> {
        Ok(list(self.docker.engine()).await?)
    }

    /// (service, generation, running) of every ferry container here, sorted: what a test
    /// compares to say "one of each, once".
    pub async fn inventory(&self) -> Result<Vec<(String, u64, bool)>> {
        let mut found: Vec<_> = self
            .containers()
            .await?
            .into_iter()
            .map(|c| (c.service, c.generation, c.running))
            .collect();
        found.sort();
        Ok(found)
    }

    /// Stops the agent and removes the containers, the network and the state it made.
    pub async fn clean_up(mut self) {
        let _ = self.kill_agent();
        self.paths.forget(&self.server);
        if let Ok(containers) = self.containers().await {
            for c in containers {
                remove(&self.docker, &c.id).await;
            }
        }
        let _ = self
            .docker
            .engine()
            .docker()
            .remove_network(&self.docker_network)
            .await;
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        // A test that failed before `clean_up` still ends the agent's socket keeper, which
        // exits once its state directory is gone.
        let _ = self.kill_agent();
        self.paths.forget(&self.server);
    }
}

/// Writes a stack of the site app (`tests/stacks/site/app`) under the temporary directory,
/// in `<name>/`, with `service_yml` as its service.yml; returns the directory.
pub fn site_stack(name: &str, service_yml: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(name);
    std::fs::create_dir_all(dir.join("app"))?;
    let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("stacks/site/app/server.js");
    std::fs::copy(&app, dir.join("app/server.js"))
        .with_context(|| format!("copying {}", app.display()))?;
    std::fs::write(dir.join("service.yml"), service_yml)?;
    Ok(dir)
}

/// A server with an agent's paths but no Docker Engine: the mesh and the data plane alone,
/// as the mesh tests and benchmarks need it.
pub struct Bare {
    /// The server's namespace.
    pub server: Server,
    /// Where its agent attaches and keeps state.
    pub paths: AgentPaths,
    _cgroup: TestCgroup,
    _pins: Pins,
}

impl Bare {
    /// Creates server `name` on `network` (namespace `<name><tag>`), with a cgroup, pins and
    /// an empty state directory of its own; its WireGuard link is `fw<name><tag>`.
    pub fn new(network: &mut Network, tag: &str, name: &str) -> Result<Self> {
        let server = network.server(&format!("{name}{tag}"))?;
        let cgroup = TestCgroup::top_level(&format!("ferry-test-{name}{tag}"))?;
        let pins = Pins::new(&format!("ferry-test-{name}{tag}"))?;
        let state_dir = std::env::temp_dir().join(format!("ferry-test-{name}{tag}"));
        let _ = std::fs::remove_dir_all(&state_dir);
        let paths = AgentPaths {
            cgroup_root: cgroup.path().to_path_buf(),
            bpffs: pins.path().to_path_buf(),
            state_dir,
            wg_interface: format!("fw{name}{tag}"),
            extra: Vec::new(),
        };
        Ok(Self {
            server,
            paths,
            _cgroup: cgroup,
            _pins: pins,
        })
    }

    /// Runs `ferry-agent join` in this server: (success, stdout, stderr).
    pub fn join(&self, central: &Central, name: &str) -> Result<(bool, String, String)> {
        central.join(&self.server, name, &self.paths.state_dir)
    }

    /// Starts its agent.
    pub fn start_agent(&self) -> Result<Agent> {
        Agent::start_in(&self.paths, Some(&self.server))
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        self.paths.forget(&self.server);
    }
}

/// Removes the containers and ferry networks an earlier run that did not finish left in
/// `docker`: they would hold the subnets a new agent needs.
pub async fn remove_leftovers(docker: &DockerEngine) -> Result<()> {
    for c in list(docker.engine()).await? {
        remove(docker, &c.id).await;
    }
    for n in docker
        .engine()
        .docker()
        .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
        .await?
    {
        if let Some(stale) = n.name.filter(|n| n.starts_with("ferry-")) {
            let _ = docker.engine().docker().remove_network(&stale).await;
        }
    }
    Ok(())
}

async fn remove(docker: &DockerEngine, id: &str) {
    let options = RemoveContainerOptionsBuilder::new().force(true).build();
    let _ = docker
        .engine()
        .docker()
        .remove_container(id, Some(options))
        .await;
}

/// The operator's `ferry` CLI with its own config file, logged in to a central.
pub struct Operator {
    config: PathBuf,
}

impl Operator {
    /// Runs `ferry login` against `central`.
    pub fn login(central: &Central, tag: &str) -> Result<Self> {
        let operator = Self {
            config: std::env::temp_dir().join(format!("ferry-test-cli{tag}")),
        };
        let (ok, _, err) = operator.run(&[
            "login",
            "--central",
            &central.url,
            "--token",
            &central.admin_token,
            "--ca-fingerprint",
            &central.ca_fingerprint,
        ])?;
        anyhow::ensure!(ok, "ferry login: {err}");
        Ok(operator)
    }

    /// `ferry` as this operator, ready for arguments (for a command the test watches).
    pub fn command(&self) -> Result<std::process::Command> {
        let mut cmd = std::process::Command::new(workspace_binary("ferry", "FERRY_CLI_BIN")?);
        cmd.env("FERRY_CONFIG", &self.config);
        Ok(cmd)
    }

    /// Runs `ferry ARGS`: (success, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> Result<(bool, String, String)> {
        run_ferry(&self.config, args)
    }

    /// Runs `ferry ARGS` on a thread, for commands that wait while the test looks around.
    pub fn spawn(&self, args: &[&str]) -> std::thread::JoinHandle<Result<(bool, String, String)>> {
        let config = self.config.clone();
        let args: Vec<String> = args.iter().map(ToString::to_string).collect();
        std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_ferry(&config, &args)
        })
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.config);
    }
}

fn run_ferry(config: &Path, args: &[&str]) -> Result<(bool, String, String)> {
    let out = std::process::Command::new(workspace_binary("ferry", "FERRY_CLI_BIN")?)
        .args(args)
        .env("FERRY_CONFIG", config)
        .output()
        .context("running ferry")?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    ))
}

/// What one look of [`eventually`] found: whether the condition holds, and what was seen.
pub trait Observation {
    /// Whether the condition holds.
    fn holds(&self) -> bool;
    /// What was seen, for the failure message.
    fn seen(&self) -> String;
}

impl Observation for bool {
    fn holds(&self) -> bool {
        *self
    }

    fn seen(&self) -> String {
        "the condition false".into()
    }
}

/// A look that says what it saw: `Saw(holds, seen)`.
pub struct Saw<T>(pub bool, pub T);

impl<T: std::fmt::Debug> Observation for Saw<T> {
    fn holds(&self) -> bool {
        self.0
    }

    fn seen(&self) -> String {
        format!("{:?}", self.1)
    }
}

/// Polls `check` every 200 ms until it holds; fails naming `what` and what the last look
/// saw after `limit`.
pub async fn eventually<F, Fut, O>(limit: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<O>>,
    O: Observation,
{
    let deadline = Instant::now() + limit;
    loop {
        let look = check().await?;
        if look.holds() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what} did not happen within {limit:?}; last seen: {}",
            look.seen()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The service address central gave `service` of `stack`, with `port`, once its record
/// has one (within 10 s).
pub async fn service_address(
    admin: &ferry_api::client::Client,
    stack: &str,
    service: &str,
    port: u16,
) -> Result<std::net::SocketAddrV4> {
    let key = ferry_api::keys::record(stack, service);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let items = admin.list(&key).await?.items;
        let found = items
            .first()
            .and_then(|i| {
                serde_json::from_value::<ferry_api::records::ServiceRecord>(i.value.clone()).ok()
            })
            .and_then(|r| r.address);
        if let Some(address) = found {
            return Ok(std::net::SocketAddrV4::new(address, port));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{stack}/{service} got no service address"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
