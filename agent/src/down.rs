//! A stop meant as a stop (`ferry-agent down`): what an agent leaves running on purpose
//! across a restart (its socket keepers, so no connection is refused while it is away,
//! and wireguard-go, so the mesh stays up) is ended here. The published ports and the
//! DNS listener close, and the WireGuard link goes. What serves on without the agent is
//! left, and said: the pinned data plane and the containers.
//!
//! It refuses while an agent of the same state directory runs: that agent would bind
//! its ports again at once.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// What `down` works on: the agent's own paths, as `run` was given them.
#[derive(Clone, Debug)]
pub struct DownOptions {
    /// The agent's state directory (its keepers' sockets are in `sockets/`).
    pub state_dir: PathBuf,
    /// The WireGuard link of the container network.
    pub wg_interface: String,
    /// Where the data plane is pinned.
    pub bpffs: PathBuf,
}

/// What `down` did, and what it left.
#[derive(Debug, Default)]
pub struct DownReport {
    /// The listeners whose keepers ended (file names under `sockets/`, e.g. `tcp-80`).
    pub closed: Vec<String>,
    /// The WireGuard link removed, with wireguard-go's process if it ran one.
    pub link: Option<String>,
    /// The pins left, if any.
    pub pins_left: Option<PathBuf>,
}

/// Why `down` did not run.
#[derive(Debug, thiserror::Error)]
pub enum DownError {
    #[error(
        "an agent with state directory {state_dir} still runs (process {pid}); stop it first \
         (`systemctl stop ferry-agent`, or SIGTERM), then run `ferry-agent down` again"
    )]
    AgentRuns { state_dir: PathBuf, pid: u32 },
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("removing the WireGuard link {name}: {source}")]
    Link {
        name: String,
        #[source]
        source: Box<crate::mesh::interface::InterfaceError>,
    },
}

/// How long the keepers get to notice their socket is gone (they look every second).
const KEEPERS_END: Duration = Duration::from_secs(5);

/// Ends the keepers and the WireGuard link of the agent of `options`; see the module.
pub async fn down(options: &DownOptions) -> Result<DownReport, DownError> {
    if let Some(pid) = processes(|args| is_agent_run(args, &options.state_dir)).first() {
        return Err(DownError::AgentRuns {
            state_dir: options.state_dir.clone(),
            pid: *pid,
        });
    }
    let mut report = DownReport::default();
    let sockets = options.state_dir.join("sockets");
    match std::fs::read_dir(&sockets) {
        Ok(entries) => {
            for entry in entries.flatten() {
                // A keeper exits once its socket's file is gone.
                if std::fs::remove_file(entry.path()).is_ok() {
                    report
                        .closed
                        .push(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(DownError::Io {
                path: sockets,
                source,
            });
        }
    }
    let deadline = Instant::now() + KEEPERS_END;
    let keeps = |args: &[String]| {
        args.iter().any(|a| a == "keep-sockets")
            && args.iter().any(|a| Path::new(a).starts_with(&sockets))
    };
    while !processes(keeps).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for pid in processes(keeps) {
        // Still there (stuck): the listeners must close all the same.
        // SAFETY: kill has no memory preconditions; a pid gone meanwhile gets ESRCH.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
    // wireguard-go, if it serves the link, looked up before the link goes.
    let userspace = crate::mesh::interface::wireguard_go_serving(&options.wg_interface);
    let link_error = |source: crate::mesh::link::LinkError| DownError::Link {
        name: options.wg_interface.clone(),
        source: Box::new(source.into()),
    };
    // Through netlink, in this process's network namespace (/sys shows the one it was
    // mounted in).
    let netlink = crate::mesh::link::Netlink::connect().map_err(link_error)?;
    match netlink.delete(&options.wg_interface).await {
        // wireguard-go notices its TUN link is gone and exits.
        Ok(()) => {
            report.link = Some(match userspace {
                Some(pid) => format!("{} (wireguard-go, process {pid})", options.wg_interface),
                None => format!("{} (kernel WireGuard)", options.wg_interface),
            });
        }
        Err(crate::mesh::link::LinkError::NoSuchLink { .. }) => {}
        Err(e) => return Err(link_error(e)),
    }
    if options.bpffs.exists() {
        report.pins_left = Some(options.bpffs.clone());
    }
    Ok(report)
}

/// Whether `args` is `ferry-agent run` with state directory `state_dir`.
fn is_agent_run(args: &[String], state_dir: &Path) -> bool {
    let is_agent = args.first().is_some_and(|a| a.ends_with("ferry-agent"));
    let runs = args.get(1).is_some_and(|a| a == "run");
    let dir = args
        .iter()
        .position(|a| a == "--state-dir")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix("--state-dir=").map(PathBuf::from))
        })
        .unwrap_or_else(|| PathBuf::from(crate::membership::state::DEFAULT_STATE_DIR));
    is_agent && runs && same_dir(&dir, state_dir)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Whether process `pid` runs (a zombie, which has exited but was not reaped, does not).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|s| !s.trim_start().starts_with('Z'))
    })
}

/// Live processes (not zombies) of this machine whose arguments (`/proc/<pid>/cmdline`,
/// the program first) `matches`, this one left out.
pub fn processes(matches: impl Fn(&[String]) -> bool) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let args: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            !args.is_empty() && matches(&args) && alive(*pid)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn an_agent_is_known_by_its_run_command_and_state_directory() {
        let dir = Path::new("/var/lib/ferry-x");
        assert!(is_agent_run(
            &words("/usr/bin/ferry-agent run --state-dir /var/lib/ferry-x"),
            dir
        ));
        assert!(is_agent_run(
            &words("ferry-agent run --state-dir=/var/lib/ferry-x --bpffs /b"),
            dir
        ));
        assert!(!is_agent_run(
            &words("ferry-agent run --state-dir /var/lib/other"),
            dir
        ));
        assert!(!is_agent_run(
            &words("ferry-agent down --state-dir /var/lib/ferry-x"),
            dir
        ));
        assert!(is_agent_run(
            &words("ferry-agent run"),
            Path::new(crate::membership::state::DEFAULT_STATE_DIR)
        ));
    }
}
