//! The VM cluster's bulletin board: a folder every guest of one run mounts writable, where
//! one posts what the others wait for (central's ticket, "deployed", "done"). Each note is
//! a JSON file written whole (a temporary name, then rename), so a reader never sees half.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::{Serialize, de::DeserializeOwned};

/// A board at a folder.
pub struct Board {
    dir: PathBuf,
}

impl Board {
    /// The board at `dir`, which must exist.
    pub fn at(dir: &Path) -> Result<Self> {
        anyhow::ensure!(dir.is_dir(), "no board at {}", dir.display());
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Posts `value` as note `name`, replacing an earlier one.
    pub fn post<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let path = self.dir.join(format!("{name}.json"));
        let partial = self.dir.join(format!(".{name}.partial"));
        std::fs::write(&partial, serde_json::to_vec(value)?)
            .with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &path)
            .with_context(|| format!("renaming {} to {}", partial.display(), path.display()))
    }

    /// Note `name`, once posted; an error after `limit` without it.
    pub async fn wait<T: DeserializeOwned>(&self, name: &str, limit: Duration) -> Result<T> {
        let path = self.dir.join(format!("{name}.json"));
        let deadline = Instant::now() + limit;
        loop {
            match std::fs::read(&path) {
                Ok(bytes) => {
                    return serde_json::from_slice(&bytes)
                        .with_context(|| format!("reading note {}", path.display()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            }
            if Instant::now() > deadline {
                bail!("nobody posted {name} within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
