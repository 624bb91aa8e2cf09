//! `ferry-registry seed`: what `./x setup` runs to install Verdaccio, fetch the Node
//! distribution of the local base image, and seed the registry with the test apps'
//! dependencies (see `ferry_tests::registry`).

use std::path::Path;

use anyhow::{Result, bail};

fn main() -> Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("seed") => {
            ferry_tests::registry::seed(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        }
        _ => bail!("usage: ferry-registry seed"),
    }
}
