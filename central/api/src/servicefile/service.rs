//! One entry of `services:`.

use std::collections::BTreeMap;

use super::{
    model::{Constraints, DnsBehaviour, Health, HealthCheck, LoadBalancing, Port, Service},
    node::{Node, Report},
    values,
};

/// The directives ferry reads for a service.
pub const DIRECTIVES: [&str; 20] = [
    "build_root",
    "dockerfile_path",
    "image",
    "command",
    "ports",
    "traffic_matches",
    "health",
    "env_vars",
    "volumes",
    "requires",
    "stop_grace",
    "pre_stop_sequence",
    "restart_on_deploy",
    "dns_behaviour",
    "load_balancing",
    "constraints",
    "tags",
    // Cloud 66 spells the command both ways.
    "cmd",
    "build_command",
    "deploy_command",
];

/// Cloud 66 directives ferry knows but does not act on (yet): accepted with a warning.
const IGNORED: [&str; 9] = [
    "git_url",
    "git_branch",
    "pre_start_command",
    "pre_stop_command",
    "pre_start_signal",
    "work_dir",
    "privileged",
    "log_folder",
    "use_habitus",
];

/// Reads one service; problems go to `report`.
pub fn read(node: &Node<'_, '_>, report: &mut Report) -> Service {
    let mut service = Service {
        restart_on_deploy: true,
        ..Service::default()
    };
    let Some(entries) = node.mapping(report) else {
        return service;
    };
    for (key, value) in &entries {
        match key.as_str() {
            "build_root" => service.build_root = path(value, report),
            "dockerfile_path" => service.dockerfile_path = path(value, report),
            "image" => service.image = value.string(report, "an image reference"),
            "command" | "cmd" => service.command = command(value, report, key, "a command line"),
            "deploy_command" => {
                service.deploy_command = command(
                    value,
                    report,
                    key,
                    "a command line such as \"npm run migrate\"",
                )
            }
            "build_command" => {
                service.build_command = command(
                    value,
                    report,
                    key,
                    "a command line such as \"npm run build\"",
                )
            }
            "ports" => service.ports = ports(value, report),
            "traffic_matches" => service.traffic_matches = hosts(value, report),
            "health" => service.health = health(value, report),
            "env_vars" => service.env_vars = env_vars(value, report),
            "volumes" => service.volumes = each_string(value, report, "a volume", values::volume),
            "requires" => {
                service.requires =
                    each_string(value, report, "a service name", |s| Ok(s.to_string()))
            }
            "stop_grace" => {
                service.stop_grace =
                    text(value, report).and_then(|t| check(value, report, values::duration(&t)))
            }
            "pre_stop_sequence" => {
                service.pre_stop_sequence = value
                    .string(report, "a sequence such as \"1m:USR2:30s:USR1:50s\"")
                    .and_then(|t| check(value, report, values::stop_sequence(&t)))
                    .unwrap_or_default()
            }
            "restart_on_deploy" => {
                service.restart_on_deploy = value.boolean(report).unwrap_or(true)
            }
            "dns_behaviour" => service.dns_behaviour = dns_behaviour(value, report),
            "load_balancing" => service.load_balancing = load_balancing(value, report),
            "constraints" => service.constraints = constraints(value, report),
            "tags" => service.tags = tags(value, report),
            other if IGNORED.contains(&other) => report.warn(
                value,
                format!("{other} is a Cloud 66 directive ferry does not use; it is ignored"),
            ),
            other => report.warn(value, unknown(other, &DIRECTIVES)),
        }
    }
    if service.image.is_some()
        && (service.build_root.is_some() || service.dockerfile_path.is_some())
    {
        report.error(
            node,
            "both image and build_root/dockerfile_path are set: a service either runs an image \
             or is built from source; remove one",
        );
    }
    service
}

/// A command line: a string with something in it (an empty one would run nothing, or
/// replace the app's own build script with nothing).
fn command(value: &Node<'_, '_>, report: &mut Report, key: &str, what: &str) -> Option<String> {
    let text = value.string(report, what)?;
    if text.trim().is_empty() {
        report.error(
            value,
            format!("{key} is empty; give {what}, or remove {key} to use the default"),
        );
        return None;
    }
    Some(text)
}

/// "unknown directive", with the closest known one when it is probably a typo.
pub fn unknown(name: &str, known: &[&str]) -> String {
    let closest = known
        .iter()
        .map(|k| (distance(name, k), *k))
        .min()
        .filter(|(d, _)| *d <= 2);
    match closest {
        Some((_, k)) => format!("unknown directive {name:?} is ignored; did you mean {k:?}?"),
        None => format!("unknown directive {name:?} is ignored"),
    }
}

/// Levenshtein distance, for suggestions.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = (previous + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(current + 1);
            previous = current;
        }
    }
    row[b.len()]
}

fn check<T>(node: &Node<'_, '_>, report: &mut Report, result: Result<T, String>) -> Option<T> {
    result.map_err(|e| report.error(node, e)).ok()
}

/// Any scalar as text (so `stop_grace: 30` and `stop_grace: "30s"` both read).
fn text(node: &Node<'_, '_>, report: &mut Report) -> Option<String> {
    let text = node.scalar_text();
    if text.is_none() {
        report.error(
            node,
            format!("expected a single value, found {}", node.kind()),
        );
    }
    text
}

fn path(node: &Node<'_, '_>, report: &mut Report) -> Option<String> {
    let text = node.string(report, "a path")?;
    check(node, report, values::source_path(&text))
}

fn each_string<T>(
    node: &Node<'_, '_>,
    report: &mut Report,
    expected: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Vec<T> {
    let Some(items) = node.list(report) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let text = item.string(report, expected)?;
            check(item, report, parse(&text))
        })
        .collect()
}

fn hosts(node: &Node<'_, '_>, report: &mut Report) -> Vec<String> {
    each_string(node, report, "a host name", values::host_pattern)
}

fn ports(node: &Node<'_, '_>, report: &mut Report) -> Vec<Port> {
    let Some(items) = node.list(report) else {
        return Vec::new();
    };
    let mut ports = Vec::new();
    for item in &items {
        let port = if item.kind() == "a mapping" {
            long_port(item, report)
        } else {
            text(item, report).and_then(|t| check(item, report, values::short_port(&t)))
        };
        ports.extend(port);
    }
    ports
}

/// The long form: `container:` plus any of `http:`, `https:`, `tcp:`, `udp:`.
fn long_port(node: &Node<'_, '_>, report: &mut Report) -> Option<Port> {
    const FIELDS: [&str; 5] = ["container", "http", "https", "tcp", "udp"];
    let mut port = Port::default();
    let mut container = None;
    for (key, value) in node.mapping(report)? {
        let number = value
            .integer(report, 65535, "a port number from 1 to 65535")
            .and_then(|n| check(&value, report, values::port_number(&n.to_string())));
        match key.as_str() {
            "container" => container = number,
            "http" => port.http = number,
            "https" => port.https = number,
            "tcp" => port.tcp = number,
            "udp" => port.udp = number,
            other => report.error(&value, unknown(other, &FIELDS).replace(" is ignored", "")),
        }
    }
    match container {
        Some(c) => {
            port.container = c;
            Some(port)
        }
        None => {
            report.error(
                node,
                "a port needs `container:`, the port inside the container",
            );
            None
        }
    }
}

fn health(node: &Node<'_, '_>, report: &mut Report) -> Health {
    if let Some(word) = node.scalar_text() {
        return match word.as_str() {
            "default" => Health::Default,
            "none" => Health::None,
            _ => {
                report.error(
                    node,
                    format!("expected default, none, or a mapping with endpoint, protocol, timeout and accept; found {word:?}"),
                );
                Health::Default
            }
        };
    }
    let Some(entries) = node.mapping(report) else {
        return Health::Default;
    };
    let mut check_ = HealthCheck {
        endpoint: "/".into(),
        protocol: "http".into(),
        timeout: std::time::Duration::from_secs(30),
        accept: vec![(200, 299)],
    };
    for (key, value) in &entries {
        match key.as_str() {
            "endpoint" => {
                if let Some(e) = value.string(report, "a path such as \"/healthz\"") {
                    if e.starts_with('/') {
                        check_.endpoint = e;
                    } else {
                        report.error(
                            value,
                            format!("expected a path starting with '/', found {e:?}"),
                        );
                    }
                }
            }
            "protocol" => match value.string(report, "http or https").as_deref() {
                Some(p @ ("http" | "https")) => check_.protocol = p.into(),
                Some(other) => {
                    report.error(value, format!("expected http or https, found {other:?}"))
                }
                None => {}
            },
            "timeout" => {
                if let Some(t) =
                    text(value, report).and_then(|t| check(value, report, values::duration(&t)))
                {
                    check_.timeout = t;
                }
            }
            "accept" => {
                let Some(items) = value.list(report) else {
                    continue;
                };
                let ranges: Vec<(u16, u16)> = items
                    .iter()
                    .filter_map(|item| {
                        text(item, report)
                            .and_then(|t| check(item, report, values::status_range(&t)))
                    })
                    .collect();
                if !ranges.is_empty() {
                    check_.accept = ranges;
                }
            }
            // Cloud 66 v1 names the kind of check; ferry's checks are all inbound.
            "type" => match value.scalar_text().as_deref() {
                Some("inbound") => {}
                _ => report.error(
                    value,
                    "only inbound health checks are supported (type: inbound)",
                ),
            },
            other => report.warn(
                value,
                unknown(
                    other,
                    &["endpoint", "protocol", "timeout", "accept", "type"],
                ),
            ),
        }
    }
    Health::Check(check_)
}

fn env_vars(node: &Node<'_, '_>, report: &mut Report) -> BTreeMap<String, super::model::EnvValue> {
    let mut vars = BTreeMap::new();
    for (name, value) in node.mapping(report).unwrap_or_default() {
        if let Err(e) = values::env_name(&name) {
            report.error(&value, e);
            continue;
        }
        let Some(text) = text(&value, report) else {
            continue;
        };
        if let Some(v) = check(&value, report, values::env_value(&text)) {
            vars.insert(name, v);
        }
    }
    vars
}

fn dns_behaviour(node: &Node<'_, '_>, report: &mut Report) -> DnsBehaviour {
    match node.scalar_text().as_deref() {
        Some("versioned") => DnsBehaviour::Versioned,
        Some("non-versioned" | "non_versioned") => DnsBehaviour::NonVersioned,
        _ => {
            report.error(
                node,
                format!(
                    "expected versioned or non-versioned, found {}",
                    node.describe()
                ),
            );
            DnsBehaviour::default()
        }
    }
}

fn load_balancing(node: &Node<'_, '_>, report: &mut Report) -> LoadBalancing {
    match node.scalar_text().as_deref() {
        Some("roundrobin" | "round_robin") => LoadBalancing::RoundRobin,
        Some("sticky") => LoadBalancing::Sticky,
        Some("closest") => LoadBalancing::Closest,
        _ => {
            report.error(
                node,
                format!(
                    "expected roundrobin, sticky or closest, found {}",
                    node.describe()
                ),
            );
            LoadBalancing::default()
        }
    }
}

fn constraints(node: &Node<'_, '_>, report: &mut Report) -> Constraints {
    let mut constraints = Constraints::default();
    let mut min_at = None;
    for (key, value) in node.mapping(report).unwrap_or_default() {
        match key.as_str() {
            "min_count" => {
                constraints.min_count = value
                    .integer(report, 10_000, "a container count from 0 to 10000")
                    .map(|n| n as u32);
                min_at = Some(value);
            }
            "max_count" => {
                constraints.max_count = value
                    .integer(report, 10_000, "a container count from 0 to 10000")
                    .map(|n| n as u32)
            }
            "resources" => {
                for (resource, amount) in value.mapping(report).unwrap_or_default() {
                    let Some(t) = text(&amount, report) else {
                        continue;
                    };
                    match resource.as_str() {
                        "memory" => constraints.memory = check(&amount, report, values::memory(&t)),
                        "cpu" => {
                            constraints.cpu_millis = check(&amount, report, values::cpu_millis(&t))
                        }
                        other => report.warn(&amount, unknown(other, &["memory", "cpu"])),
                    }
                }
            }
            "servers" => report.warn(
                &value,
                "server placement by tags is not supported yet; ignored",
            ),
            other => report.warn(
                &value,
                unknown(other, &["min_count", "max_count", "resources", "servers"]),
            ),
        }
    }
    if let (Some(min), Some(max), Some(at)) = (constraints.min_count, constraints.max_count, min_at)
        && min > max
    {
        report.error(
            &at,
            format!("min_count {min} is above max_count {max}; lower min_count or raise max_count"),
        );
    }
    constraints
}

fn tags(node: &Node<'_, '_>, report: &mut Report) -> BTreeMap<String, String> {
    let mut tags = BTreeMap::new();
    for (key, value) in node.mapping(report).unwrap_or_default() {
        if let Some(v) = text(&value, report) {
            tags.insert(key, v);
        }
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_only_for_near_misses() {
        assert!(unknown("comand", &DIRECTIVES).contains("did you mean \"command\""));
        assert!(!unknown("frobnicate", &DIRECTIVES).contains("did you mean"));
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
