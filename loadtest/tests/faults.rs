//! The fault run, short form (`gatehouse-loadtest faults`; the long form is in the README): real
//! nodes on real Redis deployments started on loopback, real faults, every accepted token shown
//! again at another node, and a checker that reads the whole history.
//!
//! - In the safe configuration no token is accepted twice across restarts (without persistence
//!   and with AOF), `FLUSHALL`, memory filled, a partition, Sentinel failovers (kill -9, and a
//!   primary stopped past the failover timeout: a split brain), Cluster failovers (kill -9,
//!   `CLUSTER FAILOVER`) and a memory node restarted under phones whose clocks run ahead.
//! - With `accept_risk = ["eviction"]` and a store that evicts (`volatile-lru`), the checker
//!   finds the double accepts that risk allows: it can fail.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Command, Output};

use support::{gatehouse, harness, show};

fn faults(args: &[&str]) -> Output {
    Command::new(harness())
        .arg("faults")
        .arg("--bin")
        .arg(gatehouse())
        .args(["--rate", "40", "--settle-secs", "1"])
        .args(args)
        .output()
        .expect("run gatehouse-loadtest faults")
}

/// The count after `label` on the harness's `total` line.
fn total(out: &Output, label: &str) -> u64 {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("total"))
        .unwrap_or_else(|| panic!("no total line: {}", show(out)));
    let rest = line
        .split_once(label)
        .unwrap_or_else(|| panic!("no {label:?} in {line}"))
        .1;
    rest.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count after {label:?} in {line}"))
}

/// The single server's four faults: restart without persistence, `FLUSHALL`, restart with
/// AOF, memory filled (noeviction: writes refused, so `unavailable`).
#[test]
fn no_token_is_accepted_twice_across_single_server_faults() {
    let out = faults(&["--topology", "single", "--faults", "4"]);
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(total(&out, "double accepts"), 0, "{}", show(&out));
    assert_eq!(total(&out, "faults"), 4, "{}", show(&out));
    // The faults bit: tokens were denied while the store could not vouch for them, and there
    // were replays to judge.
    assert!(total(&out, "node_restarted") > 0, "{}", show(&out));
    assert!(total(&out, "unavailable") > 0, "{}", show(&out));
    assert!(total(&out, "replays") > 100, "{}", show(&out));
}

/// A partition, Sentinel and Cluster failovers, and a memory node restarted under phones whose
/// clocks run ahead.
#[test]
fn no_token_is_accepted_twice_across_failovers_partitions_and_restarts() {
    let out = faults(&[
        "--topology",
        "partition,sentinel,cluster,memory",
        "--faults",
        "2",
    ]);
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(total(&out, "double accepts"), 0, "{}", show(&out));
    assert_eq!(total(&out, "faults"), 8, "{}", show(&out));
    assert!(total(&out, "unavailable") > 0, "{}", show(&out));
    assert!(total(&out, "replays") > 100, "{}", show(&out));
}

#[test]
fn with_eviction_accepted_the_checker_finds_the_double_accepts() {
    let out = faults(&[
        "--topology",
        "single",
        "--faults",
        "1",
        "--accept-risk",
        "eviction",
    ]);
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "{}", show(&out));
    assert!(total(&out, "double accepts") > 0, "{}", show(&out));
}
