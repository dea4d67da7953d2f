//! What a client connection may hold: a bound on connections per client
//! address, and a cut-off for a client that stops reading its answer.
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

/// The HTTP/2 connection preface: hyper-util reads up to these 24 bytes to
/// tell HTTP/2 from HTTP/1 before any of hyper's own timers run.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An IO whose reads fail with `TimedOut` if the bytes that tell HTTP/1
/// from HTTP/2 have not all arrived by a deadline: a client that sends
/// `P` (or any start of the preface) and then nothing would otherwise
/// hold its connection, task and per-address place forever. Once they
/// have arrived, reads pass through and hyper's timers take over.
#[derive(Debug)]
pub(crate) struct SniffDeadline<I> {
    io: I,
    /// Bytes read so far that match the preface; `None` once decided.
    matched: Option<usize>,
    deadline: Pin<Box<Sleep>>,
}

impl<I> SniffDeadline<I> {
    pub(crate) fn new(io: I, limit: Duration) -> Self {
        Self {
            io,
            matched: Some(0),
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for SniffDeadline<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(matched) = self.matched else {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        };
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                let take = new.len().min(PREFACE.len() - matched);
                self.matched = if new.is_empty()
                    || new[..take] != PREFACE[matched..matched + take]
                    || matched + take == PREFACE.len()
                {
                    None
                } else {
                    Some(matched + take)
                };
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                ready!(self.deadline.as_mut().poll(cx));
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client did not send a request line in time (server.header_read_timeout)",
                )))
            }
            other => other,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for SniffDeadline<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
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
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn an_address_gets_its_share_and_its_places_back() {
        let per = PerAddress::new(2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = per.admit(a).unwrap();
        let _second = per.admit(a).unwrap();
        assert!(per.admit(a).is_none(), "a third from the same address");
        assert!(per.admit(b).is_some(), "another address is not affected");
        drop(first);
        assert!(per.admit(a).is_some(), "a place given back is taken again");
        assert!(PerAddress::new(0).admit(a).is_some());
    }

    #[test]
    fn the_table_forgets_addresses_with_nothing_open() {
        let per = PerAddress::new(1);
        for i in 0..100u8 {
            drop(per.admit([10, 0, 0, i].into()).unwrap());
        }
        assert!(per.open.lock().unwrap().is_empty());
    }

    #[test]
    fn an_ipv4_client_counts_the_same_on_a_dual_stack_listener() {
        let per = PerAddress::new(1);
        let _v4 = per.admit([10, 0, 0, 1].into()).unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert!(per.admit(mapped).is_none());
    }

    #[test]
    fn an_ipv6_host_counts_as_its_64_bit_prefix() {
        let per = PerAddress::new(1);
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_subnet: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:fffe".parse().unwrap();
        let next_subnet: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let held = per.admit(one).unwrap();
        assert!(
            per.admit(same_subnet).is_none(),
            "the same /64 is one client"
        );
        assert!(per.admit(next_subnet).is_some(), "another /64 is another");
        drop(held);
        assert!(per.admit(same_subnet).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_starts_the_http2_preface_and_stops_times_out() {
        use tokio::io::AsyncReadExt;
        for sent in [&b"P"[..], &PREFACE[..23]] {
            let (mut client, server) = tokio::io::duplex(1024);
            let mut guarded = SniffDeadline::new(server, Duration::from_secs(5));
            client.write_all(sent).await.unwrap();
            let start = Instant::now();
            let mut buf = [0u8; 24];
            let mut got = 0;
            let err = loop {
                match guarded.read(&mut buf[got..]).await {
                    Ok(n) => got += n,
                    Err(e) => break e,
                }
            };
            assert_eq!(got, sent.len());
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            assert_eq!(start.elapsed(), Duration::from_secs(5));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn once_the_protocol_is_known_reads_wait_as_long_as_they_like() {
        use tokio::io::AsyncReadExt;
        for sent in [&b"GET / HTTP/1.1\r\n"[..], &PREFACE[..]] {
            let (mut client, server) = tokio::io::duplex(1024);
            let mut guarded = SniffDeadline::new(server, Duration::from_secs(5));
            client.write_all(sent).await.unwrap();
            let mut buf = vec![0u8; sent.len()];
            guarded.read_exact(&mut buf).await.unwrap();
            let late = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                client.write_all(b"x").await.unwrap();
                client
            });
            let mut one = [0u8; 1];
            guarded.read_exact(&mut one).await.unwrap();
            assert_eq!(&one, b"x");
            drop(late.await.unwrap());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_stops_is_cut_off_after_the_limit_and_not_before() {
        // A pipe of 64 bytes whose reader reads nothing.
        let (writer, _reader) = tokio::io::duplex(64);
        let mut guarded = WriteStall::new(writer, Duration::from_secs(10));
        guarded.write_all(&[0; 64]).await.unwrap();
        let start = Instant::now();
        let err = guarded.write_all(&[0; 1]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_not_cut_off() {
        use tokio::io::AsyncReadExt;
        let (writer, mut reader) = tokio::io::duplex(64);
        let mut guarded = WriteStall::new(writer, Duration::from_secs(10));
        let drain = tokio::spawn(async move {
            let mut buf = [0; 64];
            let mut total = 0;
            // Reads a little every 9 s: each write waits less than the
            // limit, though the whole takes far longer.
            loop {
                tokio::time::sleep(Duration::from_secs(9)).await;
                match reader.read(&mut buf).await.unwrap() {
                    0 => return total,
                    n => total += n,
                }
            }
        });
        guarded.write_all(&[1; 640]).await.unwrap();
        guarded.shutdown().await.unwrap();
        drop(guarded);
        assert_eq!(drain.await.unwrap(), 640);
    }
}
