//! What a feed is (SPEC §11.3): where it lives, how a node follows it, the objects it holds and
//! its head, and why reading it can fail.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gatehouse_core::RevocationError;
use gatehouse_protocol::RevocationListError;
use serde::{Deserialize, Serialize};

/// Largest head object read.
pub(crate) const MAX_HEAD_BYTES: usize = 4096;

/// Where a feed lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedSource {
    /// A local directory (what `gatehouse issuer revoke --feed DIR` writes).
    Dir(PathBuf),
    /// An HTTP(S) base URL; objects are fetched as `BASE/head.json` and so on.
    Http(String),
    /// A Redis server and a key prefix.
    Redis {
        /// `redis://` or `rediss://` URL.
        url: String,
        /// Key prefix (`PREFIX:head`, …).
        prefix: String,
    },
}

impl FeedSource {
    /// Parses `dir:PATH`, a path, `http(s)://…`, or `redis(s)://…` with `key` as the prefix.
    pub fn parse(text: &str, key: Option<&str>) -> FeedSource {
        if text.starts_with("http://") || text.starts_with("https://") {
            FeedSource::Http(text.trim_end_matches('/').to_string())
        } else if text.starts_with("redis://") || text.starts_with("rediss://") {
            FeedSource::Redis {
                url: text.to_string(),
                prefix: key.unwrap_or("gatehouse:revocations").to_string(),
            }
        } else {
            FeedSource::Dir(PathBuf::from(text.strip_prefix("dir:").unwrap_or(text)))
        }
    }
}

/// What a node does once its revocation state is older than the maximum age.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfflinePolicy {
    /// Deny every token with `revocations_stale` until the feed confirms an epoch again.
    #[default]
    FailClosed,
    /// Keep verifying on the last signed epoch (reported not ready and stale all the same).
    KeepServing,
}

/// How a node follows its feed.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// Where the feed lives.
    pub source: FeedSource,
    /// Time between two pulls of the head.
    pub interval: Duration,
    /// Oldest revocation state the node vouches for.
    pub max_age: Duration,
    /// What happens past `max_age`.
    pub policy: OfflinePolicy,
    /// Whether `/readyz` fails past `max_age`.
    pub readiness: bool,
    /// Largest list (snapshot or delta) fetched, bytes.
    pub max_list_bytes: usize,
    /// Time allowed for one fetch.
    pub timeout: Duration,
    /// Extra CA certificates (PEM) for an HTTPS feed on an internal PKI.
    pub ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// When the state the node starts with was last known current (Unix seconds; 0: never,
    /// so a node starts stale until its first pull).
    pub confirmed_at: u64,
    /// The clock ages are read from (the server sets its own).
    pub clock: Arc<dyn gatehouse_core::Clock>,
}

impl FeedConfig {
    /// A feed at `source` with the defaults: pull every 2 s, maximum age 300 s, fail closed,
    /// readiness follows the age, lists up to 64 MiB, 10 s per fetch.
    pub fn new(source: FeedSource) -> Self {
        FeedConfig {
            source,
            interval: Duration::from_secs(2),
            max_age: Duration::from_secs(300),
            policy: OfflinePolicy::FailClosed,
            readiness: true,
            max_list_bytes: 64 * 1024 * 1024,
            timeout: Duration::from_secs(10),
            ca: Vec::new(),
            confirmed_at: 0,
            clock: Arc::new(gatehouse_core::SystemClock),
        }
    }
}

/// The feed's pointer object: the latest epoch and the latest snapshot's epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedHead {
    /// The latest epoch.
    pub epoch: u64,
    /// The epoch of the latest snapshot (at most `epoch`).
    pub snapshot: u64,
}

/// An object of a feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    /// The head.
    Head,
    /// The snapshot of this epoch.
    Snapshot(u64),
    /// The delta to this epoch.
    Delta(u64),
}

impl Object {
    /// The file name (directory and HTTP feeds).
    pub fn file_name(self) -> String {
        match self {
            Object::Head => "head.json".into(),
            Object::Snapshot(n) => format!("snapshot-{n}.cose"),
            Object::Delta(n) => format!("delta-{n}.cose"),
        }
    }

    /// The Redis key under `prefix`.
    pub fn redis_key(self, prefix: &str) -> String {
        match self {
            Object::Head => format!("{prefix}:head"),
            Object::Snapshot(n) => format!("{prefix}:snapshot:{n}"),
            Object::Delta(n) => format!("{prefix}:delta:{n}"),
        }
    }
}

/// Parses and checks a head object.
pub fn parse_head(bytes: &[u8]) -> Result<FeedHead, FeedError> {
    let head: FeedHead =
        serde_json::from_slice(bytes).map_err(|e| FeedError::Head(e.to_string()))?;
    if head.snapshot > head.epoch {
        return Err(FeedError::Head(format!(
            "snapshot {} is after epoch {}",
            head.snapshot, head.epoch
        )));
    }
    Ok(head)
}

/// The modification time of a local revocation file, as Unix seconds (the file counts as
/// confirmed when it was written).
pub fn file_confirmed_at(path: &Path) -> Option<u64> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    modified
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// Why a sync did not bring the node to the feed's head. The state in force is unchanged
/// (or advanced as far as the lists that did apply).
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The feed could not be reached or read.
    #[error("{object}: {problem}")]
    Fetch {
        /// The object.
        object: String,
        /// What went wrong.
        problem: String,
    },
    /// An object could not be written (a publisher's error; a node only reads).
    #[error("{object}: {problem}")]
    Write {
        /// The object.
        object: String,
        /// What went wrong.
        problem: String,
    },
    /// The object does not exist.
    #[error("{0}: not found")]
    Missing(String),
    /// The object is larger than the configured limit.
    #[error("{object}: larger than {limit} bytes")]
    TooLarge {
        /// The object.
        object: String,
        /// The limit.
        limit: usize,
    },
    /// The head is not `{"epoch": E, "snapshot": S}` with S ≤ E.
    #[error("head: {0}")]
    Head(String),
    /// A list was refused: unsigned, forged, unknown key or malformed.
    #[error("{object}: {source}")]
    Refused {
        /// The object.
        object: String,
        /// Why.
        source: RevocationListError,
    },
    /// A list does not apply to the epoch in force.
    #[error("{object}: {source}")]
    Apply {
        /// The object.
        object: String,
        /// Why.
        source: RevocationError,
    },
    /// The feed's head is older than the epoch in force (a feed restored from a backup?).
    #[error("the feed is at epoch {feed} but epoch {node} is in force: keeping it")]
    Behind {
        /// The feed's epoch.
        feed: u64,
        /// The node's epoch.
        node: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_and_heads_parse() {
        assert_eq!(
            FeedSource::parse("https://feed.example/rev/", None),
            FeedSource::Http("https://feed.example/rev".into())
        );
        assert_eq!(
            FeedSource::parse("redis://127.0.0.1/", Some("gh")),
            FeedSource::Redis {
                url: "redis://127.0.0.1/".into(),
                prefix: "gh".into()
            }
        );
        assert_eq!(
            FeedSource::parse("/var/lib/feed", None),
            FeedSource::Dir("/var/lib/feed".into())
        );
        assert_eq!(
            parse_head(br#"{"epoch": 7, "snapshot": 5}"#).unwrap(),
            FeedHead {
                epoch: 7,
                snapshot: 5
            }
        );
        assert!(parse_head(br#"{"epoch": 4, "snapshot": 5}"#).is_err());
        assert!(parse_head(b"7").is_err());
        assert_eq!(Object::Delta(3).redis_key("p"), "p:delta:3");
        assert_eq!(Object::Snapshot(3).file_name(), "snapshot-3.cose");
    }
}
