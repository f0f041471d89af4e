//! The command's standard output and standard error, which never panic: what cannot be
//! written is dropped. A closed stdout (`gatehouse scan … | head -1`) must not turn a
//! verdict's exit code into a panic's 101, and a closed stderr (a log pipe that died) must not
//! stop the server.

use std::io::{IsTerminal, Write};

use gatehouse_engine::server::LogFormat;

/// Standard error that never fails. A closed stderr (`gatehouse serve … 2>&1 | head -1`, a log
/// pipe that died) must not stop the server: a failed write is dropped, where the log
/// subscriber would otherwise report it with `eprintln!`, which panics on a closed pipe.
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// `eprintln!` that does not panic when stderr is closed.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!($crate::cli::output::Stderr, $($arg)*);
    }};
}

/// `println!` that never panics: a closed stdout (`gatehouse scan … | head -1`) must not turn
/// a verdict's exit code into a panic's 101. What cannot be written is dropped.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!` that never panics (see [`out!`]).
macro_rules! out_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

pub(crate) use {out, out_raw, say};

/// Logs go to stderr: text (colour only when stderr is a terminal, so files and the journal
/// get plain lines) or JSON. `RUST_LOG` overrides `level`.
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}
