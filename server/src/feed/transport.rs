//! Moving a feed's objects (SPEC §11.3): one [`Transport`] per kind of source, every read
//! bounded in size and time. Nodes read through it; the publisher (`gatehouse issuer revoke
//! --feed`, `issuer compact`) reads and writes through the same implementations, so both name
//! and find the objects alike. An HTTP feed is read only: it is served from a directory, and a
//! publisher writes that directory.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use super::source::MAX_HEAD_BYTES;
use super::source::{parse_head, FeedConfig, FeedError, FeedHead, FeedSource, Object};

/// Reads, and writes, the objects of one feed.
pub trait Transport: Send {
    /// The object's bytes, at most `limit` of them ([`FeedError::Missing`] when it is not
    /// there, [`FeedError::TooLarge`] past the limit).
    fn get(
        &mut self,
        object: Object,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<u8>, FeedError>> + Send;

    /// Writes one object: a reader finds the old bytes or the new, never part of them.
    fn put(
        &mut self,
        object: Object,
        bytes: Vec<u8>,
    ) -> impl Future<Output = Result<(), FeedError>> + Send;

    /// The feed's head, read and checked.
    fn head(&mut self) -> impl Future<Output = Result<FeedHead, FeedError>> + Send {
        async {
            let bytes = self.get(Object::Head, MAX_HEAD_BYTES).await?;
            parse_head(&bytes)
        }
    }
}

/// Why the transport cannot be set up at all.
fn setup(problem: String) -> FeedError {
    FeedError::Fetch {
        object: "(feed)".into(),
        problem,
    }
}

/// A feed in a local directory: `head.json`, `snapshot-S.cose`, `delta-N.cose`.
#[derive(Debug, Clone)]
pub struct Directory {
    dir: PathBuf,
    timeout: Duration,
}

impl Directory {
    /// The feed in `dir`, every read and write allowed `timeout`.
    pub fn new(dir: PathBuf, timeout: Duration) -> Directory {
        Directory { dir, timeout }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Reads at most `limit` bytes of the file at `path` (`None` when it does not exist): one byte
/// past the limit says "too large". Sized once from the file's length (bounded too), not
/// grown by doubling.
fn read_bounded(path: &Path, limit: usize) -> Result<Option<Vec<u8>>, String> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let bound = (limit as u64).saturating_add(1);
    let expected = file.metadata().map_or(0, |m| m.len()).min(bound);
    let mut bytes = Vec::with_capacity(expected as usize);
    file.take(bound)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    Ok(Some(bytes))
}

/// Writes `bytes` to `dir/name` whole or not at all: written aside, then renamed.
fn write_whole(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("renaming to {}: {e}", path.display()))
}

impl Transport for Directory {
    async fn get(&mut self, object: Object, limit: usize) -> Result<Vec<u8>, FeedError> {
        let name = object.file_name();
        let path = self.dir.join(&name);
        let fetch = |problem: String| FeedError::Fetch {
            object: name.clone(),
            problem,
        };
        // Plain file reads, off the runtime threads (a snapshot may be tens of MB).
        let read = tokio::task::spawn_blocking(move || read_bounded(&path, limit));
        match tokio::time::timeout(self.timeout, read).await {
            Err(_) => Err(fetch("timed out".into())),
            Ok(Err(e)) => Err(fetch(e.to_string())),
            Ok(Ok(Err(e))) => Err(fetch(e)),
            Ok(Ok(Ok(None))) => Err(FeedError::Missing(name.clone())),
            Ok(Ok(Ok(Some(b)))) if b.len() > limit => Err(FeedError::TooLarge {
                object: name.clone(),
                limit,
            }),
            Ok(Ok(Ok(Some(b)))) => Ok(b),
        }
    }

    async fn put(&mut self, object: Object, bytes: Vec<u8>) -> Result<(), FeedError> {
        let name = object.file_name();
        let write = tokio::task::spawn_blocking({
            let (dir, name) = (self.dir.clone(), name.clone());
            move || write_whole(&dir, &name, &bytes)
        });
        let problem = match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(Ok(()))) => return Ok(()),
            Err(_) => "timed out".to_string(),
            Ok(Err(e)) => e.to_string(),
            Ok(Ok(Err(e))) => e,
        };
        Err(FeedError::Write {
            object: name,
            problem,
        })
    }
}

/// A feed under an HTTP(S) base URL, read only.
#[derive(Debug, Clone)]
pub struct Http {
    base: String,
    client: reqwest::Client,
}

impl Http {
    /// The feed under `base` (no trailing `/`): TLS 1.2 or 1.3 with the web's roots and `ca`,
    /// `timeout` per request and per connection.
    pub fn new(
        base: String,
        timeout: Duration,
        ca: &[CertificateDer<'static>],
    ) -> Result<Http, FeedError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for c in ca {
            roots
                .add(c.clone())
                .map_err(|e| setup(format!("feed CA: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| setup(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| setup(e.to_string()))?;
        Ok(Http { base, client })
    }
}

impl Transport for Http {
    async fn get(&mut self, object: Object, limit: usize) -> Result<Vec<u8>, FeedError> {
        let name = object.file_name();
        let fetch = |problem: String| FeedError::Fetch {
            object: name.clone(),
            problem,
        };
        let too_large = || FeedError::TooLarge {
            object: name.clone(),
            limit,
        };
        let url = format!("{}/{name}", self.base);
        let mut response = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| fetch(e.to_string()))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(FeedError::Missing(name.clone()));
        }
        if !status.is_success() {
            return Err(fetch(format!("HTTP {status}")));
        }
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        // Sized once from the announced length (checked against the limit above) rather than
        // grown by doubling: an 18 MB snapshot would otherwise be copied and page-faulted
        // several times over.
        let announced = response.content_length().unwrap_or(0) as usize;
        let mut body = Vec::with_capacity(announced);
        while let Some(chunk) = response.chunk().await.map_err(|e| fetch(e.to_string()))? {
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    async fn put(&mut self, object: Object, _bytes: Vec<u8>) -> Result<(), FeedError> {
        Err(FeedError::Write {
            object: object.file_name(),
            problem: format!(
                "{}: an HTTP feed is read only; write the directory its web server serves",
                self.base
            ),
        })
    }
}

/// A feed kept in Redis under a key prefix: `PREFIX:head`, `PREFIX:snapshot:S`,
/// `PREFIX:delta:N`. One multiplexed connection, made at the first use and made again after
/// an error or a timeout.
#[derive(Clone)]
pub struct Redis {
    prefix: String,
    client: redis::Client,
    conn: Option<redis::aio::MultiplexedConnection>,
    timeout: Duration,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .field("connected", &self.conn.is_some())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// The feed at `url` under `prefix`, every command (and the connection) allowed
    /// `timeout`. Nothing is connected yet.
    pub fn new(url: &str, prefix: String, timeout: Duration) -> Result<Redis, FeedError> {
        let client = redis::Client::open(url).map_err(|e| setup(e.to_string()))?;
        Ok(Redis {
            prefix,
            client,
            conn: None,
            timeout,
        })
    }

    /// The connection, made now if there is none.
    async fn connection(
        &mut self,
        name: &str,
    ) -> Result<redis::aio::MultiplexedConnection, FeedError> {
        let fetch = |problem: String| FeedError::Fetch {
            object: name.to_string(),
            problem,
        };
        if let Some(conn) = &self.conn {
            return Ok(conn.clone());
        }
        let conn =
            tokio::time::timeout(self.timeout, self.client.get_multiplexed_async_connection())
                .await
                .map_err(|_| fetch("connect timed out".into()))?
                .map_err(|e| fetch(e.to_string()))?;
        self.conn = Some(conn.clone());
        Ok(conn)
    }
}

impl Transport for Redis {
    async fn get(&mut self, object: Object, limit: usize) -> Result<Vec<u8>, FeedError> {
        let name = object.file_name();
        let key = object.redis_key(&self.prefix);
        let mut conn = self.connection(&name).await?;
        let result = tokio::time::timeout(self.timeout, async {
            // Bounded before it is read: STRLEN first (0 also for a missing key).
            let len: u64 = redis::cmd("STRLEN")
                .arg(&key)
                .query_async(&mut conn)
                .await?;
            if len == 0 {
                return Ok(None);
            }
            if len > limit as u64 {
                return Ok(Some(Err(())));
            }
            let bytes: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
            Ok::<_, redis::RedisError>(bytes.map(Ok))
        })
        .await;
        let too_large = || FeedError::TooLarge {
            object: name.clone(),
            limit,
        };
        let problem = match result {
            Err(_) => "timed out".to_string(),
            Ok(Err(e)) => e.to_string(),
            Ok(Ok(None)) => return Err(FeedError::Missing(key)),
            Ok(Ok(Some(Err(())))) => return Err(too_large()),
            Ok(Ok(Some(Ok(b)))) if b.len() > limit => return Err(too_large()),
            Ok(Ok(Some(Ok(b)))) => return Ok(b),
        };
        self.conn = None;
        Err(FeedError::Fetch {
            object: name,
            problem,
        })
    }

    async fn put(&mut self, object: Object, bytes: Vec<u8>) -> Result<(), FeedError> {
        let name = object.file_name();
        let key = object.redis_key(&self.prefix);
        let mut conn = self.connection(&name).await?;
        let mut set = redis::cmd("SET");
        set.arg(&key).arg(bytes);
        let set = set.query_async::<()>(&mut conn);
        let problem = match tokio::time::timeout(self.timeout, set).await {
            Ok(Ok(())) => return Ok(()),
            Err(_) => "timed out".to_string(),
            Ok(Err(e)) => e.to_string(),
        };
        self.conn = None;
        Err(FeedError::Write {
            object: name,
            problem,
        })
    }
}

/// The transport of whichever source a feed names.
#[derive(Debug, Clone)]
pub enum AnyTransport {
    /// A directory.
    Directory(Directory),
    /// An HTTP(S) base URL (read only).
    Http(Http),
    /// A Redis key prefix.
    Redis(Box<Redis>),
}

impl AnyTransport {
    /// The transport for `config.source`, with its timeout and, for HTTPS, its extra CAs.
    pub fn open(config: &FeedConfig) -> Result<AnyTransport, FeedError> {
        Ok(match &config.source {
            FeedSource::Dir(dir) => {
                AnyTransport::Directory(Directory::new(dir.clone(), config.timeout))
            }
            FeedSource::Http(base) => {
                AnyTransport::Http(Http::new(base.clone(), config.timeout, &config.ca)?)
            }
            FeedSource::Redis { url, prefix } => {
                AnyTransport::Redis(Box::new(Redis::new(url, prefix.clone(), config.timeout)?))
            }
        })
    }
}

impl Transport for AnyTransport {
    async fn get(&mut self, object: Object, limit: usize) -> Result<Vec<u8>, FeedError> {
        match self {
            AnyTransport::Directory(t) => t.get(object, limit).await,
            AnyTransport::Http(t) => t.get(object, limit).await,
            AnyTransport::Redis(t) => t.get(object, limit).await,
        }
    }

    async fn put(&mut self, object: Object, bytes: Vec<u8>) -> Result<(), FeedError> {
        match self {
            AnyTransport::Directory(t) => t.put(object, bytes).await,
            AnyTransport::Http(t) => t.put(object, bytes).await,
            AnyTransport::Redis(t) => t.put(object, bytes).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_directory_is_read_bounded_and_written_whole() {
        let dir = std::env::temp_dir().join(format!("gatehouse-feed-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut feed = Directory::new(dir.join("feed"), Duration::from_secs(5));
        runtime().block_on(async {
            assert!(matches!(
                feed.get(Object::Head, 100).await,
                Err(FeedError::Missing(name)) if name == "head.json"
            ));
            feed.put(Object::Head, br#"{"epoch": 2, "snapshot": 1}"#.to_vec())
                .await
                .unwrap();
            assert_eq!(
                feed.head().await.unwrap(),
                FeedHead {
                    epoch: 2,
                    snapshot: 1
                }
            );
            feed.put(Object::Delta(2), vec![7; 10]).await.unwrap();
            assert_eq!(feed.get(Object::Delta(2), 10).await.unwrap(), vec![7; 10]);
            assert!(matches!(
                feed.get(Object::Delta(2), 9).await,
                Err(FeedError::TooLarge { limit: 9, .. })
            ));
            // No limit at all (the publisher's reads) does not overflow the bound.
            assert_eq!(
                feed.get(Object::Delta(2), usize::MAX).await.unwrap().len(),
                10
            );
        });
        let names: Vec<_> = std::fs::read_dir(dir.join("feed"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_http_feed_is_read_only() {
        let mut feed = Http::new(
            "https://feed.example/rev".into(),
            Duration::from_secs(1),
            &[],
        )
        .unwrap();
        let e = runtime()
            .block_on(feed.put(Object::Head, b"{}".to_vec()))
            .unwrap_err();
        assert!(e.to_string().contains("read only"), "{e}");
    }
}
