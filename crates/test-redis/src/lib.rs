//! `corral-test-redis`: a `redis-server` of a test's own.
//!
//! Corral's Redis tests talk to a real Redis, never a mock. Each starts
//! one on a free port (or takes the one `REDIS_URL` names, then with a
//! key prefix of its own) and it dies with the test. Tests of failures
//! stop it and start it again on the same port.
//!
//! It needs `redis-server` on the `PATH` (`scripts/test` installs
//! Debian's package when it is missing).
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use corral_test_redis::Redis;
//!
//! let mut redis = Redis::start().await;
//! assert!(redis.url.starts_with("redis://"));
//! if redis.owned() {
//!     redis.restart().await; // empty again: it keeps nothing
//! }
//! # }
//! ```

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `redis-server` of this test's own, stopped when dropped; or the one
/// `REDIS_URL` names.
#[derive(Debug)]
pub struct Redis {
    /// Its URL.
    pub url: String,
    /// The server, when this test started it.
    pub child: Option<Child>,
}

impl Redis {
    /// Starts one on a free port (or takes `REDIS_URL`).
    pub async fn start() -> Self {
        if let Ok(url) = std::env::var("REDIS_URL") {
            return Self { url, child: None };
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        Self::start_at(port).await
    }

    /// Starts one on `port` (where a replica was told to find Redis
    /// before it was there).
    pub async fn start_at(port: u16) -> Self {
        Self {
            url: format!("redis://127.0.0.1:{port}"),
            child: Some(spawn(port).await),
        }
    }

    fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .expect("a redis://host:port URL")
    }

    /// Stops this test's server (it keeps nothing: a restart is empty).
    /// Panics with `REDIS_URL`: a shared server is not this test's to stop.
    pub fn stop(&mut self) {
        let child = self
            .child
            .as_mut()
            .expect("only a server this test started can be stopped");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        self.child = Some(spawn(self.port()).await);
    }

    /// Whether this test may stop and restart it.
    pub fn owned(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A server on `port`, once it accepts connections.
async fn spawn(port: u16) -> Child {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server is installed (scripts/test installs it)");
    // A process has no event to wait on: poll until it answers.
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child
}
