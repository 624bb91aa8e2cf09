//! The demo: ferry's main job on this machine, left running for the reader, and its
//! removal. `up` uses the Docker Engine that answers on the machine (or starts the
//! distribution's dockerd with a data root of its own), serves the seeded npm registry
//! on loopback, starts central on SQLite and one agent joined to it, deploys the example
//! stack with the real CLI, and shows each claim as a command the reader can type again.
//! `down` removes everything `up` made, as `up` recorded it in [`State`].
//!
//! Everything is named apart from a real install (`/var/lib/ferry-demo`, the bpffs and
//! cgroup `ferry-demo`, the WireGuard link `ferry-demo0`, the Docker network
//! `ferry-demo`), and every listener is on loopback: the ingress on 127.0.0.1:80, central
//! on 127.0.0.1:7443, the registry on 127.0.0.1:4873.
//!
//! It lives beside the test fixtures because it is made of them (the registry, the local
//! Node base image, dockerd); `./x demo` builds and runs it after the eBPF objects.

pub mod down;
pub mod up;

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    net::SocketAddrV4,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use ferry_agent::down::alive;
use serde::{Deserialize, Serialize};

/// Where the demo keeps its state, logs and data.
pub const DIR: &str = "/var/lib/ferry-demo";
/// Runtime files: the demo dockerd's socket and exec root.
pub const RUN: &str = "/run/ferry-demo";
/// The agent's pins.
pub const BPFFS: &str = "/sys/fs/bpf/ferry-demo";
/// The agent's cgroup root, under the cgroup2 mount.
pub const CGROUP: &str = "ferry-demo.slice";
/// The WireGuard link of the container network.
pub const WG_INTERFACE: &str = "ferry-demo0";
/// The Docker network the agent makes for containers.
pub const NETWORK: &str = "ferry-demo";
/// Where central listens.
pub const CENTRAL: SocketAddrV4 = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 7443);
/// Where the npm registry the builds install from listens.
pub const REGISTRY: SocketAddrV4 = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 4873);
/// The stack and the host name its web answers on.
pub const STACK: &str = "shop";
/// The host name of the example stack's web.
pub const HOST: &str = "shop.example.com";

/// What `up` started and made, for `down`: `<DIR>/state.json`, written after each step.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// The Docker Engine the demo used.
    pub docker_socket: Option<PathBuf>,
    /// Whether the demo started that dockerd (then `down` stops it and removes its data).
    pub own_dockerd: bool,
    /// Whether the demo imported the Node base image (then `down` removes it).
    pub imported_base: bool,
    /// Processes left running, by name: `dockerd`, `registry`, `central`, `agent`.
    pub pids: BTreeMap<String, u32>,
}

impl State {
    fn path() -> PathBuf {
        Path::new(DIR).join("state.json")
    }

    /// The state `up` left, if any.
    pub fn load() -> Result<Option<Self>> {
        let path = Self::path();
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn save(&self) -> Result<()> {
        let path = Self::path();
        std::fs::write(&path, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// The log file of kept process `name`.
pub fn log_of(name: &str) -> PathBuf {
    Path::new(DIR).join("logs").join(format!("{name}.log"))
}

/// Starts `command` as process `name` that outlives the demo: in a process group of its
/// own (the terminal's Ctrl-C does not reach it), its output in [`log_of`]`(name)`.
/// Returns its pid.
fn spawn_kept(name: &str, command: &mut Command) -> Result<u32> {
    let log = log_of(name);
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    std::os::unix::process::CommandExt::process_group(command, 0);
    let child = command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting {name}: {command:?}"))?;
    Ok(child.id())
}

/// Waits until kept process `name` (`pid`) writes a line containing `needle` to its log;
/// fails with the log's last lines when it exits first or `limit` passes.
fn wait_for_log(name: &str, pid: u32, needle: &str, limit: Duration) -> Result<String> {
    let log = log_of(name);
    let deadline = Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return Ok(line.to_string());
        }
        if !alive(pid) {
            bail!(
                "{name} exited; the end of {}:\n{}",
                log.display(),
                tail(&text)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{name} did not say {needle:?} within {limit:?}; the end of {}:\n{}",
                log.display(),
                tail(&text)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Prints a heading for the next part of the story.
fn say(text: &str) {
    println!("\n==> {text}");
}

/// Runs commands as the reader would type them: each is printed after `$ `, run by `sh`
/// with the environment the demo told the reader to export, and its output streamed.
#[derive(Clone)]
struct Shell {
    env: Vec<(String, String)>,
    dir: PathBuf,
}

impl Shell {
    /// Runs `line`; its output (stdout and stderr), which must come with exit status 0.
    fn run(&self, line: &str) -> Result<String> {
        let (ok, output) = self.try_run(line)?;
        if !ok {
            bail!("`{line}` failed");
        }
        Ok(output)
    }

    /// Runs `line`: whether it exited 0, and its output.
    fn try_run(&self, line: &str) -> Result<(bool, String)> {
        self.try_run_telling(line, None)
    }

    /// [`try_run`](Self::try_run), also sending each line of output to `tell` once it is
    /// printed (so the story can wait for what the command has shown).
    fn try_run_telling(
        &self,
        line: &str,
        tell: Option<std::sync::mpsc::Sender<String>>,
    ) -> Result<(bool, String)> {
        println!("$ {line}");
        let mut child = Command::new("sh")
            .args(["-c", &format!("exec 2>&1; {line}")])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("running `{line}`"))?;
        let mut output = String::new();
        if let Some(stdout) = child.stdout.take() {
            for text in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("  {text}");
                output.push_str(&text);
                output.push('\n');
                if let Some(tell) = &tell {
                    let _ = tell.send(text);
                }
            }
        }
        Ok((child.wait()?.success(), output))
    }
}
