//! package.json, as far as a build needs it, and the package manager its lockfile names.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    scripts: BTreeMap<String, serde_json::Value>,
    main: Option<serde_json::Value>,
    #[serde(default)]
    engines: BTreeMap<String, serde_json::Value>,
    package_manager: Option<serde_json::Value>,
}

/// A string field, or None when it is absent or not a string (npm ignores those too).
fn text(value: Option<&serde_json::Value>) -> Option<String> {
    value
        .and_then(serde_json::Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

impl PackageJson {
    /// Reads package.json's text.
    pub fn parse(text_of_file: &str) -> Result<Self, serde_json::Error> {
        let raw: Raw = serde_json::from_str(text_of_file)?;
        Ok(Self {
            scripts: raw
                .scripts
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), text(Some(v))?)))
                .collect(),
            main: text(raw.main.as_ref()),
            engines_node: text(raw.engines.get("node")),
            package_manager: text(raw.package_manager.as_ref()),
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
