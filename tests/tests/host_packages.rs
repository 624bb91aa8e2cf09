//! Host tier: the Debian packages `./x package` makes (the host tier makes them before
//! its tests), checked as an operator meets them. Each holds what it should with the
//! right modes; installed with dpkg into a scratch root (a copy-on-write overlay of this
//! machine's root, in a mount namespace of its own, so dpkg, the maintainer scripts and
//! deb-systemd-helper run as on a server and nothing reaches this machine), they put the
//! binaries, units and `/etc/ferry/agent.toml` in place, make the state directories 0700
//! and enable the units; `systemd-analyze verify` finds nothing wrong with the units; a
//! purge removes the binaries and units again.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};
use ferry_tests::unique;

/// Where `./x package` puts the packages.
fn debs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian")
}

/// The package file of `name` (`<name>_<version>_<arch>.deb`).
fn deb(name: &str) -> Result<PathBuf> {
    let prefix = format!("{name}_");
    std::fs::read_dir(debs())
        .with_context(|| format!("{}: run `./x package`", debs().display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .max()
        .with_context(|| {
            format!(
                "no {name} package in {}: run `./x package`",
                debs().display()
            )
        })
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "{cmd:?} failed:\n{text}");
    Ok(text)
}

#[test]
fn each_package_holds_its_files_with_their_modes() -> Result<()> {
    for (package, wanted) in [
        (
            "ferry-agent",
            &[
                "-rwxr-xr-x 0/0 usr/bin/ferry-agent",
                "-rw-r--r-- 0/0 lib/systemd/system/ferry-agent.service",
                "-rw-r----- 0/0 etc/ferry/agent.toml",
            ][..],
        ),
        (
            "ferry-central",
            &[
                "-rwxr-xr-x 0/0 usr/bin/ferry-central",
                "-rw-r--r-- 0/0 lib/systemd/system/ferry-central.service",
            ][..],
        ),
        ("ferry", &["-rwxr-xr-x 0/0 usr/bin/ferry"][..]),
    ] {
        let path = deb(package)?;
        let listing = output(Command::new("dpkg-deb").arg("--contents").arg(&path))?;
        // `-rwxr-xr-x 0/0  17023344 2026-11-29 00:00 usr/bin/ferry-agent` as mode, owner, path.
        let entries: Vec<String> = listing
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some(format!(
                    "{} {} {}",
                    f.first()?,
                    f.get(1)?,
                    f.last()?.trim_start_matches("./")
                ))
            })
            .collect();
        for entry in wanted {
            ensure!(
                entries.iter().any(|e| e == entry),
                "{package} lacks {entry}:\n{listing}"
            );
        }
    }
    let control_file = |name: &str| -> Result<String> {
        output(
            Command::new("dpkg-deb")
                .arg("--info")
                .arg(deb("ferry-agent")?)
                .arg(name),
        )
    };
    let conffiles = control_file("conffiles")?;
    let prerm = control_file("prerm")?;
    ensure!(
        prerm.contains("deb-systemd-invoke stop ferry-agent.service")
            && prerm.contains("/usr/bin/ferry-agent down --config /etc/ferry/agent.toml"),
        "removing the agent stops the unit, then ends its keepers and WireGuard link:\n{prerm}"
    );
    ensure!(
        conffiles.trim() == "/etc/ferry/agent.toml",
        "the agent's flags file is a conffile (an upgrade keeps the operator's edits): {conffiles}"
    );
    Ok(())
}

#[test]
fn the_packages_install_into_a_scratch_root_with_their_units_enabled_and_verified() -> Result<()> {
    let scratch = std::env::temp_dir().join(format!("ferry-test-packages{}", unique("")));
    for dir in ["upper", "work", "root"] {
        std::fs::create_dir_all(scratch.join(dir))?;
    }
    let debs: Vec<String> = ["ferry-agent", "ferry-central", "ferry"]
        .iter()
        .map(|p| deb(p).map(|d| d.to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    let script = format!(
        r#"set -e
S={scratch}
mount -t overlay overlay -o lowerdir=/,upperdir=$S/upper,workdir=$S/work $S/root
mount -t proc proc $S/root/proc
mount --rbind /dev $S/root/dev
mkdir -p $S/root/tmp/ferry-debs
cp {debs} $S/root/tmp/ferry-debs/
chroot $S/root sh -c 'dpkg -i /tmp/ferry-debs/*.deb'
echo '--- modes'
chroot $S/root stat -c '%a %U %n' /usr/bin/ferry-agent /usr/bin/ferry-central /usr/bin/ferry \
    /etc/ferry/agent.toml /var/lib/ferry-agent /var/lib/ferry-central
echo '--- enabled'
chroot $S/root sh -c 'readlink /etc/systemd/system/multi-user.target.wants/ferry-*.service'
echo '--- verify'
chroot $S/root systemd-analyze verify /lib/systemd/system/ferry-agent.service \
    /lib/systemd/system/ferry-central.service 2>&1
echo '--- flags file'
chroot $S/root ferry-agent run --config /etc/ferry/agent.toml --help >/dev/null && echo read
echo '--- purge'
chroot $S/root dpkg --purge ferry-agent ferry-central ferry
chroot $S/root sh -c 'ls /usr/bin/ferry-agent /lib/systemd/system/ferry-agent.service 2>&1 || true'
"#,
        scratch = scratch.display(),
        debs = debs.join(" "),
    );
    let shown = output(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(&script),
    );
    let _ = std::fs::remove_dir_all(&scratch);
    let shown = shown?;
    println!("{shown}");
    // The script's output, by its `--- NAME` headings.
    let mut sections: std::collections::BTreeMap<String, String> = Default::default();
    let mut current = String::new();
    for line in shown.lines() {
        match line.strip_prefix("--- ") {
            Some(name) => current = name.to_string(),
            None => {
                let text = sections.entry(current.clone()).or_default();
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    let section = |name: &str| -> Result<String> {
        ensure!(
            shown.contains(&format!("--- {name}\n")),
            "no {name} section in:\n{shown}"
        );
        Ok(sections.get(name).cloned().unwrap_or_default())
    };
    let modes = section("modes")?;
    for line in [
        "755 root /usr/bin/ferry-agent",
        "755 root /usr/bin/ferry-central",
        "755 root /usr/bin/ferry",
        "640 root /etc/ferry/agent.toml",
        "700 root /var/lib/ferry-agent",
        "700 root /var/lib/ferry-central",
    ] {
        ensure!(
            modes.lines().any(|l| l == line),
            "missing {line:?} in:\n{modes}"
        );
    }
    let enabled = section("enabled")?;
    for unit in ["ferry-agent.service", "ferry-central.service"] {
        ensure!(
            enabled.contains(&format!("/lib/systemd/system/{unit}")),
            "{unit} is not enabled:\n{enabled}"
        );
    }
    let verified = section("verify")?;
    ensure!(
        verified.trim().is_empty(),
        "systemd-analyze verify found:\n{verified}"
    );
    ensure!(
        section("flags file")?.trim() == "read",
        "the packaged agent.toml is not accepted"
    );
    let purged = section("purge")?;
    ensure!(
        purged.contains("No such file") && !purged.contains("\n/usr/bin/ferry-agent"),
        "the purge left files:\n{purged}"
    );
    Ok(())
}

/// `systemctl` for a root where systemd is not PID 1 (the scratch root below): it runs
/// ferry-agent.service's own commands the way systemd does, for the verbs the maintainer
/// scripts, deb-systemd-invoke and `ferry-agent down --if-disabled` use: the unit files'
/// verbs by the real systemctl, offline; ExecStart in the background; a stop as the unit's KillMode=process does it (KillSignal to the main process
/// alone, wait for it up to TimeoutStopSec before SIGKILL, then ExecStopPost, whose leading
/// `-` means its failure is ignored).
/// Anything else it refuses, so a unit that changed what it relies on fails the test.
const SYSTEMCTL_STAND_IN: &str = r#"#!/bin/sh
set -u
unit=/lib/systemd/system/ferry-agent.service
pidfile=/run/ferry-agent.pid
log=/var/log/ferry-agent.log
value() { sed -n "s/^$1=//p" "$unit" | tail -n 1; }
active() { [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
start() {
    active && return 0
    setsid sh -c "exec $(value ExecStart)" >>"$log" 2>&1 </dev/null &
    echo $! >"$pidfile"
}
stop() {
    active || return 0
    if [ "$(value KillMode)" != process ]; then
        echo "systemctl stand-in: only KillMode=process is implemented" >&2
        exit 1
    fi
    pid=$(cat "$pidfile")
    kill -s "$(value KillSignal | sed 's/^SIG//')" "$pid"
    # TimeoutStopSec, then SIGKILL, as systemd does.
    ticks=$(( $(value TimeoutStopSec) * 20 ))
    while kill -0 "$pid" 2>/dev/null; do
        ticks=$((ticks - 1))
        [ "$ticks" -eq 0 ] && kill -s KILL "$pid"
        sleep 0.05
    done
    rm -f "$pidfile"
    post=$(value ExecStopPost)
    sh -c "${post#-}" >>"$log" 2>&1 || true
}
verb=""
for arg in "$@"; do
    case "$arg" in --*) ;; *) [ -z "$verb" ] && verb=$arg ;; esac
done
echo "systemctl $*" >>"$log"
case "$verb" in
    daemon-reload) ;;
    start) start ;;
    stop) stop ;;
    restart) stop; start ;;
    try-restart) if active; then stop; start; fi ;;
    is-active) active ;;
    # Unit files alone: the real systemctl does these offline.
    preset|enable|disable|is-enabled)
        for arg in "$@"; do shift; case "$arg" in --root=*) ;; *) set -- "$@" "$arg" ;; esac; done
        exec /usr/bin/systemctl --root=/ "$@" ;;
    *) echo "systemctl stand-in: '$*' is not implemented" >&2; exit 1 ;;
esac
"#;

/// A server installed from the package in a scratch root (as above), joined to a real
/// central, running the agent as its unit says; ended on drop.
struct Installed {
    scratch: PathBuf,
    netns: String,
    bpffs: String,
}

impl Installed {
    /// Runs `script` with `sh` in the scratch root, in the agent's mount namespace and the
    /// server's network namespace.
    fn chroot(&self, script: &str) -> Result<String> {
        output(
            Command::new("nsenter")
                .arg(format!("--mount=/proc/{}/ns/mnt", self.main_pid()?))
                .arg(format!("--net=/run/netns/{}", self.netns))
                .args(["chroot"])
                .arg(self.scratch.join("root"))
                .args(["sh", "-c", script]),
        )
    }

    /// The unit's main process, as the stand-in recorded it.
    fn main_pid(&self) -> Result<u32> {
        let file = self.scratch.join("upper/run/ferry-agent.pid");
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        Ok(text.trim().parse()?)
    }

    /// The unit's log (the agent's output and the stand-in's verbs).
    fn log(&self) -> String {
        std::fs::read_to_string(self.scratch.join("upper/var/log/ferry-agent.log"))
            .unwrap_or_default()
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        // A stop meant as a stop: disabled, then stopped, so ExecStopPost's down ends the
        // keepers and wireguard-go.
        let _ = self.chroot("systemctl disable ferry-agent; systemctl stop ferry-agent");
        // Whatever a failed test left running in the scratch root: a leftover agent would
        // follow a dead central and remove the next run's containers as unassigned.
        let root = self.scratch.join("root");
        for pid in ferry_agent::down::processes(|_| true) {
            if std::fs::read_link(format!("/proc/{pid}/root")).is_ok_and(|r| r == root) {
                // SAFETY: kill with a pid read from /proc; at worst it has exited.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        let _ = ferry_agent::dataplane::unpin(Path::new(&self.bpffs));
        let _ = std::fs::remove_dir(&self.bpffs);
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// A package upgrade under load: the agent installed from its package and started by its
/// unit's own ExecStart runs the example stack (a real dockerd in the server's namespace);
/// `dpkg -i` of a newer version runs the package's postinst, which try-restarts the unit
/// (deb-systemd-invoke), which stops the agent as KillMode=process says and starts the new
/// binary. wrk keeps 20 connections busy on the stack's host name through the published
/// port all along: not one refused, reset, timed out or answered with an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_upgrade_restarts_the_agent_through_its_unit_with_no_refused_connection()
-> Result<()> {
    use ferry_tests::{cgroup::TestCgroup, cluster::Operator, docker::DockerEngine};

    let tag = unique("");
    let mut network = ferry_tests::netns::Network::new(&format!("fbp{tag}"), 141)?;
    let registry = network.serve_registry()?.url().to_string();
    let server = network.server(&format!("fp{tag}"))?;
    let address = server.addr().context("the server has an address")?;
    let central_dir = std::env::temp_dir().join(format!("ferry-test-upgrade{tag}"));
    let central = ferry_tests::central::Central::start(&central_dir, "10.250.141.1")?;
    let cgroup = TestCgroup::top_level(&format!("ferry-test-up{tag}"))?;
    let containers = cgroup
        .path()
        .strip_prefix(ferry_tests::cgroup::cgroup2_root()?)
        .context("the test cgroup is outside the cgroup2 mount")?
        .join("containers");
    let docker = DockerEngine::start_with_cgroups(
        "ferry-upgrade",
        Some(&server),
        &format!("/{}", containers.display()),
    )
    .await?;
    ferry_tests::cluster::remove_leftovers(&docker).await?;
    ferry_tests::node_image::ensure(docker.engine()).await?;
    let docker_dir = docker
        .socket()
        .parent()
        .context("the socket has a directory")?
        .to_path_buf();
    let pins = ferry_tests::agent::Pins::new(&format!("ferry-test-up{tag}"))?;
    let scratch = std::env::temp_dir().join(format!("ferry-test-upgrade-root{tag}"));
    for dir in ["upper", "work", "root", "debs"] {
        std::fs::create_dir_all(scratch.join(dir))?;
    }

    // The newer version: the same files under a higher version, as a rebuilt package is.
    let agent_deb = deb("ferry-agent")?;
    let unpacked = scratch.join("debs/unpacked");
    output(
        Command::new("dpkg-deb")
            .arg("-R")
            .arg(&agent_deb)
            .arg(&unpacked),
    )?;
    let control = unpacked.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control)?;
    let old_version = text
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .context("the package has a version")?
        .to_string();
    let new_version = format!("{old_version}+upgrade1");
    std::fs::write(
        &control,
        text.replace(
            &format!("Version: {old_version}"),
            &format!("Version: {new_version}"),
        ),
    )?;
    let newer = scratch.join("debs/ferry-agent-newer.deb");
    output(
        Command::new("dpkg-deb")
            .args(["-b"])
            .arg(&unpacked)
            .arg(&newer),
    )?;
    std::fs::copy(&agent_deb, scratch.join("debs/ferry-agent.deb"))?;

    let wg = format!("fwu{tag}");
    let config = format!(
        "state-dir = \"/var/lib/ferry-agent\"\n\
         cgroup-root = \"{cgroup}\"\n\
         bpffs = \"{bpffs}\"\n\
         wg-interface = \"{wg}\"\n\
         docker-socket = \"{socket}\"\n\
         docker-network = \"ferry-{tag}\"\n\
         dns-upstream = [\"10.250.141.1\"]\n\
         npm-registry = \"{registry}\"\n",
        cgroup = cgroup.path().display(),
        bpffs = pins.path().display(),
        socket = docker.socket().display(),
    );
    std::fs::write(scratch.join("debs/agent.toml"), config)?;
    std::fs::write(scratch.join("debs/systemctl"), SYSTEMCTL_STAND_IN)?;
    let script = format!(
        r#"set -e
S={scratch}
mount -t overlay overlay -o lowerdir=/,upperdir=$S/upper,workdir=$S/work $S/root
mount -t proc proc $S/root/proc
mount --rbind /dev $S/root/dev
mount --rbind /sys $S/root/sys
mkdir -p $S/root{docker_dir} $S/root/tmp/ferry-debs $S/root/run/systemd/system
mount --bind {docker_dir} $S/root{docker_dir}
cp $S/debs/*.deb $S/root/tmp/ferry-debs/
install -m 0755 $S/debs/systemctl $S/root/usr/local/sbin/systemctl
# This machine's image forbids service (re)starts from maintainer scripts (policy-rc.d
# exits 101, as container images do); a server has no such policy.
rm -f $S/root/usr/sbin/policy-rc.d
chroot $S/root dpkg -i /tmp/ferry-debs/ferry-agent.deb
install -m 0640 $S/debs/agent.toml $S/root/etc/ferry/agent.toml
chroot $S/root ferry-agent join --central {url} --token {token} --ca-fingerprint {fingerprint} \
    --name one --endpoint {address}:51820
chroot $S/root systemctl start ferry-agent
"#,
        scratch = scratch.display(),
        docker_dir = docker_dir.display(),
        url = central.url,
        token = central.join_token,
        fingerprint = central.ca_fingerprint,
    );
    output(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", server.name()))
            .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(&script),
    )?;
    let installed = Installed {
        scratch: scratch.clone(),
        netns: server.name().to_string(),
        bpffs: pins.path().to_string_lossy().into_owned(),
    };
    let first = installed.main_pid()?;

    let operator = Operator::login(&central, &tag)?;
    let shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop");
    let (ok, out, err) = operator.run(&["deploy", "--stack", "shop", &shop.to_string_lossy()])?;
    ensure!(
        ok && out.contains("generation 1 of shop is serving"),
        "{out}{err}\n{}",
        installed.log()
    );

    let front = std::net::SocketAddr::from((address, 80));
    let answered = |what: &str| -> Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let got = ferry_tests::http::Conn::open(front)
                .and_then(|mut conn| conn.get("shop.example.com", "/"));
            match got {
                Ok(response) if response.status == 200 => return Ok(()),
                _ if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(100))
                }
                other => bail!(
                    "{what}: the shop does not answer: {other:?}\n{}",
                    installed.log()
                ),
            }
        }
    };
    answered("the agent the unit started")?;

    let wrk = ferry_tests::load::Wrk::start(front, "shop.example.com", 20, "60s")?;
    answered("under load")?;
    let upgrade = installed.chroot("dpkg -i /tmp/ferry-debs/ferry-agent-newer.deb 2>&1");
    let restarted = installed.main_pid();
    // The new agent serves before the load stops.
    let after = answered("after the upgrade");
    let summary = wrk.stop()?;
    let upgrade = upgrade?;
    println!("dpkg -i:\n{upgrade}\nwrk across the upgrade:\n{summary}");
    after?;
    ensure!(
        upgrade.contains(&format!(
            "Unpacking ferry-agent ({new_version}) over ({old_version})"
        )),
        "not an upgrade:\n{upgrade}"
    );
    let log = installed.log();
    ensure!(
        log.contains("systemctl try-restart ferry-agent.service"),
        "the package did not restart its unit:\n{log}"
    );
    let restarted = restarted?;
    ensure!(restarted != first, "the agent was not restarted:\n{log}");
    ensure!(
        log.matches("ferry-agent ready").count() == 2 && log.contains("adopted"),
        "two starts, the second adopting the pins:\n{log}"
    );
    ensure!(
        log.contains("is enabled (or systemd cannot tell)"),
        "ExecStopPost kept the listeners of an enabled unit:\n{log}"
    );
    ferry_tests::load::check(&summary, 100).context("across the package upgrade")?;

    drop(installed);
    ferry_tests::cluster::remove_leftovers(&docker).await?;
    drop(docker);
    drop(central);
    let _ = std::fs::remove_dir_all(&central_dir);
    Ok(())
}
