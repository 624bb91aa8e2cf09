//! A real central: `ferry-central init` and `ferry-central serve` as the operator runs them.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    agent::{agent_command_in, workspace_binary},
    netns::Server,
};

/// A running central and what `init` printed; the process stops on drop.
pub struct Central {
    child: Child,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// The URL to reach it.
    pub url: String,
    /// The admin token.
    pub admin_token: String,
    /// The join token.
    pub join_token: String,
    /// The CA fingerprint.
    pub ca_fingerprint: String,
    /// Where it listens.
    listen: SocketAddr,
    /// The flags `serve` runs with, besides the data directory and address.
    flags: Vec<String>,
    /// More replicas serving the same data directory (central on etcd), with their URLs.
    replicas: Vec<(Child, String)>,
}

impl Central {
    /// Initialises `data_dir` for `host` and serves on `host`, on a port the kernel picks.
    pub fn start(data_dir: &Path, host: &str) -> Result<Self> {
        Self::start_with_drain(data_dir, host, TEST_DRAIN)
    }

    /// As [`start`](Self::start), with retired generations draining for `drain` (e.g. "15s").
    pub fn start_with_drain(data_dir: &Path, host: &str, drain: &str) -> Result<Self> {
        Self::start_with_flags(data_dir, host, &["--drain-period", drain])
    }

    /// As [`start`](Self::start), serving with `flags` (the test drain period unless they
    /// give one).
    pub fn start_with_flags(data_dir: &Path, host: &str, flags: &[&str]) -> Result<Self> {
        Self::start_with(data_dir, host, &[], flags)
    }

    /// [`start`](Self::start) with its state in the etcd cluster at `store`
    /// (`etcd://HOST:PORT,...`).
    pub fn start_on_etcd(data_dir: &Path, host: &str, store: &str) -> Result<Self> {
        Self::start_with(data_dir, host, &["--store", store], &[])
    }

    /// `init` with `init_flags`, then `serve` with `flags`.
    pub fn start_with(
        data_dir: &Path,
        host: &str,
        init_flags: &[&str],
        flags: &[&str],
    ) -> Result<Self> {
        let mut flags: Vec<String> = flags.iter().map(ToString::to_string).collect();
        if !flags.iter().any(|f| f == "--drain-period") {
            flags.extend(["--drain-period".to_string(), TEST_DRAIN.to_string()]);
        }
        let bin = workspace_binary("ferry-central", "FERRY_CENTRAL_BIN")?;
        let _ = std::fs::remove_dir_all(data_dir);
        let init = Command::new(&bin)
            .args(["init", "--data-dir"])
            .arg(data_dir)
            .args(["--url", &format!("https://{host}:7443")])
            .args(init_flags)
            .output()
            .context("running ferry-central init")?;
        if !init.status.success() {
            bail!(
                "ferry-central init failed: {}",
                String::from_utf8_lossy(&init.stderr)
            );
        }
        let printed = Printed::parse(&String::from_utf8_lossy(&init.stdout))?;
        let (child, addr) = serve(&bin, data_dir, &format!("{host}:0"), &flags)?;
        Ok(Self {
            child,
            data_dir: data_dir.to_path_buf(),
            url: format!("https://{host}:{}", addr.port()),
            admin_token: printed.admin_token,
            join_token: printed.join_token,
            ca_fingerprint: printed.ca_fingerprint,
            listen: addr,
            flags,
            replicas: Vec::new(),
        })
    }

    /// Serves another replica from the same data directory (for central on etcd: the
    /// same store, CA and tokens) on another port of the same host; returns its URL.
    /// [`url`](Self::url) names it after the first from then on, so every client that
    /// takes `url` knows both.
    pub fn add_replica(&mut self) -> Result<String> {
        let bin = workspace_binary("ferry-central", "FERRY_CENTRAL_BIN")?;
        let (child, addr) = serve(
            &bin,
            &self.data_dir,
            &format!("{}:0", self.listen.ip()),
            &self.flags,
        )?;
        let url = format!("https://{}:{}", self.listen.ip(), addr.port());
        self.url = format!("{},{url}", self.url);
        self.replicas.push((child, url.clone()));
        Ok(url)
    }

    /// Kills the first replica (the one `start` served, which clients ask first) with
    /// SIGKILL; the others go on serving.
    pub fn kill_first(&mut self) -> Result<()> {
        self.child
            .kill()
            .context("killing central's first replica")?;
        let _ = self.child.wait();
        Ok(())
    }

    /// An admin client of every replica [`url`](Self::url) names, pinning the CA.
    pub fn admin(&self) -> Result<ferry_api::client::Client> {
        self.client_with(&self.admin_token)
    }

    /// A client of central with `token` (an agent's, say), pinning the CA.
    pub fn client_with(&self, token: &str) -> Result<ferry_api::client::Client> {
        Ok(ferry_api::client::Client::new(
            &self.url,
            token,
            ferry_api::client::Trust::Fingerprint(self.ca_fingerprint.clone()),
        )?)
    }

    /// The serving process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills central with SIGKILL (no shutdown of any kind), keeps it down for `down_for`,
    /// and serves again from the same data directory on the same address.
    pub fn kill_and_restart(&mut self, down_for: Duration) -> Result<()> {
        self.restart_around(|_| {
            std::thread::sleep(down_for);
            Ok(())
        })
    }

    /// Kills central with SIGKILL, runs `meanwhile` with its data directory, and serves
    /// again from it on the same address.
    pub fn restart_around(&mut self, meanwhile: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        self.child.kill().context("killing central")?;
        let _ = self.child.wait();
        meanwhile(&self.data_dir)?;
        let bin = workspace_binary("ferry-central", "FERRY_CENTRAL_BIN")?;
        let (child, _) = serve(&bin, &self.data_dir, &self.listen.to_string(), &self.flags)?;
        self.child = child;
        Ok(())
    }
}

/// What `ferry-central init` prints once: the tokens and the CA's fingerprint.
pub struct Printed {
    /// The admin token (`ferry-admin-...`).
    pub admin_token: String,
    /// The join token, after `--token` in the printed join command.
    pub join_token: String,
    /// The CA fingerprint, after `--ca-fingerprint`.
    pub ca_fingerprint: String,
}

impl Printed {
    /// Reads `init`'s standard output.
    pub fn parse(printed: &str) -> Result<Self> {
        let after = |marker: &str| -> Result<String> {
            printed
                .split_whitespace()
                .skip_while(|w| *w != marker)
                .nth(1)
                .map(str::to_string)
                .with_context(|| format!("init printed no {marker}:\n{printed}"))
        };
        Ok(Self {
            admin_token: printed
                .split_whitespace()
                .find(|w| w.starts_with("ferry-admin-"))
                .map(str::to_string)
                .with_context(|| format!("init printed no admin token:\n{printed}"))?,
            join_token: after("--token")?,
            ca_fingerprint: after("--ca-fingerprint")?,
        })
    }
}

/// How long retired generations drain in tests: long enough to see them answer after a
/// flip, short enough to wait for.
pub const TEST_DRAIN: &str = "4s";

/// Starts `ferry-central serve` on `listen`; returns it and the address it bound.
fn serve(
    bin: &Path,
    data_dir: &Path,
    listen: &str,
    flags: &[String],
) -> Result<(Child, SocketAddr)> {
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--data-dir"])
        .arg(data_dir)
        .args(["--listen", listen])
        .args(flags);
    spawn_serve(cmd)
}

/// Starts a prepared `ferry-central serve` command and waits until it says where it
/// listens; returns it and that address.
pub fn spawn_serve(mut cmd: Command) -> Result<(Child, SocketAddr)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting ferry-central serve")?;
    let stdout = child.stdout.take().context("central stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("ferry-central listening on ") {
                let _ = tx.send(addr.trim().to_string());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(addr) => Ok((
            child,
            addr.parse().context("central printed an odd address")?,
        )),
        Err(_) => {
            let _ = child.kill();
            bail!("ferry-central serve did not start listening")
        }
    }
}

/// What a server needs to join a central: its URL, the join token and the CA's
/// fingerprint (what `init` prints in its join command).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct JoinTicket {
    /// Central's URL.
    pub url: String,
    /// The join token.
    pub join_token: String,
    /// The CA fingerprint.
    pub ca_fingerprint: String,
}

impl JoinTicket {
    /// Runs `ferry-agent join` as `name`, inside `server` if given, with WireGuard at
    /// `endpoint` and state in `state_dir`: (success, stdout, stderr).
    pub fn join(
        &self,
        name: &str,
        endpoint: SocketAddr,
        state_dir: &Path,
        server: Option<&Server>,
    ) -> Result<(bool, String, String)> {
        let (endpoint, state) = (endpoint.to_string(), state_dir.to_string_lossy());
        agent_command_in(
            &[
                "join",
                "--central",
                &self.url,
                "--token",
                &self.join_token,
                "--ca-fingerprint",
                &self.ca_fingerprint,
                "--name",
                name,
                "--endpoint",
                &endpoint,
                "--state-dir",
                &state,
            ],
            server,
        )
    }
}

impl Central {
    /// The ticket servers join this central with.
    pub fn ticket(&self) -> JoinTicket {
        JoinTicket {
            url: self.url.clone(),
            join_token: self.join_token.clone(),
            ca_fingerprint: self.ca_fingerprint.clone(),
        }
    }

    /// Runs `ferry-agent join` inside `server` as `name`, with WireGuard on port 51820 of
    /// the server's address: (success, stdout, stderr).
    pub fn join(
        &self,
        server: &Server,
        name: &str,
        state_dir: &Path,
    ) -> Result<(bool, String, String)> {
        let address = server.addr().context("the server has no address")?;
        self.ticket().join(
            name,
            SocketAddr::from((address, 51820)),
            state_dir,
            Some(server),
        )
    }
}

impl Drop for Central {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for (mut replica, _) in self.replicas.drain(..) {
            let _ = replica.kill();
            let _ = replica.wait();
        }
    }
}
