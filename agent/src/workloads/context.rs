//! A build context from an uploaded source archive: the service's `build_root` subtree,
//! plus a generated Dockerfile when the service has none. Bounded, because the archive came
//! over the network.

use std::io::Read as _;

use flate2::read::GzDecoder;

/// Most bytes unpacked from one archive (a small archive must not become a huge context).
pub const MAX_UNPACKED: u64 = 1 << 30;
/// The generated Dockerfile's name inside the context.
pub const GENERATED: &str = "Dockerfile.ferry";

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

/// The context for a service rooted at `build_root`, and the Dockerfile to use in it:
/// `dockerfile` (relative to the root) if given, else a generated one.
pub fn build_context(
    archive: &[u8],
    build_root: Option<&str>,
    dockerfile: Option<&str>,
    generated: &str,
) -> Result<(Vec<u8>, String), ContextError> {
    let prefix = build_root.map(|r| format!("{}/", r.trim_end_matches('/')));
    let mut source = tar::Archive::new(GzDecoder::new(archive));
    let mut out = tar::Builder::new(Vec::new());
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
        total += entry.size();
        if total > MAX_UNPACKED {
            return Err(ContextError::TooLarge);
        }
        let mut header = entry.header().clone();
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        out.append_data(&mut header, &inside, data.as_slice())?;
        copied += 1;
    }
    if copied == 0 {
        return Err(ContextError::EmptyRoot(build_root.unwrap_or(".").into()));
    }
    let name = match dockerfile {
        Some(path) => path.to_string(),
        None => {
            let mut header = tar::Header::new_gnu();
            header.set_size(generated.len() as u64);
            header.set_mode(0o644);
            out.append_data(&mut header, GENERATED, generated.as_bytes())?;
            GENERATED.to_string()
        }
    };
    Ok((out.into_inner()?, name))
}
