//! `ferry login` and the CLI's config: central's URL, its pinned CA and the admin token,
//! in `$FERRY_CONFIG` (default `~/.config/ferry`), readable by the operator only.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::PathBuf,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use ferry_api::client::{Client, Trust};
use serde::{Deserialize, Serialize};

/// `ferry login`.
#[derive(Args)]
pub struct LoginArgs {
    /// Central's URL, as `ferry-central init` printed it: with replicas, each one's,
    /// comma-separated (a replica that does not answer is passed over for the next).
    #[arg(long)]
    central: String,
    /// The admin token.
    #[arg(long)]
    token: String,
    /// The CA fingerprint (sha256:...).
    #[arg(long)]
    ca_fingerprint: String,
}

#[derive(Serialize, Deserialize)]
struct Config {
    version: u32,
    central: String,
    token: String,
}

const CONFIG: &str = "config.toml";
const CA: &str = "central-ca.pem";

fn dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FERRY_CONFIG") {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .context("HOME is not set; set FERRY_CONFIG to a directory for ferry's config")?;
    Ok(PathBuf::from(home).join(".config/ferry"))
}

fn write_private(path: &std::path::Path, contents: &[u8]) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents)
        .with_context(|| format!("writing {}", path.display()))
}

/// Checks the token against central (pinning its CA), then saves the config.
pub async fn login(args: LoginArgs) -> Result<()> {
    let client = Client::new(
        &args.central,
        &args.token,
        Trust::Fingerprint(args.ca_fingerprint.to_ascii_lowercase()),
    )?;
    let servers = client
        .servers()
        .await
        .context("checking the token with central; nothing was saved")?;
    let Some(ca) = client.pinned_ca_pem() else {
        bail!("central answered but its CA was not captured; nothing was saved");
    };
    let dir = dir()?;
    fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    write_private(&dir.join(CA), ca.as_bytes())?;
    let config = Config {
        version: 1,
        central: args.central.clone(),
        token: args.token,
    };
    write_private(&dir.join(CONFIG), toml::to_string(&config)?.as_bytes())?;
    println!(
        "logged in to {} ({} server{}); config in {}",
        args.central,
        servers.len(),
        if servers.len() == 1 { "" } else { "s" },
        dir.display()
    );
    Ok(())
}

/// A client from the saved config.
pub fn client() -> Result<Client> {
    let dir = dir()?;
    let path = dir.join(CONFIG);
    let text = fs::read_to_string(&path)
        .with_context(|| format!("reading {}; run `ferry login` first", path.display()))?;
    let config: Config = toml::from_str(&text)
        .with_context(|| format!("{} is not a ferry config", path.display()))?;
    if config.version != 1 {
        bail!(
            "{} has format version {}; this ferry reads version 1",
            path.display(),
            config.version
        );
    }
    let ca = fs::read_to_string(dir.join(CA)).with_context(|| {
        format!(
            "reading {}; run `ferry login` again",
            dir.join(CA).display()
        )
    })?;
    Ok(Client::new(
        &config.central,
        &config.token,
        Trust::CaPem(ca),
    )?)
}
