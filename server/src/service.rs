//! Running the service: the QUIC endpoint, the tasks around it, and the drain.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Endpoint, EndpointConfig, TokioRuntime};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{error, info, warn};

use crate::admission::Admission;
use crate::codes;
use crate::component::Component;
use crate::config::ServeParts;
use crate::error::ServerError;
use crate::settings::{Files, ReloadControl, ServerConfig};
use crate::store::Store;
use crate::{batcher, conn, feed, metrics, ops, reload, tls};
use gatehouse_core::Engine;

/// Runs the service on `socket` (a bound UDP socket) and, if given, the operations HTTP server on
/// `ops`, until `shutdown` resolves; then drains: stops accepting connections, lets requests in
/// flight finish (at most [`Limits::drain_timeout`](crate::settings::Limits::drain_timeout)), closes
/// every connection with [`codes::SHUTDOWN`] and waits for the peers to be told. Returns `Ok`
/// after a clean drain.
pub async fn run(
    engine: Arc<Engine>,
    config: ServerConfig,
    socket: std::net::UdpSocket,
    ops: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    config.check()?;
    let mut node = Node::start(engine, config, socket, ops)?;
    node.accept_until(shutdown).await;
    node.drain().await;
    info!("gatehouse stopped");
    Ok(())
}

/// A running node: its endpoint, its components, the tasks around them and its connections.
struct Node {
    config: ServerConfig,
    endpoint: Endpoint,
    shared: Arc<conn::Shared>,
    drain_tx: watch::Sender<bool>,
    /// The reload task, stopped first when the drain starts.
    reload_task: Option<JoinHandle<()>>,
    /// Tasks stopped once the connections are closed (purge, store probe, feed).
    background: Vec<JoinHandle<()>>,
    /// The operations endpoint, stopped last: it answers `draining` during the drain.
    ops_task: Option<JoinHandle<()>>,
    connections: JoinSet<()>,
}

impl Node {
    /// Builds the components (readiness asks them in this order: admission, the store, the
    /// feed, then the queue), binds the endpoint and starts the tasks around it.
    fn start(
        engine: Arc<Engine>,
        config: ServerConfig,
        socket: std::net::UdpSocket,
        ops: Option<TcpListener>,
    ) -> Result<Node, ServerError> {
        let clock = Arc::clone(&config.clock);
        let metrics = Arc::new(metrics::Metrics::new().with_clock(Arc::clone(&clock)));
        let admission = Admission::new(&config.limits);
        let feed_status = Arc::new(feed::FeedStatus::default());
        let reloads = reload::ReloadStatus::at_start(
            Arc::clone(&engine),
            reload::cert_expiry(&config),
            config.reload.as_ref().map(|control| &control.files),
            clock.now(),
        );
        metrics.add(Arc::clone(&admission) as Arc<dyn Component>);
        metrics.add(Arc::new(config.store.clone()));
        metrics.add(Arc::clone(&feed_status) as Arc<dyn Component>);
        metrics.add(Arc::clone(&reloads) as Arc<dyn Component>);
        let quic = tls::quinn_server_config(&config, Arc::clone(&engine), Arc::clone(&admission))?;
        let endpoint = Endpoint::new(
            EndpointConfig::default(),
            Some(quic),
            socket,
            Arc::new(TokioRuntime),
        )?;
        let queue = batcher::spawn(
            Arc::clone(&engine),
            config.batching,
            Arc::clone(&metrics),
            config.store.clone(),
            Arc::clone(&clock),
        );
        let (drain_tx, drain) = watch::channel(false);
        let shared = Arc::new(conn::Shared {
            engine: Arc::clone(&engine),
            limits: config.limits.clone(),
            metrics: Arc::clone(&metrics),
            queue: queue.with_scanner_share(config.limits.max_queued_per_scanner),
            drain,
            admission,
        });
        let ops_task = match ops {
            Some(listener) => {
                info!(addr = %listener.local_addr()?, "operations endpoint listening");
                let readers = ops::Readers {
                    engine: Arc::clone(&engine),
                    metrics,
                    feed: Arc::clone(&feed_status),
                    reloads: Arc::clone(&reloads),
                };
                Some(tokio::spawn(ops::serve(listener, readers)))
            }
            None => None,
        };
        // Reloads (files and TLS) and their results: a separate task, see `reload`.
        let reload_task = config.reload.clone().map(|control| {
            tokio::spawn(reload::serve_reloads(
                control,
                Arc::clone(&engine),
                endpoint.clone(),
                config.clone(),
                Arc::clone(&shared.admission),
                reloads,
            ))
        });
        let background = background_tasks(&engine, &config, feed_status);
        info!(addr = %endpoint.local_addr()?, store = config.store.label(), "gatehouse listening (QUIC)");
        // systemd `Type=notify`: ready once the sockets are bound and the engine loaded.
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        Ok(Node {
            config,
            endpoint,
            shared,
            drain_tx,
            reload_task,
            background,
            ops_task,
            connections: JoinSet::new(),
        })
    }

    /// Accepts connections until `shutdown` resolves: admission decides on each attempt before
    /// a task is spawned for it, so a burst cannot overshoot a limit.
    async fn accept_until(&mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                incoming = self.endpoint.accept() => match incoming {
                    Some(incoming) => {
                        let Some((incoming, handshake, held)) =
                            self.shared.admission.admit(incoming)
                        else {
                            continue;
                        };
                        self.connections.spawn(conn::connection(
                            Arc::clone(&self.shared),
                            incoming,
                            handshake,
                            held,
                        ));
                    }
                    None => {
                        error!("QUIC endpoint closed unexpectedly");
                        break;
                    }
                },
                Some(_) = self.connections.join_next(), if !self.connections.is_empty() => {}
            }
        }
    }

    /// The drain: not ready, no new connections, requests in flight answered (at most the
    /// drain timeout), every connection closed, then the tasks stopped.
    async fn drain(mut self) {
        info!(
            connections = self.connections.len(),
            "shutting down: draining requests in flight"
        );
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        if let Some(t) = &self.reload_task {
            t.abort();
        }
        self.shared.admission.start_drain();
        let _ = self.drain_tx.send(true);
        if !self.wait_for_connections().await {
            warn!("drain timed out: closing the remaining connections");
        }
        self.connections.abort_all();
        while self.connections.join_next().await.is_some() {}
        self.endpoint
            .close(codes::SHUTDOWN, b"server shutting down");
        if tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle())
            .await
            .is_err()
        {
            warn!("peers did not acknowledge the close in time");
        }
        for t in &self.background {
            t.abort();
        }
        drop(self.shared);
        if let Some(t) = self.ops_task {
            t.abort();
        }
    }

    /// Waits for the connections to finish their requests, refusing new attempts meanwhile;
    /// `false` when the drain timeout passed first.
    async fn wait_for_connections(&mut self) -> bool {
        let grace = self.config.limits.drain_timeout + Duration::from_millis(500);
        let connections = &mut self.connections;
        let drained = async {
            tokio::time::timeout(grace, async {
                while connections.join_next().await.is_some() {}
            })
            .await
            .is_ok()
        };
        tokio::pin!(drained);
        loop {
            tokio::select! {
                clean = &mut drained => return clean,
                incoming = self.endpoint.accept() => match incoming {
                    Some(incoming) => incoming.refuse(),
                    None => return false,
                },
            }
        }
    }
}

/// The tasks beside the endpoint that run until the node stops: the replay table's purge, the
/// shared store's probe and the revocation feed.
fn background_tasks(
    engine: &Arc<Engine>,
    config: &ServerConfig,
    feed_status: Arc<feed::FeedStatus>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![tokio::spawn(purge_replay_table(
        Arc::clone(engine),
        Arc::clone(&config.clock),
    ))];
    if let Store::Shared(r) = &config.store {
        tasks.push(tokio::spawn(r.probe().run()));
    }
    if let Some(mut feed) = config.revocation_feed.clone() {
        feed.clock = Arc::clone(&config.clock);
        tasks.push(tokio::spawn(feed::follow(
            Arc::clone(engine),
            feed,
            feed_status,
        )));
    }
    tasks
}

/// Drops expired one-time-use entries every second, off the runtime threads, so memory falls
/// back after a rush even without traffic.
async fn purge_replay_table(engine: Arc<Engine>, clock: Arc<dyn gatehouse_core::Clock>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let e = Arc::clone(&engine);
        let now = clock.now();
        let _ = tokio::task::spawn_blocking(move || e.purge(now)).await;
    }
}

/// [`run`] with process signals: SIGHUP reloads `files` and the TLS files, each on its own
/// merits (a refused file keeps its previous state; results in the log, `/metrics` and
/// `/readyz`), SIGTERM or ctrl-c start the drain.
pub async fn run_with_signals(
    engine: Arc<Engine>,
    config: ServerConfig,
    files: Files,
    socket: std::net::UdpSocket,
    ops: Option<TcpListener>,
) -> Result<(), ServerError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = signal(SignalKind::hangup())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let trigger = Arc::new(tokio::sync::Notify::new());
        let mut config = config;
        config.reload = Some(ReloadControl {
            files,
            trigger: Arc::clone(&trigger),
        });
        let reloader = tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                info!("SIGHUP: reloading trust list, scanners, revocations and TLS");
                // Results are logged and recorded by the server's reload task; a refused file
                // keeps its previous state in force.
                trigger.notify_one();
            }
        });
        let shutdown = async move {
            tokio::select! {
                r = tokio::signal::ctrl_c() => {
                    if let Err(e) = r {
                        error!("cannot listen for ctrl-c: {e}");
                    }
                    info!("interrupt: shutting down");
                }
                _ = terminate.recv() => info!("SIGTERM: shutting down"),
            }
        };
        let result = run(engine, config, socket, ops, shutdown).await;
        reloader.abort();
        result
    }
    #[cfg(not(unix))]
    {
        let _ = files;
        let shutdown = async {
            if let Err(e) = tokio::signal::ctrl_c().await {
                error!("cannot listen for ctrl-c: {e}");
            }
            info!("interrupt: shutting down");
        };
        run(engine, config, socket, ops, shutdown).await
    }
}

/// Everything `gatehouse serve --config file.toml` does after loading the file: builds the
/// engine, binds the sockets and runs with signals.
pub async fn serve(mut parts: ServeParts) -> Result<(), ServerError> {
    parts.connect_store().await?;
    let engine = parts.build_engine()?;
    let socket = std::net::UdpSocket::bind(parts.listen).map_err(|source| ServerError::Bind {
        what: "listen",
        addr: parts.listen,
        source,
    })?;
    let ops = match parts.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind {
                    what: "metrics_listen",
                    addr,
                    source,
                })?,
        ),
        None => None,
    };
    let (epoch, revoked) = engine.revocation_epoch();
    info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %parts.source.display(),
        backend = ?parts.engine.backend,
        strict_signatures = parts.engine.strict_signatures,
        batch = engine.batching().label(),
        batch_from = parts.engine.batch_from,
        multibuffer = gatehouse_mb::status().label(),
        listen = %parts.listen,
        metrics_listen = %parts.metrics_listen.map_or("none".to_string(), |a| a.to_string()),
        issuers = parts.trust.len(),
        scanners = parts.scanners.len(),
        revocation_epoch = epoch,
        revoked,
        "gatehouse starting"
    );
    run_with_signals(engine, parts.server, parts.files, socket, ops).await
}
