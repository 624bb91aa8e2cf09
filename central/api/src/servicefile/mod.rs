//! Reading a stack's `service.yml` in Cloud 66's format.
//!
//! The whole file is read before anything is decided: every error is collected with its
//! file, line, column and path, and the file is refused if there is any. Unknown and
//! unsupported directives are reported as warnings, never dropped silently. Hostile input is
//! bounded: the file size, the alias expansion budget and the nesting depth are capped, and
//! anchors/aliases, which Cloud 66 files do not need, are refused.

mod diagnostic;
mod model;
mod node;
mod service;
mod values;

use std::collections::BTreeMap;

use saphyr::{LoadableYamlNode as _, MarkedYaml};
use saphyr_parser::{Event, Parser};

pub use diagnostic::{Diagnostic, ParseError, Severity};
pub use model::{
    Constraints, Database, DnsBehaviour, EnvValue, Health, HealthCheck, LoadBalancing, Port,
    Service, StackFile, StopStep, Volume,
};
use node::{Node, Report};
pub use values::{duration, env_name};

/// Largest service file accepted.
pub const MAX_BYTES: usize = 256 * 1024;
/// Deepest nesting of lists and mappings accepted (real files use four or five levels).
pub const MAX_DEPTH: usize = 32;
/// Most services in one stack.
pub const MAX_SERVICES: usize = 256;

/// A stack file that was accepted, and what the user should still hear about.
#[derive(Debug)]
pub struct Parsed {
    /// The stack.
    pub stack: StackFile,
    /// Warnings, in file order.
    pub warnings: Vec<Diagnostic>,
}

/// Reads `text`, which came from the file the user calls `file`.
pub fn parse(file: &str, text: &str) -> Result<Parsed, ParseError> {
    let mut report = Report::new(file);
    let stack = read(text, &mut report);
    match stack {
        Some(stack) if !report.has_errors() => Ok(Parsed {
            stack,
            warnings: report.diagnostics,
        }),
        _ => Err(ParseError {
            diagnostics: report.diagnostics,
        }),
    }
}

fn read(text: &str, report: &mut Report) -> Option<StackFile> {
    use Severity::Error;
    if text.len() > MAX_BYTES {
        report.at(
            Error,
            1,
            1,
            "",
            format!(
                "the file is {} bytes; service files may be at most {MAX_BYTES} bytes",
                text.len()
            ),
        );
        return None;
    }
    // The event pass is a state machine; it sees nesting and aliases before any tree
    // is built from them.
    if !screen(text, report) {
        return None;
    }
    let documents = match MarkedYaml::load_from_str(text) {
        Ok(documents) => documents,
        Err(e) => {
            let marker = e.marker();
            report.at(
                Error,
                marker.line(),
                marker.col() + 1,
                "",
                format!("not valid YAML: {}", e.info()),
            );
            return None;
        }
    };
    let root = match documents.as_slice() {
        [] => {
            report.at(
                Error,
                1,
                1,
                "",
                "the file is empty; expected a `services:` mapping".into(),
            );
            return None;
        }
        [root] => root,
        [_, second, ..] => {
            let (line, column) = Node::root(second).position();
            report.at(
                Error,
                line,
                column,
                "",
                "expected one YAML document, found several".into(),
            );
            return None;
        }
    };
    let root = Node::root(root);
    let mut stack = StackFile {
        services: BTreeMap::new(),
        databases: Vec::new(),
    };
    let mut saw_services = false;
    for (key, value) in root.mapping(report)? {
        match key.as_str() {
            "services" => {
                saw_services = true;
                stack.services = services(&value, report);
            }
            "databases" => stack.databases = databases(&value, report),
            other => report.warn(&value, service::unknown(other, &["services", "databases"])),
        }
    }
    if !saw_services {
        report.at(
            Error,
            1,
            1,
            "",
            "no `services:` mapping: a stack needs at least one service".into(),
        );
        return None;
    }
    cross_check(&stack, &root, report);
    Some(stack)
}

fn services(node: &Node<'_, '_>, report: &mut Report) -> BTreeMap<String, Service> {
    let mut services = BTreeMap::new();
    let entries = node.mapping(report).unwrap_or_default();
    if entries.is_empty() {
        report.error(node, "no services: declare at least one under `services:`");
    }
    if entries.len() > MAX_SERVICES {
        report.error(
            node,
            format!(
                "{} services; at most {MAX_SERVICES} are supported",
                entries.len()
            ),
        );
        return services;
    }
    for (name, value) in &entries {
        if let Err(e) = values::service_name(name) {
            report.error(value, e);
        }
        services.insert(name.clone(), service::read(value, report));
    }
    services
}

fn databases(node: &Node<'_, '_>, report: &mut Report) -> Vec<Database> {
    let mut found = Vec::new();
    for item in node.list(report).unwrap_or_default() {
        let Some(name) = item.string(report, "a database name") else {
            continue;
        };
        match Database::ALL.iter().find(|(n, _)| *n == name) {
            Some((_, db)) if !found.contains(db) => found.push(*db),
            Some(_) => report.warn(&item, format!("{name} is listed twice")),
            None => {
                let known: Vec<&str> = Database::ALL.iter().map(|(n, _)| *n).collect();
                report.error(
                    &item,
                    format!("unknown database {name:?}; ferry runs {}", known.join(", ")),
                );
            }
        }
    }
    found
}

/// Rules across services: `requires` names real services, and each host port has one
/// default service (HTTP ports may be shared by host name, TCP and UDP ports not at all).
fn cross_check(stack: &StackFile, root: &Node<'_, '_>, report: &mut Report) {
    let (line, column) = root.position();
    for (name, service) in &stack.services {
        for required in &service.requires {
            if !stack.services.contains_key(required) {
                report.at(
                    Severity::Error,
                    line,
                    column,
                    &format!("services.{name}.requires"),
                    format!("requires {required:?}, which is not a service of this stack"),
                );
            }
        }
    }
    let mut http_defaults: BTreeMap<u16, &str> = BTreeMap::new();
    let mut raw: BTreeMap<(u16, &str), &str> = BTreeMap::new();
    for (name, service) in &stack.services {
        for port in &service.ports {
            if service.traffic_matches.is_empty() {
                for host_port in [port.http, port.https].into_iter().flatten() {
                    if let Some(other) = http_defaults.insert(host_port, name) {
                        report.at(Severity::Error, line, column, &format!("services.{name}.ports"), format!(
                            "host port {host_port} already has {other:?} as its default service; \
                             give one of them traffic_matches so requests can be told apart"
                        ));
                    }
                }
            }
            for (host_port, proto) in [(port.tcp, "tcp"), (port.udp, "udp")] {
                if let Some(host_port) = host_port
                    && let Some(other) = raw.insert((host_port, proto), name)
                {
                    report.at(
                        Severity::Error,
                        line,
                        column,
                        &format!("services.{name}.ports"),
                        format!("{proto} host port {host_port} is already published by {other:?}"),
                    );
                }
            }
        }
    }
}

/// Walks the parser's events once: refuses anchors and aliases (a Cloud 66 file has no
/// use for them, and expanding them is how a small file becomes a huge tree) and nesting
/// past [`MAX_DEPTH`]. Returns false after recording an error.
fn screen(text: &str, report: &mut Report) -> bool {
    let mut depth = 0usize;
    for event in Parser::new_from_str(text) {
        let (event, span) = match event {
            Ok(event) => event,
            Err(e) => {
                let marker = e.marker();
                report.at(
                    Severity::Error,
                    marker.line(),
                    marker.col() + 1,
                    "",
                    format!("not valid YAML: {}", e.info()),
                );
                return false;
            }
        };
        let (line, column) = (span.start.line(), span.start.col() + 1);
        let anchored = match event {
            Event::Alias(_) => {
                report.at(
                    Severity::Error,
                    line,
                    column,
                    "",
                    "YAML aliases are not supported in service files; write the value out".into(),
                );
                return false;
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                depth += 1;
                anchor
            }
            Event::SequenceEnd | Event::MappingEnd => {
                depth = depth.saturating_sub(1);
                0
            }
            Event::Scalar(_, _, anchor, _) => anchor,
            _ => 0,
        };
        if anchored != 0 {
            report.at(
                Severity::Error,
                line,
                column,
                "",
                "YAML anchors are not supported in service files; write the value out".into(),
            );
            return false;
        }
        if depth > MAX_DEPTH {
            report.at(
                Severity::Error,
                line,
                column,
                "",
                format!("nesting deeper than {MAX_DEPTH} levels; a service file needs far fewer"),
            );
            return false;
        }
    }
    true
}
