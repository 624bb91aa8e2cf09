//! `setup`: install what the build and the tiers need, and check the kernel. Idempotent:
//! each step first looks whether its work is already done.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{build_ebpf, mounts, process, workspace};

/// Options of `setup`.
#[derive(Args, Default)]
pub struct Options {}

/// Distribution packages, grouped by why ferry needs them.
const PACKAGES: &[(&str, &[&str])] = &[
    (
        "bpf-linker links the eBPF programs against LLVM 22",
        &[
            "llvm-22-dev",
            "libpolly-22-dev",
            "clang-22",
            "libzstd-dev",
            "zlib1g-dev",
        ],
    ),
    (
        "the host tier runs a real Docker Engine, builds the Node base image from busybox, dash and the Node distribution, and runs Verdaccio with npm",
        &["docker.io", "nodejs", "busybox-static", "dash", "iproute2"],
    ),
    (
        "the VM tier boots the distribution's kernel under QEMU with a busybox initramfs",
        &[
            "qemu-system-x86",
            "busybox-static",
            "kmod",
            "cpio",
            "xz-utils",
        ],
    ),
    (
        "the container network uses WireGuard, with wireguard-go where the kernel has none",
        &["wireguard-go", "wireguard-tools"],
    ),
    (
        "the host tier installs the Debian packages with dpkg into a scratch root and checks their units with systemd-analyze",
        &["systemd", "dpkg"],
    ),
    (
        "the host tier's DNS tests ask with dig inside containers and start a local upstream resolver",
        &["bind9-dnsutils", "dnsmasq-base"],
    ),
    (
        "`bench dns` sets dnsmasq and unbound beside ferry under dnsperf; `bench connect` sets an iptables DNAT rule beside connect4",
        &["dnsperf", "unbound", "iptables"],
    ),
    (
        "central's etcd backend generates its client's protobuf code with protoc at build time (libprotobuf-dev holds the google/protobuf/*.proto files etcd's protos import); the store suite runs it against a real etcd, and `bench control` measures central's watch fan-out against etcd 3.4 in the same run",
        &["protobuf-compiler", "libprotobuf-dev", "etcd-server"],
    ),
    (
        "`bench ingress` sets nginx and haproxy beside ferry's ingress under wrk; host_ingress loads with wrk and speaks HTTP/2 with curl",
        &["nginx-light", "haproxy", "wrk", "curl"],
    ),
    (
        "`bench mesh` measures throughput through the WireGuard mesh and in clear with iperf3",
        &["iperf3"],
    ),
];

const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
/// cargo-deb, which `./x package` and the host tier's package tests make the .debs with.
const CARGO_DEB_VERSION: &str = "2.12.1";
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Runs every setup step.
pub fn run(_options: Options) -> Result<()> {
    require_root()?;
    install_packages()?;
    install_bpf_linker()?;
    install_cargo_deb()?;
    mount_bpffs()?;
    check_cgroup2()?;
    check_kernel()?;
    seed_registry()?;
    eprintln!("setup: done");
    Ok(())
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "setup installs packages and mounts bpffs, so it must run as root (try `sudo ./x setup`)"
        );
    }
    Ok(())
}

fn installed(package: &str) -> bool {
    process::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_ok_and(|status| status.ends_with("installed") && !status.contains("not-installed"))
}

fn install_packages() -> Result<()> {
    let mut missing = Vec::new();
    for (why, packages) in PACKAGES {
        let absent: Vec<&str> = packages
            .iter()
            .copied()
            .filter(|p| !installed(p) && !missing.contains(p))
            .collect();
        if !absent.is_empty() {
            eprintln!("setup: installing {} because {why}", absent.join(" "));
            missing.extend(absent);
        }
    }
    if missing.is_empty() {
        eprintln!("setup: distribution packages present");
        return Ok(());
    }
    process::run(Command::new("apt-get").arg("update").arg("-q"))
        .context("apt-get update failed; the distribution's package mirror must be reachable")?;
    process::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )
    .with_context(|| format!("installing {} failed", missing.join(" ")))
}

fn install_bpf_linker() -> Result<()> {
    let current = process::output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if current.trim() == format!("bpf-linker {BPF_LINKER_VERSION}") {
        eprintln!("setup: {} present", current.trim());
        return Ok(());
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (links the eBPF programs; a few minutes)"
    );
    let path = format!("{LLVM_BIN}:{}", std::env::var("PATH").unwrap_or_default());
    process::run(
        Command::new(workspace::cargo())
            .env("PATH", path)
            .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features", "llvm-22"]),
    )
    .context("building bpf-linker failed; is llvm-22-dev installed?")
}

fn install_cargo_deb() -> Result<()> {
    let current = process::output(Command::new(workspace::cargo()).args(["deb", "--version"]))
        .unwrap_or_default();
    if current.trim() == format!("cargo-deb {CARGO_DEB_VERSION}") {
        eprintln!("setup: {} present", current.trim());
        return Ok(());
    }
    eprintln!(
        "setup: building cargo-deb {CARGO_DEB_VERSION} (makes the Debian packages; a few minutes)"
    );
    process::run(Command::new(workspace::cargo()).args([
        "install",
        "cargo-deb",
        "--locked",
        "--version",
        CARGO_DEB_VERSION,
    ]))
    .context("building cargo-deb failed; the crate registry must be reachable")
}

fn mount_bpffs() -> Result<()> {
    if mounts::is_mounted_at("/sys/fs/bpf", "bpf")? {
        eprintln!("setup: bpffs mounted at /sys/fs/bpf");
        return Ok(());
    }
    eprintln!("setup: mounting bpffs at /sys/fs/bpf (the agent pins its programs and maps there)");
    std::fs::create_dir_all("/sys/fs/bpf").context("creating /sys/fs/bpf")?;
    process::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
        .context("mounting bpffs failed; the kernel needs CONFIG_BPF_SYSCALL")
}

fn check_cgroup2() -> Result<()> {
    match mounts::first_of_type("cgroup2")? {
        Some(at) => {
            eprintln!("setup: cgroup v2 mounted at {}", at.display());
            Ok(())
        }
        None => bail!(
            "no cgroup v2 hierarchy is mounted; ferry keys its programs on cgroup v2 \
             (mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified`)"
        ),
    }
}

/// Checks the kernel features the programs use: BTF, and (by asking the agent, which
/// probes with the same library that loads the programs) cgroup sock_addr programs.
fn check_kernel() -> Result<()> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!(
            "the kernel exposes no BTF (/sys/kernel/btf/vmlinux); ferry needs CONFIG_DEBUG_INFO_BTF"
        );
    }
    eprintln!("setup: kernel BTF present");
    build_ebpf::run(build_ebpf::Options::default())?;
    process::run(Command::new(workspace::cargo()).args(["build", "--package", "ferry-agent"]))?;
    let agent = workspace::target_dir().join("debug/ferry-agent");
    process::run(Command::new(agent).args(["check", "--bpffs", "/sys/fs/bpf/ferry"]))
        .context("the kernel cannot run ferry's data plane (see the agent's message above)")
}

/// Installs Verdaccio (the npm registry the host tier's servers build from: their
/// namespaces have no route out), fetches the Node distribution the local base image is
/// made of, and seeds the registry with the test apps' dependencies through its uplink to
/// npm's registry. Each part is skipped when done (see `ferry_tests::registry`).
fn seed_registry() -> Result<()> {
    process::run(Command::new(workspace::cargo()).args([
        "build",
        "--package",
        "ferry-tests",
        "--bin",
        "ferry-registry",
    ]))?;
    let seeder = workspace::target_dir().join("debug/ferry-registry");
    process::run(Command::new(seeder).arg("seed"))
        .context("seeding the test npm registry failed; the npm registry must be reachable")
}
