//! The one error type of a setting out of range, shared by every part that checks settings.

/// A setting out of range: its key as the configuration file names it (within its table), and
/// what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct Invalid {
    /// The key, as in the file (`idle_timeout_secs`, `timeout_ms`, …).
    pub field: &'static str,
    /// What is wrong.
    pub problem: String,
}

impl Invalid {
    /// `field` is out of range: `problem`.
    pub fn new(field: &'static str, problem: impl Into<String>) -> Invalid {
        Invalid {
            field,
            problem: problem.into(),
        }
    }
}
