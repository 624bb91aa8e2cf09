//! `ferry-vm-guest`: the VM tier's test program, run inside a QEMU guest whose kernel has
//! the WireGuard module. It prints one `ok`/`not ok` line per check and a closing
//! `N passed, M failed` line; its exit code is 0 only if every check passed.

use std::process::ExitCode;

use anyhow::{Result, ensure};
use ferry_agent::mesh::wireguard::Backend;
use ferry_tests::{tap::Report, tunnel::Tunnel};

fn main() -> ExitCode {
    let mut report = Report::default();
    match Tunnel::new("vm", Backend::Kernel) {
        Ok(tunnel) => {
            report.check(
                "the agent detects kernel WireGuard",
                detects_kernel(&tunnel),
            );
            report.check(
                "kernel WireGuard links configured through netlink",
                tunnel.configure(),
            );
            report.check(
                "traffic between the container subnets crosses the LAN encrypted",
                tunnel.check_encrypted().map(|r| {
                    println!(
                        "# {} frames on the LAN, {} WireGuard, none plaintext; {} B sent in the tunnel",
                        r.frames, r.wireguard_frames, r.tx_bytes
                    );
                }),
            );
            report.check(
                "a peer with the wrong key gets nothing through",
                tunnel.check_wrong_key(),
            );
            report.check(
                "re-applying the same configuration loses no packet",
                reapply_loses_nothing(&tunnel),
            );
        }
        Err(e) => {
            report.check("two servers joined by veth", Err(e));
        }
    }
    report.check(
        "10 MB crosses a 1400-byte underlay through kernel WireGuard at the agent's MTU, unfragmented",
        bulk_over_a_small_underlay(),
    );
    report.finish()
}

fn bulk_over_a_small_underlay() -> Result<()> {
    let tunnel = Tunnel::with_lan_mtu("vs", Backend::Kernel, 1400)?;
    tunnel.configure()?;
    let report = tunnel.check_bulk(10 << 20)?;
    println!(
        "# 10 MiB in {:?}: {} frames on the LAN, {} fragments, {} datagrams dropped at a full socket",
        report.elapsed, report.frames, report.fragments, report.socket_drops
    );
    ensure!(
        report.fragments == 0,
        "the tunnel's packets were fragmented: {report:?}"
    );
    Ok(())
}

fn reapply_loses_nothing(tunnel: &Tunnel) -> Result<()> {
    let report = tunnel.check_reapply_loses_nothing(2000)?;
    println!(
        "# {} of {} datagrams arrived across {} passes",
        report.received, report.sent, report.passes
    );
    ensure!(
        report.passes >= 10 && report.received == report.sent,
        "{report:?}"
    );
    Ok(())
}

fn detects_kernel(tunnel: &Tunnel) -> Result<()> {
    let backend = tunnel.detected_backend()?;
    ensure!(
        backend == Backend::Kernel,
        "detected {backend:?} on a kernel with the module"
    );
    Ok(())
}
