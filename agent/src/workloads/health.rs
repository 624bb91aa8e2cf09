//! Health checks of a new container, as service.yml's `health` asks: `default` (its first
//! port accepts a connection), `none`, or an HTTP request answered with an accepted status.

use std::{
    io,
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
/// Longest one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a container failed its check; the text is shown to the operator.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("the container has no address on the ferry network")]
    NoAddress,
    #[error("an HTTP health check needs a port in `ports`")]
    NoPort,
    #[error("nothing accepts connections on {target}: {source}")]
    Refused {
        target: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("{step} {target}: {source}")]
    Io {
        step: &'static str,
        target: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("{target} did not answer HTTP")]
    NotHttp { target: SocketAddr },
    #[error("GET {endpoint} on {target} answered {status}")]
    Status {
        endpoint: String,
        target: SocketAddr,
        status: u16,
    },
    #[error("the check timed out after {0:?}")]
    TimedOut(Duration),
    #[error("it stopped before passing its health check")]
    Exited,
    /// The last attempt's failure, once the check's time is up.
    #[error("{last} (gave up after {}s)", within.as_secs())]
    GaveUp {
        #[source]
        last: Box<CheckError>,
        within: Duration,
    },
}

/// Checks the container at `address` until it passes or its time is up.
pub async fn check(service: &Service, address: Option<Ipv4Addr>) -> Result<(), CheckError> {
    let within = match &service.health {
        Health::Check(check) => check.timeout,
        _ => DEFAULT_TIMEOUT,
    };
    retry(within, || probe(service, address)).await
}

/// One attempt of the service's check on the container at `address`.
pub async fn probe(service: &Service, address: Option<Ipv4Addr>) -> Result<(), CheckError> {
    let port = service.ports.first().map(|p| p.container);
    match (&service.health, address, port) {
        (Health::None, _, _) => Ok(()),
        (_, None, _) => Err(CheckError::NoAddress),
        (Health::Default, _, None) => Ok(()),
        (Health::Default, Some(ip), Some(port)) => {
            let target = SocketAddr::from((ip, port));
            TcpStream::connect(target)
                .await
                .map(drop)
                .map_err(|source| CheckError::Refused { target, source })
        }
        (Health::Check(check), Some(ip), port) => {
            let port = port.ok_or(CheckError::NoPort)?;
            let target = SocketAddr::from((ip, port));
            let status = http_status(target, &check.endpoint).await?;
            if check
                .accept
                .iter()
                .any(|(low, high)| (*low..=*high).contains(&status))
            {
                Ok(())
            } else {
                Err(CheckError::Status {
                    endpoint: check.endpoint.clone(),
                    target,
                    status,
                })
            }
        }
    }
}

async fn retry<F, Fut>(within: Duration, mut attempt: F) -> Result<(), CheckError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), CheckError>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let last = match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => CheckError::TimedOut(ATTEMPT_TIMEOUT),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(CheckError::GaveUp {
                last: Box::new(last),
                within,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The status code of `GET endpoint` (HTTP/1.0, so the server closes when done).
async fn http_status(target: SocketAddr, endpoint: &str) -> Result<u16, CheckError> {
    let io = |step| {
        move |source| CheckError::Io {
            step,
            target,
            source,
        }
    };
    let mut stream = TcpStream::connect(target).await.map_err(io("connect"))?;
    let request =
        format!("GET {endpoint} HTTP/1.0\r\nHost: {target}\r\nUser-Agent: ferry-agent\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(io("send to"))?;
    // Only the status line matters; read a bounded amount.
    let mut head = vec![0u8; 512];
    let n = stream.read(&mut head).await.map_err(io("read from"))?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or(CheckError::NotHttp { target })
}
