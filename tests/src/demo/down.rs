//! `ferry-demo down`: removes what `up` made, as [`State`] recorded it, and says what it
//! removed. Each part is removed even when an earlier one could not be.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Result;
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder,
};
use ferry_agent::containers::{Engine, LABEL_STACK};

use super::{BPFFS, CGROUP, DIR, NETWORK, RUN, State, WG_INTERFACE};
use crate::{agent::workspace_binary, cgroup::cgroup2_root, node_image};
use ferry_agent::down::alive;

/// Removes the demo. Nothing to remove is not an error.
pub async fn down() -> Result<()> {
    let state = State::load().unwrap_or_default().unwrap_or_default();
    let mut removed: Vec<String> = Vec::new();
    // The agent first: it would start again what the rest removes.
    stop(&state, "agent", &mut removed);
    if let Some(socket) = &state.docker_socket
        && let Ok(engine) = Engine::connect(socket).await
    {
        docker_leftovers(&engine, &state, &mut removed).await;
    }
    for name in ["central", "registry", "dockerd"] {
        stop(&state, name, &mut removed);
    }
    // What a stopped agent keeps for its next start (socket keepers, the WireGuard link
    // and wireguard-go), ended as an operator would; then its pins.
    if let Ok(agent) = workspace_binary("ferry-agent", "FERRY_AGENT_BIN") {
        let state_dir = Path::new(DIR).join("agent");
        let ended = Command::new(&agent)
            .args(["down", "--wg-interface", WG_INTERFACE, "--bpffs", BPFFS])
            .arg("--state-dir")
            .arg(&state_dir)
            .output();
        if let Ok(out) = ended
            && out.status.success()
        {
            let said = String::from_utf8_lossy(&out.stdout);
            for line in said
                .lines()
                .filter(|l| l.starts_with("closed") || l.starts_with("removed"))
            {
                removed.push(format!("(ferry-agent down) {line}"));
            }
        }
        if Path::new(BPFFS).exists() {
            let _ = Command::new(&agent)
                .args(["unpin", "--bpffs", BPFFS])
                .output();
            let _ = std::fs::remove_dir_all(BPFFS);
            removed.push(format!("the pinned programs and maps in {BPFFS}"));
        }
    }
    if let Ok(root) = cgroup2_root().map(|r| r.join(CGROUP))
        && root.exists()
    {
        // Leaves first; a cgroup directory goes only when empty.
        if let Ok(entries) = std::fs::read_dir(&root) {
            for entry in entries.flatten().filter(|e| e.path().is_dir()) {
                let _ = std::fs::remove_dir(entry.path());
            }
        }
        if std::fs::remove_dir(&root).is_ok() {
            removed.push(format!("the cgroup {}", root.display()));
        }
    }
    // dockerd leaves its default network namespace mounted in its exec root.
    for mount in mounts_below(&[DIR, RUN]) {
        let _ = Command::new("umount").arg("-l").arg(&mount).status();
    }
    for (dir, what) in [
        (DIR, "state, logs, data"),
        (RUN, "the demo dockerd's socket and exec root"),
    ] {
        if Path::new(dir).exists() && std::fs::remove_dir_all(dir).is_ok() {
            removed.push(format!("{dir} ({what})"));
        }
    }
    if removed.is_empty() {
        println!("no demo here: nothing to remove");
    } else {
        println!("removed:");
        for what in &removed {
            println!("  {what}");
        }
    }
    Ok(())
}

/// Stops kept process `name` (SIGTERM, then SIGKILL after 20 s).
fn stop(state: &State, name: &str, removed: &mut Vec<String>) {
    let Some(&pid) = state.pids.get(name) else {
        return;
    };
    if !alive(pid) {
        return;
    }
    let target = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if alive(pid) {
        let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
    }
    removed.push(format!("{name} (process {pid})"));
}

/// The demo's containers, the images its builds made, its network, and the base image if
/// the demo imported it.
async fn docker_leftovers(engine: &Engine, state: &State, removed: &mut Vec<String>) {
    let docker = engine.docker();
    let filters = std::collections::HashMap::from([("label", vec![LABEL_STACK])]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let containers = docker
        .list_containers(Some(options))
        .await
        .unwrap_or_default();
    let mut count = 0;
    for id in containers.into_iter().filter_map(|c| c.id) {
        let force = RemoveContainerOptionsBuilder::new().force(true).build();
        if docker.remove_container(&id, Some(force)).await.is_ok() {
            count += 1;
        }
    }
    if count > 0 {
        removed.push(format!("{count} containers of the example stack"));
    }
    let images = docker
        .list_images(Some(ListImagesOptionsBuilder::new().build()))
        .await
        .unwrap_or_default();
    let base = node_image::reference();
    let mut built = Vec::new();
    for tag in images.iter().flat_map(|i| i.repo_tags.iter()) {
        let ours = tag.starts_with("ferry/") || (state.imported_base && *tag == base);
        if ours {
            let force = RemoveImageOptionsBuilder::new().force(true).build();
            if docker.remove_image(tag, Some(force), None).await.is_ok() {
                built.push(tag.clone());
            }
        }
    }
    if !built.is_empty() {
        removed.push(format!("the images {}", built.join(", ")));
    }
    if docker.remove_network(NETWORK).await.is_ok() {
        removed.push(format!("the Docker network {NETWORK}"));
    }
}

/// Mount points below any of `dirs`, deepest first.
fn mounts_below(dirs: &[&str]) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut found: Vec<String> = table
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|at| dirs.iter().any(|d| at.starts_with(&format!("{d}/"))))
        .map(str::to_string)
        .collect();
    found.sort_by_key(|at| std::cmp::Reverse(at.len()));
    found
}
