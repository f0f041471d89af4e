//! Progress on stderr for the demo and the load harness: an `indicatif` bar when stderr is a
//! terminal, and otherwise a few plain lines (the start, each tenth, the end) with no carriage
//! return and no escape sequence, so that CI logs and files stay readable.
//!
//! Safe to update from many threads at once (the population is issued on every core): the
//! position is an atomic, and in line mode each tenth is printed by the one update that
//! crossed it.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal (and `TERM` is not `dumb`), plain lines otherwise.
    Auto,
    /// Plain lines only, even on a terminal (for example beside `--json` output).
    Lines,
    /// Nothing at all (`--quiet`).
    Off,
}

impl ProgressMode {
    /// `Auto` when `enabled`, else `Off`.
    pub fn enabled(enabled: bool) -> ProgressMode {
        if enabled {
            ProgressMode::Auto
        } else {
            ProgressMode::Off
        }
    }

    /// Whether anything is printed at all.
    pub fn is_on(self) -> bool {
        self != ProgressMode::Off
    }

    /// Whether this mode draws a bar on this process's stderr.
    pub fn draws_bar(self) -> bool {
        self == ProgressMode::Auto
            && std::io::stderr().is_terminal()
            && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
    }
}

enum Kind {
    Bar(ProgressBar),
    Lines { tenth: AtomicU64 },
    Off,
}

/// One task's progress: `total` units of work, advanced with [`Progress::inc`] or
/// [`Progress::set_position`], ended with [`Progress::finish`] (or on drop).
pub struct Progress {
    kind: Kind,
    label: String,
    unit: &'static str,
    total: u64,
    pos: AtomicU64,
    start: Instant,
    finished: AtomicBool,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("label", &self.label)
            .field("total", &self.total)
            .field("pos", &self.pos.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Progress {
    /// Starts showing progress of `label` over `total` `unit`s (a line in line mode).
    pub fn new(mode: ProgressMode, label: &str, total: u64, unit: &'static str) -> Progress {
        let kind = if !mode.is_on() {
            Kind::Off
        } else if mode.draws_bar() {
            let template = format!(
                "  {{prefix}} [{{bar:40.cyan/blue}}] {{percent:>3}}%  {{human_pos}}/{{human_len}} {unit}  {{elapsed}}, ETA {{eta}}  {{msg}}"
            );
            let style = ProgressStyle::with_template(&template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
                .with_style(style)
                .with_prefix(label.to_string());
            Kind::Bar(bar)
        } else {
            eprintln!("  {label}: 0/{total} {unit}");
            Kind::Lines {
                tenth: AtomicU64::new(0),
            }
        };
        Progress {
            kind,
            label: label.to_string(),
            unit,
            total,
            pos: AtomicU64::new(0),
            start: Instant::now(),
            finished: AtomicBool::new(false),
        }
    }

    /// Whether a bar is drawn (rather than lines, or nothing).
    pub fn is_bar(&self) -> bool {
        matches!(self.kind, Kind::Bar(_))
    }

    /// Advances by `n` units.
    pub fn inc(&self, n: u64) {
        let pos = self.pos.fetch_add(n, Ordering::Relaxed).saturating_add(n);
        self.update(pos, None::<fn() -> String>);
    }

    /// Sets the position.
    pub fn set_position(&self, pos: u64) {
        self.pos.store(pos, Ordering::Relaxed);
        self.update(pos, None::<fn() -> String>);
    }

    /// Sets the position with a detail: the bar's message, or the end of a tenth's line. The
    /// detail is only formatted when it is shown.
    pub fn set_position_with(&self, pos: u64, detail: impl FnOnce() -> String) {
        self.pos.store(pos, Ordering::Relaxed);
        self.update(pos, Some(detail));
    }

    /// A line above the bar (or a plain line); nothing when off.
    pub fn println(&self, line: &str) {
        match &self.kind {
            Kind::Bar(b) => b.println(line),
            Kind::Lines { .. } => eprintln!("{line}"),
            Kind::Off => {}
        }
    }

    /// Ends the progress: the bar stays drawn at its last position; line mode prints the end.
    pub fn finish(&self) {
        if self.finished.swap(true, Ordering::AcqRel) {
            return;
        }
        match &self.kind {
            Kind::Bar(b) => b.abandon(),
            Kind::Lines { .. } => eprintln!(
                "  {}: done, {}/{} {} in {:.1} s",
                self.label,
                self.pos.load(Ordering::Relaxed),
                self.total,
                self.unit,
                self.start.elapsed().as_secs_f64()
            ),
            Kind::Off => {}
        }
    }

    fn update(&self, pos: u64, detail: Option<impl FnOnce() -> String>) {
        match &self.kind {
            Kind::Bar(b) => {
                b.set_position(pos);
                if let Some(d) = detail {
                    b.set_message(d());
                }
            }
            Kind::Lines { tenth } => {
                // Tenths 1 to 9 here; the end is finish's line. Only the update that moves
                // `tenth` forward prints, so concurrent updates print each line once.
                let now = (pos.min(self.total) * 10)
                    .checked_div(self.total)
                    .unwrap_or(0)
                    .min(9);
                let mut seen = tenth.load(Ordering::Relaxed);
                while now > seen {
                    match tenth.compare_exchange_weak(
                        seen,
                        now,
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => {
                            let secs = self.start.elapsed().as_secs_f64();
                            let extra = detail.map(|d| format!("  {}", d())).unwrap_or_default();
                            eprintln!(
                                "  {}: {}% ({pos}/{} {}) in {secs:.1} s{extra}",
                                self.label,
                                now * 10,
                                self.total,
                                self.unit
                            );
                            return;
                        }
                        Err(s) => seen = s,
                    }
                }
            }
            Kind::Off => {}
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenth(p: &Progress) -> Option<u64> {
        match &p.kind {
            Kind::Lines { tenth } => Some(tenth.load(Ordering::Relaxed)),
            _ => None,
        }
    }

    #[test]
    fn line_mode_counts_tenths_up_to_nine_and_the_end_once() {
        assert!(!ProgressMode::Off.draws_bar());
        assert!(!ProgressMode::Lines.draws_bar());
        let p = Progress::new(ProgressMode::Lines, "test", 100, "items");
        assert!(!p.is_bar());
        for _ in 0..35 {
            p.inc(1);
        }
        assert_eq!(tenth(&p), Some(3));
        for _ in 0..65 {
            p.inc(1);
        }
        assert_eq!(p.pos.load(Ordering::Relaxed), 100);
        // 100 % is the end line's, not a tenth's.
        assert_eq!(tenth(&p), Some(9));
        p.finish();
        assert!(p.finished.load(Ordering::Relaxed));
    }

    #[test]
    fn a_zero_total_prints_no_tenth() {
        let p = Progress::new(ProgressMode::Lines, "empty", 0, "items");
        p.set_position(5);
        assert_eq!(tenth(&p), Some(0));
    }

    #[test]
    fn off_mode_prints_nothing_and_keeps_count() {
        let p = Progress::new(ProgressMode::Off, "off", 10, "items");
        p.inc(4);
        assert_eq!(tenth(&p), None);
        assert_eq!(p.pos.load(Ordering::Relaxed), 4);
    }
}
