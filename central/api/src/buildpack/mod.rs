//! How ferry builds a Node service that has no Dockerfile, the way Heroku's and the Cloud
//! Native Buildpacks' Node support do: the package manager from the lockfile, dependencies
//! installed before the code is copied (so a code-only change reuses their layer), dev
//! dependencies for the build only, the build step, and a start command from what the app
//! declares.
//!
//! The plan is made from the app's files, once by the CLI before upload (so a deploy that
//! cannot start is refused before anything is sent) and again by the agent from the
//! uploaded archive (which it builds from). Both read the same files with this one module.
//!
//! # Layout
//! - `package`: package.json and the lockfiles present: which package manager, which
//!   scripts, `main`, `engines.node`, `packageManager`.
//! - `engines`: the Node major an `engines.node` range picks.
//! - `dockerfile`: the generated Dockerfile.

mod dockerfile;
mod engines;
mod package;

use std::collections::BTreeSet;

pub use dockerfile::{
    COREPACK_KEYS_ARG, PACKAGE_FILES, PUBLIC_REGISTRY, REGISTRY_ARG, dockerfile, install_env,
    install_script, prebuilt_dockerfile,
};
pub use engines::{DEFAULT_NODE_MAJOR, NODE_MAJORS, node_major};
pub use package::{Manager, PackageJson};

/// The official Node image for `major`: what a service without a Dockerfile is built on.
pub fn base_image(major: u32) -> String {
    format!("node:{major}-bookworm-slim")
}

/// The files of an app's build root that decide its plan.
#[derive(Clone, Debug, Default)]
pub struct AppFiles {
    /// The text of `package.json`, if there is one.
    pub package_json: Option<String>,
    /// The names of the other files at the top of the build root (lockfiles,
    /// `server.js`, `index.js`, `Dockerfile`, ...), and of its directories with a `/`.
    pub names: BTreeSet<String>,
}

impl AppFiles {
    /// Notes the file at `path` (relative to the build root) when it is one a plan reads;
    /// `read` gives its text when it is package.json. Returns whether it was package.json.
    pub fn note(&mut self, path: &str, read: impl FnOnce() -> Option<String>) -> bool {
        let path = path.trim_start_matches("./");
        if let Some((dir, _)) = path.split_once('/') {
            self.names.insert(format!("{dir}/"));
            return false;
        }
        if path == "package.json" {
            self.package_json = read();
            return true;
        }
        self.names.insert(path.to_string());
        false
    }

    fn has(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// The [`PACKAGE_FILES`] this app has, package.json included when it has one.
    pub fn package_files(&self) -> Vec<&'static str> {
        PACKAGE_FILES
            .into_iter()
            .filter(|f| {
                (*f == "package.json" && self.package_json.is_some()) || self.names.contains(*f)
            })
            .collect()
    }
}

/// What the service.yml says that the plan needs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Directives<'a> {
    /// `command`: what the container runs.
    pub command: Option<&'a str>,
    /// `build_command`: Cloud 66's build step.
    pub build_command: Option<&'a str>,
}

/// How the app's dependencies are installed and its build run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Build {
    /// `build_command` from service.yml, run by the shell.
    Command(String),
    /// The `build` script of package.json, run by the package manager.
    Script,
}

/// What the container runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// `command` from service.yml, run by the shell.
    Command(String),
    /// The package manager's `start`, for a `start` script.
    Script,
    /// `node FILE`: package.json's `main`, else `server.js` or `index.js`.
    Node(String),
}

/// How one service is built and started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The package manager, or None for an app without package.json (Node's standard
    /// library only).
    pub manager: Option<Manager>,
    /// The Node major the base image carries.
    pub node_major: u32,
    /// The build step, if any.
    pub build: Option<Build>,
    /// What the container runs.
    pub start: Start,
    /// Things the developer should know (no lockfile: builds are not reproducible).
    pub warnings: Vec<String>,
}

/// Why an app cannot be built or started as it is. Each message names what to change.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    PackageJson(#[from] package::ReadError),
    #[error("{0}")]
    Package(#[from] package::PackageError),
    #[error("{0}")]
    Engines(#[from] engines::EnginesError),
    #[error(
        "nothing to start: there is no `command` in service.yml, no `start` script and no \
         `main` in package.json, and no server.js or index.js; add one of these"
    )]
    NoStart,
    #[error(
        "package.json's main is {main:?}, which is not in the app, and nothing else says how \
         to start it; fix main, or add a `start` script or a `command`"
    )]
    MissingMain { main: String },
    #[error("package.json's main {main:?} points outside the app; give a path inside it")]
    MainOutside { main: String },
}

/// Makes the plan for an app with `files`, as service.yml's `directives` ask.
pub fn plan(files: &AppFiles, directives: Directives<'_>) -> Result<Plan, PlanError> {
    let package = files
        .package_json
        .as_deref()
        .map(PackageJson::parse)
        .transpose()?;
    let mut warnings = Vec::new();
    let manager = match &package {
        Some(package) => Some(package.manager(&files.names, &mut warnings)?),
        None => None,
    };
    let node_major = match package.as_ref().and_then(|p| p.engines_node.as_deref()) {
        Some(range) => node_major(range)?,
        None => DEFAULT_NODE_MAJOR,
    };
    let build = match (directives.build_command, &package) {
        (Some(command), _) => Some(Build::Command(command.to_string())),
        (None, Some(package)) if package.has_script("build") => Some(Build::Script),
        _ => None,
    };
    let start = match (directives.command, &package) {
        (Some(command), _) => Start::Command(command.to_string()),
        (None, Some(package)) if package.has_script("start") => Start::Script,
        (
            None,
            Some(PackageJson {
                main: Some(main), ..
            }),
        ) => Start::Node(checked_main(files, main)?),
        _ => ["server.js", "index.js"]
            .into_iter()
            .find(|f| files.has(f))
            .map(|f| Start::Node(f.to_string()))
            .ok_or(PlanError::NoStart)?,
    };
    Ok(Plan {
        manager,
        node_major,
        build,
        start,
        warnings,
    })
}

/// `main` as node runs it, when it is in the app: a path inside it whose first part the
/// files show (a top-level file, with or without `.js`, or a directory).
fn checked_main(files: &AppFiles, main: &str) -> Result<String, PlanError> {
    let relative = main.trim_start_matches("./");
    if relative.starts_with('/') || relative.split('/').any(|part| part == "..") {
        return Err(PlanError::MainOutside { main: main.into() });
    }
    let present = match relative.split_once('/') {
        Some((dir, _)) => files.has(&format!("{dir}/")),
        None => {
            files.has(relative)
                || files.has(&format!("{relative}.js"))
                || files.has(&format!("{relative}/"))
        }
    };
    if !present {
        return Err(PlanError::MissingMain { main: main.into() });
    }
    Ok(relative.to_string())
}

#[cfg(test)]
mod tests;
