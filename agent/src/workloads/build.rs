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
use crate::containers::{BuildOptions, Engine, ImageError, build_image, ensure_image};

/// Why a service's image could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Context(#[from] ContextError),
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
            let generated = buildpack::dockerfile(&plan, &base, &context.files.package_files());
            if let Some(registry) = &options.npm_registry {
                // corepack appends "/<name>/<version>" to the URL as it is.
                build
                    .args
                    .insert(REGISTRY_ARG.into(), registry.trim_end_matches('/').into());
                build.args.insert(COREPACK_KEYS_ARG.into(), "0".into());
            }
            (
                context.finish(Some(&generated))?,
                super::context::GENERATED.to_string(),
            )
        }
    };
    build_image(engine, context, &dockerfile, &tag, &build, log).await?;
    Ok(tag)
}
