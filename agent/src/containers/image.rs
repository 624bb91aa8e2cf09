//! Building an image from a source archive (the service's own Dockerfile, or the one
//! `ferry_api::buildpack` generates), and pulling the base image it needs.

use std::collections::HashMap;

use bollard::query_parameters::{BuildImageOptionsBuilder, CreateImageOptionsBuilder};
use futures_util::StreamExt as _;

use super::{Engine, last_lines::LastLines};

/// A failed build, with the engine's last words.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("building {tag}: {message}")]
    Build { tag: String, message: String },
    #[error("building {tag}: {source}")]
    Engine {
        tag: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error(
        "the base image {image} is not on this server and pulling it failed: {message}; pull \
         or load it on the server (docker pull / docker load), point the Docker Engine at a \
         registry mirror, or pass the agent --base-image"
    )]
    Pull { image: String, message: String },
}

/// What a build needs besides its context.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// Build arguments (`--build-arg`).
    pub args: HashMap<String, String>,
    /// The network its `RUN` steps use (Docker's default when None).
    pub network: Option<String>,
}

/// Makes sure `image` is in the engine, pulling it when it is not; `progress` sees each
/// status line of the pull.
pub async fn ensure_image(
    engine: &Engine,
    image: &str,
    mut progress: impl FnMut(&str),
) -> Result<(), ImageError> {
    if engine.docker().inspect_image(image).await.is_ok() {
        return Ok(());
    }
    progress(&format!("pulling {image}"));
    let options = CreateImageOptionsBuilder::new().from_image(image).build();
    let mut stream = engine.docker().create_image(Some(options), None, None);
    let mut last_status = String::new();
    while let Some(step) = stream.next().await {
        let info = step.map_err(|e| ImageError::Pull {
            image: image.into(),
            message: e.to_string(),
        })?;
        if let Some(detail) = info.error_detail {
            return Err(ImageError::Pull {
                image: image.into(),
                message: detail.message.unwrap_or_default(),
            });
        }
        // One line per layer state, not one per byte of progress.
        if let Some(status) = info.status {
            let line = match info.id {
                Some(id) => format!("{id}: {status}"),
                None => status,
            };
            if line != last_status {
                progress(&line);
                last_status = line;
            }
        }
    }
    Ok(())
}

/// Builds `context` (an uncompressed tar) as `tag`, with `dockerfile` inside the context.
/// `progress` sees each line the build prints; a failed build's error carries its last
/// lines.
pub async fn build_image(
    engine: &Engine,
    context: Vec<u8>,
    dockerfile: &str,
    tag: &str,
    options: &BuildOptions,
    mut progress: impl FnMut(&str),
) -> Result<(), ImageError> {
    let mut builder = BuildImageOptionsBuilder::new()
        .dockerfile(dockerfile)
        .t(tag)
        .rm(true)
        .forcerm(true)
        .buildargs(&options.args);
    if let Some(network) = &options.network {
        builder = builder.networkmode(network);
    }
    let options = builder.build();
    let mut stream =
        engine
            .docker()
            .build_image(options, None, Some(bollard::body_full(context.into())));
    // The build's last lines: what a developer needs to see when it fails.
    let mut last = LastLines::default();
    let failed = |message: String, last: &LastLines| {
        let mut message = message;
        if !last.is_empty() {
            message.push_str("; the build's last lines:\n");
            message.push_str(&last.joined());
        }
        ImageError::Build {
            tag: tag.into(),
            message,
        }
    };
    while let Some(step) = stream.next().await {
        let info = match step {
            Ok(info) => info,
            // A failed step arrives as a stream error: the build's output says why.
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                return Err(failed(error, &last));
            }
            Err(source) => {
                return Err(ImageError::Engine {
                    tag: tag.into(),
                    source,
                });
            }
        };
        if let Some(detail) = info.error_detail {
            return Err(failed(detail.message.unwrap_or_default(), &last));
        }
        if let Some(text) = info.stream {
            for line in text.lines().map(plain) {
                let line = line.trim_end();
                if line.is_empty() {
                    continue;
                }
                progress(line);
                last.push(line);
            }
        }
    }
    Ok(())
}

/// `line` without terminal colour sequences (`ESC [ ... m`), which the engine passes on
/// from a build's stderr.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip to the sequence's final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn colour_sequences_are_dropped() {
        assert_eq!(super::plain("\u{1b}[91mError: no\u{1b}[0m"), "Error: no");
    }
}
