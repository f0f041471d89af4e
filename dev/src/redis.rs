//! Throwaway Redis servers on loopback, for tests, the demo and the load harness: one server
//! (with extra arguments if wanted: persistence, eviction, replication), a Redis Cluster of
//! several masters (with replicas if wanted), or a primary and replicas watched by Redis
//! Sentinel. **Development only**: no password, bound to 127.0.0.1, no persistence unless the
//! caller asks for it.
//!
//! Each process runs under a small `sh` watchdog that holds a pipe from this process: when this
//! process ends, however it ends, the pipe closes and the watchdog kills the process, so no
//! server outlives the test that started it. Dropping a [`RedisServer`], a [`RedisCluster`] or
//! a [`RedisSentinels`] stops its processes at once.
//!
//! The server binary is `$GATEHOUSE_REDIS_SERVER`, else `redis-server` (or `valkey-server`) on
//! the `PATH`; `scripts/test` installs Redis from the system packages when it is missing.
//! Sentinel runs as that same binary with `--sentinel`, which every Redis and Valkey accepts,
//! so no second binary has to be found.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Why a development Redis could not be started or driven.
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
    /// Creating or driving the cluster failed.
    #[error("cluster setup: {0}")]
    Cluster(String),
    /// Creating or driving the Sentinel set failed.
    #[error("sentinel setup: {0}")]
    Sentinel(String),
    /// The server is stopped (or was never started), so it cannot be signalled.
    #[error("redis on port {0} is not running")]
    NotRunning(u16),
    /// A server answered something this module does not expect.
    #[error("unexpected reply: {0}")]
    Reply(String),
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

/// A free port for a cluster node: the node also listens on port + 10,000 (its bus), and
/// refuses to start above 55,535, which a quarter of Linux's ephemeral ports are.
fn free_cluster_port() -> Result<u16, DevRedisError> {
    for _ in 0..200 {
        let port = free_port()?;
        if port <= 55_535 && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    Err(DevRedisError::Cluster(
        "no free port pair (port, port + 10000) below 55536".into(),
    ))
}

/// A fresh, empty per-process scratch directory (a directory left by an earlier process with
/// the same id must not lend its files, an AOF or a cluster config, to a new server).
fn scratch_dir(kind: &str, port: u16) -> Result<PathBuf, DevRedisError> {
    let dir = std::env::temp_dir().join(format!("gatehouse-{kind}-{}-{port}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs `bin args` under the watchdog: the process runs in the background and is killed (-9)
/// when the watchdog's standard input, a pipe from this process, closes, so it never outlives
/// this process.
fn spawn_watched(bin: &Path, args: &[String]) -> Result<(Child, ChildStdin), DevRedisError> {
    let script = r#"bin="$1"; shift; "$bin" "$@" >/dev/null 2>&1 & pid=$!; trap 'kill -9 $pid 2>/dev/null' EXIT; read -r _; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null"#;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("gatehouse-redis-watchdog")
        .arg(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let Some(stdin) = child.stdin.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(DevRedisError::Io(std::io::Error::other("no stdin pipe")));
    };
    Ok((child, stdin))
}

/// Kills a watched process (see [`spawn_watched`]) and waits until its watchdog has reaped it.
fn stop_watched(slot: &mut Option<(Child, ChildStdin)>) {
    if let Some((mut child, stdin)) = slot.take() {
        // Closing the pipe makes the watchdog kill the process and exit.
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

/// The signals [`RedisServer::pause`] and [`RedisServer::resume`] send.
#[derive(Clone, Copy)]
enum Sig {
    Stop,
    Cont,
}

#[cfg(unix)]
fn send_signal(pid: u32, sig: Sig) -> std::io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| std::io::Error::other("not a process id"))?;
    let sig = match sig {
        Sig::Stop => rustix::process::Signal::STOP,
        Sig::Cont => rustix::process::Signal::CONT,
    };
    rustix::process::kill_process(pid, sig).map_err(std::io::Error::from)
}

#[cfg(not(unix))]
fn send_signal(_pid: u32, _sig: Sig) -> std::io::Result<()> {
    Err(std::io::Error::other(
        "pausing a server by signal needs a Unix system",
    ))
}

#[cfg(unix)]
fn process_alive(pid: u32) -> bool {
    let Some(raw) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    if rustix::process::test_kill_process(raw).is_err() {
        return false;
    }
    // A server that died by itself stays a zombie until its watchdog reaps it, and the watchdog
    // only does when its pipe closes: where /proc exists, tell a zombie from a live process.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z" && state != "X"),
        Err(_) => true,
    }
}

#[cfg(not(unix))]
fn process_alive(_pid: u32) -> bool {
    true
}

/// One `redis-server` on 127.0.0.1, stopped when dropped.
pub struct RedisServer {
    port: u16,
    extra: Vec<String>,
    dir: PathBuf,
    child: Option<(Child, ChildStdin)>,
    /// The server's own process id (not its watchdog's), read when it started: a paused server
    /// cannot be asked.
    pid: Option<u32>,
    paused: AtomicBool,
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("running", &self.child.is_some())
            .field("pid", &self.pid)
            .field("paused", &self.is_paused())
            .finish()
    }
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    pub fn start() -> Result<RedisServer, DevRedisError> {
        Self::start_with(free_port()?, Vec::new())
    }

    /// Like [`RedisServer::start`], with `extra` appended to the server's command line: later
    /// arguments override earlier ones, so `--appendonly yes --appendfsync everysec` turns
    /// persistence on, `--maxmemory 2mb --maxmemory-policy allkeys-lru` bounds the memory,
    /// `--replicaof 127.0.0.1 PORT` makes a replica. The data directory is kept across
    /// [`RedisServer::restart`], so an AOF survives a [`RedisServer::stop`] (a kill -9).
    pub fn start_with_args(extra: Vec<String>) -> Result<RedisServer, DevRedisError> {
        Self::start_with(free_port()?, extra)
    }

    fn start_with(port: u16, extra: Vec<String>) -> Result<RedisServer, DevRedisError> {
        let dir = scratch_dir("redis", port)?;
        let mut s = RedisServer {
            port,
            extra,
            dir,
            child: None,
            pid: None,
            paused: AtomicBool::new(false),
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

    /// The server's data directory (its AOF, RDB and cluster files), kept across restarts.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The `redis-server` process id (not its watchdog's); `None` while stopped.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Whether the server process is alive: started, not stopped, not dead by itself. A paused
    /// server counts as running.
    pub fn is_running(&self) -> bool {
        match (&self.child, self.pid) {
            (Some(_), Some(pid)) => process_alive(pid),
            _ => false,
        }
    }

    fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Running and not paused: a server that should answer.
    fn is_live(&self) -> bool {
        !self.is_paused() && self.is_running()
    }

    fn running_pid(&self) -> Result<u32, DevRedisError> {
        match (&self.child, self.pid) {
            (Some(_), Some(pid)) => Ok(pid),
            _ => Err(DevRedisError::NotRunning(self.port)),
        }
    }

    /// Freezes the server (SIGSTOP): it keeps its port and connections but answers nothing,
    /// as a server stuck in a long pause would, until [`RedisServer::resume`].
    pub fn pause(&self) -> Result<(), DevRedisError> {
        send_signal(self.running_pid()?, Sig::Stop)?;
        self.paused.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) -> Result<(), DevRedisError> {
        send_signal(self.running_pid()?, Sig::Cont)?;
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Stops the server (kill -9, as a crash would, even when paused);
    /// [`RedisServer::restart`] brings it back on the same port, empty unless persistence was
    /// turned on with [`RedisServer::start_with_args`].
    pub fn stop(&mut self) {
        stop_watched(&mut self.child);
        self.pid = None;
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Starts the server again on its port, with the same arguments and data directory (after
    /// [`RedisServer::stop`]), waiting until it answers.
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
        self.child = Some(spawn_watched(&bin, &args)?);
        wait_ready(self.port)?;
        let info = info(self.port, "server")?;
        let pid = info_field(&info, "process_id")
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| DevRedisError::Reply("INFO server has no process_id".into()))?;
        self.pid = Some(pid);
        Ok(())
    }

    /// Starts the one-time-use store's life on this new, empty server for key prefix
    /// `prefix`, with no fence: what the first node would do, minus the fence a node must set
    /// because it cannot tell a new store from a wiped one. Only for a server the caller has
    /// just started itself (the demo, tests); never for a store that may have held marks.
    pub fn seed_life(&self, prefix: &str) -> Result<(), DevRedisError> {
        let info = self.command("INFO server")?;
        let run = info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(str::trim)
            .ok_or_else(|| DevRedisError::Cluster("INFO server has no run_id".into()))?;
        let reply = self.command(&format!("SET \"{prefix}life\" \"{run} seeded 0\" NX"))?;
        if reply.starts_with("+OK") {
            Ok(())
        } else {
            Err(DevRedisError::Cluster(format!(
                "seeding the life: {}",
                reply.trim()
            )))
        }
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

/// How long a set-up command may take to answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the `wait_*` loops look again.
const POLL: Duration = Duration::from_millis(50);

/// One RESP2 reply, parsed.
#[derive(Debug, Clone, PartialEq)]
enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    fn text(&self) -> Option<&str> {
        match self {
            Reply::Status(s) | Reply::Bulk(Some(s)) => Some(s),
            _ => None,
        }
    }

    fn is_ok(&self) -> bool {
        matches!(self, Reply::Status(s) if s == "OK")
    }

    fn items(&self) -> &[Reply] {
        match self {
            Reply::Array(Some(v)) => v,
            _ => &[],
        }
    }

    /// A field of the flat name/value arrays Sentinel answers with in RESP2.
    fn field(&self, name: &str) -> Option<&str> {
        self.items().chunks(2).find_map(|kv| match kv {
            [k, v] if k.text() == Some(name) => v.text(),
            _ => None,
        })
    }
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// Reads one reply, appending its bytes to `raw` (what [`RedisServer::command`] returns).
fn read_reply(r: &mut impl BufRead, raw: &mut Vec<u8>, depth: usize) -> std::io::Result<Reply> {
    if depth > 8 {
        return Err(invalid("reply nested too deep"));
    }
    let start = raw.len();
    if r.read_until(b'\n', raw)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let line = String::from_utf8_lossy(&raw[start..]);
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(line.len().min(1));
    let number = || -> std::io::Result<i64> { rest.parse().map_err(|_| invalid(line)) };
    Ok(match kind {
        "+" => Reply::Status(rest.to_string()),
        "-" => Reply::Error(rest.to_string()),
        ":" => Reply::Int(number()?),
        "$" => match usize::try_from(number()?) {
            Err(_) => Reply::Bulk(None),
            Ok(len) if len > 64 << 20 => return Err(invalid("bulk reply too large")),
            Ok(len) => {
                let mut body = vec![0u8; len + 2];
                r.read_exact(&mut body)?;
                raw.extend_from_slice(&body);
                body.truncate(len);
                Reply::Bulk(Some(String::from_utf8_lossy(&body).into_owned()))
            }
        },
        "*" => match usize::try_from(number()?) {
            Err(_) => Reply::Array(None),
            Ok(n) if n > 1 << 20 => return Err(invalid("array reply too large")),
            Ok(n) => {
                let mut items = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    items.push(read_reply(r, raw, depth + 1)?);
                }
                Reply::Array(Some(items))
            }
        },
        _ => return Err(invalid(line)),
    })
}

/// Sends one inline command and reads its whole reply, waiting at most `timeout` for each
/// read (a paused server accepts the connection, in the kernel, but never answers).
fn exchange(port: u16, line: &str, timeout: Duration) -> Result<(Reply, Vec<u8>), DevRedisError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let s = TcpStream::connect_timeout(&addr, timeout.min(Duration::from_millis(500)))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    (&s).write_all(format!("{line}\r\n").as_bytes())?;
    let mut raw = Vec::new();
    let reply = read_reply(&mut BufReader::new(&s), &mut raw, 0)?;
    Ok((reply, raw))
}

fn request(port: u16, line: &str) -> Result<Reply, DevRedisError> {
    Ok(exchange(port, line, REPLY_TIMEOUT)?.0)
}

fn command(port: u16, line: &str) -> Result<String, DevRedisError> {
    let (_, raw) = exchange(port, line, REPLY_TIMEOUT)?;
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

/// `INFO <section>`'s text.
fn info(port: u16, section: &str) -> Result<String, DevRedisError> {
    match request(port, &format!("INFO {section}"))? {
        Reply::Bulk(Some(text)) => Ok(text),
        other => Err(DevRedisError::Reply(format!("INFO {section}: {other:?}"))),
    }
}

/// One `name:value` field of an `INFO` (or `CLUSTER INFO`) text.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|l| match l.split_once(':') {
        Some((k, v)) if k == name => Some(v.trim()),
        _ => None,
    })
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

/// Polls `done` until it holds (true) or `timeout` passes (false).
fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Whether the server on `primary` is a master with at least `n` replicas connected, and
/// every server in `replicas` replicates it with its link up (so its initial sync is done).
fn replication_ok(primary: u16, n: usize, mut replicas: impl Iterator<Item = u16>) -> bool {
    let Ok(p) = info(primary, "replication") else {
        return false;
    };
    let connected = info_field(&p, "connected_slaves").and_then(|c| c.parse::<usize>().ok());
    info_field(&p, "role") == Some("master")
        && connected.is_some_and(|c| c >= n)
        && replicas.all(|port| {
            info(port, "replication").is_ok_and(|r| {
                info_field(&r, "role") == Some("slave")
                    && info_field(&r, "master_port") == Some(primary.to_string().as_str())
                    && info_field(&r, "master_link_status") == Some("up")
            })
        })
}

/// The arguments of a cluster node on `port`.
fn cluster_args(port: u16) -> Vec<String> {
    [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        &format!("nodes-{port}.conf"),
        // A killed master is failed over in a few seconds.
        "--cluster-node-timeout",
        "2000",
        // Any replica may be promoted, however long its link was down: tests kill and pause
        // nodes at will.
        "--cluster-replica-validity-factor",
        "0",
        // Full syncs start at once rather than after the 5 s Redis 7 waits by default for more
        // replicas to share a diskless transfer.
        "--repl-diskless-sync-delay",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
struct NodeLine {
    id: String,
    port: u16,
    flags: Vec<String>,
    /// The master's id, for a replica.
    master: Option<String>,
    connected: bool,
    has_slots: bool,
}

impl NodeLine {
    fn parse(line: &str) -> Option<NodeLine> {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            return None;
        }
        // ip:port@cport, with ",hostname" after it since Redis 7.
        let addr = f[1].split(['@', ',']).next()?;
        let port = addr.rsplit_once(':')?.1.parse().ok()?;
        Some(NodeLine {
            id: f[0].to_string(),
            port,
            flags: f[2].split(',').map(str::to_string).collect(),
            master: (f[3] != "-").then(|| f[3].to_string()),
            connected: f[7] == "connected",
            has_slots: f.len() > 8,
        })
    }

    fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    /// Known, reachable and not failing, in the view of the node that lists it.
    fn healthy(&self) -> bool {
        self.connected
            && !["fail", "fail?", "handshake", "noaddr"]
                .iter()
                .any(|f| self.flag(f))
    }
}

/// The node on `port`'s view of the cluster.
fn cluster_nodes(port: u16) -> Result<Vec<NodeLine>, DevRedisError> {
    let reply = request(port, "CLUSTER NODES")?;
    let text = reply
        .text()
        .ok_or_else(|| DevRedisError::Reply(format!("CLUSTER NODES: {reply:?}")))?;
    Ok(text.lines().filter_map(NodeLine::parse).collect())
}

/// The node on `port`'s own line of its view.
fn own_line(port: u16) -> Option<NodeLine> {
    cluster_nodes(port)
        .ok()?
        .into_iter()
        .find(|l| l.flag("myself"))
}

fn cluster_info(port: u16) -> Option<String> {
    request(port, "CLUSTER INFO")
        .ok()
        .and_then(|r| r.text().map(str::to_string))
}

fn node_id(port: u16) -> Result<String, DevRedisError> {
    match request(port, "CLUSTER MYID")? {
        Reply::Bulk(Some(id)) => Ok(id),
        other => Err(DevRedisError::Cluster(format!(
            "CLUSTER MYID on port {port}: {other:?}"
        ))),
    }
}

/// A Redis Cluster on loopback: masters with the 16,384 slots spread evenly, and optionally
/// replicas; stopped when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` servers (no replicas), assigns the slots, and waits until the cluster
    /// reports `ok`.
    pub fn start(masters: usize) -> Result<RedisCluster, DevRedisError> {
        Self::start_with_replicas(masters, 0)
    }

    /// Starts `masters` masters (1 to 16) with the slots, and `replicas_per_master` (at most 4)
    /// replicas of each, and waits until the cluster reports `ok`, every node knows every
    /// other, and every replica is attached to its master and synced. Any replica may be
    /// promoted (`cluster-replica-validity-factor 0`); a master is failed over about 2 s
    /// after it stops answering (`cluster-node-timeout 2000`).
    pub fn start_with_replicas(
        masters: usize,
        replicas_per_master: usize,
    ) -> Result<RedisCluster, DevRedisError> {
        let masters = masters.clamp(1, 16);
        let per = replicas_per_master.min(4);
        let total = masters * (1 + per);
        let mut nodes = Vec::with_capacity(total);
        for _ in 0..total {
            let port = free_cluster_port()?;
            nodes.push(RedisServer::start_with(port, cluster_args(port))?);
        }
        let cluster = RedisCluster { nodes };
        cluster.form(masters, per)?;
        Ok(cluster)
    }

    /// Gives the masters (the first `masters` nodes) their slots, joins every node, attaches
    /// replica `r` of master `i` (node `masters + i * per + r`), and waits for it all.
    fn form(&self, masters: usize, per: usize) -> Result<(), DevRedisError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let total = self.nodes.len();
        for (i, node) in self.nodes[..masters].iter().enumerate() {
            let from = i * 16384 / masters;
            let to = (i + 1) * 16384 / masters - 1;
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
        let ids = self
            .nodes
            .iter()
            .map(|n| node_id(n.port))
            .collect::<Result<Vec<_>, _>>()?;
        // (replica index, master index)
        let pairs: Vec<(usize, usize)> = (0..masters)
            .flat_map(|m| (0..per).map(move |r| (masters + m * per + r, m)))
            .collect();
        for &(r, m) in &pairs {
            // REPLICATE fails with "Unknown node" until the gossip has brought the master to
            // the replica, and the master must be known as a master: ask again until it works.
            let mut last = String::new();
            let attached = wait_for(remaining(deadline), || {
                match self.nodes[r].command(&format!("CLUSTER REPLICATE {}", ids[m])) {
                    Ok(reply) if reply.starts_with("+OK") => true,
                    Ok(reply) => {
                        last = reply.trim().to_string();
                        false
                    }
                    Err(e) => {
                        last = e.to_string();
                        false
                    }
                }
            });
            if !attached {
                return Err(DevRedisError::Cluster(format!(
                    "REPLICATE on port {}: {last}",
                    self.nodes[r].port
                )));
            }
        }
        let formed = wait_for(remaining(deadline), || {
            self.nodes.iter().all(|node| {
                let Some(info) = cluster_info(node.port) else {
                    return false;
                };
                let Ok(view) = cluster_nodes(node.port) else {
                    return false;
                };
                info_field(&info, "cluster_state") == Some("ok")
                    && info_field(&info, "cluster_known_nodes") == Some(total.to_string().as_str())
                    && view.len() == total
                    && view.iter().all(NodeLine::healthy)
                    && pairs.iter().all(|&(r, m)| {
                        view.iter().any(|l| {
                            l.id == ids[r] && l.flag("slave") && l.master.as_ref() == Some(&ids[m])
                        })
                    })
            }) && pairs.iter().all(|&(r, m)| {
                replication_ok(self.nodes[m].port, per, std::iter::once(self.nodes[r].port))
            })
        });
        if formed {
            Ok(())
        } else {
            Err(DevRedisError::Cluster(format!(
                "{masters} masters with {per} replicas each did not form a cluster in state ok within 30 s"
            )))
        }
    }

    /// The seed URLs, one per node (masters first, in start order).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The servers: the masters first, then the replicas of each master in turn, as started
    /// (roles change with failovers: see [`RedisCluster::masters`]).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The servers, to stop, restart, pause or resume them.
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    fn live_nodes(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes.iter().filter(|n| n.is_live())
    }

    /// The ports of the running nodes that, by their own account, are masters serving slots
    /// now.
    pub fn masters(&self) -> Vec<u16> {
        self.live_nodes()
            .filter(|n| own_line(n.port).is_some_and(|l| l.flag("master") && l.has_slots))
            .map(RedisServer::port)
            .collect()
    }

    /// The ports of the running nodes that, by their own account, replicate the node on
    /// `master_port` now (which may itself be stopped).
    pub fn replicas_of(&self, master_port: u16) -> Vec<u16> {
        // A stopped master cannot tell its id: the others' views still list it.
        let id = node_id(master_port).ok().or_else(|| {
            self.live_nodes().find_map(|n| {
                cluster_nodes(n.port)
                    .ok()?
                    .into_iter()
                    .find(|l| l.port == master_port)
                    .map(|l| l.id)
            })
        });
        let Some(id) = id else {
            return Vec::new();
        };
        self.live_nodes()
            .filter(|n| own_line(n.port).is_some_and(|l| l.master.as_ref() == Some(&id)))
            .map(RedisServer::port)
            .collect()
    }

    /// Promotes the replica on `replica_port` with `CLUSTER FAILOVER` (coordinated with its
    /// master, which must be answering) and waits, up to 20 s, until it is a master with
    /// slots.
    pub fn failover(&self, replica_port: u16) -> Result<(), DevRedisError> {
        let ask = || -> Result<Instant, DevRedisError> {
            let reply = request(replica_port, "CLUSTER FAILOVER")?;
            if reply.is_ok() {
                Ok(Instant::now())
            } else {
                Err(DevRedisError::Cluster(format!(
                    "CLUSTER FAILOVER on port {replica_port}: {reply:?}"
                )))
            }
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut asked = ask()?;
        loop {
            if own_line(replica_port).is_some_and(|l| l.flag("master") && l.has_slots) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(DevRedisError::Cluster(format!(
                    "port {replica_port} was not promoted within 20 s"
                )));
            }
            // A manual failover the master has not joined in within 5 s is abandoned.
            if asked.elapsed() > Duration::from_secs(6) {
                asked = ask()?;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until every running, unpaused node reports `cluster_state:ok`.
    pub fn wait_ok(&self, timeout: Duration) -> Result<(), DevRedisError> {
        let ok = wait_for(timeout, || {
            self.live_nodes().all(|n| {
                cluster_info(n.port).is_some_and(|i| info_field(&i, "cluster_state") == Some("ok"))
            })
        });
        if ok {
            Ok(())
        } else {
            Err(DevRedisError::Cluster(format!(
                "the cluster did not reach state ok within {timeout:?}"
            )))
        }
    }
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// One Sentinel process, killed when dropped.
struct Sentinel {
    port: u16,
    dir: PathBuf,
    child: Option<(Child, ChildStdin)>,
}

impl std::fmt::Debug for Sentinel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sentinel")
            .field("port", &self.port)
            .field("running", &self.child.is_some())
            .finish()
    }
}

impl Sentinel {
    fn start(
        master: &str,
        primary: u16,
        quorum: usize,
        down_after_ms: u64,
        failover_timeout_ms: u64,
    ) -> Result<Sentinel, DevRedisError> {
        let port = free_port()?;
        let mut s = Sentinel {
            port,
            dir: scratch_dir("sentinel", port)?,
            child: None,
        };
        // A file of its own: Sentinel rewrites its configuration as it learns.
        let conf = s.dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\n\
                 bind 127.0.0.1\n\
                 protected-mode no\n\
                 daemonize no\n\
                 logfile \"\"\n\
                 dir {dir:?}\n\
                 sentinel resolve-hostnames no\n\
                 sentinel monitor {master} 127.0.0.1 {primary} {quorum}\n\
                 sentinel down-after-milliseconds {master} {down_after_ms}\n\
                 sentinel failover-timeout {master} {failover_timeout_ms}\n\
                 sentinel parallel-syncs {master} 1\n",
                dir = s.dir.display().to_string(),
            ),
        )?;
        s.child = Some(spawn_watched(
            &server_binary()?,
            &[conf.display().to_string(), "--sentinel".into()],
        )?);
        wait_ready(port)?;
        // Sentinel's clocks are made for production: INFO every 10 s, so a restarted old
        // primary is only turned into a replica about 10 s after it is back (and only once it
        // has reported itself a master for 4 publish periods); hellos every 2 s, so sentinels
        // find each other slowly; 30 s of TILT after a stall, a loaded test machine's. Faster
        // clocks for tests; a Sentinel without SENTINEL DEBUG (before 7.0) is only slower.
        let _ = request(
            port,
            "SENTINEL DEBUG info-period 1000 publish-period 500 tilt-period 5000",
        );
        Ok(s)
    }

    /// Whether this sentinel knows the master, its `replicas` replicas (up and linked) and the
    /// other `sentinels - 1` sentinels, and can authorise a failover.
    fn ready(&self, master: &str, replicas: usize, sentinels: usize) -> bool {
        let Ok(m) = request(self.port, &format!("SENTINEL MASTER {master}")) else {
            return false;
        };
        let Ok(r) = request(self.port, &format!("SENTINEL REPLICAS {master}")) else {
            return false;
        };
        m.field("flags") == Some("master")
            && m.field("num-slaves") == Some(replicas.to_string().as_str())
            && m.field("num-other-sentinels") == Some((sentinels - 1).to_string().as_str())
            && r.items().len() == replicas
            && r.items().iter().all(|x| {
                x.field("flags") == Some("slave") && x.field("master-link-status") == Some("ok")
            })
            && request(self.port, &format!("SENTINEL CKQUORUM {master}"))
                .is_ok_and(|q| matches!(q, Reply::Status(s) if s.starts_with("OK")))
    }

    /// The primary's port by this sentinel's account.
    fn primary_port(&self, master: &str) -> Result<u16, DevRedisError> {
        let reply = request(
            self.port,
            &format!("SENTINEL GET-MASTER-ADDR-BY-NAME {master}"),
        )?;
        match reply.items() {
            [_, port] => port.text().and_then(|p| p.parse().ok()),
            _ => None,
        }
        .ok_or_else(|| {
            DevRedisError::Sentinel(format!(
                "GET-MASTER-ADDR-BY-NAME on port {}: {reply:?}",
                self.port
            ))
        })
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        stop_watched(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A primary and its replicas on loopback, watched by Redis Sentinel processes that fail over
/// when the primary stops answering; stopped when dropped.
///
/// The servers are started from the command line, without a configuration file, so Sentinel
/// reconfigures them at runtime only: a restarted server comes back with its original
/// arguments (a primary, or a replica of the first primary) and Sentinel points it at the
/// current primary a few seconds later.
#[derive(Debug)]
pub struct RedisSentinels {
    master: String,
    // Before the servers, so the sentinels go first when dropped and do not fail over a set
    // being torn down.
    sentinels: Vec<Sentinel>,
    servers: Vec<RedisServer>,
}

impl RedisSentinels {
    /// Starts a primary, `replicas` replicas of it (at most 8), and `sentinels` Sentinel
    /// processes (1 to 9) monitoring it as `master` (letters, digits, `-`, `_`, `.`), with a
    /// quorum of a majority, `down-after-milliseconds` `down_after_ms` and `failover-timeout`
    /// `failover_timeout_ms`; waits, up to 30 s, until replication is up and every sentinel
    /// knows the master, its replicas and the other sentinels, and can reach a quorum.
    pub fn start(
        master: &str,
        replicas: usize,
        sentinels: usize,
        down_after_ms: u64,
        failover_timeout_ms: u64,
    ) -> Result<RedisSentinels, DevRedisError> {
        if master.is_empty()
            || !master
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(DevRedisError::Sentinel(format!(
                "invalid master name {master:?}"
            )));
        }
        let replicas = replicas.min(8);
        let sentinels = sentinels.clamp(1, 9);
        let deadline = Instant::now() + Duration::from_secs(30);
        let server_args = |primary: Option<u16>| {
            let mut args: Vec<String> = vec![
                // What the sentinels see and hand out: loopback.
                "--replica-announce-ip".into(),
                "127.0.0.1".into(),
                // Full syncs start at once rather than after Redis 7's default 5 s.
                "--repl-diskless-sync-delay".into(),
                "0".into(),
            ];
            if let Some(p) = primary {
                args.extend(["--replicaof".into(), "127.0.0.1".into(), p.to_string()]);
            }
            args
        };
        let mut servers = vec![RedisServer::start_with(free_port()?, server_args(None))?];
        let primary = servers[0].port;
        for _ in 0..replicas {
            servers.push(RedisServer::start_with(
                free_port()?,
                server_args(Some(primary)),
            )?);
        }
        // Replication first: a sentinel learns the replicas from the primary's INFO, which it
        // asks for at once and then only once a second.
        if !wait_for(remaining(deadline), || {
            replication_ok(primary, replicas, servers[1..].iter().map(|s| s.port))
        }) {
            return Err(DevRedisError::Sentinel(format!(
                "{replicas} replicas did not sync with the primary within 30 s"
            )));
        }
        let quorum = sentinels / 2 + 1;
        let mut set = RedisSentinels {
            master: master.to_string(),
            sentinels: Vec::with_capacity(sentinels),
            servers,
        };
        for _ in 0..sentinels {
            set.sentinels.push(Sentinel::start(
                master,
                primary,
                quorum,
                down_after_ms,
                failover_timeout_ms,
            )?);
        }
        if !wait_for(remaining(deadline), || {
            set.sentinels
                .iter()
                .all(|s| s.ready(master, replicas, sentinels))
        }) {
            return Err(DevRedisError::Sentinel(format!(
                "{sentinels} sentinels did not all learn of {master}, its {replicas} replicas and each other within 30 s"
            )));
        }
        Ok(set)
    }

    /// The `redis://` URL of each sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}", s.port))
            .collect()
    }

    /// The name the sentinels monitor the primary under.
    pub fn master_name(&self) -> &str {
        &self.master
    }

    /// The current primary's port, by the first sentinel that answers.
    pub fn primary_port(&self) -> Result<u16, DevRedisError> {
        let mut last = DevRedisError::Sentinel("no sentinel".into());
        for s in &self.sentinels {
            match s.primary_port(&self.master) {
                Ok(port) => return Ok(port),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The server on `port`, to stop, restart, pause or resume it.
    pub fn server(&mut self, port: u16) -> Option<&mut RedisServer> {
        self.servers.iter_mut().find(|s| s.port == port)
    }

    /// The servers: the first primary, then the replicas, in start order (roles change with
    /// failovers: see [`RedisSentinels::primary_port`]).
    pub fn servers(&self) -> &[RedisServer] {
        &self.servers
    }

    /// Waits until every sentinel names the same primary, other than `from_port`, and that
    /// server says it is a master; returns its port.
    pub fn wait_primary_change(
        &self,
        from_port: u16,
        timeout: Duration,
    ) -> Result<u16, DevRedisError> {
        let mut new = None;
        let changed = wait_for(timeout, || {
            let ports: Vec<u16> = self
                .sentinels
                .iter()
                .filter_map(|s| s.primary_port(&self.master).ok())
                .collect();
            new = match ports.as_slice() {
                [p, rest @ ..] if *p != from_port && rest.iter().all(|q| q == p) => Some(*p),
                _ => None,
            };
            new.is_some_and(|p| {
                ports.len() == self.sentinels.len()
                    && info(p, "replication")
                        .is_ok_and(|i| info_field(&i, "role") == Some("master"))
            })
        });
        match new {
            Some(p) if changed => Ok(p),
            _ => Err(DevRedisError::Sentinel(format!(
                "the sentinels did not agree on a primary other than port {from_port} within {timeout:?}"
            ))),
        }
    }

    /// Waits until the current primary (by the sentinels) reports at least `n` connected
    /// replicas and every other running, unpaused server replicates it with its link up.
    pub fn wait_replicas(&self, n: usize, timeout: Duration) -> Result<(), DevRedisError> {
        let ok = wait_for(timeout, || {
            let Ok(primary) = self.primary_port() else {
                return false;
            };
            replication_ok(
                primary,
                n,
                self.servers
                    .iter()
                    .filter(|s| s.port != primary && s.is_live())
                    .map(RedisServer::port),
            )
        });
        if ok {
            Ok(())
        } else {
            Err(DevRedisError::Sentinel(format!(
                "the primary did not have {n} replicas in sync within {timeout:?}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pong_within(port: u16, timeout: Duration) -> bool {
        exchange(port, "PING", timeout).is_ok_and(|(r, _)| r == Reply::Status("PONG".into()))
    }

    #[test]
    fn replies_are_read_whole() {
        let mut raw = Vec::new();
        let text = b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6379\r\n:5\r\n";
        let reply = read_reply(&mut &text[..], &mut raw, 0).unwrap();
        assert_eq!(reply.items().len(), 2);
        assert_eq!(reply.items()[1].text(), Some("6379"));
        assert_eq!(raw, &text[..text.len() - 4]);
        let bad = read_reply(&mut &b"?x\r\n"[..], &mut Vec::new(), 0);
        assert!(bad.is_err());
    }

    #[test]
    fn pause_and_resume() {
        let mut s = RedisServer::start().unwrap();
        let pid = s.pid().unwrap();
        assert!(s.is_running());
        s.pause().unwrap();
        assert!(s.is_running());
        assert!(!pong_within(s.port(), Duration::from_millis(200)));
        s.resume().unwrap();
        assert!(pong_within(s.port(), Duration::from_millis(200)));
        s.pause().unwrap();
        // Stopping a paused server kills it all the same.
        s.stop();
        assert!(!s.is_running());
        assert_eq!(s.pid(), None);
        assert!(!process_alive(pid));
        assert!(matches!(s.pause(), Err(DevRedisError::NotRunning(_))));
        s.restart().unwrap();
        assert!(s.is_running());
        assert_ne!(s.pid(), Some(pid));
    }

    #[test]
    fn an_aof_survives_a_crash() {
        let mut s = RedisServer::start_with_args(
            ["--appendonly", "yes", "--appendfsync", "everysec"]
                .map(String::from)
                .to_vec(),
        )
        .unwrap();
        assert!(s.command("SET k v").unwrap().starts_with("+OK"));
        s.stop();
        s.restart().unwrap();
        assert_eq!(s.command("GET k").unwrap(), "$1\r\nv\r\n");
    }

    #[test]
    fn sentinels_fail_over_and_take_the_old_primary_back() {
        let started = Instant::now();
        let mut set = RedisSentinels::start("gatehouse", 1, 3, 1000, 3000).unwrap();
        assert_eq!(set.sentinel_urls().len(), 3);
        assert_eq!(set.master_name(), "gatehouse");
        let old = set.servers()[0].port();
        let replica = set.servers()[1].port();
        assert_eq!(set.primary_port().unwrap(), old);
        let up = started.elapsed();

        set.server(old).unwrap().stop();
        let new = set
            .wait_primary_change(old, Duration::from_secs(15))
            .unwrap();
        assert_eq!(new, replica);
        let failed_over = started.elapsed();

        set.server(old).unwrap().restart().unwrap();
        set.wait_replicas(1, Duration::from_secs(15)).unwrap();
        assert_eq!(set.primary_port().unwrap(), replica);
        let info = set.servers()[0].command("INFO replication").unwrap();
        assert!(info.contains(&format!("master_port:{replica}")), "{info}");
        eprintln!(
            "sentinels up in {up:?}, failed over at {failed_over:?}, old primary back at {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_cluster_without_replicas_still_starts() {
        let cluster = RedisCluster::start(3).unwrap();
        assert_eq!(cluster.masters().len(), 3);
        assert!(cluster.replicas_of(cluster.nodes()[0].port()).is_empty());
        cluster.wait_ok(Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn a_cluster_replica_is_promoted() {
        let started = Instant::now();
        let mut cluster = RedisCluster::start_with_replicas(3, 1).unwrap();
        let up = started.elapsed();
        let mut masters = cluster.masters();
        masters.sort_unstable();
        let mut first = cluster.nodes()[..3]
            .iter()
            .map(RedisServer::port)
            .collect::<Vec<_>>();
        first.sort_unstable();
        assert_eq!(masters, first);
        let master = cluster.nodes()[0].port();
        let replicas = cluster.replicas_of(master);
        assert_eq!(replicas, vec![cluster.nodes()[3].port()]);

        cluster.failover(replicas[0]).unwrap();
        assert!(cluster.masters().contains(&replicas[0]));
        assert!(!cluster.masters().contains(&master));
        assert!(wait_for(Duration::from_secs(10), || cluster
            .replicas_of(replicas[0])
            .contains(&master)));
        cluster.wait_ok(Duration::from_secs(10)).unwrap();

        // A stopped node is left out of the running nodes' reports.
        cluster.nodes_mut()[0].stop();
        assert!(cluster.replicas_of(replicas[0]).is_empty());
        eprintln!("cluster up in {up:?}, all done at {:?}", started.elapsed());
    }
}
