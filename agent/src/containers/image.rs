//! Building an image from a source archive: the stack's own Dockerfile, or a generated
//! one for a Node service on the stack's base image.

use bollard::query_parameters::BuildImageOptionsBuilder;
use futures_util::StreamExt as _;

use super::Engine;

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
}

/// The Dockerfile for a Node service without one: the source on `base`, run by `command`.
pub fn node_dockerfile(base: &str, command: &str) -> String {
    // JSON-quote the command so any character in it survives the Dockerfile parser.
    let command = serde_json::to_string(command).unwrap_or_else(|_| "\"node server.js\"".into());
    format!(
        "FROM {base}\nWORKDIR /app\nCOPY . /app\nENV NODE_ENV=production\nCMD [\"/bin/sh\", \"-c\", {command}]\n"
    )
}

/// Builds `context` (an uncompressed tar) as `tag`, with `dockerfile` inside the context.
/// `progress` sees each line the build prints.
pub async fn build_image(
    engine: &Engine,
    context: Vec<u8>,
    dockerfile: &str,
    tag: &str,
    mut progress: impl FnMut(&str),
) -> Result<(), ImageError> {
    let options = BuildImageOptionsBuilder::new()
        .dockerfile(dockerfile)
        .t(tag)
        .rm(true)
        .forcerm(true)
        .build();
    let mut stream =
        engine
            .docker()
            .build_image(options, None, Some(bollard::body_full(context.into())));
    let mut last = String::new();
    while let Some(step) = stream.next().await {
        let info = step.map_err(|source| ImageError::Engine {
            tag: tag.into(),
            source,
        })?;
        if let Some(detail) = info.error_detail {
            return Err(ImageError::Build {
                tag: tag.into(),
                message: detail.message.unwrap_or_else(|| last.clone()),
            });
        }
        if let Some(line) = info.stream {
            let line = line.trim_end();
            if !line.is_empty() {
                progress(line);
                last = line.to_string();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_dockerfiles_quote_the_command() {
        let file = node_dockerfile("ferry/node-base:20", "node server.js --name \"x\"");
        assert!(file.starts_with("FROM ferry/node-base:20\n"));
        assert!(
            file.contains(r#"CMD ["/bin/sh", "-c", "node server.js --name \"x\""]"#),
            "{file}"
        );
    }
}
