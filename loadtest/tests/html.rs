//! The harness as an SRE runs it from a script, with stderr to a pipe: a short real rush
//! against a `gatehouse serve` it starts on loopback, `--report` and `--html`.
//!
//! - progress on a pipe is a few plain lines: no carriage return, no escape sequence;
//! - the HTML report is one self-contained page (nothing from the network), `html REPORT.json`
//!   renders the same page from the JSON report, and headless Chromium draws it: the PNG is
//!   decoded and must hold the charts' colours, not a blank page.
//!
//! Chromium comes from the system packages (`scripts/chromium-install`, which `scripts/test`
//! runs). Without it the rendering test fails under CI (`CI` set) and otherwise says it skipped.
//! Needs the `gatehouse` binary as `tests/rush.rs` does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use support::{gatehouse, harness};

fn work_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("html-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Run {
    out: Output,
    dir: PathBuf,
}

/// One 4-second rush (1 s up, 2 s at 500 req/s, 1 s down), shared by the tests of this file.
fn run() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = work_dir();
        let t0 = Instant::now();
        let out = Command::new(harness())
            .args([
                "rush",
                "--holders",
                "10000",
                "--model-holders",
                "1000000",
                "--ramp-up-secs",
                "1",
                "--peak-secs",
                "2",
                "--ramp-down-secs",
                "1",
                "--spawn",
                "--report",
            ])
            .arg(dir.join("report.json"))
            .arg("--html")
            .arg(dir.join("report.html"))
            .arg("--gatehouse-bin")
            .arg(gatehouse())
            .stdin(Stdio::null())
            .output()
            .expect("running gatehouse-loadtest");
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "a CI-sized rush took {:?}",
            t0.elapsed()
        );
        // 1 is a missed budget (two cores shared with other builds can miss one): the
        // reports are written either way, and these tests are about them.
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Run { out, dir }
    })
}

#[test]
fn progress_on_a_pipe_is_plain_lines() {
    let r = run();
    let err = String::from_utf8_lossy(&r.out.stderr);
    assert!(!err.contains('\r'), "a carriage return on a pipe:\n{err:?}");
    assert!(
        !err.contains('\u{1b}'),
        "an escape sequence on a pipe:\n{err:?}"
    );
    // The run's start, its tenths and its end, as lines.
    assert!(err.contains("\n  run: 0/"), "{err}");
    assert!(err.contains("  run: done, "), "{err}");
    let run_lines = err.lines().filter(|l| l.starts_with("  run: ")).count();
    assert!(
        (2..=11).contains(&run_lines),
        "{run_lines} progress lines for the run:\n{err}"
    );
    // A tenth's line carries the phase and the last second's figures.
    assert!(
        err.lines()
            .any(|l| l.starts_with("  run: ") && l.contains("% (") && l.contains("p99(1s)")),
        "{err}"
    );
    assert!(err.contains("HTML report written to"), "{err}");
}

#[test]
fn the_html_report_is_offline_and_the_html_command_renders_the_same_page() {
    let r = run();
    let page = std::fs::read_to_string(r.dir.join("report.html")).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(page.matches("<svg").count() >= 4, "charts: {page}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(r.dir.join("report.json")).unwrap()).unwrap();
    // The run's own figures are on the page.
    let answered = report["run"]["answered"].as_u64().unwrap();
    assert!(answered > 0);
    assert!(page.contains(&format!("{answered} answered")), "{page}");
    let accepted = report["run"]["verdicts"]["accepted"].as_u64().unwrap();
    assert!(
        page.contains(&format!("<td class=\"l\">accepted</td><td>{accepted}</td>")),
        "{page}"
    );
    let lower = page.to_ascii_lowercase();
    for bad in [
        "http://", "https://", "<script", "<link", "src=", "href=", "url(",
    ] {
        assert!(!lower.contains(bad), "the page contains {bad:?}");
    }

    let again = r.dir.join("again.html");
    let out = Command::new(harness())
        .arg("html")
        .arg(r.dir.join("report.json"))
        .arg("--out")
        .arg(&again)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&again).unwrap(), page);

    // Not a report: a clear error, exit 2, no page.
    std::fs::write(r.dir.join("bogus.json"), "{\"tool\": 1}").unwrap();
    let out = Command::new(harness())
        .arg("html")
        .arg(r.dir.join("bogus.json"))
        .arg("--out")
        .arg(r.dir.join("bogus.html"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a gatehouse-loadtest JSON report")
    );
    assert!(!r.dir.join("bogus.html").exists());
}

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GATEHOUSE_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Headless Chromium draws `page` to `png`, killed after 60 s.
fn screenshot(chromium: &Path, page: &Path, png: &Path, profile: &Path) {
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1200,1600")
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromium");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match child.try_wait().unwrap() {
            Some(status) => {
                assert!(status.success(), "chromium exited {status:?}");
                return;
            }
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium did not finish its screenshot within 60 s");
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn headless_chromium_renders_the_report_with_its_charts() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "no chromium under CI: scripts/chromium-install should have installed it"
        );
        eprintln!("skipped: no chromium (scripts/chromium-install installs it)");
        return;
    };
    let r = run();
    let png = r.dir.join("report.png");
    let profile = r.dir.join("chromium-profile");
    let _ = std::fs::remove_dir_all(&profile);
    std::fs::create_dir_all(&profile).unwrap();
    screenshot(&chromium, &r.dir.join("report.html"), &png, &profile);
    let _ = std::fs::remove_dir_all(&profile);

    let bytes = std::fs::read(&png).unwrap();
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (1200, 1600));
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{:?}", info.color_type);
    let pixels: Vec<[u8; 3]> = buf[..info.buffer_size()]
        .chunks_exact(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    let non_white = pixels.iter().filter(|p| **p != [255, 255, 255]).count();
    let colours: HashSet<[u8; 3]> = pixels.iter().copied().collect();
    assert!(
        non_white * 100 >= pixels.len() * 2,
        "only {non_white} of {} pixels drawn: a blank page",
        pixels.len()
    );
    assert!(colours.len() >= 16, "{} distinct colours", colours.len());
    // The charts' first two series colours (p50 blue, p99 vermilion) are drawn: the SVGs
    // rendered, not only the text.
    let near = |c: [u8; 3]| {
        pixels
            .iter()
            .filter(|p| p.iter().zip(c).all(|(a, b)| a.abs_diff(b) <= 8))
            .count()
    };
    for series in [[0, 114, 178], [213, 94, 0]] {
        assert!(
            near(series) >= 200,
            "series colour {series:?} drawn on {} pixels",
            near(series)
        );
    }
}
