//! The agent's flags from a file, as a packaged agent is configured
//! (`/etc/ferry/agent.toml`, read by `run --config` and `down --config`): each key is a
//! long flag of the command, `docker-socket = "/run/docker.sock"`; a list repeats its
//! flag; `true` sets a switch and `false` leaves it out. The file's flags go before the
//! command line's, and the command line's win, so an operator can override one flag for
//! one run without editing the file.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

/// Why a flags file was not used.
#[derive(Debug, thiserror::Error)]
pub enum FlagsFileError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not TOML: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{path}: {key} is not a flag of `ferry-agent {command}`; its flags are: {known}")]
    Unknown {
        path: PathBuf,
        key: String,
        command: String,
        known: String,
    },
    #[error("{path}: {key} {why}")]
    Value {
        path: PathBuf,
        key: String,
        /// What the flag takes, e.g. "takes one value, not a list".
        why: &'static str,
    },
}

/// A long flag of a subcommand, as the file may set it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flag {
    /// Its name, without the dashes.
    pub name: String,
    /// Whether it takes a value (else it is a switch).
    pub takes_value: bool,
    /// Whether it may be given more than once (a list in the file).
    pub repeatable: bool,
}

/// `argv` with the flags of the file named by `--config FILE` (or `--config=FILE`) put
/// right after the subcommand `command`, when `argv` runs it (`argv[1]`), but those the
/// command line gives itself. `known` are the long flags the subcommand takes; a key
/// outside them is refused when `strict`, and skipped when not (`down` reads the file
/// `run` is configured by, and needs only some of its flags).
pub fn expand(
    argv: Vec<OsString>,
    command: &str,
    known: &[Flag],
    strict: bool,
) -> Result<Vec<OsString>, FlagsFileError> {
    // The subcommand is the first argument (the agent has no flags of its own before it).
    let at = 1;
    if argv.get(at).is_none_or(|a| a != command) {
        return Ok(argv);
    }
    let path = argv.iter().enumerate().skip(at + 1).find_map(|(i, a)| {
        let a = a.to_str()?;
        match a.strip_prefix("--config=") {
            Some(path) => Some(PathBuf::from(path)),
            None if a == "--config" => argv.get(i + 1).map(PathBuf::from),
            None => None,
        }
    });
    let Some(path) = path else {
        return Ok(argv);
    };
    let given = |flag: &str| {
        argv[at + 1..].iter().any(|a| {
            a.to_str()
                .is_some_and(|a| a == format!("--{flag}") || a.starts_with(&format!("--{flag}=")))
        })
    };
    let flags = flags(&path, command, known, strict, given)?;
    let mut out = argv[..=at].to_vec();
    out.extend(flags.into_iter().map(OsString::from));
    out.extend_from_slice(&argv[at + 1..]);
    Ok(out)
}

/// The flags the file at `path` holds, in the order of their keys.
fn flags(
    path: &Path,
    command: &str,
    known: &[Flag],
    strict: bool,
    given: impl Fn(&str) -> bool,
) -> Result<Vec<String>, FlagsFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FlagsFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let table: toml::Table = text.parse().map_err(|source| FlagsFileError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (key, value) in table {
        let Some(flag) = known.iter().find(|f| f.name == key && key != "config") else {
            if strict {
                return Err(FlagsFileError::Unknown {
                    path: path.to_path_buf(),
                    key,
                    command: command.into(),
                    known: known
                        .iter()
                        .filter(|f| f.name != "config")
                        .map(|f| f.name.clone())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            continue;
        };
        let bad = |why| FlagsFileError::Value {
            path: path.to_path_buf(),
            key: key.clone(),
            why,
        };
        // The command line's own value wins, lists included.
        if given(&key) {
            continue;
        }
        let values = match value {
            toml::Value::Array(_) if !flag.repeatable => {
                return Err(bad("takes one value, not a list"));
            }
            toml::Value::Array(items) => items,
            one => vec![one],
        };
        for value in values {
            let dashed = format!("--{key}");
            match (value, flag.takes_value) {
                (toml::Value::Boolean(true), false) => out.push(dashed),
                (toml::Value::Boolean(false), false) => {}
                (_, false) => return Err(bad("is a switch: true or false")),
                (toml::Value::String(s), true) => out.extend([dashed, s]),
                (toml::Value::Integer(n), true) => out.extend([dashed, n.to_string()]),
                (toml::Value::Float(f), true) => out.extend([dashed, f.to_string()]),
                (toml::Value::Boolean(_), true) => {
                    return Err(bad("takes a value (a string or a number), not true/false"));
                }
                _ => return Err(bad("takes a string or a number")),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    fn known() -> Vec<Flag> {
        let flag = |name: &str, takes_value, repeatable| Flag {
            name: name.into(),
            takes_value,
            repeatable,
        };
        vec![
            flag("docker-socket", true, false),
            flag("dns-upstream", true, true),
            flag("state-dir", true, false),
            flag("if-disabled", false, false),
        ]
    }

    #[test]
    fn the_files_flags_go_first_so_the_command_line_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            "docker-socket = \"/run/docker.sock\"\ndns-upstream = [\"10.0.0.2\", \"10.0.0.3\"]\nif-disabled = false\n",
        )
        .expect("write");
        let line = format!("ferry-agent run --config {} --state-dir /x", file.display());
        let expanded = expand(argv(&line), "run", &known(), true).expect("expand");
        let words: Vec<&str> = expanded.iter().filter_map(|a| a.to_str()).collect();
        assert_eq!(
            words[..8],
            [
                "ferry-agent",
                "run",
                "--dns-upstream",
                "10.0.0.2",
                "--dns-upstream",
                "10.0.0.3",
                "--docker-socket",
                "/run/docker.sock",
            ]
        );
        assert_eq!(
            words[8..],
            ["--config", &file.to_string_lossy(), "--state-dir", "/x"]
        );
        // A flag the command line gives is not taken from the file, lists included.
        let line = format!(
            "ferry-agent run --config {} --dns-upstream 10.9.9.9",
            file.display()
        );
        let expanded = expand(argv(&line), "run", &known(), true).expect("expand");
        let upstreams = expanded.iter().filter(|a| *a == "--dns-upstream").count();
        assert_eq!(upstreams, 1, "{expanded:?}");
        // No --config: unchanged.
        let plain = argv("ferry-agent run --state-dir /x");
        assert_eq!(
            expand(plain.clone(), "run", &known(), true).expect("same"),
            plain
        );
    }

    #[test]
    fn unknown_keys_are_refused_when_strict_and_skipped_when_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, "docker-sockett = \"/run/docker.sock\"\n").expect("write");
        let line = format!("ferry-agent run --config={}", file.display());
        let err = expand(argv(&line), "run", &known(), true).unwrap_err();
        assert!(
            err.to_string().contains(
                "docker-sockett is not a flag of `ferry-agent run`; its flags are: docker-socket"
            ),
            "{err}"
        );
        let line = format!("ferry-agent down --config={}", file.display());
        assert_eq!(
            expand(argv(&line), "down", &known(), false)
                .expect("skipped")
                .len(),
            3
        );
        let line = format!("ferry-agent run --config {}", file.display());
        for (text, says) in [
            (
                "docker-socket = { path = 1 }\n",
                "docker-socket takes a string or a number",
            ),
            ("docker-socket = true\n", "docker-socket takes a value"),
            (
                "state-dir = [\"/a\", \"/b\"]\n",
                "state-dir takes one value, not a list",
            ),
            (
                "if-disabled = \"yes\"\n",
                "if-disabled is a switch: true or false",
            ),
        ] {
            std::fs::write(&file, text).expect("write");
            let err = expand(argv(&line), "run", &known(), true).unwrap_err();
            assert!(err.to_string().contains(says), "{text}: {err}");
        }
        std::fs::write(&file, "= nonsense").expect("write");
        assert!(matches!(
            expand(argv(&line), "run", &known(), true),
            Err(FlagsFileError::Parse { .. })
        ));
    }
}
