//! A cursor over the YAML tree that knows its path and position, and records problems
//! instead of stopping at the first, so the user sees every mistake at once.

use saphyr::{MarkedYaml, Scalar, YamlData};

use super::diagnostic::{Diagnostic, Severity};

/// Collects the problems of one file.
pub struct Report {
    file: String,
    /// Problems so far, in the order found.
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    /// A report for `file`.
    pub fn new(file: &str) -> Self {
        Self {
            file: file.into(),
            diagnostics: Vec::new(),
        }
    }

    /// Records an error at `line`/`column` (1-based).
    pub fn at(
        &mut self,
        severity: Severity,
        line: usize,
        column: usize,
        path: &str,
        message: String,
    ) {
        self.diagnostics.push(Diagnostic {
            severity,
            file: self.file.clone(),
            line,
            column,
            path: path.into(),
            message,
        });
    }

    /// Records an error at `node`.
    pub fn error(&mut self, node: &Node<'_, '_>, message: impl Into<String>) {
        let (line, column) = node.position();
        self.at(Severity::Error, line, column, &node.path, message.into());
    }

    /// Records a warning at `node`.
    pub fn warn(&mut self, node: &Node<'_, '_>, message: impl Into<String>) {
        let (line, column) = node.position();
        self.at(Severity::Warning, line, column, &node.path, message.into());
    }

    /// Whether any error was recorded.
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }
}

/// A node and where it is.
pub struct Node<'a, 'i> {
    yaml: &'a MarkedYaml<'i>,
    /// Dotted path from the document root.
    pub path: String,
}

impl<'a, 'i> Node<'a, 'i> {
    /// The document root.
    pub fn root(yaml: &'a MarkedYaml<'i>) -> Self {
        Self {
            yaml,
            path: String::new(),
        }
    }

    /// (line, column), both 1-based.
    pub fn position(&self) -> (usize, usize) {
        let start = self.yaml.span.start;
        (start.line(), start.col() + 1)
    }

    /// What kind of value this is, for messages.
    pub fn kind(&self) -> &'static str {
        match &self.yaml.data {
            YamlData::Value(Scalar::Null) => "nothing (null)",
            YamlData::Value(Scalar::Boolean(_)) => "true/false",
            YamlData::Value(Scalar::Integer(_)) => "a number",
            YamlData::Value(Scalar::FloatingPoint(_)) => "a number",
            YamlData::Value(Scalar::String(_)) => "a string",
            YamlData::Sequence(_) => "a list",
            YamlData::Mapping(_) => "a mapping",
            YamlData::Tagged(..) => "a tagged value",
            _ => "an unreadable value",
        }
    }

    /// The text of a scalar of any type (numbers and booleans as written), or None.
    pub fn scalar_text(&self) -> Option<String> {
        match &self.yaml.data {
            YamlData::Value(Scalar::String(s)) => Some(s.to_string()),
            YamlData::Value(Scalar::Integer(i)) => Some(i.to_string()),
            YamlData::Value(Scalar::FloatingPoint(f)) => Some(f.to_string()),
            YamlData::Value(Scalar::Boolean(b)) => Some(b.to_string()),
            _ => None,
        }
    }

    /// The string, or an error naming what was expected.
    pub fn string(&self, report: &mut Report, expected: &str) -> Option<String> {
        match &self.yaml.data {
            YamlData::Value(Scalar::String(s)) => Some(s.to_string()),
            _ => {
                report.error(self, format!("expected {expected}, found {}", self.kind()));
                None
            }
        }
    }

    /// A non-negative integer no larger than `max`.
    pub fn integer(&self, report: &mut Report, max: u64, expected: &str) -> Option<u64> {
        let value = match &self.yaml.data {
            YamlData::Value(Scalar::Integer(i)) => u64::try_from(*i).ok(),
            YamlData::Value(Scalar::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        match value {
            Some(v) if v <= max => Some(v),
            _ => {
                report.error(
                    self,
                    format!("expected {expected}, found {}", self.describe()),
                );
                None
            }
        }
    }

    /// A boolean.
    pub fn boolean(&self, report: &mut Report) -> Option<bool> {
        match &self.yaml.data {
            YamlData::Value(Scalar::Boolean(b)) => Some(*b),
            _ => {
                report.error(
                    self,
                    format!("expected true or false, found {}", self.describe()),
                );
                None
            }
        }
    }

    /// The items of a list.
    pub fn list(&self, report: &mut Report) -> Option<Vec<Node<'a, 'i>>> {
        match &self.yaml.data {
            YamlData::Sequence(items) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, yaml)| Node {
                        yaml,
                        path: format!("{}[{i}]", self.path),
                    })
                    .collect(),
            ),
            _ => {
                report.error(self, format!("expected a list, found {}", self.kind()));
                None
            }
        }
    }

    /// The entries of a mapping with string keys, in file order. Entries with other keys
    /// are reported and left out.
    pub fn mapping(&self, report: &mut Report) -> Option<Vec<(String, Node<'a, 'i>)>> {
        let YamlData::Mapping(map) = &self.yaml.data else {
            report.error(self, format!("expected a mapping, found {}", self.kind()));
            return None;
        };
        let mut entries = Vec::with_capacity(map.len());
        for (key, value) in map {
            let key_node = Node {
                yaml: key,
                path: self.path.clone(),
            };
            let Some(name) = key_node.scalar_text() else {
                report.error(
                    &key_node,
                    format!("expected a name as key, found {}", key_node.kind()),
                );
                continue;
            };
            let path = if self.path.is_empty() {
                name.clone()
            } else {
                format!("{}.{name}", self.path)
            };
            entries.push((name, Node { yaml: value, path }));
        }
        Some(entries)
    }

    /// The value for messages: a scalar as written, otherwise its kind.
    pub fn describe(&self) -> String {
        match self.scalar_text() {
            Some(text) => format!("{text:?}"),
            None => self.kind().into(),
        }
    }
}
