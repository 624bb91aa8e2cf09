//! `ferry-demo up|down`: what `./x demo` and `./x demo down` run (see `ferry_tests::demo`).

use std::path::Path;

use anyhow::{Result, bail};

#[tokio::main]
async fn main() -> Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    match std::env::args().nth(1).as_deref() {
        Some("up") => ferry_tests::demo::up::up(&workspace).await,
        Some("down") => ferry_tests::demo::down::down().await,
        _ => bail!("usage: ferry-demo up|down"),
    }
}
