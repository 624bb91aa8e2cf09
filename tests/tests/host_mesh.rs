//! Host tier: the WireGuard mesh verbs on wireguard-go, the fallback for kernels without
//! the WireGuard module (this machine's kernel has none; the VM tier covers the module).

use std::path::Path;

use anyhow::Result;
use ferry_agent::mesh::wireguard::Backend;
use ferry_tests::{tunnel::Tunnel, unique};

#[test]
fn the_agent_falls_back_to_wireguard_go_exactly_when_the_kernel_has_no_module() -> Result<()> {
    let tunnel = Tunnel::new(&unique("d"), Backend::Userspace)?;
    let detected = tunnel.detected_backend()?;
    // Creating a wireguard link loads the module when the kernel has it.
    let expected = if Path::new("/sys/module/wireguard").exists() {
        Backend::Kernel
    } else {
        Backend::Userspace
    };
    assert_eq!(detected, expected);
    Ok(())
}

#[test]
fn wireguard_go_carries_traffic_encrypted_and_refuses_a_wrong_key() -> Result<()> {
    let tunnel = Tunnel::new(&unique("u"), Backend::Userspace)?;
    tunnel.configure()?;
    let report = tunnel.check_encrypted()?;
    assert!(
        report.wireguard_frames > 0 && report.tx_bytes > 0,
        "{report:?}"
    );
    tunnel.check_wrong_key()?;
    Ok(())
}

#[test]
fn wireguard_go_over_a_1400_byte_underlay_moves_10_mb_unfragmented_and_undropped() -> Result<()> {
    let tunnel = Tunnel::with_lan_mtu(&unique("m"), Backend::Userspace, 1400)?;
    tunnel.configure()?;
    let report = tunnel.check_bulk(10 << 20)?;
    println!("10 MiB over wireguard-go at MTU 1340: {report:?}");
    assert_eq!(report.fragments, 0, "{report:?}");
    // wireguard-go drained its socket: the agent gave it the buffers it lacks.
    assert_eq!(report.socket_drops, 0, "{report:?}");
    Ok(())
}

#[test]
fn wireguard_go_loses_nothing_while_the_agent_reapplies_its_configuration() -> Result<()> {
    let tunnel = Tunnel::new(&unique("r"), Backend::Userspace)?;
    tunnel.configure()?;
    let report = tunnel.check_reapply_loses_nothing(5000)?;
    println!("re-applied while a flow ran: {report:?}");
    assert!(
        report.passes >= 20,
        "too few passes to show anything: {report:?}"
    );
    assert_eq!(report.received, report.sent, "{report:?}");
    Ok(())
}
