//! Uploaded source archives (gzip-compressed tar), kept content-addressed under the data
//! directory: `sources/<sha256>.tar.gz`. An upload is streamed to disk while it is hashed
//! and counted, so a large or endless body never sits in memory and never exceeds the limit.
//!
//! Replicas (central on etcd) share sources through the store as well: the archive is
//! written there in chunks of [`CHUNK`] bytes, the last one written last, so an agent
//! fetching from any replica finds it; a replica without the file serves it from the
//! chunks.

use std::{
    io::{self, Read as _},
    path::{Path, PathBuf},
};

use futures_util::{Stream, StreamExt as _};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use crate::store::{Store, StoreError};

/// Largest service.yml read out of an archive.
const MAX_SERVICE_FILE: u64 = 256 * 1024;
/// Entries looked at before giving up on finding service.yml.
const MAX_ENTRIES: usize = 10_000;

/// Errors storing or reading a source archive.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("the upload is over the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the upload was cut off: {0}")]
    Body(String),
    #[error("the source archive is not a gzip-compressed tar: {0}")]
    NotArchive(io::Error),
    #[error("the source archive has no service.yml at its root")]
    NoServiceFile,
    #[error("service.yml in the archive is over {MAX_SERVICE_FILE} bytes")]
    ServiceFileTooLarge,
    #[error("service.yml in the archive is not UTF-8 text")]
    ServiceFileNotText,
}

/// Bytes in one chunk of an archive in the store (etcd takes requests up to 1.5 MiB).
pub const CHUNK: usize = 1 << 20;

/// Writes the archive at `path` into `store` in chunks under `sources/<digest>/`, the
/// last one marked by being shorter than [`CHUNK`] (an empty one when the size is a
/// multiple). Blocking: one store call per chunk.
///
/// Errors: the file cannot be read, or a write fails (chunks written so far stay; a
/// reader finds no last chunk and says the source is not there).
pub fn put_chunks<S: Store + ?Sized>(
    store: &S,
    digest: &str,
    path: &Path,
) -> Result<usize, SourceChunkError> {
    let bytes = std::fs::read(path).map_err(|source| SourceChunkError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut written = 0;
    for (n, chunk) in bytes.chunks(CHUNK).enumerate() {
        store.put(&ferry_api::keys::source_chunk(digest, n), chunk)?;
        written = n + 1;
    }
    if bytes.len() % CHUNK == 0 {
        store.put(&ferry_api::keys::source_chunk(digest, written), &[])?;
        written += 1;
    }
    Ok(written)
}

/// The archive `digest` from its chunks in `store`, or None unless it is all there.
///
/// Errors: the store cannot be read.
pub fn read_chunks<S: Store + ?Sized>(
    store: &S,
    digest: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    let (chunks, _) = store.list(&ferry_api::keys::source_chunks(digest))?;
    let complete = chunks.last().is_some_and(|c| c.value.len() < CHUNK)
        && chunks
            .iter()
            .enumerate()
            .all(|(n, c)| c.key == ferry_api::keys::source_chunk(digest, n));
    Ok(complete.then(|| chunks.into_iter().flat_map(|c| c.value).collect()))
}

/// Why an archive could not be written into the store.
#[derive(Debug, thiserror::Error)]
pub enum SourceChunkError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A stored archive.
pub struct Stored {
    /// Hex SHA-256 of the archive.
    pub digest: String,
    /// Where it is.
    pub path: PathBuf,
}

/// Streams `body` into `dir`, refusing more than `limit` bytes.
pub async fn store<E: std::fmt::Display>(
    dir: &Path,
    mut body: impl Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    limit: u64,
) -> Result<Stored, SourceError> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SourceError::Io { path, source }
    };
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(io_error(dir))?;
    let partial = dir.join(format!(".upload-{}-{}", std::process::id(), rand_suffix()));
    let mut file = tokio::fs::File::create(&partial)
        .await
        .map_err(io_error(&partial))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let result = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| SourceError::Body(e.to_string()))?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(SourceError::TooLarge { limit });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io_error(&partial))?;
        }
        file.sync_all().await.map_err(io_error(&partial))
    }
    .await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(e);
    }
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let path = dir.join(format!("{digest}.tar.gz"));
    tokio::fs::rename(&partial, &path)
        .await
        .map_err(io_error(&path))?;
    Ok(Stored { digest, path })
}

fn rand_suffix() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// Reads `service.yml` from the root of the archive at `path`, without unpacking anything.
pub fn service_file(path: &Path) -> Result<String, SourceError> {
    let file = std::fs::File::open(path).map_err(|source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let entries = archive.entries().map_err(SourceError::NotArchive)?;
    for entry in entries.take(MAX_ENTRIES) {
        let entry = entry.map_err(SourceError::NotArchive)?;
        let name = entry.path().map_err(SourceError::NotArchive)?;
        if name == Path::new("service.yml") || name == Path::new("./service.yml") {
            if entry.size() > MAX_SERVICE_FILE {
                return Err(SourceError::ServiceFileTooLarge);
            }
            let mut text = Vec::new();
            entry
                .take(MAX_SERVICE_FILE)
                .read_to_end(&mut text)
                .map_err(SourceError::NotArchive)?;
            return String::from_utf8(text).map_err(|_| SourceError::ServiceFileNotText);
        }
    }
    Err(SourceError::NoServiceFile)
}
