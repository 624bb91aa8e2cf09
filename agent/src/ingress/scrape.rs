//! The metrics endpoint: `GET /metrics` in Prometheus's text format, on an address only the
//! server itself reaches by default.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};
use tracing::debug;

use super::{Metrics, head};

/// Serves `metrics` on `listen` until the task is dropped.
pub async fn serve_metrics(listen: SocketAddr, metrics: Arc<Metrics>) -> io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (mut stream, peer) = listener.accept().await?;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut filled = 0;
            let limits = head::Limits {
                max_bytes: buf.len(),
                max_headers: 32,
            };
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    match head::read(&buf[..filled], &limits) {
                        Err(head::HeadError::Incomplete) => {}
                        other => return other.ok(),
                    }
                    match stream.read(&mut buf[filled..]).await {
                        Ok(0) | Err(_) => return None,
                        Ok(n) => filled += n,
                    }
                }
            })
            .await;
            let (status, body) = match read {
                Ok(Some(h)) if &buf[h.target.clone()] == b"/metrics" => {
                    ("200 OK", metrics.render())
                }
                Ok(Some(_)) => ("404 Not Found", "only /metrics is here\n".to_string()),
                _ => ("400 Bad Request", "not an HTTP/1.x request\n".to_string()),
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(e) = stream.write_all(reply.as_bytes()).await {
                debug!(%peer, "metrics reply: {e}");
            }
        });
    }
}
