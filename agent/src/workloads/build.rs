//! A service's image: `image:` as it is, else built from the uploaded source with the
//! service's own Dockerfile (`dockerfile_path`, or a `Dockerfile` at its build root), else
//! with the Dockerfile `ferry_api::buildpack` generates on the official Node image of the
//! app's Node major (pulled when the engine lacks it).

use std::collections::HashMap;

use ferry_api::{
    buildpack::{self, COREPACK_KEYS_ARG, Directives, PlanError, REGISTRY_ARG},
    servicefile::Service,
    types::Assignment,
};
use tracing::{info, warn};

use super::{
    WorkloadOptions,
    context::{ContextError, build_context},
    progress::Progress,
};
use crate::containers::{
    BuildOptions, ContainerSpec, Engine, ImageError, build_image, ensure_image,
    last_lines::LastLines, oneoff,
};

/// Why a service's image could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Context(#[from] ContextError),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("installing with the stack's npm token: {0}")]
    Install(#[from] crate::containers::ContainerError),
    #[error(
        "installing and building with the stack's npm token failed (exit code {code}); its last \
         lines:\n{tail}"
    )]
    InstallFailed { code: i64, tail: String },
    #[error("{0}")]
    Plan(#[from] PlanError),
    #[error("{0}")]
    Image(#[from] ImageError),
}

/// The image service `name` of `assignment` runs, built if it must be.
pub async fn image_for(
    engine: &Engine,
    options: &WorkloadOptions,
    assignment: &Assignment,
    name: &str,
    service: &Service,
    archive: &[u8],
    progress: &Progress,
) -> Result<String, BuildError> {
    if let Some(image) = &service.image {
        return Ok(image.clone());
    }
    let context = build_context(archive, service.build_root.as_deref())?;
    let own = service.dockerfile_path.clone().or_else(|| {
        context
            .files
            .names
            .contains("Dockerfile")
            .then(|| "Dockerfile".into())
    });
    let tag = format!(
        "ferry/{}-{name}:{}",
        assignment.stack, assignment.generation
    );
    let log = |line: &str| {
        info!(service = name, "build: {line}");
        progress.line(&format!("{name}: {line}"));
    };
    let mut build = BuildOptions {
        args: HashMap::new(),
        network: options.build_network.clone(),
    };
    let (context, dockerfile) = match own {
        Some(dockerfile) => (context.finish(None)?, dockerfile),
        None => {
            let plan = buildpack::plan(
                &context.files,
                Directives {
                    command: service.command.as_deref(),
                    build_command: service.build_command.as_deref(),
                },
            )?;
            for warning in &plan.warnings {
                warn!(service = name, "{warning}");
                progress.line(&format!("{name}: warning: {warning}"));
            }
            let base = options
                .base_image
                .clone()
                .unwrap_or_else(|| buildpack::base_image(plan.node_major));
            ensure_image(engine, &base, log).await?;
            // The stack's registry, else the agent's; without a final slash, which corepack
            // would double when it appends "/<name>/<version>".
            let registry = assignment
                .npm
                .registry
                .as_deref()
                .or(options.npm_registry.as_deref())
                .map(|r| r.trim_end_matches('/').to_string());
            if let Some(registry) = &registry {
                build.args.insert(REGISTRY_ARG.into(), registry.clone());
                build.args.insert(COREPACK_KEYS_ARG.into(), "0".into());
            }
            match (&assignment.npm.token, &plan.manager) {
                (Some(token), Some(_)) => {
                    let prebuilt = Prebuilt {
                        engine,
                        spec_of: (assignment, name),
                        base: &base,
                        registry: registry.as_deref(),
                        token,
                        network: options.build_network.as_deref(),
                        log: &log,
                    };
                    let context = prebuilt.install(context, &plan).await?;
                    (context, super::context::GENERATED.to_string())
                }
                _ => {
                    let generated =
                        buildpack::dockerfile(&plan, &base, &context.files.package_files());
                    (
                        context.finish(Some(&generated))?,
                        super::context::GENERATED.to_string(),
                    )
                }
            }
        }
    };
    match build_image(engine, context, &dockerfile, &tag, &build, log).await {
        Ok(()) => Ok(tag),
        // npm's own words ("Unable to authenticate") do not say what to do on ferry.
        Err(ImageError::Build { tag, message })
            if assignment.npm.token.is_none()
                && ["E401", "E403"].iter().any(|code| message.contains(code)) =>
        {
            Err(BuildError::Image(ImageError::Build {
                tag,
                message: format!(
                    "{message}\nthe npm registry refused a package without a token: give the \
                     stack its token with `ferry env set --stack {} {}=...` (and the registry \
                     with {}=URL when it is not npm's), then deploy again",
                    assignment.stack,
                    ferry_api::types::NpmRegistry::TOKEN_VARIABLE,
                    ferry_api::types::NpmRegistry::REGISTRY_VARIABLE,
                ),
            }))
        }
        Err(e) => Err(e.into()),
    }
}

/// A build for a stack whose registry needs a token. The token must not reach an image
/// or a build (the classic builder keeps build arguments in the history of the images
/// it makes on the way), so the install and the build step run in a throwaway container
/// of the base image with the app bind-mounted and the token in a read-only `~/.npmrc`
/// from a private temporary directory on this server; the image is then made from the
/// result with [`buildpack::prebuilt_dockerfile`], the dependencies in a layer of their
/// own (the same layer while they do not change, though installed again).
struct Prebuilt<'a, F: Fn(&str)> {
    engine: &'a Engine,
    spec_of: (&'a Assignment, &'a str),
    base: &'a str,
    registry: Option<&'a str>,
    token: &'a str,
    network: Option<&'a str>,
    log: &'a F,
}

impl<F: Fn(&str)> Prebuilt<'_, F> {
    /// Installs and builds `context`'s app; returns the image's context.
    async fn install(
        &self,
        context: super::Context,
        plan: &buildpack::Plan,
    ) -> Result<Vec<u8>, BuildError> {
        let io = |action, path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| BuildError::Io {
                action,
                path,
                source,
            }
        };
        let temp = std::env::temp_dir();
        let work = tempfile::Builder::new()
            .prefix("ferry-build-")
            .tempdir()
            .map_err(io("creating a build directory in", &temp))?;
        let app = work.path().join("app");
        let tar = context.finish(None)?;
        tar::Archive::new(tar.as_slice())
            .unpack(&app)
            .map_err(io("unpacking the source into", &app))?;
        let registry = self.registry.unwrap_or(buildpack::PUBLIC_REGISTRY);
        // npm's "nerf dart": the registry's URL without its scheme, ending in a slash.
        let nerf = registry
            .split_once("://")
            .map_or(registry, |(_, rest)| rest);
        let npmrc = work.path().join("npmrc");
        write_private(
            &npmrc,
            &format!(
                "registry={registry}/\n//{nerf}/:_authToken={}\n",
                self.token
            ),
        )
        .map_err(io("writing", &npmrc))?;
        let (assignment, name) = self.spec_of;
        let mut env: Vec<String> = buildpack::install_env(registry)
            .into_iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        if self.registry.is_some() {
            env.push(format!("{COREPACK_KEYS_ARG}=0"));
        }
        let spec = ContainerSpec {
            stack: assignment.stack.clone(),
            service: format!("{name}-install"),
            generation: assignment.generation,
            index: 0,
            image: self.base.to_string(),
            env,
            network: self.network.unwrap_or("bridge").to_string(),
            command: Some(buildpack::install_script(plan)),
            binds: vec![
                format!("{}:/app", app.display()),
                format!("{}:/root/.npmrc:ro", npmrc.display()),
            ],
            memory: None,
            cpu_millis: None,
            cgroup_parent: None,
        };
        let mut tail = LastLines::default();
        let code = oneoff::run(self.engine, &spec, |line| {
            (self.log)(line);
            tail.push(line);
        })
        .await?;
        std::fs::remove_file(&npmrc).map_err(io("removing", &npmrc))?;
        if code != 0 {
            return Err(BuildError::InstallFailed {
                code,
                tail: tail.joined(),
            });
        }
        let deps = work.path().join("deps");
        std::fs::create_dir_all(&deps).map_err(io("creating", &deps))?;
        let modules = app.join("node_modules");
        std::fs::rename(&modules, deps.join("node_modules")).map_err(io("moving", &modules))?;
        let mut out = tar::Builder::new(Vec::new());
        out.follow_symlinks(false);
        let dockerfile = buildpack::prebuilt_dockerfile(plan, self.base);
        let mut header = tar::Header::new_gnu();
        header.set_size(dockerfile.len() as u64);
        header.set_mode(0o644);
        let mut pack = |out: &mut tar::Builder<Vec<u8>>| -> std::io::Result<()> {
            out.append_data(
                &mut header,
                super::context::GENERATED,
                dockerfile.as_bytes(),
            )?;
            out.append_dir_all("app", &app)?;
            out.append_dir_all("deps", &deps)?;
            Ok(())
        };
        pack(&mut out).map_err(io("packing the built app from", work.path()))?;
        out.into_inner()
            .map_err(io("packing the built app from", work.path()))
    }
}

/// Writes `text` to a new file only its owner may read.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}
