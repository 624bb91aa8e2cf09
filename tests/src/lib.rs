//! Fixtures for ferry's privileged test tiers, and the programs those tiers run.
//!
//! # Layout
//! - [`netns`]: a "server" is a network namespace with a veth to a test bridge, no route out.
//! - [`cgroup`]: a "container" is a cgroup v2 directory plus the processes placed in it.
//! - [`agent`]: the real `ferry-agent` binary, started, killed and restarted.
//! - [`central`]: the real `ferry-central`, initialised and serving, killed and restarted.
//! - [`cluster`]: servers joined to central, each with its Docker Engine and agent; the CLI.
//! - [`demo`]: `./x demo`, made of these fixtures: the main job on this machine, left running.
//! - [`load`]: wrk in the background, and its summary checked.
//! - [`figures`]: flags, medians and per-run ratios for the benchmark binaries.
//! - [`inside`]: commands, Node scripts and HTTP requests from inside containers.
//! - [`http`]: a plain HTTP/1.1 client over one connection, as exact as the ingress tests need.
//! - [`docker`]: a real Docker Engine (the distribution's dockerd) with its own state.
//! - [`node_image`]: the local Node base image, imported from the host's node (no registry).
//! - [`registry`]: a real npm registry (Verdaccio) for the servers' builds, seeded by setup.
//! - [`resolvers`]: peer DNS servers (dnsmasq with fixed names).
//! - [`probe`]: the `ferry-probe` helper: TCP backends that name themselves, and clients.
//! - [`sniff`]: what really crosses a link, from an AF_PACKET socket.
//! - [`traffic`]: a flow of requests and a watched download between containers.
//! - [`tunnel`]: two servers joined by WireGuard through the agent's mesh verbs.
//! - [`tap`]: the VM guests' `ok`/`not ok` lines; [`board`]: where the VM cluster's
//!   guests leave each other notes.
//!
//! Every fixture removes what it made when dropped. None of them skips when it lacks a
//! privilege: a privileged tier that cannot run fails and says why.

pub mod agent;
pub mod board;
pub mod central;
pub mod cgroup;
pub mod cluster;
pub mod demo;
pub mod docker;
pub mod etcd;
pub mod figures;
pub mod http;
pub mod inside;
pub mod load;
pub mod netns;
pub mod node_image;
pub mod probe;
pub mod registry;
pub mod resolvers;
pub mod sniff;
pub mod tap;
pub mod traffic;
pub mod tunnel;

/// A child process killed and reaped on drop, so a failing test leaves nothing holding its
/// output open.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines `output` (a child's stdout) prints, as they come, from a thread of their own.
pub fn lines_of(output: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead as _;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(output)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// A name unique to this process and call, short enough for an interface name suffix.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}{n}", std::process::id() % 10_000)
}
