//! Health checks of a new container, as service.yml's `health` asks: `default` (its first
//! port accepts a connection), `none`, or an HTTP request answered with an accepted status.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use ferry_api::servicefile::{Health, Service};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// How long the default check waits for the first port.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Checks the container at `address` until it passes or its time is up; Err says why.
pub async fn check(service: &Service, address: Option<Ipv4Addr>) -> Result<(), String> {
    let within = match &service.health {
        Health::Check(check) => check.timeout,
        _ => DEFAULT_TIMEOUT,
    };
    retry(within, || probe(service, address)).await
}

/// One attempt of the service's check on the container at `address`.
pub async fn probe(service: &Service, address: Option<Ipv4Addr>) -> Result<(), String> {
    let port = service.ports.first().map(|p| p.container);
    match (&service.health, address, port) {
        (Health::None, _, _) => Ok(()),
        (_, None, _) => Err("the container has no address on the ferry network".into()),
        (Health::Default, _, None) => Ok(()),
        (Health::Default, Some(ip), Some(port)) => {
            let target = SocketAddr::from((ip, port));
            TcpStream::connect(target)
                .await
                .map(drop)
                .map_err(|e| format!("nothing accepts connections on {target}: {e}"))
        }
        (Health::Check(check), Some(ip), port) => {
            let Some(port) = port else {
                return Err("an HTTP health check needs a port in `ports`".into());
            };
            let target = SocketAddr::from((ip, port));
            let status = http_status(target, &check.endpoint).await?;
            if check
                .accept
                .iter()
                .any(|(low, high)| (*low..=*high).contains(&status))
            {
                Ok(())
            } else {
                Err(format!(
                    "GET {} on {target} answered {status}",
                    check.endpoint
                ))
            }
        }
    }
}

async fn retry<F, Fut>(within: Duration, mut attempt: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let last = match tokio::time::timeout(Duration::from_secs(5), attempt()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => "the check timed out".to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("{last} (gave up after {}s)", within.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The status code of `GET endpoint` (HTTP/1.0, so the server closes when done).
async fn http_status(target: SocketAddr, endpoint: &str) -> Result<u16, String> {
    let mut stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect {target}: {e}"))?;
    let request =
        format!("GET {endpoint} HTTP/1.0\r\nHost: {target}\r\nUser-Agent: ferry-agent\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send to {target}: {e}"))?;
    // Only the status line matters; read a bounded amount.
    let mut head = vec![0u8; 512];
    let n = stream
        .read(&mut head)
        .await
        .map_err(|e| format!("read from {target}: {e}"))?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("{target} did not answer HTTP"))
}
