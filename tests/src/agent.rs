//! The real `ferry-agent` binary as a child process.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use ferry_agent::daemon::READY_PREFIX;

use crate::netns::Server;

/// A binary of the workspace: `$<env>` (set by `cargo xtask test`), else the workspace's
/// debug build of `name`.
pub fn workspace_binary(name: &str, env: &str) -> Result<PathBuf> {
    let path = match std::env::var_os(env) {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/debug")
            .join(name),
    };
    if !path.exists() {
        bail!(
            "no {name} binary at {}; build it with `cargo build -p {name}` or run the tier \
             through `./x test host`",
            path.display()
        );
    }
    Ok(path)
}

/// The agent binary.
pub fn agent_binary() -> Result<PathBuf> {
    workspace_binary("ferry-agent", "FERRY_AGENT_BIN")
}

/// Where an agent attaches, pins and keeps its state.
#[derive(Clone, Debug)]
pub struct AgentPaths {
    /// The cgroup root it steers.
    pub cgroup_root: PathBuf,
    /// Its bpffs directory.
    pub bpffs: PathBuf,
    /// Its state directory (membership, credential, WireGuard key).
    pub state_dir: PathBuf,
    /// The name of its WireGuard interface (wireguard-go's sockets are not per
    /// namespace, so agents in one test need distinct names).
    pub wg_interface: String,
    /// More arguments for `ferry-agent run` (its Docker Engine, for one).
    pub extra: Vec<String>,
}

impl AgentPaths {
    /// Removes what a joined agent leaves in `server`: its WireGuard link (which ends
    /// wireguard-go there) and its state directory.
    pub fn forget(&self, server: &Server) {
        let _ = crate::netns::ip(&["-n", server.name(), "link", "del", &self.wg_interface]);
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// A running agent. Dropping it kills the process; the pins stay (see [`Pins`]).
pub struct Agent {
    child: Child,
    /// The line the agent printed when it became ready.
    pub ready_line: String,
    /// Where its log goes once it is ready.
    pub log: PathBuf,
}

impl Agent {
    /// Starts `ferry-agent run` and waits until it reports ready.
    pub fn start(paths: &AgentPaths) -> Result<Self> {
        Self::start_in(paths, None)
    }

    /// Starts `ferry-agent run` inside `server`'s namespace, if given.
    pub fn start_in(paths: &AgentPaths, server: Option<&Server>) -> Result<Self> {
        let mut cmd = Command::new(agent_binary()?);
        cmd.arg("run")
            .arg("--cgroup-root")
            .arg(&paths.cgroup_root)
            .arg("--bpffs")
            .arg(&paths.bpffs)
            .arg("--state-dir")
            .arg(&paths.state_dir)
            .args(["--wg-interface", &paths.wg_interface])
            .args(&paths.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(server) = server {
            server.enter(&mut cmd);
        }
        Self::spawn(cmd)
    }

    /// Starts a prepared `ferry-agent run` command (arguments, namespace and all) and
    /// waits until it reports ready.
    pub fn spawn(mut cmd: Command) -> Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting ferry-agent")?;
        let stdout = child.stdout.take().context("agent stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with(READY_PREFIX) {
                    let _ = tx.send(line);
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(ready_line) => {
                // Keep reading its log, or a chatty agent would block on a full pipe.
                let log = std::env::temp_dir().join(format!("ferry-agent-{}.log", child.id()));
                if let (Some(mut stderr), Ok(mut file)) =
                    (child.stderr.take(), std::fs::File::create(&log))
                {
                    std::thread::spawn(move || std::io::copy(&mut stderr, &mut file));
                }
                Ok(Self {
                    child,
                    ready_line,
                    log,
                })
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let mut stderr = String::new();
                if let Some(mut err) = child.stderr.take() {
                    let _ = err.read_to_string(&mut stderr);
                }
                bail!("ferry-agent did not become ready:\n{stderr}")
            }
        }
    }

    /// Asks the agent to stop as a planned restart does (SIGTERM), without waiting.
    pub fn terminate(&self) -> Result<()> {
        // SAFETY: kill with the pid of a child this value owns and has not reaped.
        if unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) } != 0 {
            return Err(std::io::Error::last_os_error()).context("sending SIGTERM to ferry-agent");
        }
        Ok(())
    }

    /// Waits up to `limit` for the agent to exit; its status.
    pub fn wait_exit(mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for ferry-agent")? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                bail!("ferry-agent still runs {limit:?} after it was asked to stop");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the agent with SIGKILL, as a crash would, and reaps it.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill().context("killing ferry-agent")?;
        self.child.wait().context("reaping ferry-agent")?;
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the agent binary with `args` to completion: (success, stdout, stderr).
pub fn agent_command(args: &[&str]) -> Result<(bool, String, String)> {
    agent_command_in(args, None)
}

/// [`agent_command`] inside `server`'s namespace, if given.
pub fn agent_command_in(args: &[&str], server: Option<&Server>) -> Result<(bool, String, String)> {
    let mut cmd = Command::new(agent_binary()?);
    cmd.args(args);
    if let Some(server) = server {
        server.enter(&mut cmd);
    }
    let out = cmd.output().context("running ferry-agent")?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A bpffs directory whose pins are removed on drop, which detaches the programs.
pub struct Pins {
    path: PathBuf,
}

impl Pins {
    /// `/sys/fs/bpf/<name>`, which must not exist yet.
    pub fn new(name: &str) -> Result<Self> {
        let path = Path::new("/sys/fs/bpf").join(name);
        let _ = ferry_agent::dataplane::unpin(&path);
        let _ = std::fs::remove_dir(&path);
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = ferry_agent::dataplane::unpin(&self.path);
        let _ = std::fs::remove_dir(&self.path);
    }
}
