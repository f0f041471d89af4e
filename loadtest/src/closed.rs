//! Closed-loop scenarios on goose: each goose user is one scanner terminal that shows a token,
//! waits for the verdict, then waits for the next person (think time). Goose runs the test
//! plan (ramp up, hold, ramp down), judges thresholds, and writes its HTML, JSON and Markdown
//! reports; each QUIC request is recorded there with
//! [`GooseUser::record_custom_request_duration`] (method `QUIC`, one row per scenario).
//!
//! Scenarios (weights 6 : 3 : 1 : 1, as goose assigns users):
//! - **gate**: the terminal at a division's gate (or welfare gate); people of that division;
//! - **partner**: a shop's point of sale, any holder, military discount;
//! - **age**: a convenience-store counter, any holder, "19 or older";
//! - **adversarial**: replays of the user's last token, forged signatures, stale tokens and
//!   garbage, at any scanner.
//!
//! Every verdict is checked against the expected one; a mismatch is a failed request in goose's
//! report and fails the run. Closed loop means a slow engine slows the users down: latency here
//! is from send to answer, and coordinated omission applies — use the open-loop `rush` for the
//! gate rush's latency.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use gatehouse_engine::dev::population::{derive_id, derive_key};
use gatehouse_protocol::{Presentation, PrivateKey, Reason};
use goose::config::{GooseConfiguration, GooseDefault, GooseDefaultType};
use goose::prelude::*;
use hdrhistogram::Histogram;

use crate::expect::{expected, is_retry, repeated, Presented};
use crate::fleet::Fleet;
use crate::model::{Rng, ScannerSet};
use crate::summary::{histogram, latency, GooseSummary};
use crate::target::{self, Connections};

/// Knobs of a closed-loop run.
#[derive(Debug, Clone)]
pub struct ClosedOptions {
    /// Users (terminals) at the peak.
    pub users: usize,
    /// Seconds to start them all.
    pub ramp_up_secs: u64,
    /// Seconds to hold them.
    pub peak_secs: u64,
    /// Seconds to stop them.
    pub ramp_down_secs: u64,
    /// Think time between two people at a terminal.
    pub think: (Duration, Duration),
    /// Where goose writes its reports.
    pub report_dir: PathBuf,
    /// Goose thresholds (from the budget).
    pub thresholds: Vec<String>,
    /// Further goose arguments, passed as they are.
    pub goose_args: Vec<String>,
    /// The engine's local offset from UTC (age checks).
    pub utc_offset_secs: i32,
    /// How long a request may take.
    pub request_timeout: Duration,
}

struct Stats {
    hist: Histogram<u64>,
    verdicts: BTreeMap<String, u64>,
    requests: u64,
    mismatches: u64,
    errors: u64,
    examples: Vec<String>,
}

struct Ctx {
    fleet: Arc<Fleet>,
    scanners: Arc<ScannerSet>,
    conns: Arc<Connections>,
    gates: Vec<u16>,
    partners: Vec<u16>,
    ages: Vec<u16>,
    by_gate: HashMap<u16, Vec<u32>>,
    thieves: Vec<PrivateKey>,
    salt: u64,
    counter: AtomicU64,
    utc_offset_secs: i32,
    request_timeout: Duration,
    stats: Mutex<Stats>,
}

/// The last genuine token a user showed, for its next replay.
#[derive(Clone)]
struct LastToken {
    token: Arc<[u8]>,
    expect: Reason,
    scanner: u16,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Gate,
    Partner,
    Age,
    Adversarial,
}

impl Which {
    fn label(self) -> &'static str {
        match self {
            Which::Gate => "gate",
            Which::Partner => "partner",
            Which::Age => "age",
            Which::Adversarial => "adversarial",
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Ctx {
    fn rng(&self) -> Rng {
        Rng(self.salt
            ^ self
                .counter
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_mul(0x9e37_79b9))
    }

    /// Signs (on a blocking thread) what holder `h` shows, and the verdict it must get.
    async fn prepare(
        self: &Arc<Self>,
        h: usize,
        scanner: u16,
        presented: Presented,
    ) -> Result<(Arc<[u8]>, Reason), String> {
        let ctx = self.clone();
        tokio::task::spawn_blocking(move || {
            let now = unix_now();
            let n = ctx.counter.fetch_add(1, Ordering::Relaxed);
            let c = ctx.fleet.credential(h);
            let role = &ctx.scanners.roles[scanner as usize];
            let expect = expected(
                c,
                ctx.fleet.is_revoked(h),
                role,
                presented,
                now,
                ctx.utc_offset_secs,
            );
            if presented == Presented::Garbage {
                let mut g = vec![0xFF];
                g.extend_from_slice(&derive_id("gatehouse-loadtest goose garbage", n));
                return Ok((g.into(), expect));
            }
            let own;
            let key = if presented == Presented::Forged {
                &ctx.thieves[n as usize % ctx.thieves.len()]
            } else {
                own = PrivateKey::from_bytes(ctx.fleet.device_key(h)).map_err(|e| e.to_string())?;
                &own
            };
            let token = Presentation {
                credential: ctx.fleet.issued(h),
                timestamp: if presented == Presented::Stale {
                    now.saturating_sub(3600)
                } else {
                    now
                },
                nonce: derive_id("gatehouse-loadtest goose nonce", ctx.salt ^ n),
                challenge: None,
            }
            .sign(key)
            .map_err(|e| e.to_string())?;
            Ok((token.into(), expect))
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// A holder at random.
    fn any_holder(&self, rng: &mut Rng) -> usize {
        rng.below(self.fleet.len() as u64) as usize
    }

    /// A genuine token at the user's own gate, partner or age counter (`which`), signed.
    async fn genuine(self: &Arc<Self>, which: Which, user_index: usize, rng: &mut Rng) -> Shown {
        let pick = |list: &[u16], rng: &mut Rng| -> u16 {
            list.get(user_index % list.len().max(1))
                .copied()
                .unwrap_or(rng.below(self.scanners.ids.len() as u64) as u16)
        };
        let scanner = match which {
            Which::Gate => pick(&self.gates, rng),
            Which::Partner => pick(&self.partners, rng),
            _ => pick(&self.ages, rng),
        };
        let h = match self.by_gate.get(&scanner) {
            Some(list) if which == Which::Gate && !list.is_empty() => {
                list[rng.below(list.len() as u64) as usize] as usize
            }
            _ => self.any_holder(rng),
        };
        Shown {
            prepared: self.prepare(h, scanner, Presented::Genuine).await,
            scanner,
            genuine: true,
        }
    }

    /// An adversarial request at any scanner: a replay of the user's `last` token (a genuine
    /// one when it has none yet), a forgery, a stale token or garbage, one in four each.
    async fn adversarial(self: &Arc<Self>, last: Option<LastToken>, rng: &mut Rng) -> Shown {
        let roll = rng.below(4);
        match (roll, last) {
            (0, Some(l)) => Shown {
                prepared: Ok((l.token, repeated(l.expect))),
                scanner: l.scanner,
                genuine: false,
            },
            (0, None) => {
                let s = rng.below(self.scanners.ids.len() as u64) as u16;
                Shown {
                    prepared: self
                        .prepare(self.any_holder(rng), s, Presented::Genuine)
                        .await,
                    scanner: s,
                    genuine: true,
                }
            }
            (r, _) => {
                let s = rng.below(self.scanners.ids.len() as u64) as u16;
                let p = match r {
                    1 => Presented::Forged,
                    2 => Presented::Stale,
                    _ => Presented::Garbage,
                };
                Shown {
                    prepared: self.prepare(self.any_holder(rng), s, p).await,
                    scanner: s,
                    genuine: false,
                }
            }
        }
    }

    /// Sends `token` at `scanner` to its node and waits (at most the request timeout).
    async fn verify(&self, scanner: u16, token: &[u8]) -> Answer {
        tokio::time::timeout(
            self.request_timeout,
            target::verify(
                &self.conns,
                self.conns.home(scanner as usize),
                scanner as usize,
                token,
            ),
        )
        .await
    }

    /// What is wrong with `answer` (`None`: it is the `expect`ed verdict).
    fn problem(&self, answer: &Answer, expect: Reason, scanner: u16) -> Option<String> {
        match answer {
            Ok(Ok(got)) if is_retry(*got) => Some(format!("engine answered {got}")),
            Ok(Ok(got)) if *got == expect => None,
            Ok(Ok(got)) => Some(format!(
                "mismatch at {}: expected {expect}, got {got}",
                self.scanners.ids[scanner as usize]
            )),
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(_) => Some("timed out".to_string()),
        }
    }

    /// Counts one request of scenario `name` in the run's statistics.
    fn record(&self, name: &str, answer: &Answer, problem: Option<&str>, took: Duration) {
        let ok = problem.is_none();
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        s.requests += 1;
        if let Ok(Ok(got)) = answer {
            *s.verdicts.entry(got.label().to_string()).or_default() += 1;
            if ok || !is_retry(*got) {
                let _ = s.hist.record((took.as_micros() as u64).max(1));
            }
            if !ok && !is_retry(*got) {
                s.mismatches += 1;
            } else if !ok {
                s.errors += 1;
            }
        } else {
            s.errors += 1;
        }
        if let Some(p) = problem {
            if s.examples.len() < 10 {
                s.examples.push(format!("{name}: {p}"));
            }
        }
    }

    /// One person at a terminal of scenario `which`: shows a token, checks the verdict,
    /// records it in goose and in the run's statistics.
    async fn transaction(self: Arc<Self>, user: &mut GooseUser, which: Which) -> TransactionResult {
        let mut rng = self.rng();
        let shown = match which {
            Which::Adversarial => {
                let last = user.get_session_data::<LastToken>().cloned();
                self.adversarial(last, &mut rng).await
            }
            _ => {
                self.genuine(which, user.weighted_users_index, &mut rng)
                    .await
            }
        };
        let name = which.label();
        let scanner = shown.scanner;
        let (token, expect) = match shown.prepared {
            Ok(p) => p,
            Err(e) => {
                return Err(Box::new(TransactionError::Custom(format!(
                    "harness could not sign: {e}"
                ))))
            }
        };
        let started = Instant::now();
        let answer = self.verify(scanner, &token).await;
        let took = started.elapsed();
        let problem = self.problem(&answer, expect, scanner);
        let ok = problem.is_none();
        self.record(name, &answer, problem.as_deref(), took);
        if shown.genuine && ok {
            user.set_session_data(LastToken {
                token,
                expect,
                scanner,
            });
        }
        user.record_custom_request_duration("QUIC", name, took, ok, None, problem.as_deref())
            .await
    }
}

/// What a user shows: the token and the verdict it must get (or why it could not be signed),
/// at which scanner, and whether it is a genuine token (kept for the user's next replay).
struct Shown {
    prepared: Result<(Arc<[u8]>, Reason), String>,
    scanner: u16,
    genuine: bool,
}

/// The engine's answer to one request, or the request timeout.
type Answer = Result<Result<Reason>, tokio::time::error::Elapsed>;

fn scenario(
    ctx: &Arc<Ctx>,
    which: Which,
    weight: usize,
    think: (Duration, Duration),
) -> Result<Scenario> {
    let c = ctx.clone();
    let f: goose::goose::TransactionFunction = Arc::new(move |user| {
        let c = c.clone();
        Box::pin(async move { c.transaction(user, which).await })
    });
    Ok(Scenario::new(which.label())
        .set_weight(weight)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .set_wait_time(think.0, think.1)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .register_transaction(Transaction::new(f).set_name(which.label())))
}

/// Runs the four scenarios under goose against `conns` and summarises them. Returns the
/// summary and whether goose's thresholds held.
pub async fn run(
    fleet: Arc<Fleet>,
    scanners: Arc<ScannerSet>,
    conns: Arc<Connections>,
    target: std::net::SocketAddr,
    opts: &ClosedOptions,
) -> Result<(GooseSummary, bool)> {
    let ctx = Arc::new(Ctx::new(fleet, scanners, conns, opts));
    let reports = goose_reports(&opts.report_dir)?;
    let plan = format!(
        "{u},{}s;{u},{}s;0,{}s",
        opts.ramp_up_secs,
        opts.peak_secs,
        opts.ramp_down_secs,
        u = opts.users.max(1)
    );
    let attack = goose_attack(&ctx, opts, target, &reports, &plan)?;
    let (results, held) = match attack.execute().await {
        Ok(m) => (m.thresholds.clone(), true),
        Err(goose::GooseError::ThresholdsFailed { metrics, .. }) => {
            (metrics.thresholds.clone(), false)
        }
        Err(e) => return Err(anyhow::anyhow!("goose: {e}")),
    };
    let thresholds = results
        .iter()
        .map(|t| {
            format!(
                "{}: observed {} → {}",
                t.rule,
                t.observed,
                if t.passed { "PASS" } else { "FAIL" }
            )
        })
        .collect();
    let s = ctx.stats.lock().unwrap_or_else(|p| p.into_inner());
    Ok((
        GooseSummary {
            requests: s.requests,
            mismatches: s.mismatches,
            errors: s.errors,
            latency_us: latency(&s.hist),
            verdicts: s.verdicts.clone(),
            examples: s.examples.clone(),
            thresholds,
            goose_reports: reports,
            test_plan: plan,
        },
        held,
    ))
}

impl Ctx {
    /// The scenarios' shared state: the scanners of each kind, the holders of each gate, a
    /// fresh salt, nothing counted yet.
    fn new(
        fleet: Arc<Fleet>,
        scanners: Arc<ScannerSet>,
        conns: Arc<Connections>,
        opts: &ClosedOptions,
    ) -> Ctx {
        let idx = |prefix: &str| -> Vec<u16> {
            scanners
                .ids
                .iter()
                .enumerate()
                .filter(|(_, s)| s.starts_with(prefix))
                .map(|(i, _)| i as u16)
                .collect()
        };
        let mut gates = idx("gate-");
        gates.extend(idx("welfare-"));
        let mut by_gate: HashMap<u16, Vec<u32>> = HashMap::new();
        for h in 0..fleet.len() {
            if let Some(g) = scanners.home_gate(fleet.credential(h)) {
                by_gate.entry(g).or_default().push(h as u32);
            }
        }
        let mut salt = [0u8; 8];
        use rand_core::RngCore as _;
        let _ = rand_core::OsRng.try_fill_bytes(&mut salt);
        Ctx {
            partners: idx("partner-"),
            ages: idx("age-"),
            gates,
            by_gate,
            fleet,
            scanners,
            conns,
            thieves: (0..8)
                .map(|k| derive_key("gatehouse-loadtest goose thief", k))
                .collect(),
            salt: u64::from_le_bytes(salt),
            counter: AtomicU64::new(0),
            utc_offset_secs: opts.utc_offset_secs,
            request_timeout: opts.request_timeout,
            stats: Mutex::new(Stats {
                hist: histogram(),
                verdicts: BTreeMap::new(),
                requests: 0,
                mismatches: 0,
                errors: 0,
                examples: Vec::new(),
            }),
        }
    }
}

/// Creates `dir`; the goose reports (HTML, JSON, Markdown) to write there.
fn goose_reports(dir: &Path) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(["html", "json", "md"]
        .iter()
        .map(|ext| dir.join(format!("goose.{ext}")).display().to_string())
        .collect())
}

/// The goose attack: the four scenarios at their weights against `target`, the test `plan`,
/// the `reports` to write, the budget's thresholds and the operator's goose arguments.
fn goose_attack(
    ctx: &Arc<Ctx>,
    opts: &ClosedOptions,
    target: std::net::SocketAddr,
    reports: &[String],
    plan: &str,
) -> Result<Box<GooseAttack>> {
    let mut args: Vec<String> = Vec::new();
    for r in reports {
        args.push("--report-file".into());
        args.push(r.clone());
    }
    args.extend(opts.goose_args.iter().cloned());
    let config = GooseConfiguration::parse_args_default(&args)
        .map_err(|e| anyhow::anyhow!("goose arguments: {e}"))?;
    let host = format!("quic://{target}");
    let mut attack = GooseAttack::initialize_with_config(config)
        .map_err(|e| anyhow::anyhow!("goose: {e}"))?
        .register_scenario(scenario(ctx, Which::Gate, 6, opts.think)?)
        .register_scenario(scenario(ctx, Which::Partner, 3, opts.think)?)
        .register_scenario(scenario(ctx, Which::Age, 1, opts.think)?)
        .register_scenario(scenario(ctx, Which::Adversarial, 1, opts.think)?)
        .set_default(GooseDefault::Host, host.as_str())
        .and_then(|a| a.set_default(GooseDefault::TestPlan, plan))
        .and_then(|a| a.set_default(GooseDefault::NoTelnet, true))
        .and_then(|a| {
            a.set_default(
                GooseDefault::Timeout,
                opts.request_timeout
                    .as_secs_f64()
                    .ceil()
                    .to_string()
                    .as_str(),
            )
        })
        .map_err(|e| anyhow::anyhow!("goose defaults: {e}"))?;
    for t in &opts.thresholds {
        attack = attack
            .set_default(GooseDefault::Threshold, t.as_str())
            .map_err(|e| anyhow::anyhow!("goose threshold {t}: {e}"))?;
    }
    Ok(attack)
}
