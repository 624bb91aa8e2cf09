//! The small grammars inside service.yml values: ports, durations, signals, sizes, host
//! names, environment references. Each returns a message saying what was expected.

use std::time::Duration;

use super::model::{EnvValue, Port, StopStep, Volume};

/// A port number, 1 to 65535.
pub fn port_number(text: &str) -> Result<u16, String> {
    match text.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!(
            "expected a port number from 1 to 65535, found {text:?}"
        )),
        Ok(port) => Ok(port),
    }
}

/// The short form `CONTAINER[:HTTP[:HTTPS]]`, e.g. `3000:80:443` or `4000::8443`.
pub fn short_port(text: &str) -> Result<Port, String> {
    let expected = || {
        format!(
            "expected \"CONTAINER[:HTTP[:HTTPS]]\" such as \"3000:80:443\" or \"4000::8443\", found {text:?}"
        )
    };
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() > 3 || parts[0].trim().is_empty() {
        return Err(expected());
    }
    let optional = |part: Option<&&str>| -> Result<Option<u16>, String> {
        match part.map(|p| p.trim()) {
            None | Some("") => Ok(None),
            Some(p) => port_number(p).map(Some).map_err(|_| expected()),
        }
    };
    Ok(Port {
        container: port_number(parts[0]).map_err(|_| expected())?,
        http: optional(parts.get(1))?,
        https: optional(parts.get(2))?,
        tcp: None,
        udp: None,
    })
}

/// A duration such as `30s`, `1m`, `1m30s`, `500ms` or `2h`; a bare number is seconds.
pub fn duration(text: &str) -> Result<Duration, String> {
    let expected =
        || format!("expected a duration such as \"30s\", \"1m\" or \"1m30s\", found {text:?}");
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return Err(expected());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(expected());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| expected())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value.saturating_mul(60)),
            "h" => Duration::from_secs(value.saturating_mul(3600)),
            _ => return Err(expected()),
        };
        total = total.saturating_add(unit);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

const SIGNALS: [&str; 12] = [
    "HUP", "INT", "QUIT", "KILL", "USR1", "USR2", "TERM", "CONT", "STOP", "WINCH", "ALRM", "PWR",
];

/// A pre-stop sequence such as `1m:USR2:30s:USR1:50s`: durations to wait and signals to
/// send, in order.
pub fn stop_sequence(text: &str) -> Result<Vec<StopStep>, String> {
    text.split(':')
        .map(|token| {
            let token = token.trim();
            let name = token.strip_prefix("SIG").unwrap_or(token);
            if SIGNALS.contains(&name) {
                Ok(StopStep::Signal(name.to_string()))
            } else {
                duration(token).map(StopStep::Wait).map_err(|_| {
                    format!(
                        "expected durations and signal names separated by ':' such as \
                         \"1m:USR2:30s:USR1:50s\"; {token:?} is neither (signals: {})",
                        SIGNALS.join(", ")
                    )
                })
            }
        })
        .collect()
}

/// An accepted status: `200`, or a range `200-299`.
pub fn status_range(text: &str) -> Result<(u16, u16), String> {
    let expected = || {
        format!("expected an HTTP status such as \"200\" or a range \"200-299\", found {text:?}")
    };
    let status = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
    };
    match text.split_once('-') {
        None => status(text).map(|c| (c, c)).ok_or_else(expected),
        Some((low, high)) => match (status(low), status(high)) {
            (Some(l), Some(h)) if l <= h => Ok((l, h)),
            _ => Err(expected()),
        },
    }
}

/// An environment variable's name: letters, digits and `_`, not starting with a digit.
pub fn env_name(text: &str) -> Result<(), String> {
    let mut chars = text.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{text:?} is not a valid variable name (letters, digits and _, not starting with a digit)"
        ))
    }
}

/// An environment value: `_env(NAME)` refers to a stack variable; anything else is plain.
pub fn env_value(text: &str) -> Result<EnvValue, String> {
    let Some(inner) = text.trim().strip_prefix("_env(") else {
        return Ok(EnvValue::Plain(text.to_string()));
    };
    let name = inner
        .strip_suffix(')')
        .ok_or_else(|| format!("expected _env(NAME) with a closing parenthesis, found {text:?}"))?;
    env_name(name).map_err(|e| format!("in {text:?}: {e}"))?;
    Ok(EnvValue::Stack(name.to_string()))
}

/// A volume: `SOURCE:TARGET` or `SOURCE:TARGET:ro|rw`, TARGET absolute.
pub fn volume(text: &str) -> Result<Volume, String> {
    let expected = || format!("expected \"SOURCE:/container/path[:ro]\", found {text:?}");
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [s, t] => (*s, *t, None),
        [s, t, m] => (*s, *t, Some(*m)),
        _ => return Err(expected()),
    };
    if source.is_empty() || !target.starts_with('/') {
        return Err(expected());
    }
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(_) => return Err(expected()),
    };
    Ok(Volume {
        source: source.into(),
        target: target.into(),
        read_only,
    })
}

/// A memory size: bytes, or a number with `k`, `m`, `g` (also `KB`, `MB`, `GB`, `Ki`...).
pub fn memory(text: &str) -> Result<u64, String> {
    let expected = || format!("expected a memory size such as \"512m\" or \"1g\", found {text:?}");
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let value: u64 = text[..split].parse().map_err(|_| expected())?;
    let factor: u64 = match text[split..].to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "ki" | "kib" => 1 << 10,
        "m" | "mb" | "mi" | "mib" => 1 << 20,
        "g" | "gb" | "gi" | "gib" => 1 << 30,
        _ => return Err(expected()),
    };
    value
        .checked_mul(factor)
        .filter(|v| *v > 0)
        .ok_or_else(expected)
}

/// A CPU share such as `0.5` or `2`, in thousandths.
pub fn cpu_millis(text: &str) -> Result<u32, String> {
    let expected = || format!("expected a number of CPUs such as 0.5 or 2, found {text:?}");
    let cpus: f64 = text.trim().parse().map_err(|_| expected())?;
    if !(cpus > 0.0 && cpus <= 1024.0) {
        return Err(expected());
    }
    Ok((cpus * 1000.0).round() as u32)
}

/// A host name to match; see [`crate::hostname::pattern`].
pub fn host_pattern(text: &str) -> Result<String, String> {
    crate::hostname::pattern(text)
}

/// A service name: a DNS label, since it becomes `<name>.cloud66.local`.
pub fn service_name(text: &str) -> Result<(), String> {
    let valid = !text.is_empty()
        && text.len() <= 63
        && !text.starts_with('-')
        && !text.ends_with('-')
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{text:?} cannot be a service name: use lower-case letters, digits and '-' (it \
             becomes {text}.cloud66.local)"
        ))
    }
}

/// A path inside the uploaded source: relative, without `..`.
pub fn source_path(text: &str) -> Result<String, String> {
    let escapes = text.starts_with('/') || text.split('/').any(|part| part == "..");
    if text.is_empty() || escapes {
        Err(format!(
            "expected a path inside the stack's source (relative, without \"..\"), found {text:?}"
        ))
    } else {
        Ok(text.trim_end_matches('/').to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_in_short_form() {
        let p = short_port("3000:80:443").unwrap();
        assert_eq!((p.container, p.http, p.https), (3000, Some(80), Some(443)));
        let p = short_port("4000::8443").unwrap();
        assert_eq!((p.container, p.http, p.https), (4000, None, Some(8443)));
        assert_eq!(short_port("3000").unwrap().http, None);
        for bad in ["", ":80", "3000:80:443:1", "70000", "3000:http", "0:80"] {
            assert!(short_port(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        for bad in ["", "s", "30x", "1.5s", "-1s"] {
            assert!(duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn stop_sequences() {
        assert_eq!(
            stop_sequence("1m:USR2:30s:SIGUSR1").unwrap(),
            vec![
                StopStep::Wait(Duration::from_secs(60)),
                StopStep::Signal("USR2".into()),
                StopStep::Wait(Duration::from_secs(30)),
                StopStep::Signal("USR1".into()),
            ]
        );
        let err = stop_sequence("1m:BOGUS").unwrap_err();
        assert!(err.contains("\"BOGUS\""), "{err}");
    }

    #[test]
    fn env_references_and_names() {
        assert_eq!(
            env_value("_env(DB_URL)"),
            Ok(EnvValue::Stack("DB_URL".into()))
        );
        assert_eq!(env_value("plain"), Ok(EnvValue::Plain("plain".into())));
        assert!(env_value("_env(DB_URL").is_err());
        assert!(env_value("_env(1X)").is_err());
        assert!(env_name("9LIVES").is_err());
    }

    #[test]
    fn sizes_hosts_paths_and_statuses() {
        assert_eq!(memory("512m"), Ok(512 << 20));
        assert_eq!(memory("1GB"), Ok(1 << 30));
        assert!(memory("lots").is_err());
        assert_eq!(cpu_millis("0.5"), Ok(500));
        assert!(cpu_millis("NaN").is_err());
        assert_eq!(host_pattern("*.Example.com"), Ok("*.example.com".into()));
        assert_eq!(
            host_pattern("Shop.Example.test."),
            Ok("shop.example.test".into())
        );
        assert!(host_pattern("shop.example.test..").is_err());
        assert!(host_pattern(".").is_err());
        assert!(host_pattern("exa mple.com").is_err());
        assert!(host_pattern("*.").is_err());
        assert!(source_path("../etc").is_err());
        assert!(source_path("/abs").is_err());
        assert_eq!(source_path("web/"), Ok("web".into()));
        assert_eq!(status_range("200-299"), Ok((200, 299)));
        assert!(status_range("299-200").is_err());
        assert!(volume("data:/var/lib/data:ro").unwrap().read_only);
        assert!(volume("data:relative").is_err());
    }
}
