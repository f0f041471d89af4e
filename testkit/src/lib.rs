//! Test support shared by the suites: the client's bounded `GET` for a node's operations
//! endpoint (`/metrics`, `/healthz`, `/readyz`) with the suites' bounds, async and blocking;
//! free loopback ports; processes killed when a test ends. The product does not depend on this crate.

// Test support: a port that cannot be had is a broken test machine, said at once.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

/// How long one exchange may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Most response bytes read.
pub const MAX_RESPONSE: u64 = 64 * 1024 * 1024;

/// One HTTP response, as text.
pub type Response = gatehouse_client::ops::OpsResponse;

/// Sends `request` as it is (a test of malformed requests writes its own) and reads the whole
/// response, within [`TIMEOUT`].
pub async fn request(addr: SocketAddr, request: &str) -> std::io::Result<Response> {
    gatehouse_client::ops::exchange(addr, request, TIMEOUT, MAX_RESPONSE).await
}

/// `GET path`.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    gatehouse_client::ops::get_async(addr, path, TIMEOUT, MAX_RESPONSE).await
}

/// `GET path`, blocking (for tests that drive processes from a plain thread).
pub fn get_blocking(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    gatehouse_client::ops::get(addr, path, TIMEOUT, MAX_RESPONSE)
}

/// A child process killed and reaped when dropped, also when a test fails.
#[derive(Debug)]
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `bin args…` in `dir` and waits for it.
pub fn run_in(bin: &str, dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {bin}: {e}"))
}

/// [`run_in`], which must succeed; its standard output.
pub fn ok_in(bin: &str, dir: &std::path::Path, args: &[&str]) -> String {
    let out = run_in(bin, dir, args);
    assert!(
        out.status.success(),
        "{bin} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loopback UDP port free now (the OS's pick).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free loopback UDP port")
}

/// A loopback TCP port free now (the OS's pick).
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free loopback TCP port")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_with_or_without_a_body() {
        let r = Response::parse(b"HTTP/1.1 503 Service Unavailable\r\nx: y\r\n\r\ndraining\n");
        assert_eq!(r.status, 503);
        assert_eq!(r.head, "HTTP/1.1 503 Service Unavailable\r\nx: y");
        assert_eq!(r.body, "draining\n");
        let r = Response::parse(b"garbage");
        assert_eq!((r.status, r.body.as_str()), (0, ""));
    }

    #[tokio::test]
    async fn a_get_reads_the_whole_answer() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"GET /readyz HTTP/1.1\r\n"));
            s.write_all(b"HTTP/1.1 200 OK\r\n\r\nready\n")
                .await
                .unwrap();
        });
        let r = get(addr, "/readyz").await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));
        assert_ne!(free_udp_port(), 0);
        assert_ne!(free_tcp_port(), 0);
    }
}
