//! Peer DNS servers the tests and benchmarks start: dnsmasq answering fixed names.

use std::process::Command;

/// dnsmasq in the foreground on `listen`:`port`, answering each (name, address) and
/// nothing else (no resolv.conf, no hosts file, no forwarding).
pub fn dnsmasq(listen: &str, port: u16, names: &[(String, String)]) -> Command {
    let mut cmd = Command::new("dnsmasq");
    cmd.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--user=root",
        "--pid-file=",
        &format!("--listen-address={listen}"),
        &format!("--port={port}"),
    ]);
    for (name, address) in names {
        cmd.arg(format!("--address=/{name}/{address}"));
    }
    cmd
}
