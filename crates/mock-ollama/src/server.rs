use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::state::State;
use crate::stats::{RecordedRequest, Stats};
use crate::{api, MockConfig};

/// A running simulated Ollama. Dropping it stops the server and closes
/// every connection.
///
/// ```
/// use corral_mock_ollama::{MockConfig, MockOllama};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let mock = MockOllama::start(MockConfig { parallel: 2, ..MockConfig::default() }).await?;
/// assert!(mock.url().starts_with("http://127.0.0.1:"));
/// assert_eq!(mock.stats().requests, 0);
/// # Ok(())
/// # }
/// ```
pub struct MockOllama {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl MockOllama {
    /// Starts a server on a free port of 127.0.0.1.
    pub async fn start(config: MockConfig) -> io::Result<Self> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts a server on `addr`.
    pub async fn bind(addr: SocketAddr, config: MockConfig) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::new(config));
        let task = tokio::spawn(serve(listener, state.clone()));
        Ok(Self { addr, state, task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What it has seen so far.
    pub fn stats(&self) -> Stats {
        self.state.counters.snapshot()
    }

    /// The last requests it received, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.counters.log()
    }

    /// Zeroes the counters and the log.
    pub fn reset(&self) {
        self.state.counters.reset();
    }

    /// Lets `n` paused streams (`X-Mock-Fault: pause_after=N`) go on.
    pub fn release(&self, n: usize) {
        self.state.release.add_permits(n);
    }

    /// Changes how many requests generate at once per model, standing for
    /// a restart with another `OLLAMA_NUM_PARALLEL` (also `POST
    /// /mock/parallel?n=N`). Requests generating keep their slots until
    /// they end; waiting ones keep waiting, for the new number of slots.
    ///
    /// ```
    /// use corral_mock_ollama::{MockConfig, MockOllama};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let mock = MockOllama::start(MockConfig { parallel: 3, ..MockConfig::default() }).await?;
    /// mock.set_parallel(6);
    /// assert_eq!(mock.parallel(), 6);
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_parallel(&self, n: usize) {
        self.state.set_parallel(n);
    }

    /// How many requests generate at once per model now.
    pub fn parallel(&self) -> usize {
        self.state.parallel()
    }

    /// Serves until the task ends (never, unless it fails); for the binary.
    pub async fn wait(mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for MockOllama {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    // Connections live in this set: aborting the server task drops it,
    // which aborts every connection, as killing Ollama would.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| api::handle(state.clone(), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
