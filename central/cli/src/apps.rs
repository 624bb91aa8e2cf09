//! How each service of a stack will be built, found out before anything is uploaded: a
//! service that could not start (no start command, lockfiles of two package managers, an
//! `engines.node` no base image satisfies) is refused here, naming what to change, with
//! the same planner the agents build with (`ferry_api::buildpack`).

use std::path::{Path, PathBuf};

use crate::dockerignore::Ignore;
use anyhow::{Context as _, Result, bail};
use ferry_api::{
    buildpack::{self, AppFiles, Build, Directives, Manager, Start},
    servicefile::StackFile,
};

/// Checks every service of `stack` (whose source is `dir`) that ferry builds; returns one
/// line per service saying how it will be built, and the planner's warnings. The plan is
/// made from what the upload will hold (`ignore` applied), as the agent will see it.
pub fn check(dir: &Path, stack: &StackFile, ignore: &Ignore) -> Result<(Vec<String>, Vec<String>)> {
    let (mut lines, mut warnings, mut problems) = (Vec::new(), Vec::new(), Vec::new());
    for (name, service) in &stack.services {
        if service.image.is_some() {
            continue;
        }
        let at = format!("services.{name}.build_root");
        let root = match build_root(dir, service.build_root.as_deref()) {
            Ok(root) => root,
            Err(e) => {
                problems.push(format!("{at}: {e}"));
                continue;
            }
        };
        let relative = root
            .strip_prefix(dir)
            .unwrap_or(Path::new(""))
            .to_path_buf();
        if let Some(path) = &service.dockerfile_path {
            if !root.join(path).is_file() {
                problems.push(format!(
                    "services.{name}.dockerfile_path: {} is not a file; fix dockerfile_path \
                     (it is relative to the build root)",
                    root.join(path).display()
                ));
            } else {
                lines.push(format!("{name}: built with its own Dockerfile, {path}"));
            }
            continue;
        }
        let files = match read(&root, &relative, ignore) {
            Ok(files) => files,
            Err(e) => {
                problems.push(format!("{name}: {e:#}"));
                continue;
            }
        };
        if files.names.contains("Dockerfile") {
            lines.push(format!("{name}: built with its own Dockerfile"));
            continue;
        }
        match buildpack::plan(
            &files,
            Directives {
                command: service.command.as_deref(),
                build_command: service.build_command.as_deref(),
            },
        ) {
            Ok(plan) => {
                warnings.extend(plan.warnings.iter().map(|w| format!("{name}: {w}")));
                let mut line = format!("{name}: {}", describe(&plan));
                if let Some(command) = &service.deploy_command {
                    line.push_str(&format!("; `{command}` once per deploy, before it starts"));
                }
                lines.push(line);
            }
            Err(e) => problems.push(format!("{name} ({}): {e}", root.display())),
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok((lines, warnings))
}

/// The service's build root: a directory inside the stack's `dir`.
fn build_root(dir: &Path, build_root: Option<&str>) -> Result<PathBuf, String> {
    let named = dir.join(build_root.unwrap_or("."));
    let (Ok(root), Ok(stack)) = (named.canonicalize(), dir.canonicalize()) else {
        return Err(format!(
            "{} does not exist; fix build_root (it is relative to the stack's directory)",
            named.display()
        ));
    };
    if !root.is_dir() {
        return Err(format!(
            "{} is not a directory; fix build_root",
            named.display()
        ));
    }
    if !root.starts_with(&stack) {
        return Err(format!(
            "{} leads outside the stack's directory {} (a link?); the upload holds only what \
             is inside it",
            named.display(),
            stack.display()
        ));
    }
    Ok(dir.join(root.strip_prefix(&stack).unwrap_or(Path::new(""))))
}

/// The top of `root` (at `relative` in the stack) as the upload will hold it.
fn read(root: &Path, relative: &Path, ignore: &Ignore) -> Result<AppFiles> {
    let mut files = AppFiles::default();
    let entries = std::fs::read_dir(root)
        .with_context(|| format!("reading {}, a service's build root", root.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", root.display()))?;
        if ignore.excludes(&relative.join(entry.file_name())) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if name == "package.json" {
            let text = std::fs::read_to_string(entry.path())
                .with_context(|| format!("reading {}", entry.path().display()))?;
            files.note(&name, || Some(text));
            continue;
        }
        let path = if is_dir { format!("{name}/") } else { name };
        files.note(&path, || None);
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
