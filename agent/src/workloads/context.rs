//! A build context from an uploaded source archive: the service's `build_root` subtree,
//! and the files there that decide how a service without a Dockerfile is built (see
//! `ferry_api::buildpack`). Bounded, because the archive came over the network.

use std::io::Read as _;

use ferry_api::buildpack::AppFiles;
use flate2::read::GzDecoder;

/// Most bytes unpacked from one archive (a small archive must not become a huge context).
pub const MAX_UNPACKED: u64 = 1 << 30;
/// The generated Dockerfile's name inside the context.
pub const GENERATED: &str = "Dockerfile.ferry";
/// Largest package.json read to plan a build.
const MAX_PACKAGE_JSON: u64 = 1 << 20;

/// Why a context could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("the source archive is unreadable: {0}")]
    Archive(#[from] std::io::Error),
    #[error("the source unpacks to more than {MAX_UNPACKED} bytes")]
    TooLarge,
    #[error("the source has nothing under {0:?}")]
    EmptyRoot(String),
}

/// A context being made: the service's files, and what they say about the app.
pub struct Context {
    out: tar::Builder<Vec<u8>>,
    /// The files that decide a generated build.
    pub files: AppFiles,
}

impl Context {
    /// The context as an uncompressed tar, with `generated` added as [`GENERATED`] when
    /// the service has no Dockerfile of its own.
    pub fn finish(mut self, generated: Option<&str>) -> Result<Vec<u8>, ContextError> {
        if let Some(text) = generated {
            let mut header = tar::Header::new_gnu();
            header.set_size(text.len() as u64);
            header.set_mode(0o644);
            self.out
                .append_data(&mut header, GENERATED, text.as_bytes())?;
        }
        Ok(self.out.into_inner()?)
    }
}

/// The context for a service rooted at `build_root`. `node_modules/` is left out, as the
/// CLI leaves it out of uploads: dependencies are installed by the build, for Linux.
pub fn build_context(archive: &[u8], build_root: Option<&str>) -> Result<Context, ContextError> {
    let prefix = build_root.map(|r| format!("{}/", r.trim_end_matches('/')));
    let mut source = tar::Archive::new(GzDecoder::new(archive));
    let mut out = tar::Builder::new(Vec::new());
    let mut files = AppFiles::default();
    let mut total = 0u64;
    let mut copied = 0usize;
    for entry in source.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let path = path.to_string_lossy().trim_start_matches("./").to_string();
        let inside = match &prefix {
            Some(prefix) => match path.strip_prefix(prefix.as_str()) {
                Some(rest) if !rest.is_empty() => rest.to_string(),
                _ => continue,
            },
            None => path,
        };
        if inside == "node_modules" || inside.starts_with("node_modules/") {
            continue;
        }
        total += entry.size();
        if total > MAX_UNPACKED {
            return Err(ContextError::TooLarge);
        }
        let mut header = entry.header().clone();
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        files.note(&inside, || {
            (data.len() as u64 <= MAX_PACKAGE_JSON)
                .then(|| String::from_utf8_lossy(&data).into_owned())
        });
        out.append_data(&mut header, &inside, data.as_slice())?;
        copied += 1;
    }
    if copied == 0 {
        return Err(ContextError::EmptyRoot(build_root.unwrap_or(".").into()));
    }
    Ok(Context { out, files })
}
