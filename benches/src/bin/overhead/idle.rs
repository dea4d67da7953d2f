//! The idle-connections step: what holding many quiet keep-alive
//! clients costs a proxy in memory. Agents keep connections open between
//! requests, so a proxy in front of a large fleet holds thousands.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};

use crate::client::{BoxError, Call, Conn, Tally};

/// One proxy's memory with and without the idle connections.
pub(crate) struct IdleResult {
    /// Resident memory once started and ready, before any load, in KiB.
    pub(crate) start_kib: u64,
    /// Resident memory after the load steps, with no client connected, in KiB.
    pub(crate) before_kib: u64,
    /// Resident memory with the connections open and idle, in KiB.
    pub(crate) with_kib: u64,
    /// Connections open and answered once.
    pub(crate) opened: usize,
    /// Connections that failed to open or to answer.
    pub(crate) failed: usize,
}

impl IdleResult {
    /// Bytes per connection: the growth divided by the connections held.
    pub(crate) fn per_connection(&self) -> f64 {
        if self.opened == 0 {
            return 0.0;
        }
        (self.with_kib as f64 - self.before_kib as f64) * 1024.0 / self.opened as f64
    }
}

/// Opens `n` connections to `addr`, sends `call` once on each (so each is
/// established through the proxy to its upstream, 128 at a time so the
/// proxy's upstream pool stays small), keeps them idle, and reads the
/// resident memory (`rss`) before and while they are held; `start_kib`
/// is carried into the result.
pub(crate) async fn idle(
    addr: SocketAddr,
    call: &Call,
    n: usize,
    start_kib: u64,
    rss: impl Fn() -> Result<u64, BoxError>,
) -> Result<IdleResult, BoxError> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_kib = rss()?;
    let conns: Vec<Option<Conn>> = stream::iter(0..n)
        .map(|_| {
            let call = call.clone();
            async move {
                let mut conn = Conn::open(addr).await.ok()?;
                let mut tally = Tally::default();
                conn.exchange(&call, &mut tally).await.then_some(conn)
            }
        })
        .buffer_unordered(128)
        .collect()
        .await;
    let opened = conns.iter().filter(|c| c.is_some()).count();
    // Let the proxy settle (buffers shrink, allocator caches) before reading.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let with_kib = rss()?;
    drop(conns);
    // Give the proxy time to close its side before the next step.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(IdleResult {
        start_kib,
        before_kib,
        with_kib,
        opened,
        failed: n - opened,
    })
}
