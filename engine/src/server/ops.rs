//! The operations endpoint: a deliberately tiny HTTP/1.1 server (GET only, one request per
//! connection, bounded request size and time) for `/metrics`, `/healthz` and `/readyz`. It
//! should listen on an internal address only.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::metrics::Metrics;
use crate::Engine;

/// Largest request head read.
const MAX_REQUEST: usize = 8 * 1024;
/// Time allowed to send the request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long, and how much, a closing connection's remaining input is read and dropped.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;
/// Concurrent operations connections.
const MAX_CONNECTIONS: usize = 64;

pub(crate) async fn serve(listener: TcpListener, engine: Arc<Engine>, metrics: Arc<Metrics>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (socket, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!("operations endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            drop(socket);
            continue;
        };
        let engine = Arc::clone(&engine);
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            if let Err(e) = handle(socket, &engine, &metrics).await {
                debug!("operations request failed: {e}");
            }
            drop(permit);
        });
    }
}

async fn handle(mut socket: TcpStream, engine: &Engine, metrics: &Metrics) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(READ_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(end) = find_head_end(&buf) {
                return Ok(Some(end));
            }
            if buf.len() >= MAX_REQUEST {
                return Ok(None);
            }
            let n = socket.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    let (status, content_type, body) = match head {
        Err(_) | Ok(Ok(None)) => (400, "text/plain", "bad request\n".to_string()),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(Some(end))) => route(&buf[..end], engine, metrics),
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 405 {
        response.push_str("Allow: GET\r\n");
    }
    response.push_str("\r\n");
    response.push_str(&body);
    socket.write_all(response.as_bytes()).await?;
    socket.shutdown().await?;
    // Lingering close: read (and drop) what the client still sends, briefly, so closing with
    // unread input does not reset the connection before the client has read the response.
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0u8; 4096];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match socket.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
    Ok(())
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

fn route(head: &[u8], engine: &Engine, metrics: &Metrics) -> (u16, &'static str, String) {
    let Ok(head) = std::str::from_utf8(head) else {
        return (400, "text/plain", "bad request\n".into());
    };
    let mut parts = head.lines().next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return (400, "text/plain", "bad request\n".into());
    };
    if !version.starts_with("HTTP/1.") {
        return (400, "text/plain", "bad request\n".into());
    }
    if method != "GET" {
        return (405, "text/plain", "only GET\n".into());
    }
    let path = target.split('?').next().unwrap_or(target);
    match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(engine),
        ),
        "/healthz" => (200, "text/plain", "ok\n".into()),
        "/readyz" => {
            // The reload lines follow the status line (see `Metrics::reload_detail`). A refused
            // reload does not make the server unready: the previous files stay in force and
            // valid, and one bad push must not take a whole fleet out of its load balancer.
            // `gatehouse reload` and `gatehouse_reload_success` report it instead.
            let detail = metrics.reload_detail();
            match metrics.ready() {
                Ok(()) => (200, "text/plain", format!("ready\n{detail}")),
                Err(why) => (503, "text/plain", format!("{why}\n{detail}")),
            }
        }
        _ => (404, "text/plain", "not found\n".into()),
    }
}
