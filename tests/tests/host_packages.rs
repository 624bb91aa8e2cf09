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

use anyhow::{Context as _, Result, ensure};
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
    let conffiles = output(
        Command::new("dpkg-deb")
            .arg("--info")
            .arg(deb("ferry-agent")?)
            .arg("conffiles"),
    )?;
    let prerm = output(
        Command::new("dpkg-deb")
            .arg("--info")
            .arg(deb("ferry-agent")?)
            .arg("prerm"),
    )?;
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
