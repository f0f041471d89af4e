//! The files in `deploy/` stay true to the binary:
//!
//! - the sample configuration parses with the service's own parser and matches the one
//!   compiled into the binary;
//! - the Dockerfile exposes the ports of the default configuration, runs as a non-root user
//!   and starts the server on the configuration path the systemd unit uses;
//! - the Kubernetes manifests (parsed as YAML): the ConfigMap's configuration parses, the
//!   container ports, probes, mounts and Secret keys match it and the operations endpoint's
//!   real routes; the Service is UDP; the PodDisruptionBudget selects the pods;
//! - the systemd unit is `Type=notify` and reloads with `gatehouse reload`; `systemd-analyze
//!   security` rates it at most 2.0 where systemd-analyze is installed;
//! - every query of the Grafana dashboard names only metrics that a real server, scraped
//!   after a reload, exports;
//! - that server's `/metrics` is valid Prometheus text (0.0.4, with its content type) from
//!   first line to last, and its counters move with requests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gatehouse_engine::client::{ClientIdentity, ScannerClient};
use gatehouse_engine::dev::pki::DevPki;
use gatehouse_engine::dev::population;
use gatehouse_engine::server::{self, ReloadControl, ServeConfig, SAMPLE_CONFIG};
use gatehouse_protocol::Reason;
use serde_json::Value;
use tokio::time::timeout;

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(deploy(rel)).unwrap_or_else(|e| panic!("deploy/{rel}: {e}"))
}

fn sample() -> ServeConfig {
    ServeConfig::parse(Path::new("/etc/gatehouse/gatehouse.toml"), SAMPLE_CONFIG).unwrap()
}

/// The configuration path of the systemd unit's `ExecStart`.
fn unit_config_path() -> String {
    let unit = read("gatehouse.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    exec.split_once("--config ")
        .map(|(_, p)| p.split_whitespace().next().unwrap().to_string())
        .expect("--config in ExecStart")
}

#[test]
fn the_deployed_sample_config_parses_and_matches_the_built_in_one() {
    let path = deploy("gatehouse.toml");
    let text = std::fs::read_to_string(&path).expect("deploy/gatehouse.toml");
    assert_eq!(
        text, SAMPLE_CONFIG,
        "deploy/gatehouse.toml differs from server::SAMPLE_CONFIG"
    );
    ServeConfig::parse(&path, &text).unwrap();
}

#[test]
fn a_wrong_field_is_named_in_the_error() {
    let bad = SAMPLE_CONFIG.replace("backend = \"ring\"", "backend = \"openssl\"");
    let e = ServeConfig::parse(Path::new("gatehouse.toml"), &bad).unwrap_err();
    assert!(e.to_string().contains("engine.backend"), "{e}");
    let bad = SAMPLE_CONFIG.replace("format = \"text\"", "format = \"xml\"");
    let e = ServeConfig::parse(Path::new("gatehouse.toml"), &bad).unwrap_err();
    assert!(e.to_string().contains("log.format"), "{e}");
}

#[test]
fn the_dockerfile_matches_the_binary_defaults() {
    let docker = read("Dockerfile");
    let config = sample();
    let stages: Vec<&str> = docker.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(stages.len(), 2, "multi-stage: a build and a runtime stage");
    assert!(stages[0].contains(" AS build"), "{}", stages[0]);
    // The build image's toolchain is at least the workspace's rust-version.
    let rust: Vec<u32> = stages[0]
        .split(':')
        .nth(1)
        .and_then(|t| t.split('-').next())
        .unwrap()
        .split('.')
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(rust >= vec![1, 85], "{}", stages[0]);
    // Everything after the last FROM is the runtime image.
    let runtime = docker.rsplit_once("\nFROM ").unwrap().1;
    let expose: BTreeSet<&str> = runtime
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| l.split_whitespace())
        .collect();
    let quic = format!("{}/udp", config.listen.port());
    let ops = format!("{}/tcp", config.metrics_listen.unwrap().port());
    assert!(
        expose.contains(quic.as_str()),
        "EXPOSE {quic} missing: {expose:?}"
    );
    assert!(
        expose.contains(ops.as_str()),
        "EXPOSE {ops} missing: {expose:?}"
    );
    let user = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER in the runtime stage");
    let uid: u32 = user.split(':').next().unwrap().parse().unwrap();
    assert!(uid >= 1000, "runs as a non-root user: {user}");
    // The binary copied from the build stage is the one cargo builds.
    let copy = runtime
        .lines()
        .find(|l| l.starts_with("COPY --from=build "))
        .unwrap();
    let workdir = docker
        .lines()
        .find_map(|l| l.strip_prefix("WORKDIR "))
        .unwrap();
    assert!(
        copy.contains(&format!("{workdir}/target/release/gatehouse ")),
        "{copy}"
    );
    assert!(docker.contains("--bin gatehouse") && docker.contains("--locked"));
    let entry = runtime
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .unwrap();
    let entry: Vec<String> = serde_json::from_str(entry).unwrap();
    assert_eq!(entry, [copy.split_whitespace().last().unwrap()]);
    let cmd = runtime
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .unwrap();
    let cmd: Vec<String> = serde_json::from_str(cmd).unwrap();
    assert_eq!(cmd, ["serve", "--config", &unit_config_path()]);
}

fn yaml_docs(rel: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(&read(rel))
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

#[test]
fn the_kubernetes_manifests_match_the_configuration_and_the_binary() {
    let mut docs = Vec::new();
    for f in [
        "configmap.yaml",
        "secret.yaml",
        "deployment.yaml",
        "service.yaml",
        "pdb.yaml",
        "redis.yaml",
    ] {
        docs.extend(yaml_docs(&format!("kubernetes/{f}")));
    }
    let config_map = kind(&docs, "ConfigMap")[0];
    let deployment = kind(&docs, "Deployment")[0];
    let service = kind(&docs, "Service")[0];
    let pdb = kind(&docs, "PodDisruptionBudget")[0];
    let secrets = kind(&docs, "Secret");

    // The configuration parses, and the paths it names are what the pod mounts.
    let config_path = unit_config_path();
    let text = config_map["data"]["gatehouse.toml"].as_str().unwrap();
    let config = ServeConfig::parse(Path::new(&config_path), text).unwrap();
    let ops_addr = config
        .metrics_listen
        .expect("metrics_listen for the probes");
    assert!(
        ops_addr.ip().is_unspecified(),
        "probes come from outside the pod"
    );

    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args, ["serve", "--config", config_path.as_str()]);
    let port = |name: &str| {
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("container port {name}"))
    };
    assert_eq!(port("quic")["protocol"], "UDP");
    assert_eq!(
        port("quic")["containerPort"],
        u64::from(config.listen.port())
    );
    assert_eq!(port("ops")["protocol"], "TCP");
    assert_eq!(port("ops")["containerPort"], u64::from(ops_addr.port()));
    for (probe, path) in [
        ("readinessProbe", "/readyz/local"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], "ops", "{probe}");
    }

    // Security context: the image's non-root user.
    let docker = read("Dockerfile");
    let uid: u64 = docker
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(pod["spec"]["securityContext"]["runAsUser"], uid);
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);

    // Every file the configuration names is a key of the Secret (or ConfigMap) mounted at its
    // directory.
    let mounts = container["volumeMounts"].as_array().unwrap();
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    let files = config.files();
    let tls = files.tls.clone().unwrap();
    let mut named: Vec<PathBuf> = vec![
        files.trust,
        files.scanners,
        tls.cert,
        tls.key,
        tls.client_ca,
    ];
    named.extend(files.revocations);
    named.extend(
        config
            .replay
            .password_file
            .as_deref()
            .map(|p| Path::new(&config_path).parent().unwrap().join(p)),
    );
    named.push(PathBuf::from(&config_path));
    for file in &named {
        let (mount, sub) = mounts
            .iter()
            .filter_map(|m| {
                let at = Path::new(m["mountPath"].as_str()?);
                file.strip_prefix(at)
                    .ok()
                    .map(|rest| (m, rest.to_path_buf()))
            })
            .max_by_key(|(m, _)| m["mountPath"].as_str().unwrap().len())
            .unwrap_or_else(|| panic!("{} is not mounted", file.display()));
        let volume = volumes.iter().find(|v| v["name"] == mount["name"]).unwrap();
        let key = match mount["subPath"].as_str() {
            Some(sub_path) => sub_path.to_string(),
            None => sub.to_str().unwrap().to_string(),
        };
        let data = if let Some(name) = volume["secret"]["secretName"].as_str() {
            let s = secrets
                .iter()
                .find(|s| s["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("Secret {name}"));
            s["stringData"][&key].clone()
        } else {
            let name = volume["configMap"]["name"].as_str().unwrap();
            assert_eq!(config_map["metadata"]["name"], name);
            config_map["data"][&key].clone()
        };
        assert!(!data.is_null(), "{} has no key {key}", file.display());
    }

    // The Service carries QUIC over UDP to the named container port; the PDB selects the pods.
    let sp = &service["spec"]["ports"][0];
    assert_eq!(sp["protocol"], "UDP");
    assert_eq!(sp["targetPort"], "quic");
    let labels = &pod["metadata"]["labels"];
    for selector in [
        &service["spec"]["selector"],
        &pdb["spec"]["selector"]["matchLabels"],
        &deployment["spec"]["selector"]["matchLabels"],
    ] {
        for (k, v) in selector.as_object().unwrap() {
            assert_eq!(&labels[k], v, "selector {k}");
        }
    }
    assert!(
        pdb["spec"]["minAvailable"].as_u64().unwrap()
            < deployment["spec"]["replicas"].as_u64().unwrap()
    );

    // Several replicas share one-time use: never the memory store, and the Redis they name is
    // the shipped one, configured as one-time use needs (no eviction, persistence).
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() > 1);
    assert_eq!(config.replay.store, "redis", "replicas on the memory store");
    let redis_service = kind(&docs, "Service")
        .into_iter()
        .find(|s| s["metadata"]["name"] == "gatehouse-redis")
        .expect("the Redis Service");
    let port = redis_service["spec"]["ports"][0]["port"].as_u64().unwrap();
    assert_eq!(
        config.replay.urls,
        [format!("redis://gatehouse-redis:{port}")]
    );
    let redis_conf = kind(&docs, "ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["name"] == "gatehouse-redis")
        .expect("the Redis ConfigMap")["data"]["redis.conf"]
        .as_str()
        .unwrap()
        .to_string();
    for line in ["maxmemory-policy noeviction", "appendonly yes"] {
        assert!(redis_conf.lines().any(|l| l == line), "redis.conf: {line}");
    }
    let redis = kind(&docs, "StatefulSet")[0];
    assert_eq!(
        redis["spec"]["template"]["spec"]["volumes"][1]["secret"]["secretName"],
        pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "redis")
            .unwrap()["secret"]["secretName"],
        "Redis and the nodes read the same password"
    );
    // A drain before the pod leaves: preStop, then SIGTERM's drain, within the grace period.
    assert!(container["lifecycle"]["preStop"].is_object());
}

#[test]
fn the_systemd_unit_notifies_reloads_with_the_command_and_is_hardened() {
    let unit = read("gatehouse.service");
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key}= missing"))
    };
    assert_eq!(value("Type"), "notify");
    let config = unit_config_path();
    assert_eq!(
        value("ExecReload"),
        format!("/usr/local/bin/gatehouse reload --config {config} --pid $MAINPID")
    );
    assert!(value("ExecStart").starts_with("/usr/local/bin/gatehouse serve"));
    assert_eq!(value("User"), "gatehouse");
    assert_eq!(value("CapabilityBoundingSet"), "");
    // Not every machine has systemd; where it does, its own rating decides.
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(deploy("gatehouse.service"))
        .output();
    match out {
        Err(e) => {
            eprintln!("systemd-analyze not available ({e}); only the directives were checked")
        }
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            let level: f64 = text
                .lines()
                .find_map(|l| l.split_once("Overall exposure level for gatehouse.service: "))
                .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| {
                    panic!(
                        "no rating in: {text}{}",
                        String::from_utf8_lossy(&out.stderr)
                    )
                });
            assert!(level <= 2.0, "systemd-analyze security: {level}");
        }
    }
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = fetch(addr, path).await;
    (status, body)
}

/// One GET on the operations endpoint: (status, response head, body).
async fn fetch(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let r = gatehouse_testkit::get(addr, path).await.unwrap();
    (r.status, r.head, r.body)
}

/// Metric names (before `{` or a space) of every sample line of an exposition.
fn exported(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// Every `expr` (panel targets) and `query` (template variables) string in the dashboard.
fn queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) if s.contains('(') => out.push(s.clone()),
                    _ => queries(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// Identifiers in a PromQL expression that name our metrics (`gatehouse_…`, `process_…`);
/// label names and values inside `{…}` and quoted strings are skipped.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut word = String::new();
    let (mut in_braces, mut in_quotes) = (false, false);
    for c in expr.chars().chain([' ']) {
        if in_quotes {
            in_quotes = c != '"';
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
            continue;
        }
        if !in_braces && (word.starts_with("gatehouse_") || word.starts_with("process_")) {
            names.push(word.clone());
        }
        word.clear();
        match c {
            '{' => in_braces = true,
            '}' => in_braces = false,
            '"' => in_quotes = true,
            _ => {}
        }
    }
    names
}

/// The sample configuration served on loopback (without a revocation file), with its
/// operations endpoint, a reload trigger and the scanner `gate-1`.
struct SampleServer {
    dir: PathBuf,
    pki: DevPki,
    addr: SocketAddr,
    ops_addr: SocketAddr,
    trigger: Arc<tokio::sync::Notify>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), server::ServerError>>,
}

impl SampleServer {
    async fn start(name: &str) -> SampleServer {
        let dir = std::env::temp_dir().join(format!("gatehouse-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pki = DevPki::generate(&["gate-1".into()]).unwrap();
        pki.write_to(&dir.join("pki")).unwrap();
        let issuer = population::issuer_key(5);
        // A node that follows a revocation feed (a directory holding snapshot 1), so that its
        // feed metrics are exported too.
        let revocation = population::derive_key("deploy test revocation key (TEST ONLY)", 1);
        let mut trust = population::trust_list(&issuer);
        trust.insert_revocation_key(gatehouse_engine::RevocationKey {
            name: "revocations".into(),
            public: revocation.public().clone(),
        });
        std::fs::write(dir.join("trust.toml"), trust.to_toml()).unwrap();
        std::fs::create_dir_all(dir.join("feed")).unwrap();
        let snapshot = gatehouse_protocol::RevocationList {
            epoch: 1,
            base: None,
            revoke: vec![],
            reinstate: vec![],
            digest: Some(gatehouse_protocol::StateDigest::default().digest()),
        };
        std::fs::write(
            dir.join("feed/snapshot-1.cose"),
            snapshot.sign(&revocation).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.join("feed/head.json"), r#"{"epoch": 1, "snapshot": 1}"#).unwrap();
        std::fs::write(
            dir.join("scanners.toml"),
            "[[scanner]]\nid = \"gate-1\"\nrole = \"gate\"\nunit = \"1\"\n",
        )
        .unwrap();
        let text = SAMPLE_CONFIG
            .replace("0.0.0.0:4433", "127.0.0.1:0")
            .replace("revocations = \"revocations.cbor\"\n", "")
            .replace("threads = 0", "threads = 1")
            .replace("replay_capacity = 750000", "replay_capacity = 1000")
            .replace("#[revocations]", "[revocations]")
            .replace(
                "#feed = \"https://revocations.internal/gatehouse\"",
                &format!("feed = \"{}\"", dir.join("feed").display()),
            );
        assert!(
            text.contains("\n[revocations]\n") && text.contains("\nfeed = \"/"),
            "{text}"
        );
        let parts = ServeConfig::parse(&dir.join("gatehouse.toml"), &text)
            .unwrap()
            .into_parts()
            .unwrap();
        let engine = parts.build_engine().unwrap();
        let trigger = Arc::new(tokio::sync::Notify::new());
        let mut config = parts.server;
        config.reload = Some(ReloadControl {
            files: parts.files.clone(),
            trigger: Arc::clone(&trigger),
        });
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ops_addr = ops.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::run(engine, config, socket, Some(ops), async move {
            let _ = stopped.await;
        }));
        SampleServer {
            dir,
            pki,
            addr,
            ops_addr,
            trigger,
            stop,
            task,
        }
    }

    async fn client(&self) -> ScannerClient {
        let s = self.pki.scanner("gate-1").unwrap();
        let identity = ClientIdentity {
            roots: vec![self.pki.ca.cert_der.clone()],
            chain: s.chain(),
            key: s.key(),
        };
        ScannerClient::connect(self.addr, "localhost", identity)
            .await
            .unwrap()
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        timeout(Duration::from_secs(20), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_names_metrics_a_real_server_exports() {
    let server = SampleServer::start("deploy").await;
    let (ops_addr, trigger) = (server.ops_addr, &server.trigger);

    // A reload, so that the per-file reload series exist.
    trigger.notify_one();
    let mut ready = String::new();
    // The node follows a feed: ready once its first pull applied the snapshot.
    let mut status = 0;
    for _ in 0..400 {
        (status, ready) = get(ops_addr, "/readyz").await;
        if status == 200 && ready.contains("reloads 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status, 200, "{ready}");
    assert!(ready.contains("reload tls ok"), "{ready}");
    let (status, body) = get(ops_addr, "/metrics").await;
    assert_eq!(status, 200);
    let names = exported(&body);
    for must in [
        "gatehouse_build_info",
        "gatehouse_reload_success",
        "gatehouse_certificate_expiry_timestamp_seconds",
        "gatehouse_revocation_epoch_age_seconds",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
    ] {
        assert!(names.contains(must), "{must} not exported");
    }

    let dashboard: Value = serde_json::from_str(&read("grafana/gatehouse.json")).unwrap();
    let mut all = Vec::new();
    queries(&dashboard, &mut all);
    assert!(all.len() >= 20, "{} queries", all.len());
    for q in &all {
        let used = metric_names(q);
        assert!(!used.is_empty(), "query names no gatehouse metric: {q}");
        for name in used {
            assert!(names.contains(&name), "{name} (in `{q}`) is not exported");
        }
    }
    // The checker itself: a name the server does not export is caught.
    assert_eq!(
        metric_names("rate(gatehouse_nope_total{a=\"gatehouse_x\"}[1m])"),
        ["gatehouse_nope_total"]
    );

    server.stop().await;
}

/// One sample line: its name, its labels in order, its value.
type Sample = (String, Vec<(String, String)>, f64);

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    is_metric_name(s) && !s.contains(':')
}

/// Parses `name{a="x",b="y"} value` (Prometheus text format 0.0.4), undoing the label-value
/// escapes.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..end];
    if !is_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut labels = Vec::new();
    let mut rest = &line[end..];
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = inner.split_once("=\"").ok_or("label without =\"")?;
            if !is_label_name(key) {
                return Err(format!("bad label name {key:?}"));
            }
            let mut value = String::new();
            let mut chars = after.char_indices();
            let close = loop {
                match chars.next().ok_or("unterminated label value")? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        c => return Err(format!("bad escape \\{c}")),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.push((key.to_string(), value));
            inner = &after[close + 1..];
            if let Some(next) = inner.strip_prefix(',') {
                inner = next;
            } else if !inner.starts_with('}') {
                return Err("labels not separated by ,".into());
            }
        }
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
    };
    Ok((name.to_string(), labels, value))
}

/// Checks a whole exposition as Prometheus text format 0.0.4 and returns its samples: every
/// family has one HELP then one TYPE line before its samples; every sample belongs to the
/// family above it (a histogram's `_bucket`, `_sum` and `_count`); counters end in `_total`
/// (once); no series is repeated; a histogram's buckets are cumulative, end at `+Inf` and equal
/// its count.
fn check_exposition(body: &str) -> Result<Vec<Sample>, String> {
    if !body.ends_with('\n') {
        return Err("no final newline".into());
    }
    let mut families = BTreeSet::new();
    let mut series = BTreeSet::new();
    let mut samples = Vec::new();
    let (mut help, mut family): (Option<String>, Option<(String, String)>) = (None, None);
    // A histogram's buckets so far (le, cumulative count), checked at its `_count`.
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for (n, line) in body.lines().enumerate() {
        let fail = |why: String| format!("line {}: {why}: {line:?}", n + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest
                .split_once(' ')
                .ok_or_else(|| fail("empty HELP".into()))?;
            if text.trim().is_empty() || !is_metric_name(name) {
                return Err(fail("bad HELP".into()));
            }
            if !families.insert(name.to_string()) {
                return Err(fail("family described twice".into()));
            }
            (help, family) = (Some(name.to_string()), None);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| fail("bad TYPE".into()))?;
            if help.as_deref() != Some(name) {
                return Err(fail("TYPE without its HELP just before".into()));
            }
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(fail("unknown type".into()));
            }
            if kind == "counter" && (!name.ends_with("_total") || name.ends_with("_total_total")) {
                return Err(fail("counter not named …_total".into()));
            }
            family = Some((name.to_string(), kind.to_string()));
            buckets.clear();
        } else if line.starts_with('#') || line.is_empty() {
            return Err(fail("unexpected line".into()));
        } else {
            let (name, kind) = family
                .clone()
                .ok_or_else(|| fail("sample before any TYPE".into()))?;
            let (sample_name, labels, value) = parse_sample(line).map_err(fail)?;
            let suffix = sample_name
                .strip_prefix(name.as_str())
                .ok_or_else(|| fail(format!("sample outside its family {name}")))?;
            let allowed: &[&str] = match kind.as_str() {
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                _ => &[""],
            };
            if !allowed.contains(&suffix) {
                return Err(fail(format!("sample outside its family {name}")));
            }
            if !series.insert(line.rsplit_once(' ').map(|(s, _)| s.to_string())) {
                return Err(fail("series repeated".into()));
            }
            if kind == "histogram" {
                match suffix {
                    "_bucket" => {
                        let le = labels
                            .iter()
                            .find(|(k, _)| k == "le")
                            .ok_or_else(|| fail("bucket without le".into()))?;
                        let le: f64 = match le.1.as_str() {
                            "+Inf" => f64::INFINITY,
                            v => v.parse().map_err(|_| fail("bad le".into()))?,
                        };
                        if let Some(&(last_le, last)) = buckets.last() {
                            if le <= last_le || value < last {
                                return Err(fail("buckets not cumulative".into()));
                            }
                        }
                        buckets.push((le, value));
                    }
                    "_count" => match buckets.last() {
                        Some(&(le, inf)) if le == f64::INFINITY && inf == value => {}
                        _ => return Err(fail("+Inf bucket missing or not the count".into())),
                    },
                    _ => {}
                }
            }
            samples.push((sample_name, labels, value));
        }
    }
    Ok(samples)
}

/// The value of the series written exactly as `series` (name and labels) in `body`.
fn value(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_serves_valid_exposition_text_that_moves_with_requests() {
    let server = SampleServer::start("exposition").await;
    let (status, head, before) = fetch(server.ops_addr, "/metrics").await;
    assert_eq!(status, 200);
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type").then(|| v.trim())
        })
        .unwrap_or_else(|| panic!("no content type in {head}"));
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let samples = check_exposition(&before).unwrap_or_else(|e| panic!("{e}\n{before}"));
    assert!(samples.len() > 100, "{} samples", samples.len());
    // Before any reload, the first scrape already has what the start loaded (each file's
    // result and when) and the certificate's expiry: the panels and alerts have series.
    for series in [
        "gatehouse_reload_success{file=\"trust\"} 1",
        "gatehouse_reload_success{file=\"scanners\"} 1",
        "gatehouse_reload_success{file=\"tls\"} 1",
        "gatehouse_reload_timestamp_seconds{file=\"tls\"} ",
        "gatehouse_certificate_expiry_timestamp_seconds{certificate=\"server\"} ",
        "gatehouse_reloads_completed_total 0",
    ] {
        assert!(before.contains(series), "{series} missing:\n{before}");
    }

    // The checker itself: each defect is caught.
    for bad in [
        "x 1\n",
        "# HELP x h\n# TYPE x counter\nx_total 1\n",
        "# HELP x_total h\n# TYPE x_total counter\nx_total 1\nx_total 2\n",
        "# HELP x_total_total h\n# TYPE x_total_total counter\nx_total_total 1\n",
        "# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
        "# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_count 2\n",
        "# HELP g h\n# TYPE g gauge\ng{a=\"1} 1\n",
        "# HELP g h\n# TYPE g gauge\ng one\n",
        "# HELP g h\n# TYPE g gauge\ng 1",
    ] {
        assert!(check_exposition(bad).is_err(), "accepted: {bad}");
    }

    // Requests move the counters: a ping, and a token that is not one (denied malformed).
    let client = server.client().await;
    client.ping().await.unwrap();
    let verdict = client.verify(b"not a token", None).await.unwrap();
    assert_eq!(verdict.reason, Reason::Malformed);
    let (ping, verify) = (
        "gatehouse_requests_total{kind=\"ping\"}",
        "gatehouse_requests_total{kind=\"verify\"}",
    );
    let malformed = "gatehouse_verdicts_total{role=\"gate\",reason=\"malformed\"}";
    let latency = "gatehouse_request_duration_seconds_count";
    // The latency is recorded just after the response is written: wait for it.
    let mut after = String::new();
    for _ in 0..200 {
        after = get(server.ops_addr, "/metrics").await.1;
        if value(&after, latency) >= value(&before, latency) + 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check_exposition(&after).unwrap_or_else(|e| panic!("{e}\n{after}"));
    for (series, moved) in [(ping, 1.0), (verify, 1.0), (malformed, 1.0), (latency, 2.0)] {
        assert_eq!(
            value(&after, series) - value(&before, series),
            moved,
            "{series}\n{after}"
        );
    }
    assert_eq!(value(&after, "gatehouse_connections"), 1.0, "{after}");
    assert!(value(&after, "process_cpu_seconds_total") > 0.0, "{after}");
    assert!(value(&after, "process_open_fds") > 0.0, "{after}");

    client.close().await;
    server.stop().await;
}
