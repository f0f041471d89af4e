//! Reading a node's operations endpoint (`/healthz`, `/readyz`, `/metrics`): one bounded
//! HTTP/1.1 `GET`, blocking or async, for `gatehouse reload`, the load harness and the tests.
//! Bounded in time (connect, and the whole exchange) and in the bytes read; the endpoint closes
//! each connection after its response (`Connection: close`), so the response is what arrives
//! until then.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP response, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsResponse {
    /// The status code (0 when the status line does not hold one).
    pub status: u16,
    /// The status line and headers.
    pub head: String,
    /// The body.
    pub body: String,
}

impl OpsResponse {
    /// Parses what the endpoint sent (lossy UTF-8; a response without a blank line is all
    /// head).
    pub fn parse(bytes: &[u8]) -> OpsResponse {
        let text = String::from_utf8_lossy(bytes);
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        OpsResponse {
            status,
            head: head.to_string(),
            body: body.to_string(),
        }
    }
}

/// The request line and headers of `GET path`.
pub fn get_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: gatehouse\r\nConnection: close\r\n\r\n")
}

/// `GET path`, blocking: at most `timeout` to connect and as much again for each read and
/// write, at most `max_bytes` read.
pub fn get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    max_bytes: u64,
) -> std::io::Result<OpsResponse> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(get_request(path).as_bytes())?;
    let mut buf = Vec::new();
    s.take(max_bytes).read_to_end(&mut buf)?;
    Ok(OpsResponse::parse(&buf))
}

/// Sends `request` as it is (a probe of malformed requests writes its own) and reads the
/// response: at most `timeout` for the whole exchange, at most `max_bytes` read.
pub async fn exchange(
    addr: SocketAddr,
    request: &str,
    timeout: Duration,
    max_bytes: u64,
) -> std::io::Result<OpsResponse> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(request.as_bytes()).await?;
        let mut buf = Vec::new();
        s.take(max_bytes).read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"))??;
    Ok(OpsResponse::parse(&buf))
}

/// `GET path`, async; bounded as [`exchange`].
pub async fn get_async(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    max_bytes: u64,
) -> std::io::Result<OpsResponse> {
    exchange(addr, &get_request(path), timeout, max_bytes).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_head_and_body_are_split() {
        let r = OpsResponse::parse(b"HTTP/1.1 503 Service Unavailable\r\nx: y\r\n\r\ndraining\n");
        assert_eq!(r.status, 503);
        assert_eq!(r.head, "HTTP/1.1 503 Service Unavailable\r\nx: y");
        assert_eq!(r.body, "draining\n");
        assert_eq!(OpsResponse::parse(b"garbage").status, 0);
    }

    #[test]
    fn a_response_is_read_whole_and_no_further_than_the_bound() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut request = [0u8; 256];
            let n = s.read(&mut request).unwrap();
            assert!(request[..n].starts_with(b"GET /readyz HTTP/1.1\r\n"));
            s.write_all(b"HTTP/1.1 200 OK\r\n\r\nready\n").unwrap();
        });
        let r = get(addr, "/readyz", Duration::from_secs(5), 1 << 20).unwrap();
        server.join().unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));
    }
}
