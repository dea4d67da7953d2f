//! Listeners, graceful shutdown and reloads; each connection is served
//! by the `connection` module (HTTP/1.1 and h2c).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::admin::Admin;
use crate::agent_api::AgentApi;
use crate::background::{forward_bus, metrics_upkeep, probe_upstream};
use crate::config::{Config, LoadError};
use crate::conn_guard::PerAddress;
use crate::connection::{Accepted, Builders, Conn};
use crate::front::{Front, Proxying};
use crate::reload::{Reloader, Source};
use crate::stack::{self, Stack};
use crate::telemetry;

/// Kept at its old path: `corral::server::Running`.
pub use crate::running::Running;

/// A proxy with its listeners bound, ready to serve.
pub struct Server {
    upstream: crate::upstream::Upstream,
    probe_interval: Duration,
    main: TcpListener,
    admin: Option<TcpListener>,
    front: Front,
    admin_front: Option<Front>,
    grace: Duration,
    limits: Limits,
    reloader: Reloader,
    /// Other replicas' reloads, heard on the bus.
    reloads: tokio::sync::broadcast::Receiver<corral_core::BusMessage>,
    replica: std::sync::Arc<str>,
}

/// What one client connection may send and hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) header_read_timeout: Duration,
    pub(crate) write_stall_timeout: Duration,
    pub(crate) max_header_bytes: usize,
    pub(crate) max_headers: usize,
    pub(crate) max_connections_per_address: usize,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("main", &self.main.local_addr().ok())
            .field(
                "admin",
                &self.admin.as_ref().and_then(|l| l.local_addr().ok()),
            )
            .finish()
    }
}

/// Why the proxy could not start.
#[derive(Debug)]
pub enum StartError {
    /// The configuration is refused.
    Config(LoadError),
    /// A listener could not be bound.
    Bind {
        /// Which listener (`server.listen`, `admin.listen`).
        key: &'static str,
        /// Its address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => e.fmt(f),
            StartError::Bind { key, addr, source } => {
                write!(f, "{key}: cannot listen on {addr}: {source}")
            }
        }
    }
}

impl std::error::Error for StartError {}

impl Server {
    /// Builds the stack for `config` and binds its listeners.
    pub async fn bind(config: &Config) -> Result<Self, StartError> {
        let stack = stack::build(config, config.source.as_deref()).map_err(StartError::Config)?;
        Self::bind_stack(config, &stack).await
    }

    /// Binds the listeners for an already built `stack`. A reload reads
    /// `config`'s file again, if it came from one.
    pub async fn bind_stack(config: &Config, stack: &Stack) -> Result<Self, StartError> {
        let source = crate::reload::file_source(config);
        Self::bind_reloading(config, stack, source).await
    }

    /// Builds the stack for `config` and binds its listeners; a reload
    /// reads the configuration from `source`.
    pub async fn bind_with(config: &Config, source: Source) -> Result<Self, StartError> {
        let stack = stack::build(config, config.source.as_deref()).map_err(StartError::Config)?;
        Self::bind_reloading(config, &stack, source).await
    }

    async fn bind_reloading(
        config: &Config,
        stack: &Stack,
        source: Source,
    ) -> Result<Self, StartError> {
        // A config built in code has not been through the file's checks.
        let file = config
            .source
            .clone()
            .unwrap_or_else(|| std::path::PathBuf::from(crate::config::NO_FILE));
        config
            .validate()
            .and_then(|()| config.check_admin_exposure())
            .map_err(|e| StartError::Config(LoadError::from_config(&file, e, None)))?;
        telemetry::configure_labels(
            config.metrics.per_agent_labels,
            config.metrics.max_model_labels,
        );
        let metrics = telemetry::metrics_handle();
        tokio::spawn(forward_bus(
            stack.bus().subscribe(),
            stack.events().clone(),
            stack.replica().clone(),
        ));
        let proxying = Proxying::new(stack);
        let admin_slot: crate::front::AdminSlot = std::sync::Arc::new(
            arc_swap::ArcSwap::from_pointee(Admin::new(stack, metrics.clone(), config)),
        );
        let agents = AgentApi::through(stack, config, proxying.clone());
        let reloader = Reloader::new(
            source,
            (config.clone(), stack.clone()),
            proxying.clone(),
            (admin_slot.clone(), agents.clone()),
            metrics,
        );
        admin_slot.store(std::sync::Arc::new(
            Admin::new(stack, telemetry::metrics_handle(), config).reloading(reloader.handle()),
        ));
        let bind = |key, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { key, addr, source })
        };
        let main = bind("server.listen", config.server.listen).await?;
        if let Ok(address) = main.local_addr() {
            agents.set_local_address(address);
        }
        let (admin, front, admin_front) = match config.admin.listen {
            Some(addr) => (
                Some(bind("admin.listen", addr).await?),
                Front::switchable(proxying, None, agents),
                Some(Front::admin_switchable(admin_slot)),
            ),
            None => (
                None,
                Front::switchable(proxying, Some(admin_slot), agents),
                None,
            ),
        };
        Ok(Self {
            upstream: stack.upstream().clone(),
            probe_interval: config.upstream.probe_interval,
            main,
            admin,
            front,
            admin_front,
            grace: config.server.shutdown_grace,
            reloader,
            reloads: stack.bus().subscribe(),
            replica: stack.replica().clone(),
            limits: Limits {
                header_read_timeout: config.server.header_read_timeout,
                write_stall_timeout: config.server.write_stall_timeout,
                max_header_bytes: config.server.max_header_bytes,
                max_headers: config.server.max_headers,
                max_connections_per_address: config.server.max_connections_per_address,
            },
        })
    }

    /// The address agents connect to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.main.local_addr()
    }

    /// The admin listener's address, when it has its own.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// What reloads its configuration while it serves.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets
    /// in-flight requests and streams finish for the grace period, and
    /// closes what is left.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server {
            upstream,
            probe_interval,
            main,
            admin,
            front,
            admin_front,
            grace,
            limits,
            reloader,
            reloads,
            replica,
        } = self;
        let following = tokio::spawn(crate::reload::follow_reloads(
            reloads,
            replica,
            reloader.handle(),
        ));
        let builders = std::sync::Arc::new(Builders::new(&limits));
        let graceful = crate::drain::Drain::default();
        // Connections still telling their protocol are closed at once on
        // shutdown: they have no request in flight.
        let (stopping, sniffs_stop) = tokio::sync::watch::channel(());
        // The admin listener has a table of its own: a client at its cap
        // on the main listener still reaches /metrics and the probes.
        let per_address = PerAddress::new(limits.max_connections_per_address);
        let admin_per_address = PerAddress::new(limits.max_connections_per_address);
        let serve =
            |stream: tokio::net::TcpStream, peer: SocketAddr, front: &Front, table: &PerAddress| {
                let accepted = Accepted {
                    stream,
                    service: Conn {
                        front: front.clone(),
                        peer,
                    },
                    slot: table.admit(peer.ip())?,
                    drain: graceful.clone(),
                    stop: sniffs_stop.clone(),
                };
                Some(accepted.serve(builders.clone(), limits))
            };
        let mut connections = JoinSet::new();
        let upkeep = tokio::spawn(metrics_upkeep());
        let probe = if upstream.fleet().is_some() {
            tokio::spawn(crate::upstreams::watch(upstream, probe_interval))
        } else {
            tokio::spawn(probe_upstream(upstream, probe_interval))
        };
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = main.accept() => {
                    if let Some(conn) = accepted_or_log(accepted).and_then(|(stream, peer)| serve(stream, peer, &front, &per_address)) {
                        connections.spawn(conn);
                    }
                }
                accepted = accept_optional(admin.as_ref()) => {
                    if let (Some((stream, peer)), Some(front)) = (accepted_or_log(accepted), &admin_front) {
                        if let Some(conn) = serve(stream, peer, front, &admin_per_address) {
                            connections.spawn(conn);
                        }
                    }
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(main);
        drop(admin);
        stopping.send_replace(());
        drain(graceful, connections, grace).await;
        upkeep.abort();
        probe.abort();
        following.abort();
        drop(reloader);
    }
}

/// Lets the open connections finish for the grace period, then closes
/// what is left.
async fn drain(graceful: crate::drain::Drain, mut connections: JoinSet<()>, grace: Duration) {
    tracing::info!(
        connections = connections.len(),
        grace_secs = grace.as_secs_f64(),
        "shutting down: no new connections; in-flight requests may finish"
    );
    graceful.start();
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            joined = connections.join_next() => if joined.is_none() {
                tracing::info!("all connections finished");
                break;
            },
            () = &mut deadline => {
                tracing::warn!(connections = connections.len(), "grace period over: closing the remaining connections");
                break;
            }
        }
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

fn accepted_or_log(
    accepted: io::Result<(tokio::net::TcpStream, SocketAddr)>,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    match accepted {
        Ok((stream, peer)) => {
            let _ = stream.set_nodelay(true);
            Some((stream, peer))
        }
        Err(e) => {
            // Out of file descriptors and the like: keep serving the
            // connections we have.
            tracing::warn!(error = %e, "accept failed");
            None
        }
    }
}

async fn accept_optional(
    listener: Option<&TcpListener>,
) -> io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}
