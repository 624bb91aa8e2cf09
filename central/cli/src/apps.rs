//! How each service of a stack will be built, found out before anything is uploaded: a
//! service that could not start (no start command, lockfiles of two package managers, an
//! `engines.node` no base image satisfies) is refused here, naming what to change, with
//! the same planner the agents build with (`ferry_api::buildpack`).

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use ferry_api::{
    buildpack::{self, AppFiles, Build, Directives, Manager, Start},
    servicefile::StackFile,
};

/// Checks every service of `stack` (whose source is `dir`) that ferry builds without a
/// Dockerfile; returns one line per service saying how it will be built, and the
/// planner's warnings.
pub fn check(dir: &Path, stack: &StackFile) -> Result<(Vec<String>, Vec<String>)> {
    let (mut lines, mut warnings, mut problems) = (Vec::new(), Vec::new(), Vec::new());
    for (name, service) in &stack.services {
        if service.image.is_some() {
            continue;
        }
        let root = dir.join(service.build_root.as_deref().unwrap_or("."));
        if service.dockerfile_path.is_some() || root.join("Dockerfile").exists() {
            lines.push(format!("{name}: built with its own Dockerfile"));
            continue;
        }
        let files = read(&root)?;
        match buildpack::plan(
            &files,
            Directives {
                command: service.command.as_deref(),
                build_command: service.build_command.as_deref(),
            },
        ) {
            Ok(plan) => {
                warnings.extend(plan.warnings.iter().map(|w| format!("{name}: {w}")));
                lines.push(format!("{name}: {}", describe(&plan)));
            }
            Err(e) => problems.push(format!("{name} ({}): {e}", root.display())),
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok((lines, warnings))
}

/// The top of `root` as the planner reads it.
fn read(root: &Path) -> Result<AppFiles> {
    let mut files = AppFiles::default();
    let entries = std::fs::read_dir(root)
        .with_context(|| format!("reading {}, a service's build root", root.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", root.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            format!("{name}/")
        } else {
            name
        };
        files.note(&path, || std::fs::read_to_string(entry.path()).ok());
    }
    Ok(files)
}

/// "npm ci, the build script, then npm start on node:24-bookworm-slim".
fn describe(plan: &buildpack::Plan) -> String {
    let install = match &plan.manager {
        None => "no dependencies (no package.json)".to_string(),
        Some(Manager::Npm { locked: true }) => "npm ci".into(),
        Some(Manager::Npm { locked: false }) => "npm install".into(),
        Some(manager) => format!("{} install through corepack", manager.name()),
    };
    let build = match &plan.build {
        None => String::new(),
        Some(Build::Script) => ", the build script".into(),
        Some(Build::Command(c)) => format!(", `{c}`"),
    };
    let start = match &plan.start {
        Start::Command(c) => format!("`{c}`"),
        Start::Script => "npm start".into(),
        Start::Node(file) => format!("node {file}"),
    };
    format!(
        "{install}{build}, then {start} on {}",
        buildpack::base_image(plan.node_major)
    )
}
