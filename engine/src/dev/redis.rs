//! Throwaway Redis servers on loopback, for tests, the demo and the load harness: one server,
//! or a Redis Cluster of several masters. **Development only**: no persistence, no password,
//! bound to 127.0.0.1.
//!
//! Each server runs under a small `sh` watchdog that holds a pipe from this process: when this
//! process ends, however it ends, the pipe closes and the watchdog stops the server, so no
//! server outlives the test that started it. Dropping a [`RedisServer`] stops it at once.
//!
//! The server binary is `$GATEHOUSE_REDIS_SERVER`, else `redis-server` (or `valkey-server`) on
//! the `PATH`; `scripts/test` installs Redis from the system packages when it is missing.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a development Redis could not be started.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum DevRedisError {
    /// No server binary was found.
    #[error("no redis-server (or valkey-server) on the PATH and GATEHOUSE_REDIS_SERVER unset: scripts/test installs it (apt-get install redis-server)")]
    NotInstalled,
    /// Starting a process or a socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server did not answer in time.
    #[error("redis on port {0} did not answer within 10 s")]
    NotReady(u16),
    /// Creating the cluster failed.
    #[error("cluster setup: {0}")]
    Cluster(String),
}

fn server_binary() -> Result<PathBuf, DevRedisError> {
    if let Some(p) = std::env::var_os("GATEHOUSE_REDIS_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["redis-server", "valkey-server"] {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(DevRedisError::NotInstalled)
}

/// A free loopback TCP port (bound then released: good enough for tests on one machine).
pub fn free_port() -> Result<u16, DevRedisError> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(l.local_addr()?.port())
}

/// One `redis-server` on 127.0.0.1, stopped when dropped.
pub struct RedisServer {
    port: u16,
    extra: Vec<String>,
    dir: PathBuf,
    child: Option<(Child, ChildStdin)>,
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("running", &self.child.is_some())
            .finish()
    }
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    pub fn start() -> Result<RedisServer, DevRedisError> {
        Self::start_with(free_port()?, Vec::new())
    }

    fn start_with(port: u16, extra: Vec<String>) -> Result<RedisServer, DevRedisError> {
        let dir =
            std::env::temp_dir().join(format!("gatehouse-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut s = RedisServer {
            port,
            extra,
            dir,
            child: None,
        };
        s.restart()?;
        Ok(s)
    }

    /// The `redis://` URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (kill, as a crash would); [`RedisServer::restart`] brings it back on
    /// the same port, empty.
    pub fn stop(&mut self) {
        if let Some((mut child, stdin)) = self.child.take() {
            // Closing the pipe makes the watchdog stop the server and exit.
            drop(stdin);
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
    }

    /// Starts the server again on its port (after [`RedisServer::stop`]), waiting until it
    /// answers.
    pub fn restart(&mut self) -> Result<(), DevRedisError> {
        self.stop();
        let bin = server_binary()?;
        let mut args = vec![
            "--port".to_string(),
            self.port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--protected-mode".into(),
            "yes".into(),
            "--dir".into(),
            self.dir.display().to_string(),
            "--logfile".into(),
            String::new(),
        ];
        args.extend(self.extra.iter().cloned());
        // The watchdog: runs the server in the background and stops it when its standard input
        // (a pipe from this process) closes, so a server never outlives its test.
        let script = r#"bin="$1"; shift; "$bin" "$@" >/dev/null 2>&1 & pid=$!; trap 'kill -9 $pid 2>/dev/null' EXIT; read -r _; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null"#;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("gatehouse-redis-watchdog")
            .arg(&bin)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let Some(stdin) = child.stdin.take() else {
            let _ = child.kill();
            return Err(DevRedisError::Io(std::io::Error::other("no stdin pipe")));
        };
        self.child = Some((child, stdin));
        wait_ready(self.port)
    }

    /// Sends one command (inline protocol) and returns the raw reply, for test set-up.
    pub fn command(&self, line: &str) -> Result<String, DevRedisError> {
        command(self.port, line)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn command(port: u16, line: &str) -> Result<String, DevRedisError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(format!("{line}\r\n").as_bytes())?;
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn wait_ready(port: u16) -> Result<(), DevRedisError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if command(port, "PING").is_ok_and(|r| r.starts_with("+PONG")) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(DevRedisError::NotReady(port))
}

/// A Redis Cluster of `masters` servers on loopback (no replicas), its 16,384 slots spread
/// evenly; stopped when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the servers, assigns the slots, and waits until the cluster reports `ok`.
    pub fn start(masters: usize) -> Result<RedisCluster, DevRedisError> {
        let masters = masters.clamp(1, 16);
        let mut nodes = Vec::with_capacity(masters);
        for _ in 0..masters {
            let port = free_port()?;
            nodes.push(RedisServer::start_with(
                port,
                vec![
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    format!("nodes-{port}.conf"),
                    "--cluster-node-timeout".into(),
                    "2000".into(),
                ],
            )?);
        }
        let cluster = RedisCluster { nodes };
        cluster.assign_slots()?;
        Ok(cluster)
    }

    fn assign_slots(&self) -> Result<(), DevRedisError> {
        let n = self.nodes.len();
        for (i, node) in self.nodes.iter().enumerate() {
            let from = i * 16384 / n;
            let to = (i + 1) * 16384 / n - 1;
            let reply = node.command(&format!("CLUSTER ADDSLOTSRANGE {from} {to}"))?;
            if !reply.starts_with("+OK") {
                return Err(DevRedisError::Cluster(format!(
                    "ADDSLOTSRANGE on port {}: {}",
                    node.port,
                    reply.trim()
                )));
            }
        }
        let first = self.nodes[0].port;
        for node in &self.nodes[1..] {
            let reply = node.command(&format!("CLUSTER MEET 127.0.0.1 {first}"))?;
            if !reply.starts_with("+OK") {
                return Err(DevRedisError::Cluster(format!("MEET: {}", reply.trim())));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let all_ok = self.nodes.iter().all(|node| {
                node.command("CLUSTER INFO").is_ok_and(|r| {
                    r.contains("cluster_state:ok")
                        && r.contains(&format!("cluster_known_nodes:{}", self.nodes.len()))
                })
            });
            if all_ok {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(DevRedisError::Cluster(
            "the cluster did not reach state ok within 20 s".into(),
        ))
    }

    /// The seed URLs, one per master.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The servers.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }
}
