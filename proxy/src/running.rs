//! A proxy serving in the background: what tests and an embedding
//! program start and stop.

use std::net::SocketAddr;

use crate::config::Config;
use crate::server::{Server, StartError};
use crate::stack::{self, Stack};

/// A proxy serving in the background, for tests and embedding.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    reloader: crate::reload::Reloader,
}

impl Running {
    /// Binds and serves `config` on a background task.
    pub async fn start(config: &Config) -> Result<Self, StartError> {
        let stack = stack::build(config, config.source.as_deref()).map_err(StartError::Config)?;
        Self::start_stack(config, &stack).await
    }

    /// Binds and serves an already built `stack` (from
    /// [`stack::build_with`] and a registry of one's own).
    pub async fn start_stack(config: &Config, stack: &Stack) -> Result<Self, StartError> {
        let server = Server::bind_stack(config, stack).await?;
        let addr = server.local_addr().map_err(|source| StartError::Bind {
            key: "server.listen",
            addr: config.server.listen,
            source,
        })?;
        let admin_addr = server.admin_addr();
        let reloader = server.reloader();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            addr,
            admin_addr,
            stop: Some(stop),
            task,
            reloader,
        })
    }

    /// What reloads its configuration: its file again
    /// ([`Reloader::reload`](crate::reload::Reloader::reload)), or a
    /// configuration given ([`Reloader::reload_to`](crate::reload::Reloader::reload_to)).
    pub fn reloader(&self) -> &crate::reload::Reloader {
        &self.reloader
    }

    /// Where agents connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The separate admin listener, when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Starts the graceful shutdown, as SIGTERM would, and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Starts the graceful shutdown without waiting; the returned handle
    /// ends when the server has stopped.
    pub fn begin_shutdown(mut self) -> tokio::task::JoinHandle<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        std::mem::replace(&mut self.task, tokio::spawn(async {}))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}
