//! What a client connection may hold: a bound on connections per client
//! address, a deadline for its first bytes, and a cut-off for a client
//! that stops reading its answer.
//!
//! The stall guard is written here rather than taken from
//! `tokio-io-timeout`: that crate times reads as well, and a read is
//! pending for the whole of a long generation while the client waits in
//! silence. Only a write that cannot make progress says the client has
//! stopped reading.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::telemetry::CONNECTIONS_CLOSED_TOTAL;

/// Open connections by client address, at most `max` each (0: no bound).
#[derive(Debug, Clone)]
pub(crate) struct PerAddress {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One open connection's place; gives it back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    address: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerAddress {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            open: Arc::default(),
        }
    }

    /// A place for a new connection from `address`, or `None` when that
    /// address holds its share already.
    pub(crate) fn admit(&self, address: IpAddr) -> Option<Slot> {
        let address = client(address);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(address).or_insert(0);
        if self.max != 0 && *count >= self.max {
            metrics::counter!(CONNECTIONS_CLOSED_TOTAL, "reason" => "per_address").increment(1);
            return None;
        }
        *count += 1;
        Some(Slot {
            address,
            open: self.open.clone(),
        })
    }
}

/// Who a connection's address stands for. An IPv4 client on a
/// dual-stack listener is the same client; an IPv6 host is handed a whole
/// /64 (one subnet, any address in it), so the bound is per /64, or one
/// host could open its share from every address it has.
fn client(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                // The table holds only addresses with connections open.
                open.remove(&self.address);
            }
        }
    }
}

/// The HTTP/2 connection preface: its first bytes tell HTTP/2 (prior
/// knowledge, h2c) from HTTP/1.
pub(crate) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    Http2,
}

/// What a connection's first bytes say: HTTP/2 once the whole preface is
/// there, HTTP/1 as soon as a byte differs from it, `None` while what
/// came is a start of the preface (or nothing).
pub(crate) fn protocol_of(first: &[u8]) -> Option<Protocol> {
    let n = first.len().min(PREFACE.len());
    if first[..n] != PREFACE[..n] {
        Some(Protocol::Http1)
    } else if n == PREFACE.len() {
        Some(Protocol::Http2)
    } else {
        None
    }
}

/// How soon a connection that sent a start of the preface and paused is
/// looked at again, then twice as long each time up to
/// [`PARTIAL_PREFACE_POLL_MAX`]: its bytes are only peeked, so neither
/// their staying nor more of them arriving wakes the task, and a client
/// that sends `P` and waits must not cost a wake-up every few
/// milliseconds until the timeout. (One that sends `P` and closes its
/// side is seen only at the timeout: a peek shows the `P`, not the end.)
const PARTIAL_PREFACE_POLL: Duration = Duration::from_millis(5);
const PARTIAL_PREFACE_POLL_MAX: Duration = Duration::from_millis(200);

/// Tells the protocol from the connection's first bytes without taking
/// them: `peek`, so hyper then reads the request into its own buffer from
/// the first byte. hyper-util's `auto` builder reads them instead and
/// hands them back through a rewinding IO, and hyper, given those few
/// bytes first, grew its 8 KiB read buffer to 16 KiB on every connection
/// (heaptrack: 16.4 KiB a connection under `poll_read_from_io`, against
/// 8 in the bare proxy); its connection enum also carried HTTP/2's state
/// in every HTTP/1 connection's task.
///
/// A client that sends nothing, or a start of the preface and then
/// nothing, gets `TimedOut` after `limit`: it would otherwise hold its
/// connection, task and per-address place forever, since no hyper timer
/// runs before the protocol is known. A client that closes first gets
/// `UnexpectedEof`.
pub(crate) async fn sniff(stream: &TcpStream, limit: Duration) -> io::Result<Protocol> {
    let mut first = [0u8; PREFACE.len()];
    let sniffing = async {
        let mut pause = PARTIAL_PREFACE_POLL;
        loop {
            let n = stream.peek(&mut first).await?;
            match protocol_of(&first[..n]) {
                Some(protocol) => return Ok(protocol),
                None if n == 0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                None => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(PARTIAL_PREFACE_POLL_MAX);
                }
            }
        }
    };
    tokio::time::timeout(limit, sniffing)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not send a request line in time (server.header_read_timeout)",
            ))
        })
}

/// An IO whose writes fail with `TimedOut` once one has been unable to
/// make progress for `limit`: hyper then closes the connection, drops the
/// answer's body and, with it, the upstream permit it held.
#[derive(Debug)]
pub(crate) struct WriteStall<I> {
    io: I,
    limit: Duration,
    /// Boxed so the IO stays `Unpin`, as hyper wants it; made once per
    /// connection and reset, not remade, on each stall.
    timer: Pin<Box<Sleep>>,
    armed: bool,
}

impl<I> WriteStall<I> {
    pub(crate) fn new(io: I, limit: Duration) -> Self {
        Self {
            io,
            limit,
            timer: Box::pin(tokio::time::sleep(limit)),
            armed: false,
        }
    }

    /// Passes on a write step's result; while it is pending, the stall
    /// timer runs.
    fn guard<T>(&mut self, cx: &mut Context<'_>, step: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if step.is_ready() {
            self.armed = false;
            return step;
        }
        if !self.armed {
            self.timer.as_mut().reset(Instant::now() + self.limit);
            self.armed = true;
        }
        ready!(self.timer.as_mut().poll(cx));
        metrics::counter!(CONNECTIONS_CLOSED_TOTAL, "reason" => "write_stall").increment(1);
        tracing::debug!(
            stalled_secs = self.limit.as_secs_f64(),
            "closing a connection whose client reads nothing"
        );
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client read nothing for {:?} (server.write_stall_timeout)",
                self.limit
            ),
        )))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteStall<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteStall<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let step = Pin::new(&mut self.io).poll_write(cx, buf);
        self.guard(cx, step)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let step = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.guard(cx, step)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let step = Pin::new(&mut self.io).poll_flush(cx);
        self.guard(cx, step)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let step = Pin::new(&mut self.io).poll_shutdown(cx);
        self.guard(cx, step)
    }
}

#[cfg(test)]
mod tests;
