//! The systemd unit lets the binary make every system call it makes: `scripts/syscall-check`
//! records `gatehouse serve` under strace (a revocation feed whose snapshot is built on the
//! lowest-priority thread, a scan, `gatehouse reload`, a drain) and checks every call against
//! the unit's `SystemCallFilter=` lines (expanded by `systemd-analyze`),
//! `RestrictAddressFamilies=`, `RestrictRealtime=` and `MemoryDenyWriteExecute=`. No systemd
//! runs as init on these machines, so this is as close to running under the unit as they
//! allow.
//!
//! The unit as shipped must pass; the filter it had before must fail, naming
//! `sched_setscheduler` (its `~@resources` made the snapshot build run at normal priority).
//! A machine where strace cannot trace fails the test with the script's message. Every run is
//! bounded in time and its whole process group is killed when it overruns.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The filter lines of the unit before the fix: `~@resources` took `sched_setscheduler` and
/// `setpriority` away from the snapshot thread, so it could not go to SCHED_IDLE.
const OLD_FILTER: &str = "SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources @mount @debug @cpu-emulation @obsolete @raw-io @reboot @swap @module
";

/// Longest a run of the script may take (it bounds its own waits far below this).
const RUN_LIMIT: Duration = Duration::from_secs(300);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn unit_text() -> String {
    std::fs::read_to_string(root().join("deploy/gatehouse.service")).unwrap()
}

/// The running script, in a process group of its own (strace and the server are in it too).
struct Run {
    child: Child,
}

impl Run {
    fn kill_group(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill_group();
        }
    }
}

/// Runs `scripts/syscall-check ARGS`; returns (exit code, stdout, stderr).
fn syscall_check(dir: &Path, name: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let (out, err) = (
        dir.join(format!("{name}.out")),
        dir.join(format!("{name}.err")),
    );
    let mut run = Run {
        child: Command::new("bash")
            .arg(root().join("scripts/syscall-check"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .process_group(0)
            .spawn()
            .expect("run bash scripts/syscall-check"),
    };
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = run.child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            run.kill_group();
            panic!(
                "scripts/syscall-check {args:?} did not finish in {RUN_LIMIT:?}: {}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Anything of the group still running (there should be nothing) goes too.
    run.kill_group();
    (
        status.code(),
        std::fs::read_to_string(out).unwrap(),
        std::fs::read_to_string(err).unwrap(),
    )
}

/// `unit` with its `SystemCallFilter=` lines replaced by `filter`, the rest as shipped.
fn unit_with_filter(unit: &str, filter: &str) -> String {
    let mut out = String::new();
    let mut placed = false;
    for line in unit.lines() {
        if line.starts_with("SystemCallFilter=") {
            if !placed {
                out.push_str(filter);
                placed = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(placed, "no SystemCallFilter= in the unit");
    out
}

#[test]
fn the_unit_allows_every_system_call_of_a_run_and_the_old_filter_is_caught() {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("gatehouse-unit-syscalls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let traces = dir.join("traces");
    let traces = traces.to_str().unwrap();

    // The unit as shipped, against a recorded run of the binary cargo built.
    let (code, out, err) = syscall_check(
        &dir,
        "shipped",
        &["--keep-traces", traces, env!("CARGO_BIN_EXE_gatehouse")],
    );
    assert!(
        !err.contains("strace cannot trace"),
        "this test needs strace, and strace cannot trace here (ptrace not permitted): the unit \
         was NOT checked\n{err}"
    );
    assert_eq!(
        code,
        Some(0),
        "scripts/syscall-check failed against deploy/gatehouse.service\n{out}{err}"
    );
    assert!(out.contains("every call is allowed"), "{out}{err}");
    let serve = std::fs::read_to_string(Path::new(traces).join("serve.trace")).unwrap();
    // The run did what it is for: the snapshot thread went to SCHED_IDLE, the server exited.
    assert!(
        serve
            .lines()
            .any(|l| l.contains(" sched_setscheduler(") && l.contains("SCHED_IDLE")),
        "no snapshot thread lowered itself in the run"
    );
    // strace splits a call that another thread interrupts: `exit_group(0 <unfinished ...>`.
    assert!(
        serve.contains(" exit_group(0)") || serve.contains(" exit_group(0 <unfinished ...>"),
        "the server did not exit 0"
    );
    let recorded = started.elapsed();

    // The same run against the filter the unit had: sched_setscheduler and setpriority denied.
    let check = |name: &str, unit: &str| {
        let path = dir.join(format!("{name}.service"));
        std::fs::write(&path, unit).unwrap();
        syscall_check(
            &dir,
            name,
            &["--unit", path.to_str().unwrap(), "--traces", traces],
        )
    };
    let unit = unit_text();
    let (code, out, err) = check("old", &unit_with_filter(&unit, OLD_FILTER));
    assert_eq!(code, Some(1), "the old filter passed\n{out}{err}");
    for denied in [
        "SystemCallFilter: sched_setscheduler",
        "SystemCallFilter: setpriority",
    ] {
        assert!(err.contains(denied), "{denied} not reported\n{err}");
    }
    assert_eq!(
        err.matches("SystemCallFilter: ").count(),
        2,
        "only those two: {err}"
    );

    // The checker follows systemd's rules for a deny list too: a later plain line takes names
    // back from it.
    let deny = "SystemCallFilter=~@resources\n";
    let (code, _, err) = check("deny", &unit_with_filter(&unit, deny));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("SystemCallFilter: sched_setscheduler"),
        "{err}"
    );
    let taken_back = format!("{deny}SystemCallFilter=sched_setscheduler setpriority\n");
    let (code, out, err) = check("taken-back", &unit_with_filter(&unit, &taken_back));
    assert_eq!(code, Some(0), "{out}{err}");
    // And the unit's other call-level restrictions: a family the unit refuses is caught.
    let unix_only = unit.replace(
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "RestrictAddressFamilies=AF_UNIX",
    );
    assert_ne!(unix_only, unit, "RestrictAddressFamilies= line not found");
    let (code, _, err) = check("unix-only", &unix_only);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("RestrictAddressFamilies: socket(AF_INET, ...)"),
        "{err}"
    );

    eprintln!(
        "recorded and checked in {recorded:.1?}, everything in {:.1?}",
        started.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_unit_leaves_the_log_level_to_the_configuration_and_does_not_restart_a_bad_one() {
    let unit = unit_text();
    let directives: Vec<&str> = unit
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    // RUST_LOG, when set, replaces `[log] level` entirely: the unit sets none.
    assert!(
        !directives.iter().any(|l| l.contains("RUST_LOG")),
        "the unit sets RUST_LOG"
    );
    assert!(directives.contains(&"RestartPreventExitStatus=64"));
    assert!(directives.contains(&"StateDirectory=gatehouse"));

    // ... because a bad configuration exits 64.
    let dir = std::env::temp_dir().join(format!("gatehouse-unit-exit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bad.toml"), "listen = 5\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["serve", "--config"])
        .arg(dir.join("bad.toml"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
