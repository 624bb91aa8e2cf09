//! `demo`: build everything, start the agent on this machine, and show a service address
//! steered round-robin over two Node backends, for processes in ferry's cgroup only, across
//! an agent kill and restart. Everything stays on loopback, and everything is removed at
//! the end.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{build_ebpf, mounts, process, workspace};

/// Options of `demo`.
#[derive(Args)]
pub struct Options {
    /// bpffs directory for the demo's pins.
    #[arg(long, default_value = "/sys/fs/bpf/ferry-demo")]
    bpffs: PathBuf,
}

const SERVICE: &str = "127.77.0.10:80";
const BACKENDS: [(&str, &str); 2] = [("127.0.0.1:7101", "api-1"), ("127.0.0.1:7102", "api-2")];

/// Runs the demo.
pub fn run(options: Options) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo loads eBPF programs: run it as root");
    }
    build_ebpf::run(build_ebpf::Options::default())?;
    process::run(
        Command::new(workspace::cargo())
            .current_dir(workspace::root())
            .args(["build", "--package", "ferry-agent"]),
    )?;
    let cgroup2 = cgroup2_mount()?;
    let cgroup = cgroup2.join("ferry-demo");
    std::fs::create_dir_all(&cgroup).with_context(|| format!("creating {}", cgroup.display()))?;
    let mut demo = Demo {
        agent_bin: workspace::target_dir().join("debug/ferry-agent"),
        bpffs: options.bpffs,
        cgroup,
        children: Vec::new(),
        agent: None,
    };
    let result = demo.show();
    demo.clean_up();
    result
}

struct Demo {
    agent_bin: PathBuf,
    bpffs: PathBuf,
    cgroup: PathBuf,
    children: Vec<Child>,
    agent: Option<Child>,
}

impl Demo {
    fn show(&mut self) -> Result<()> {
        let example = workspace::root().join("examples/connect-demo");
        self.start_agent()?;
        for (addr, name) in BACKENDS {
            let (host, port) = addr.split_once(':').context("backend address")?;
            let child = Command::new("node")
                .arg(example.join("backend.js"))
                .args([host, port, name])
                .stdout(Stdio::piped())
                .spawn()
                .context("starting a Node backend; is nodejs installed? (`./x setup`)")?;
            let child = wait_for_line(child, "listening")?;
            self.children.push(child);
        }
        let backends: Vec<&str> = BACKENDS.iter().map(|(a, _)| *a).collect();
        say(&format!("service {SERVICE} -> {}", backends.join(", ")));
        process::run(
            Command::new(&self.agent_bin)
                .args(["service", "set", "--bpffs"])
                .arg(&self.bpffs)
                .arg(SERVICE)
                .args(&backends),
        )?;

        say("a client inside ferry's cgroup connects six times:");
        println!("    {}", self.client(&example, true)?);
        say("the same client outside the cgroup is not steered (nothing listens there):");
        println!("    {}", self.client(&example, false)?);

        say("the agent is killed (SIGKILL); the pinned program keeps steering:");
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        println!("    {}", self.client(&example, true)?);

        say("the agent starts again and adopts the pinned link:");
        self.start_agent()?;
        println!("    {}", self.client(&example, true)?);

        say("kernel counters:");
        process::run(
            Command::new(&self.agent_bin)
                .arg("counters")
                .arg("--bpffs")
                .arg(&self.bpffs),
        )?;
        Ok(())
    }

    fn start_agent(&mut self) -> Result<()> {
        let child = Command::new(&self.agent_bin)
            .arg("run")
            .arg("--cgroup-root")
            .arg(&self.cgroup)
            .arg("--bpffs")
            .arg(&self.bpffs)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .context("starting ferry-agent")?;
        let child = wait_for_line(child, "ferry-agent ready")?;
        self.agent = Some(child);
        Ok(())
    }

    fn client(&self, example: &Path, in_cgroup: bool) -> Result<String> {
        let script = example.join("client.js");
        let (host, port) = SERVICE.split_once(':').context("service address")?;
        let mut cmd = if in_cgroup {
            // The shell moves itself into the cgroup, then becomes the client.
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec node "$@""#)
                .arg("sh")
                .arg(&self.cgroup)
                .arg(&script);
            cmd
        } else {
            let mut cmd = Command::new("node");
            cmd.arg(&script);
            cmd
        };
        cmd.args([host, port, "6"]);
        Ok(process::output(&mut cmd)?.trim().to_string())
    }

    fn clean_up(&mut self) {
        for child in self.children.iter_mut().chain(self.agent.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new(&self.agent_bin)
            .arg("unpin")
            .arg("--bpffs")
            .arg(&self.bpffs)
            .output();
        let _ = std::fs::remove_dir(&self.bpffs);
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

fn say(text: &str) {
    println!("\n==> {text}");
}

/// Waits until `child` prints a line containing `needle`, echoing what it prints.
fn wait_for_line(mut child: Child, needle: &str) -> Result<Child> {
    let stdout = child.stdout.take().context("child stdout not captured")?;
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) => {
                println!("    {line}");
                if line.contains(needle) {
                    break;
                }
            }
            _ => {
                let status = child.wait()?;
                bail!("the process exited ({status}) before printing {needle:?}");
            }
        }
    }
    // Keep draining so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(child)
}

fn cgroup2_mount() -> Result<PathBuf> {
    mounts::first_of_type("cgroup2")?.context("no cgroup2 filesystem is mounted; run `./x setup`")
}
