//! Host tier: `./x demo` as a newcomer runs it, on this machine (loopback only): the
//! program `./x demo` runs after setup and the builds. It deploys the example stack with
//! the CLI, shows it by host name and by `.cloud66.local`, deploys generation 2 under wrk
//! with no failed request while each generation's web reaches its own api, rolls back,
//! and leaves the stack serving; `down` then leaves nothing behind: no process, link,
//! pin, cgroup, mount or directory of the demo's, and its ports free.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, ensure};
use ferry_tests::{
    cgroup::cgroup2_root,
    demo::{BPFFS, CGROUP, DIR, HOST, RUN, WG_INTERFACE},
};

fn demo(verb: &str) -> Result<(bool, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-demo"))
        .arg(verb)
        .output()
        .with_context(|| format!("running ferry-demo {verb}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// What the ingress answers for the stack's host name on 127.0.0.1:80.
fn front() -> Result<String> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", "-H", &format!("Host: {HOST}")])
        .arg("http://127.0.0.1/")
        .output()
        .context("running curl")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Live processes whose command line mentions the demo's names.
fn demo_processes() -> Vec<u32> {
    ferry_agent::down::processes(|args| {
        args.iter().any(|a| a.contains("ferry-demo"))
            && !args.iter().any(|a| a.contains("host_demo"))
    })
}

#[test]
fn the_demo_shows_the_main_job_and_down_leaves_nothing() -> Result<()> {
    let (ok, shown) = demo("up")?;
    println!("{shown}");
    ensure!(ok, "ferry-demo up failed");
    for claim in [
        "generation 1 of shop is serving",
        "web of generation 1; api says: api of generation 1",
        "api.cloud66.local",
        // During generation 1's drain, both webs, each reaching its own api.
        "web of generation 2; api says: api of generation 2",
        "generation 2 of shop is serving",
        " requests, 0 failed",
        "shop: deploying generation 1 again",
        "The stack keeps running.",
    ] {
        ensure!(shown.contains(claim), "the demo did not show {claim:?}");
    }
    let during_drain = shown
        .split("during the drain")
        .nth(1)
        .context("the demo showed no drain")?;
    ensure!(
        during_drain.contains("web of generation 1; api says: api of generation 1"),
        "old web reaching old api during the drain"
    );
    // Left running, rolled back to generation 1.
    ensure!(
        front()? == "web of generation 1; api says: api of generation 1",
        "the stack is not left serving"
    );

    let (ok, removed) = demo("down")?;
    println!("{removed}");
    ensure!(ok, "ferry-demo down failed");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !demo_processes().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(
        demo_processes().is_empty(),
        "left running: {:?}",
        demo_processes()
    );
    let cgroup = cgroup2_root()?.join(CGROUP);
    for path in [Path::new(DIR), Path::new(RUN), Path::new(BPFFS), &cgroup] {
        ensure!(!path.exists(), "{} is left", path.display());
    }
    ensure!(
        !Path::new("/sys/class/net").join(WG_INTERFACE).exists(),
        "the WireGuard link is left"
    );
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    ensure!(
        !mounts.contains(DIR) && !mounts.contains(RUN),
        "mounts are left:\n{mounts}"
    );
    for port in [80, 443, 7443, 4873] {
        ensure!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is still taken"
        );
    }
    let (ok, again) = demo("down")?;
    ensure!(ok && again.contains("nothing to remove"), "{again}");
    Ok(())
}
