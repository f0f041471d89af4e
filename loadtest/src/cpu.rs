//! CPU time and context switches of a process, from `/proc` (Linux): on a machine where
//! engine and harness share the cores, the report says how much of them each used, and how
//! often the engine's threads were switched. A node on another machine tells its CPU through
//! its `/metrics` ([`metrics_text`], [`metric_value`]).

/// A node's `/metrics` page, read from its operations port `ops` (`None` when it does not
/// answer 200 within 2 s).
pub async fn metrics_text(ops: std::net::SocketAddr) -> Option<String> {
    let got = gatehouse_engine::client::ops::get_async(
        ops,
        "/metrics",
        std::time::Duration::from_secs(2),
        4 << 20,
    )
    .await
    .ok()?;
    (got.status == 200).then_some(got.body)
}

/// The value of the unlabelled series `series` in a Prometheus text exposition.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// User + system CPU seconds of process `pid` (`"self"` for this one); `None` where `/proc`
/// is not available.
pub fn process_cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the full line (utime, stime) are 11 and 12 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux architecture the harness targets.
    Some((utime + stime) / 100.0)
}

/// Context switches, voluntary and involuntary, of every thread of process `pid` (`"self"`
/// for this one): the sum of the `voluntary_ctxt_switches` and `nonvoluntary_ctxt_switches`
/// lines of each `/proc/<pid>/task/*/status`. `None` where `/proc` is not available.
///
/// `/proc/<pid>/status` of the process itself gives only its main thread's counts, hence the
/// sum over its tasks. A thread that has exited is no longer listed there, and the kernel
/// does not show another process's dead threads' switches anywhere: the difference between
/// two readings misses the switches of the threads that exited in between (for the engine,
/// short-lived blocking-pool threads; its long-lived workers are all counted).
pub fn process_context_switches(pid: &str) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = None;
    for task in tasks.flatten() {
        // A thread may exit between the listing and the read: skip it.
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        for line in status.lines() {
            let count = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
                .and_then(|n| n.trim().parse::<u64>().ok());
            if let Some(n) = count {
                total = Some(total.unwrap_or(0) + n);
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn reads_own_cpu_time_on_linux() {
        if cfg!(target_os = "linux") {
            let mut x = 0u64;
            for i in 0..10_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            assert!(x != 1);
            assert!(super::process_cpu_secs("self").is_some_and(|s| s >= 0.0));
        }
    }

    #[test]
    fn counts_own_context_switches_on_linux() {
        if cfg!(target_os = "linux") {
            // Each sleep gives up the CPU: a voluntary switch of this thread at least. Another
            // test's thread that exits meanwhile takes its counts with it (see the function),
            // so the sum grows in at least one of a few tries rather than in every one.
            let grew = (0..5).any(|_| {
                let before = super::process_context_switches("self").unwrap();
                for _ in 0..5 {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                super::process_context_switches("self").unwrap() >= before + 5
            });
            assert!(grew);
        }
    }

    #[test]
    fn no_context_switches_without_the_process() {
        assert_eq!(super::process_context_switches("no-such-pid"), None);
    }
}
