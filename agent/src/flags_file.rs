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
    #[error(
        "{path}: {key} must be a string, a number, true/false, or a list of those (as the flag \
         takes it on the command line)"
    )]
    Value { path: PathBuf, key: String },
}

/// `argv` with the flags of the file named by `--config FILE` (or `--config=FILE`) put
/// right after the subcommand `command`, when `argv` runs it (`argv[1]`). `known` are the long flags
/// the subcommand takes; a key outside them is refused when `strict`, and skipped when
/// not (`down` reads the file `run` is configured by, and needs only some of its flags).
pub fn expand(
    argv: Vec<OsString>,
    command: &str,
    known: &[String],
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
    let flags = flags(&path, command, known, strict)?;
    let mut out = argv[..=at].to_vec();
    out.extend(flags.into_iter().map(OsString::from));
    out.extend_from_slice(&argv[at + 1..]);
    Ok(out)
}

/// The flags the file at `path` holds, in the order of their keys.
fn flags(
    path: &Path,
    command: &str,
    known: &[String],
    strict: bool,
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
        if key == "config" || !known.contains(&key) {
            if strict {
                return Err(FlagsFileError::Unknown {
                    path: path.to_path_buf(),
                    key,
                    command: command.into(),
                    known: known
                        .iter()
                        .filter(|k| *k != "config")
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            continue;
        }
        let values = match value {
            toml::Value::Array(items) => items,
            one => vec![one],
        };
        for value in values {
            let flag = format!("--{key}");
            match value {
                toml::Value::String(s) => out.extend([flag, s]),
                toml::Value::Integer(n) => out.extend([flag, n.to_string()]),
                toml::Value::Float(f) => out.extend([flag, f.to_string()]),
                toml::Value::Boolean(true) => out.push(flag),
                toml::Value::Boolean(false) => {}
                _ => {
                    return Err(FlagsFileError::Value {
                        path: path.to_path_buf(),
                        key,
                    });
                }
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

    fn known() -> Vec<String> {
        ["docker-socket", "dns-upstream", "state-dir", "if-disabled"]
            .map(String::from)
            .to_vec()
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
        std::fs::write(&file, "docker-socket = { path = 1 }\n").expect("write");
        let line = format!("ferry-agent run --config {}", file.display());
        assert!(matches!(
            expand(argv(&line), "run", &known(), true),
            Err(FlagsFileError::Value { .. })
        ));
        std::fs::write(&file, "= nonsense").expect("write");
        assert!(matches!(
            expand(argv(&line), "run", &known(), true),
            Err(FlagsFileError::Parse { .. })
        ));
    }
}
