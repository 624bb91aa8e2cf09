//! Driving the `ferry-probe` helper: backends that answer with their name, and clients that
//! report who answered.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddrV4,
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// The probe binary, given by the integration test (`env!("CARGO_BIN_EXE_ferry-probe")`).
#[derive(Clone, Debug)]
pub struct Probe {
    bin: PathBuf,
}

/// A backend process; killed on drop.
pub struct Backend {
    child: Child,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Probe {
    /// Wraps the binary at `bin`.
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        Self { bin: bin.into() }
    }

    /// A command that serves `name` on `addr`; `prepare` may place it in a netns or cgroup.
    pub fn serve(
        &self,
        addr: SocketAddrV4,
        name: &str,
        prepare: impl FnOnce(&mut Command),
    ) -> Result<Backend> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["serve", &addr.to_string(), name])
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        prepare(&mut cmd);
        let mut child = cmd.spawn().context("starting ferry-probe serve")?;
        let stdout = child.stdout.take().context("probe stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading probe output")?;
        if !line.starts_with("listening") {
            let _ = child.kill();
            bail!("ferry-probe serve {addr} did not start: {line:?}");
        }
        Ok(Backend { child })
    }

    /// Connects `count` times to `addr`, one after another, and returns what each
    /// connection read (a backend's name) or `error: <reason>`.
    pub fn connect(
        &self,
        addr: SocketAddrV4,
        count: usize,
        prepare: impl FnOnce(&mut Command),
    ) -> Result<Vec<String>> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["connect", &addr.to_string(), &count.to_string()])
            .stdin(Stdio::null());
        prepare(&mut cmd);
        let out = cmd.output().context("running ferry-probe connect")?;
        if !out.status.success() {
            bail!(
                "ferry-probe connect failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }
}
