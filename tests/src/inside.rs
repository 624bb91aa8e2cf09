//! Asking from where users' code runs: a command or a Node script inside a container (via
//! Docker's exec, so it lives in the container's namespaces and cgroup), and a plain
//! HTTP/1.0 GET.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddrV4, TcpStream},
    time::Duration,
};

use anyhow::Result;
use ferry_agent::containers::{Engine, operate};

/// Most output kept from one command.
const MAX_OUTPUT: usize = 64 * 1024;

/// Runs `command` in container `id`; its trimmed output, which must come with exit code 0.
pub async fn exec(engine: &Engine, id: &str, command: &[&str]) -> Result<String> {
    let command: Vec<String> = command.iter().map(ToString::to_string).collect();
    let (code, output) = operate::exec(engine, id, &command, MAX_OUTPUT).await?;
    anyhow::ensure!(
        code == Some(0),
        "{command:?} in {id} exited {code:?}: {output}"
    );
    Ok(output.trim().to_string())
}

/// The host's process id of container `id`'s first process.
pub async fn pid(engine: &Engine, id: &str) -> Result<i64> {
    engine
        .main_pid(id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("container {id} has no process"))
}

/// Runs `script` with `node -e` in container `id`; its trimmed output.
pub async fn node(engine: &Engine, id: &str, script: &str) -> Result<String> {
    exec(engine, id, &["node", "-e", script]).await
}

/// What `GET /` on `target` answers (the body, trimmed), asked by Node inside container `id`;
/// `error CODE` when the request fails.
pub async fn get_from(engine: &Engine, id: &str, target: SocketAddrV4) -> Result<String> {
    get_url_from(engine, id, &format!("http://{target}/")).await
}

/// What a GET of `url` answers (the body, trimmed), asked by Node inside container `id`
/// (a name in it resolved as the app's own code would); `error CODE` when it fails.
pub async fn get_url_from(engine: &Engine, id: &str, url: &str) -> Result<String> {
    let script = format!(
        "require('http').get('{url}', r => {{ let b = ''; \
         r.on('data', c => b += c); r.on('end', () => console.log(b.trim())); }})\
         .on('error', e => console.log('error', e.code))"
    );
    node(engine, id, &script).await
}

/// `GET path` over HTTP/1.0 from this thread's namespace: the whole response.
pub fn http_get(addr: SocketAddrV4, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}
