//! `deploy/prometheus/alerts.yml` against real nodes. Each test starts gatehouse nodes in
//! process (`server::run` on loopback ports, configured from the sample configuration) in one
//! state, scrapes their real `/metrics` over HTTP as Prometheus does, and hands the scrapes to
//! `promtool test rules`, which asserts that the alerts of that state fire, with their labels
//! and annotations, and that every other alert of the file stays silent; on a healthy fleet,
//! none fires. `promtool check rules` checks the file itself.
//!
//! A scrape is one instant; the rules look at minutes. A scrape becomes an hour of input
//! series: a gauge holds its scraped value, and a counter or histogram series (cumulative)
//! starts at 0 and grows by its scraped value every minute, as if the node did again each
//! minute what it had done up to the scrape. Counter growth is thus synthesized by scaling the
//! scraped values; rates are the scraped value / 60 per second, and every ratio between them
//! (busy over all verdicts, the latency histogram's buckets) is the node's own. promtool's clock
//! starts at 0, so gauges that are Unix times are moved by the offset between the scrape and
//! the evaluation time: their distance from "now" is what the node reported. Every series gets
//! the `job` and `instance` labels a scrape adds, and a live node an `up` of 1; a stopped node
//! is scraped too, and the failed scrape is an `up` of 0, as in Prometheus.
//!
//! promtool is required: without it these tests fail, they do not skip
//! (`scripts/prometheus-install`, which `scripts/test` runs, installs it); Redis comes from
//! `scripts/redis-install`. The tests run one at a time (a lock), so one state's load is not
//! another's latency. Every wait is bounded; every server, Redis and directory a test starts is
//! stopped or removed, also when the test fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gatehouse_engine::client::{ClientIdentity, ScannerClient};
use gatehouse_engine::dev::pki::DevPki;
use gatehouse_engine::dev::population::{
    credential, derive_id, derive_key, issuer_key, trust_list, Holder,
};
use gatehouse_engine::dev::redis::RedisServer;
use gatehouse_engine::server::{self, format_unix, ServeConfig, ServerError, SAMPLE_CONFIG};
use gatehouse_engine::{RevocationKey, Role, Scanner, ScannerRegistry, DEFAULT_GATE_ADMITS};
use gatehouse_protocol::{
    PrivateKey, Reason, RevocationEntry, RevocationKind, RevocationList, FRAME_HEADER_LEN,
};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// The scrape job the rules expect (`up{job="gatehouse"}`).
const JOB: &str = "gatehouse";
/// Minutes of input series.
const MINUTES: u64 = 60;
/// When promtool evaluates the alerts: past every rule's rate window and `for:`.
const EVAL_MINUTE: u64 = 45;
/// The nodes' allowed clock skew (the sample configuration's).
const SKEW: u64 = 5;
const SCANNER: &str = "gate-a";
/// Every alert of the file, each fired by one test below.
const COVERED: &[&str] = &[
    "GatehouseNodeDown",
    "GatehouseReplayStoreDown",
    "GatehouseRevocationsStale",
    "GatehouseRevocationFeedFailing",
    "GatehouseRevocationStatesDiverge",
    "GatehouseCertificateExpiresSoon",
    "GatehouseBusyRateHigh",
    "GatehouseMemoryBudgetSpent",
    "GatehouseLatencyOverBudget",
];

/// One test at a time: the latency of one state must not be another state's load.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Configuration edits (each must match the sample configuration).
const NO_FILE: (&str, &str) = ("revocations = \"revocations.cbor\"\n", "");
const MEMORY: &str = "store = \"memory\"\n";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn rules_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/alerts.yml")
}

/// `promtool`: `$GATEHOUSE_PROMTOOL`, else the first on the PATH. Missing, the test fails.
fn promtool() -> PathBuf {
    if let Some(p) = std::env::var_os("GATEHOUSE_PROMTOOL") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "GATEHOUSE_PROMTOOL={} is not a file",
            p.display()
        );
        return p;
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("promtool"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "promtool is not installed (not on the PATH, GATEHOUSE_PROMTOOL unset): run \
                 scripts/prometheus-install (scripts/test runs it), which installs Debian's \
                 prometheus package"
            )
        })
}

/// Waits until the second after this one: a node on the memory store, and a new life of a
/// shared store, deny tokens signed up to their start plus the skew (`node_restarted`), and
/// the tokens of these tests are signed at the edge of the skew ([`Site::token`]).
async fn past_fences() {
    let into = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_millis();
    tokio::time::sleep(Duration::from_millis(u64::from(1000 - into) + 50)).await;
}

/// A directory with a dev PKI, the trust list (an issuer and a revocation key), the scanner
/// registry, and the nodes' configurations; removed when dropped.
struct Site {
    dir: PathBuf,
    pki: DevPki,
    issuer: PrivateKey,
    revocation: PrivateKey,
    next: AtomicU64,
}

impl Site {
    fn new(name: &str) -> Site {
        let dir =
            std::env::temp_dir().join(format!("gatehouse-alerts-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pki = DevPki::generate(&[SCANNER.to_string()]).unwrap();
        pki.write_to(&dir.join("pki")).unwrap();
        let issuer = issuer_key(25);
        let revocation = derive_key("alerts test revocation key (TEST ONLY)", 0);
        let mut trust = trust_list(&issuer);
        trust.insert_revocation_key(RevocationKey {
            name: "test revocations".into(),
            public: revocation.public().clone(),
        });
        std::fs::write(dir.join("trust.toml"), trust.to_toml()).unwrap();
        let mut registry = ScannerRegistry::new();
        registry.insert(Scanner {
            id: SCANNER.into(),
            role: Role::Gate {
                unit: "1".parse().unwrap(),
                admits: DEFAULT_GATE_ADMITS.to_vec(),
            },
            mdoc: Default::default(),
        });
        std::fs::write(dir.join("scanners.toml"), registry.to_toml()).unwrap();
        Site {
            dir,
            pki,
            issuer,
            revocation,
            next: AtomicU64::new(0),
        }
    }

    /// Writes `NAME.toml`: the sample configuration with both listeners on loopback (the tests
    /// bind the sockets themselves), one verification thread and small tables, then `edits`
    /// (each must match once), then `extra` appended.
    fn config(&self, name: &str, edits: &[(&str, &str)], extra: &str) -> PathBuf {
        let mut text = SAMPLE_CONFIG.to_string();
        let base = [
            ("0.0.0.0:4433", "127.0.0.1:0"),
            ("127.0.0.1:9090", "127.0.0.1:0"),
            ("threads = 0", "threads = 1"),
            ("replay_capacity = 750000", "replay_capacity = 100000"),
            (
                "issuer_cache_capacity = 1310720",
                "issuer_cache_capacity = 1024",
            ),
        ];
        for (from, to) in base.iter().chain(edits) {
            assert!(
                text.contains(from),
                "the sample configuration has no `{from}`"
            );
            text = text.replacen(from, to, 1);
        }
        text.push_str(extra);
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A revocation snapshot at epoch 1 revoking `revoked`, as a local file (CBOR).
    fn write_list(&self, name: &str, revoked: Vec<RevocationEntry>) {
        let list = RevocationList {
            epoch: 1,
            revoke: revoked,
            ..RevocationList::default()
        };
        std::fs::write(self.dir.join(name), list.encode()).unwrap();
    }

    /// A feed directory `name` at epoch 1 (snapshot 1, signed by the revocation key).
    fn publish_feed(&self, name: &str, revoked: Vec<RevocationEntry>) {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let list = RevocationList {
            epoch: 1,
            revoke: revoked,
            ..RevocationList::default()
        };
        std::fs::write(
            dir.join("snapshot-1.cose"),
            list.sign(&self.revocation).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.join("head.json"), r#"{"epoch": 1, "snapshot": 1}"#).unwrap();
    }

    fn holder(&self) -> Holder {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Holder::issue(
            &self.issuer,
            derive_key("alerts test device", n),
            credential(now(), n),
        )
        .unwrap()
    }

    /// A fresh token of `h`, from a phone whose clock runs the whole allowed skew ahead.
    fn token(&self, h: &Holder) -> Vec<u8> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        h.present(now() + SKEW, derive_id("alerts test nonce", n), None)
            .unwrap()
    }

    async fn client(&self, node: &Node) -> ScannerClient {
        let s = self.pki.scanner(SCANNER).unwrap();
        let identity = ClientIdentity {
            roots: vec![self.pki.ca.cert_der.clone()],
            chain: s.chain(),
            key: s.key(),
        };
        timeout(
            Duration::from_secs(10),
            ScannerClient::connect(node.quic, "localhost", identity),
        )
        .await
        .expect("connected in time")
        .unwrap()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Someone else's revoked credential.
fn entry(n: u64) -> RevocationEntry {
    RevocationEntry {
        kind: RevocationKind::Credential,
        id: derive_id("alerts test revoked", n),
    }
}

/// The `[replay]` lines of a node on `redis`.
fn redis_store(redis: &RedisServer) -> String {
    format!(
        "store = \"redis\"\nurls = [\"{}\"]\ntimeout_ms = 1000\nprobe_interval_ms = 100\n",
        redis.url()
    )
}

/// A `[revocations]` section following the feed directory `dir` every half second.
fn feed_section(dir: &str, max_age_secs: u64) -> String {
    format!(
        "\n[revocations]\nfeed = \"{dir}\"\ninterval_secs = 0.5\nmax_age_secs = {max_age_secs}\n"
    )
}

/// A node: `server::run` on loopback, as `gatehouse serve` runs it, with a stop signal. A node
/// dropped without [`Node::stop`] (a failed test) is aborted.
struct Node {
    /// The operations endpoint's address: the `instance` Prometheus would scrape.
    ops: SocketAddr,
    quic: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
}

impl Node {
    async fn start(config: &Path) -> Node {
        let mut parts = ServeConfig::load(config).unwrap().into_parts().unwrap();
        parts.connect_store().await.unwrap();
        let engine = parts.build_engine().unwrap();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let quic = socket.local_addr().unwrap();
        let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ops_addr = ops.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(
            engine,
            parts.server,
            socket,
            Some(ops),
            async move {
                let _ = stopped.await;
            },
        ));
        Node {
            ops: ops_addr,
            quic,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn instance(&self) -> String {
        self.ops.to_string()
    }

    /// Drains and stops the node (bounded).
    async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(task) = self.task.take() {
            timeout(Duration::from_secs(20), task)
                .await
                .expect("the node stops in time")
                .unwrap()
                .unwrap();
        }
    }

    /// One GET on the operations endpoint; `None` when it does not answer.
    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let r = gatehouse_testkit::get(self.ops, path).await.ok()?;
        (r.status != 0).then_some((r.status, r.body))
    }

    /// What Prometheus would read: `/metrics`, or a failed scrape.
    async fn scrape(&self) -> Scrape {
        let body = match self.get("/metrics").await {
            Some((200, body)) => Some(body),
            _ => None,
        };
        Scrape {
            instance: self.instance(),
            at: now(),
            body,
        }
    }

    /// Scrapes until `ok` holds (at most 20 s); returns that scrape.
    async fn scrape_until(&self, what: &str, ok: impl Fn(&Scrape) -> bool) -> Scrape {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.scrape().await;
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{}: never {what}; last scrape:\n{}",
                self.instance(),
                s.body.as_deref().unwrap_or("(failed)")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// One scrape of one node.
struct Scrape {
    instance: String,
    /// When it was taken, Unix seconds.
    at: u64,
    /// The exposition text; `None` when the scrape failed (`up` 0).
    body: Option<String>,
}

impl Scrape {
    /// The value of the sample written exactly `series` (name and labels, as exported).
    fn value(&self, series: &str) -> Option<f64> {
        self.body
            .as_deref()?
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// The sum of the samples of `name` whose labels contain `label` (`reason="busy"`), or
    /// of all of them when `label` is empty.
    fn sum(&self, name: &str, label: &str) -> f64 {
        let Some(body) = self.body.as_deref() else {
            return 0.0;
        };
        body.lines()
            .filter_map(|l| {
                let labels = l.strip_prefix(name)?.strip_prefix('{')?;
                let (labels, value) = labels.rsplit_once("} ")?;
                labels.contains(label).then(|| value.parse::<f64>().ok())?
            })
            .sum()
    }

    /// The scrape as promtool input series (see the module documentation).
    fn input_series(&self) -> Vec<Value> {
        let target = format!("job=\"{JOB}\",instance=\"{}\"", self.instance);
        let up = f64::from(u8::from(self.body.is_some()));
        let mut out = vec![json!({"series": format!("up{{{target}}}"), "values": held(up)})];
        let Some(body) = &self.body else {
            return out;
        };
        let mut types: BTreeMap<&str, &str> = BTreeMap::new();
        for line in body.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let (name, kind) = t.split_once(' ').unwrap();
                types.insert(name, kind);
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // No timestamps in this exposition: the value is the last field.
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("not a sample: {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.strip_suffix('}').unwrap()),
                None => (series, ""),
            };
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| matches!(types.get(f), Some(&"histogram" | &"summary")))
                .unwrap_or(name);
            let cumulative = matches!(
                types.get(family),
                Some(&"counter" | &"histogram" | &"summary")
            );
            let values = if cumulative {
                // Grows by the scraped value each minute (counter growth synthesized).
                format!("0+{}x{MINUTES}", number(value))
            } else if is_unix_time(name) {
                // The scrape's instant becomes the evaluation's.
                held(value - self.at as f64 + (EVAL_MINUTE * 60) as f64)
            } else {
                held(value)
            };
            let labels = if labels.is_empty() {
                target.clone()
            } else {
                format!("{labels},{target}")
            };
            out.push(json!({"series": format!("{name}{{{labels}}}"), "values": values}));
        }
        out
    }
}

/// Gauges whose value is a Unix time.
fn is_unix_time(name: &str) -> bool {
    name.ends_with("_timestamp_seconds")
        || name == "process_start_time_seconds"
        || name == "gatehouse_replay_fence_seconds"
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// A value held for the whole series.
fn held(v: f64) -> String {
    format!("{}+0x{MINUTES}", number(v))
}

/// One alert of the rules file.
struct Rule {
    name: String,
    /// Its `for:`.
    hold: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

fn rules() -> Vec<Rule> {
    let text = std::fs::read_to_string(rules_path()).unwrap();
    let doc: Value = serde_norway::from_str(&text).unwrap();
    let strings = |v: &Value| -> BTreeMap<String, String> {
        v.as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for group in doc["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            out.push(Rule {
                name: rule["alert"].as_str().unwrap().to_string(),
                hold: rule["for"].as_str().map(str::to_string),
                labels: strings(&rule["labels"]),
                annotations: strings(&rule["annotations"]),
            });
        }
    }
    out
}

/// Expands `{{ $labels.NAME }}`, the one template form the file uses, with the alert's labels.
fn expand(template: &str, labels: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let (inner, after) = rest[i + 2..]
            .split_once("}}")
            .unwrap_or_else(|| panic!("unclosed template in {template:?}"));
        let name = inner
            .trim()
            .strip_prefix("$labels.")
            .unwrap_or_else(|| panic!("alerts.yml: only {{{{ $labels.NAME }}}}: {inner:?}"));
        let value = labels.get(name).unwrap_or_else(|| {
            panic!("alerts.yml: label {name} is not on the alert: {template:?}")
        });
        out.push_str(value);
        rest = after;
    }
    out.push_str(rest);
    out
}

/// An alert expected to fire, with the labels of its series (the rule's own are added).
struct Fire {
    alert: &'static str,
    labels: BTreeMap<String, String>,
}

impl Fire {
    /// A per-node alert of `node`, with `extra` labels kept from the metric.
    fn node(alert: &'static str, node: &Node, extra: &[(&str, &str)]) -> Fire {
        let mut labels: BTreeMap<String, String> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.insert("job".into(), JOB.into());
        labels.insert("instance".into(), node.instance());
        Fire { alert, labels }
    }
}

/// Runs `promtool test rules` over the scrapes of one state: each alert in `expected` fires
/// (once per entry, exactly those labels and annotations), and every other alert of the file,
/// except those in `may_fire`, is silent.
fn assert_alerts(state: &str, scrapes: &[Scrape], expected: &[Fire], may_fire: &[&str]) {
    let rules = rules();
    for f in expected {
        assert!(
            rules.iter().any(|r| r.name == f.alert),
            "{} is not in alerts.yml",
            f.alert
        );
    }
    let tests: Vec<Value> = rules
        .iter()
        .filter(|r| !may_fire.contains(&r.name.as_str()))
        .map(|rule| {
            let exp: Vec<Value> = expected
                .iter()
                .filter(|f| f.alert == rule.name)
                .map(|f| {
                    let annotations: BTreeMap<&String, String> = rule
                        .annotations
                        .iter()
                        .map(|(k, t)| (k, expand(t, &f.labels)))
                        .collect();
                    let mut labels = f.labels.clone();
                    labels.extend(rule.labels.clone());
                    json!({"exp_labels": labels, "exp_annotations": annotations})
                })
                .collect();
            json!({
                "eval_time": format!("{EVAL_MINUTE}m"),
                "alertname": rule.name,
                "exp_alerts": exp,
            })
        })
        .collect();
    let series: Vec<Value> = scrapes.iter().flat_map(Scrape::input_series).collect();
    // JSON is YAML: promtool reads it as its test file.
    let test = json!({
        "rule_files": [rules_path()],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": tests,
        }],
    });
    let file = std::env::temp_dir().join(format!(
        "gatehouse-alerts-{state}-{}.json",
        std::process::id()
    ));
    std::fs::write(&file, serde_json::to_vec_pretty(&test).unwrap()).unwrap();
    let out = Command::new(promtool())
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .expect("run promtool");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "{state}: promtool test rules failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_rules_file_is_valid_and_every_alert_has_a_state_that_fires_it() {
    let out = Command::new(promtool())
        .args(["check", "rules"])
        .arg(rules_path())
        .output()
        .expect("run promtool");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "promtool check rules:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = rules();
    assert!(
        text.contains(&format!("SUCCESS: {} rules found", rules.len())),
        "{text}"
    );
    let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, COVERED, "each alert needs a test that fires it");
    for r in &rules {
        assert!(r.hold.is_some(), "{}: no for:", r.name);
        assert!(
            matches!(
                r.labels.get("severity").map(String::as_str),
                Some("critical" | "warning")
            ),
            "{}: severity",
            r.name
        );
        for a in ["summary", "description"] {
            assert!(r.annotations.contains_key(a), "{}: no {a}", r.name);
        }
    }
}

/// The selectors of metrics (`gatehouse_…`, `process_…`) in a PromQL expression: each name
/// and the label matchers in braces after it (empty without braces).
fn selectors(expr: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            // A string outside a selector (none in these queries, but skipped whole).
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += 1;
            }
            i += 1;
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut matchers = String::new();
            if chars.get(i) == Some(&'{') {
                let end = chars[i..].iter().position(|c| *c == '}').unwrap() + i;
                matchers = chars[i + 1..end].iter().collect();
                i = end + 1;
            }
            if word.starts_with("gatehouse_") || word.starts_with("process_") {
                out.push((word, matchers));
            }
            continue;
        }
        i += 1;
    }
    out
}

#[test]
fn every_dashboard_query_is_filtered_by_the_job_variable() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/gatehouse.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let used = selectors(expr);
            assert!(!used.is_empty(), "{expr}");
            for (name, matchers) in used {
                assert!(
                    matchers.split(',').any(|m| m.trim() == "job=~\"$job\""),
                    "panel {:?}: {name} is not filtered by $job in `{expr}`",
                    panel["title"]
                );
            }
            queries += 1;
        }
    }
    assert!(queries >= 30, "{queries} queries");
    // The checker itself.
    assert_eq!(
        selectors("sum(rate(gatehouse_x_total{a=\"b\",job=~\"$job\"}[5m])) / gatehouse_y"),
        [
            (
                "gatehouse_x_total".to_string(),
                "a=\"b\",job=~\"$job\"".to_string()
            ),
            ("gatehouse_y".to_string(), String::new()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_fleet_fires_no_alert() {
    let _one = ONE_AT_A_TIME.lock().await;
    let site = Site::new("healthy");
    let redis = RedisServer::start().expect("start redis-server (scripts/redis-install)");
    site.publish_feed("feed", vec![entry(1)]);
    let store = redis_store(&redis);
    let edits = [NO_FILE, (MEMORY, store.as_str())];
    let feed = feed_section("feed", 300);
    let mut a = Node::start(&site.config("a", &edits, &feed)).await;
    let mut b = Node::start(&site.config("b", &edits, &feed)).await;
    past_fences().await;
    let h = site.holder();
    let mut scrapes = Vec::new();
    for node in [&a, &b] {
        node.scrape_until("confirmed by the feed", |s| {
            s.value("gatehouse_revocation_stale") == Some(0.0)
        })
        .await;
        let client = site.client(node).await;
        for _ in 0..10 {
            let v = client.verify(&site.token(&h), None).await.unwrap();
            assert_eq!(v.reason, Reason::Accepted);
        }
        client.close().await;
        assert_eq!(node.get("/readyz").await.unwrap().0, 200);
        scrapes.push(node.scrape().await);
    }
    assert_alerts("healthy", &scrapes, &[], &[]);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_fires_node_down() {
    let _one = ONE_AT_A_TIME.lock().await;
    let site = Site::new("down");
    let mut node = Node::start(&site.config("a", &[NO_FILE], "")).await;
    assert!(node.scrape().await.body.is_some());
    node.stop().await;
    let scrape = node.scrape().await;
    assert!(scrape.body.is_none(), "a stopped node still answers");
    assert_alerts(
        "down",
        &[scrape],
        &[Fire::node("GatehouseNodeDown", &node, &[])],
        &[],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_redis_is_down_fires_replay_store_down() {
    let _one = ONE_AT_A_TIME.lock().await;
    let site = Site::new("store");
    let mut redis = RedisServer::start().expect("start redis-server (scripts/redis-install)");
    let store = redis_store(&redis);
    let mut node = Node::start(&site.config("a", &[NO_FILE, (MEMORY, &store)], "")).await;
    past_fences().await;
    let h = site.holder();
    let client = site.client(&node).await;
    let v = client.verify(&site.token(&h), None).await.unwrap();
    assert_eq!(v.reason, Reason::Accepted);
    redis.stop();
    let v = client.verify(&site.token(&h), None).await.unwrap();
    assert_eq!(v.reason, Reason::Unavailable);
    client.close().await;
    let scrape = node
        .scrape_until("saw its store down", |s| {
            s.value("gatehouse_replay_store_up{store=\"redis\"}") == Some(0.0)
        })
        .await;
    assert_eq!(node.get("/readyz").await.unwrap().0, 503);
    assert_alerts(
        "store",
        &[scrape],
        &[Fire::node(
            "GatehouseReplayStoreDown",
            &node,
            &[("store", "redis")],
        )],
        &[],
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_feed_is_gone_past_its_maximum_age_fires_revocations_stale() {
    let _one = ONE_AT_A_TIME.lock().await;
    let site = Site::new("stale");
    site.publish_feed("feed", vec![]);
    let mut node = Node::start(&site.config("a", &[NO_FILE], &feed_section("feed", 2))).await;
    node.scrape_until("confirmed by the feed", |s| {
        s.value("gatehouse_revocation_stale") == Some(0.0)
    })
    .await;
    past_fences().await;
    // The feed becomes unreachable.
    std::fs::rename(site.dir.join("feed"), site.dir.join("feed-gone")).unwrap();
    let scrape = node
        .scrape_until("stale", |s| {
            s.value("gatehouse_revocation_stale") == Some(1.0)
        })
        .await;
    let client = site.client(&node).await;
    let v = client
        .verify(&site.token(&site.holder()), None)
        .await
        .unwrap();
    assert_eq!(v.reason, Reason::RevocationsStale, "fails closed");
    client.close().await;
    assert_eq!(node.get("/readyz").await.unwrap().0, 503);
    assert_alerts(
        "stale",
        &[scrape],
        &[Fire::node("GatehouseRevocationsStale", &node, &[])],
        &[],
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_feed_fails_within_its_maximum_age_fires_feed_failing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let site = Site::new("failing");
    site.publish_feed("feed", vec![]);
    let mut node = Node::start(&site.config("a", &[NO_FILE], &feed_section("feed", 300))).await;
    node.scrape_until("confirmed by the feed", |s| {
        s.value("gatehouse_revocation_stale") == Some(0.0)
    })
    .await;
    std::fs::rename(site.dir.join("feed"), site.dir.join("feed-gone")).unwrap();
    let scrape = node
        .scrape_until("counted a failed pull", |s| {
            s.value("gatehouse_revocation_feed_errors_total")
                .is_some_and(|n| n >= 1.0)
        })
        .await;
    assert_eq!(scrape.value("gatehouse_revocation_stale"), Some(0.0));
    assert_alerts(
        "failing",
        &[scrape],
        &[Fire::node("GatehouseRevocationFeedFailing", &node, &[])],
        &[],
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_with_different_revocation_lists_fire_states_diverge() {
    let _one = ONE_AT_A_TIME.lock().await;
    let site = Site::new("diverge");
    // The same epoch, one entry apart: only the state's digest tells them apart.
    site.write_list("a.cbor", vec![]);
    site.write_list("b.cbor", vec![entry(7)]);
    let file = |name: &'static str| ("revocations = \"revocations.cbor\"\n", name);
    let mut a = Node::start(&site.config("a", &[file("revocations = \"a.cbor\"\n")], "")).await;
    let mut b = Node::start(&site.config("b", &[file("revocations = \"b.cbor\"\n")], "")).await;
    let scrapes = [a.scrape().await, b.scrape().await];
    assert_eq!(
        scrapes[0].value("gatehouse_revocation_epoch"),
        scrapes[1].value("gatehouse_revocation_epoch")
    );
    let digests: Vec<String> = scrapes
        .iter()
        .map(|s| {
            let body = s.body.as_deref().unwrap();
            body.lines()
                .find(|l| l.starts_with("gatehouse_revocation_state_info{"))
                .unwrap_or_else(|| panic!("no gatehouse_revocation_state_info in\n{body}"))
                .to_string()
        })
        .collect();
    assert_ne!(digests[0], digests[1]);
    let mut labels = BTreeMap::new();
    labels.insert("job".to_string(), JOB.to_string());
    assert_alerts(
        "diverge",
        &scrapes,
        &[Fire {
            alert: "GatehouseRevocationStatesDiverge",
            labels,
        }],
        &[],
    );
    a.stop().await;
    b.stop().await;
}

/// A self-signed server certificate for `localhost` that expires at the first midnight (UTC)
/// `days` days from now, and its key, in PEM. The node serves it; no scanner needs to trust it
/// for the node's `/metrics` to report its expiry.
fn short_lived_certificate(days: u64) -> (String, String) {
    let date = format_unix(now() + days * 86_400);
    let ymd: Vec<u32> = date[..10].split('-').map(|n| n.parse().unwrap()).collect();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(ymd[0] as i32, ymd[1] as u8, ymd[2] as u8);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_expiring_in_days_fires_certificate_expires_soon() {
    let _one = ONE_AT_A_TIME.lock().await;
    let site = Site::new("certificate");
    let (cert, key) = short_lived_certificate(3);
    std::fs::write(site.dir.join("short.pem"), cert).unwrap();
    std::fs::write(site.dir.join("short.key"), key).unwrap();
    let edits = [
        NO_FILE,
        ("cert = \"pki/server.pem\"", "cert = \"short.pem\""),
        ("key = \"pki/server.key\"", "key = \"short.key\""),
    ];
    let mut node = Node::start(&site.config("a", &edits, "")).await;
    let server = "gatehouse_certificate_expiry_timestamp_seconds{certificate=\"server\"}";
    let scrape = node
        .scrape_until("reported its certificate", |s| s.value(server).is_some())
        .await;
    let expiry = scrape.value(server).unwrap();
    let left = expiry - now() as f64;
    assert!(
        (86_400.0..4.0 * 86_400.0).contains(&left),
        "expires in {left} s"
    );
    assert_alerts(
        "certificate",
        &[scrape],
        &[Fire::node(
            "GatehouseCertificateExpiresSoon",
            &node,
            &[("certificate", "server")],
        )],
        &[],
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_its_queue_full_fires_busy_rate_high() {
    let _one = ONE_AT_A_TIME.lock().await;
    let site = Site::new("busy");
    let mut node =
        Node::start(&site.config("a", &[NO_FILE, ("queue = 4096", "queue = 8")], "")).await;
    past_fences().await;
    let client = site.client(&node).await;
    let h = site.holder();
    // Rounds of 8 requests of 32 tokens at once into a queue of 8: the first is taken whole
    // (an idle server takes any one request), the others find it full and are answered busy.
    let mut scrape = node.scrape().await;
    for _ in 0..50 {
        let batch: Vec<Vec<u8>> = (0..32).map(|_| site.token(&h)).collect();
        let requests = (0..8).map(|_| client.verify_batch(&batch));
        for r in futures_util::future::join_all(requests).await {
            r.unwrap();
        }
        scrape = node.scrape().await;
        let busy = scrape.sum("gatehouse_verdicts_total", "reason=\"busy\"");
        if busy * 5.0 >= scrape.sum("gatehouse_verdicts_total", "") {
            break;
        }
    }
    client.close().await;
    let busy = scrape.sum("gatehouse_verdicts_total", "reason=\"busy\"");
    assert!(busy > 0.0, "never busy");
    // A node that sheds load may also be slow: the latency alert is not this test's subject.
    assert_alerts(
        "busy",
        &[scrape],
        &[Fire::node("GatehouseBusyRateHigh", &node, &[])],
        &["GatehouseLatencyOverBudget"],
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_over_its_memory_budget_fires_memory_budget_spent() {
    let _one = ONE_AT_A_TIME.lock().await;
    let site = Site::new("budget");
    // 256 KiB in all, 64 KiB of request bodies per connection (and per request).
    let edits = [
        NO_FILE,
        ("max_frame_body = 131072", "max_frame_body = 65536"),
        (
            "max_buffered_per_connection = 1048576",
            "max_buffered_per_connection = 65536",
        ),
        ("memory_budget = 167772160", "memory_budget = 262144"),
    ];
    let mut node = Node::start(&site.config("a", &edits, "")).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        let c = site.client(&node).await;
        c.ping().await.unwrap();
        clients.push(c);
    }
    // Three connections each start a 64 KiB request body and stall: with the connections'
    // own costs that leaves less than 64 KiB, and the fourth connection's request is refused
    // unread (OVER_BUDGET).
    let mut header = [0u8; FRAME_HEADER_LEN];
    header[0] = gatehouse_protocol::WIRE_VERSION;
    header[1] = gatehouse_protocol::kind::VERIFY_BATCH;
    header[2..].copy_from_slice(&65_536u32.to_be_bytes());
    let mut stalled = Vec::new();
    for c in &clients[..3] {
        let (mut send, recv) = c.connection().open_bi().await.unwrap();
        send.write_all(&header).await.unwrap();
        send.write_all(&[0u8; 1024]).await.unwrap();
        stalled.push((send, recv));
    }
    let mut refused = Vec::new();
    let mut scrape = node.scrape().await;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (mut send, recv) = clients[3].connection().open_bi().await.unwrap();
        send.write_all(&header).await.unwrap();
        refused.push((send, recv));
        tokio::time::sleep(Duration::from_millis(100)).await;
        scrape = node.scrape().await;
        if scrape.value("gatehouse_budget_busy_total") >= Some(1.0) {
            break;
        }
    }
    assert!(
        scrape.value("gatehouse_budget_busy_total") >= Some(1.0),
        "no request was refused over the budget:\n{}",
        scrape.body.as_deref().unwrap_or_default()
    );
    drop((stalled, refused));
    for c in &clients {
        c.close().await;
    }
    assert_alerts(
        "budget",
        &[scrape],
        &[Fire::node("GatehouseMemoryBudgetSpent", &node, &[])],
        &[],
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_given_a_burst_longer_than_the_budget_fires_latency_over_budget() {
    let _one = ONE_AT_A_TIME.lock().await;
    let site = Site::new("latency");
    // Room for the whole burst: nothing is answered busy, every request waits its turn on the
    // one verification thread.
    let edits = [
        NO_FILE,
        ("queue = 4096", "queue = 8192"),
        (
            "max_queued_per_scanner = 1024",
            "max_queued_per_scanner = 8192",
        ),
    ];
    let mut node = Node::start(&site.config("a", &edits, "")).await;
    past_fences().await;
    let client = site.client(&node).await;
    let h = site.holder();
    // 128 requests of 32 copies of one token at once: 4,096 full signature checks (a replay
    // is checked in full before it is found used).
    let batch = vec![site.token(&h); 32];
    let started = Instant::now();
    let requests = (0..128).map(|_| client.verify_batch(&batch));
    for r in futures_util::future::join_all(requests).await {
        assert!(r.unwrap().iter().all(|v| v.reason != Reason::Busy));
    }
    eprintln!("burst of 4096 tokens answered in {:?}", started.elapsed());
    client.close().await;
    let scrape = node.scrape().await;
    assert_alerts(
        "latency",
        &[scrape],
        &[Fire::node("GatehouseLatencyOverBudget", &node, &[])],
        &[],
    );
    node.stop().await;
}
