//! A real Docker Engine for a test: the distribution's dockerd with its own data root, exec
//! root, pidfile, socket and cgroup parent, optionally inside a server's namespace.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use bollard::{
    models::{ContainerCreateBody, HostConfig},
    query_parameters::{
        CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    },
};
use ferry_agent::containers::Engine;
use futures_util::StreamExt as _;
use nix::{sys::signal, unistd::Pid};

use crate::netns::Server;

/// A dockerd process and a connection to it; stopped on drop. Its data root persists under
/// `/var/lib/ferry-test/<name>`, so images imported once are there next run.
pub struct DockerEngine {
    child: Child,
    engine: Engine,
    log: PathBuf,
    /// Its run directory (socket, exec root, pidfile).
    run: PathBuf,
}

/// What a container printed and how it exited.
#[derive(Debug)]
pub struct Finished {
    /// The exit code.
    pub exit_code: i64,
    /// stdout and stderr, interleaved as Docker logged them.
    pub output: String,
}

/// The distribution's dockerd with everything of its own: the socket `<run>/docker.sock`,
/// exec root and pidfile under `run`, data root `data`. No default bridge and no iptables
/// rules: ferry makes its own network, and the host's firewall stays as it was.
pub fn dockerd(run: &Path, data: &Path) -> Command {
    let mut cmd = Command::new("dockerd");
    cmd.arg("--host")
        .arg(format!("unix://{}", run.join("docker.sock").display()))
        .arg("--data-root")
        .arg(data)
        .arg("--exec-root")
        .arg(run.join("exec"))
        .arg("--pidfile")
        .arg(run.join("docker.pid"))
        .args(["--bridge=none", "--iptables=false"]);
    cmd
}

impl DockerEngine {
    /// Starts dockerd `name`, in `server`'s namespace if given, and waits until it answers.
    pub async fn start(name: &str, server: Option<&Server>) -> Result<Self> {
        Self::start_with_cgroups(name, server, &format!("/ferry-{name}")).await
    }

    /// [`start`](Self::start), with containers' cgroups under `cgroup_parent` (a path in
    /// the cgroup hierarchy, e.g. `/ferry-test-one/containers`).
    pub async fn start_with_cgroups(
        name: &str,
        server: Option<&Server>,
        cgroup_parent: &str,
    ) -> Result<Self> {
        let run = Path::new("/run/ferry-test").join(name);
        let data = Path::new("/var/lib/ferry-test").join(name);
        for dir in [&run, &data] {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let socket = run.join("docker.sock");
        let log = run.join("dockerd.log");
        let log_file =
            fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        // A run killed before its drop left its namespace held.
        release_netns(&run);
        let mut cmd = dockerd(&run, &data);
        cmd.arg(format!("--cgroup-parent={cgroup_parent}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().context("dup dockerd log")?)
            .stderr(log_file);
        if let Some(server) = server {
            server.enter(&mut cmd);
        }
        let mut child = cmd
            .spawn()
            .context("starting dockerd; install docker.io with `./x setup`")?;

        let deadline = Instant::now() + Duration::from_secs(60);
        let engine = loop {
            match Engine::connect(&socket).await {
                Ok(engine) => break engine,
                Err(e) => {
                    if let Some(status) = child.try_wait()? {
                        bail!(
                            "dockerd exited ({status}) before answering:\n{}",
                            tail(&log)
                        );
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        bail!("dockerd did not answer within 60s ({e}):\n{}", tail(&log));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        Ok(Self {
            child,
            engine,
            log,
            run,
        })
    }

    /// The engine's socket.
    pub fn socket(&self) -> &Path {
        self.engine.socket()
    }

    /// The connection to this engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Runs `cmd` in a new container of `image` with no network, waits for it to exit,
    /// and removes it.
    pub async fn run_to_completion(&self, image: &str, cmd: &[&str]) -> Result<Finished> {
        let docker = self.engine.docker();
        let body = ContainerCreateBody {
            image: Some(image.into()),
            cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
            labels: Some(HashMap::from([("ferry.test".to_string(), "1".to_string())])),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = docker
            .create_container(Some(CreateContainerOptionsBuilder::new().build()), body)
            .await
            .with_context(|| format!("creating a container of {image}"))?;
        let id = created.id;
        let result = self.start_and_collect(&id).await;
        let _ = docker
            .remove_container(
                &id,
                Some(RemoveContainerOptionsBuilder::new().force(true).build()),
            )
            .await;
        result
    }

    async fn start_and_collect(&self, id: &str) -> Result<Finished> {
        let docker = self.engine.docker();
        docker
            .start_container(id, None)
            .await
            .with_context(|| format!("starting container {id}"))?;
        let exit_code = match docker.wait_container(id, None).next().await {
            Some(Ok(done)) => done.status_code,
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => return Err(e).with_context(|| format!("waiting for container {id}")),
            None => bail!("the wait stream of container {id} ended without a result"),
        };
        let mut logs = docker.logs(
            id,
            Some(LogsOptionsBuilder::new().stdout(true).stderr(true).build()),
        );
        let mut output = String::new();
        while let Some(chunk) = logs.next().await {
            let chunk = chunk.with_context(|| format!("reading the logs of container {id}"))?;
            output.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        Ok(Finished { exit_code, output })
    }
}

impl Drop for DockerEngine {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = signal::kill(pid, signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                release_netns(&self.run);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "dockerd did not stop in 20s; killing it. Log:\n{}",
            tail(&self.log)
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
        release_netns(&self.run);
    }
}

/// Unmounts the hold dockerd keeps on its namespace (`<exec-root>/netns/default`) and
/// does not release when it exits: left mounted, a server namespace and its veth outlive
/// the test for good.
fn release_netns(run: &Path) {
    let held = run.join("exec/netns/default");
    if held.exists() {
        let _ = nix::mount::umount2(&held, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
