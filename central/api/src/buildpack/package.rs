//! package.json, as far as a build needs it, and the package manager its lockfile names.

use std::collections::{BTreeMap, BTreeSet};

/// The lockfiles ferry knows, and whose they are (npm's two, yarn's, pnpm's).
const LOCKFILES: [(&str, Tool); 4] = [
    ("package-lock.json", Tool::Npm),
    ("npm-shrinkwrap.json", Tool::Npm),
    ("yarn.lock", Tool::Yarn),
    ("pnpm-lock.yaml", Tool::Pnpm),
];

/// A package manager, without its version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    Npm,
    Yarn,
    Pnpm,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Npm => "npm",
            Tool::Yarn => "yarn",
            Tool::Pnpm => "pnpm",
        }
    }
}

/// The package manager that installs an app's dependencies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Manager {
    /// npm, which ships with Node: `npm ci` with a lockfile, `npm install` without.
    Npm {
        /// Whether a lockfile pins the dependency tree.
        locked: bool,
    },
    /// yarn through corepack.
    Yarn {
        /// The version `packageManager` names (corepack's default, yarn 1, without).
        version: Option<String>,
        /// Whether yarn.lock pins the dependency tree.
        locked: bool,
    },
    /// pnpm through corepack.
    Pnpm {
        /// The version `packageManager` names (corepack's default without).
        version: Option<String>,
        /// Whether pnpm-lock.yaml pins the dependency tree.
        locked: bool,
    },
}

impl Manager {
    /// The manager's command name.
    pub fn name(&self) -> &'static str {
        match self {
            Manager::Npm { .. } => "npm",
            Manager::Yarn { .. } => "yarn",
            Manager::Pnpm { .. } => "pnpm",
        }
    }

    /// Whether this is yarn 2 or later ("berry"), whose commands differ from yarn 1's.
    pub fn is_berry(&self) -> bool {
        match self {
            Manager::Yarn {
                version: Some(v), ..
            } => v
                .split('.')
                .next()
                .and_then(|m| m.parse::<u32>().ok())
                .is_some_and(|m| m >= 2),
            _ => false,
        }
    }

    /// Whether it goes through corepack (yarn and pnpm; npm ships with Node).
    pub fn corepack(&self) -> bool {
        !matches!(self, Manager::Npm { .. })
    }
}

/// Why the package manager cannot be told.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PackageError {
    #[error(
        "lockfiles of more than one package manager ({found}): ferry cannot tell which one \
         the app uses; delete the lockfile of the one you do not use"
    )]
    SeveralLockfiles { found: String },
    #[error(
        "package.json's packageManager names {declared}, but the lockfile is {lockfile}, \
         which is {tool}'s; install with {declared_tool} and commit its lockfile, or change \
         packageManager"
    )]
    Mismatch {
        declared: String,
        declared_tool: &'static str,
        lockfile: &'static str,
        tool: &'static str,
    },
    #[error(
        "package.json's packageManager {declared:?} is not npm, yarn or pnpm with a version \
         (e.g. \"pnpm@9.15.0\"); fix it or remove it"
    )]
    UnknownManager { declared: String },
    #[error(
        "{lockfile} is bun's lockfile, and ferry builds with npm, yarn or pnpm; commit one of \
         their lockfiles, or give the service a Dockerfile that uses bun"
    )]
    Bun { lockfile: &'static str },
}

/// The parts of package.json a build reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackageJson {
    /// Script names to their command lines.
    pub scripts: BTreeMap<String, String>,
    /// `main`: the entry point.
    pub main: Option<String>,
    /// `engines.node`: the Node versions the app runs on.
    pub engines_node: Option<String>,
    /// `packageManager`, e.g. `pnpm@9.15.0+sha512...`.
    pub package_manager: Option<String>,
}

/// Why package.json cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("package.json is not valid JSON ({0}); fix it, or give the service a Dockerfile")]
    Json(#[source] serde_json::Error),
    #[error("package.json's {field} must be {expected}, as npm reads it; fix it")]
    Shape {
        field: String,
        expected: &'static str,
    },
}

fn shape(field: impl Into<String>, expected: &'static str) -> ReadError {
    ReadError::Shape {
        field: field.into(),
        expected,
    }
}

/// A string field: None when absent, an error when of another type.
fn text(
    object: &serde_json::Map<String, serde_json::Value>,
    key: &str,
    field: &str,
    expected: &'static str,
) -> Result<Option<String>, ReadError> {
    match object.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => {
            Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty()))
        }
        Some(_) => Err(shape(field, expected)),
    }
}

impl PackageJson {
    /// Reads package.json's text (a leading byte-order mark allowed, a repeated key's last
    /// value winning, as npm reads it).
    pub fn parse(text_of_file: &str) -> Result<Self, ReadError> {
        let text_of_file = text_of_file.trim_start_matches('\u{feff}');
        let value: serde_json::Value =
            serde_json::from_str(text_of_file).map_err(ReadError::Json)?;
        let serde_json::Value::Object(top) = value else {
            return Err(shape("top level", "an object such as {\"name\": ...}"));
        };
        let scripts = match top.get("scripts") {
            None | Some(serde_json::Value::Null) => BTreeMap::new(),
            Some(serde_json::Value::Object(scripts)) => scripts
                .keys()
                .map(|name| {
                    let line = text(
                        scripts,
                        name,
                        &format!("scripts.{name}"),
                        "a command line (a string)",
                    )?;
                    Ok(line.map(|line| (name.clone(), line)))
                })
                .filter_map(Result::transpose)
                .collect::<Result<_, ReadError>>()?,
            Some(_) => {
                return Err(shape(
                    "scripts",
                    "an object of script names to command lines",
                ));
            }
        };
        let engines_node = match top.get("engines") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Object(engines)) => text(
                engines,
                "node",
                "engines.node",
                "a version range as a string, such as \"20.x\"",
            )?,
            Some(_) => {
                return Err(shape("engines", "an object such as {\"node\": \"20.x\"}"));
            }
        };
        Ok(Self {
            scripts,
            main: text(
                &top,
                "main",
                "main",
                "a path (a string), such as \"server.js\"",
            )?,
            engines_node,
            package_manager: text(
                &top,
                "packageManager",
                "packageManager",
                "a string such as \"pnpm@9.15.0\"",
            )?,
        })
    }

    /// Whether package.json has a script called `name`.
    pub fn has_script(&self, name: &str) -> bool {
        self.scripts.contains_key(name)
    }

    /// The package manager, from the lockfile among `names` and `packageManager`.
    pub fn manager(
        &self,
        names: &BTreeSet<String>,
        warnings: &mut Vec<String>,
    ) -> Result<Manager, PackageError> {
        if let Some(lockfile) = ["bun.lockb", "bun.lock"]
            .into_iter()
            .find(|f| names.contains(*f))
            && !LOCKFILES.iter().any(|(f, _)| names.contains(*f))
        {
            return Err(PackageError::Bun { lockfile });
        }
        let found: Vec<(&'static str, Tool)> = LOCKFILES
            .into_iter()
            .filter(|(file, _)| names.contains(*file))
            .collect();
        let mut tools: Vec<Tool> = found.iter().map(|(_, t)| *t).collect();
        tools.dedup();
        if tools.len() > 1 {
            return Err(PackageError::SeveralLockfiles {
                found: found.iter().map(|(f, _)| *f).collect::<Vec<_>>().join(", "),
            });
        }
        let declared = self
            .package_manager
            .as_deref()
            .map(|d| {
                let (tool, version) = d.split_once('@').unwrap_or((d, ""));
                // "pnpm@9.15.0+sha512.abc": the hash is corepack's to check.
                let version = version.split('+').next().unwrap_or("").to_string();
                let tool = match tool {
                    "npm" => Tool::Npm,
                    "yarn" => Tool::Yarn,
                    "pnpm" => Tool::Pnpm,
                    _ => {
                        return Err(PackageError::UnknownManager {
                            declared: d.to_string(),
                        });
                    }
                };
                if version.is_empty() {
                    return Err(PackageError::UnknownManager {
                        declared: d.to_string(),
                    });
                }
                Ok((tool, version, d.to_string()))
            })
            .transpose()?;
        if let (Some((tool, _, text)), Some((lockfile, locked_by))) = (&declared, found.first())
            && tool != locked_by
        {
            return Err(PackageError::Mismatch {
                declared: text.clone(),
                declared_tool: tool.name(),
                lockfile,
                tool: locked_by.name(),
            });
        }
        let locked = !found.is_empty();
        let tool = found
            .first()
            .map(|(_, t)| *t)
            .or(declared.as_ref().map(|(t, _, _)| *t))
            .unwrap_or(Tool::Npm);
        if !locked {
            warnings.push(format!(
                "no lockfile (package-lock.json, yarn.lock or pnpm-lock.yaml): dependencies are \
                 resolved anew on every build, so builds are not reproducible; commit the \
                 lockfile {} writes",
                tool.name()
            ));
        }
        let version = declared.map(|(_, v, _)| v);
        Ok(match tool {
            Tool::Npm => Manager::Npm { locked },
            Tool::Yarn => Manager::Yarn { version, locked },
            Tool::Pnpm => Manager::Pnpm { version, locked },
        })
    }
}
