//! One client connection: its protocol told, then served by hyper with
//! the proxy's limits until it closes.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use corral_core::BoxBody;

use crate::conn_guard::{sniff, Protocol, Slot, WriteStall};
use crate::drain::Drain;
use crate::front::Front;
use crate::repoll::Repolled;
use crate::server::Limits;

/// Streams one h2c connection may have open at once.
const H2_MAX_CONCURRENT_STREAMS: u32 = 32;

/// How connections are served: HTTP/1 and h2c, within the limits.
pub(crate) struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Builders {
    pub(crate) fn new(limits: &Limits) -> Self {
        let mut http1 = http1::Builder::new();
        // The header read timeout also runs while a kept-alive connection
        // waits for its next request: idle clients are closed after it.
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes)
            .max_headers(limits.max_headers)
            .keep_alive(true);
        // h2c: no header read timeout applies, so pings find dead peers; a
        // client may not open more streams at once than an agent needs. (A
        // client that holds its flow-control window shut is not caught by the
        // write stall guard: see the README's hostile-input notes.)
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
            .keep_alive_interval(limits.header_read_timeout)
            .keep_alive_timeout(limits.header_read_timeout);
        Self { http1, http2 }
    }
}

/// A connection taken in, not yet served.
pub(crate) struct Accepted {
    pub(crate) stream: tokio::net::TcpStream,
    pub(crate) service: Conn,
    /// Its place in its address's count, given back when it closes.
    pub(crate) slot: Slot,
    /// The graceful shutdown's signal.
    pub(crate) drain: Drain,
    pub(crate) stop: tokio::sync::watch::Receiver<()>,
}

impl Accepted {
    /// Tells its protocol, then serves it until it closes. An HTTP/2
    /// connection is boxed: every connection's task is as large as its
    /// largest state, and HTTP/1's is the one almost every agent uses.
    pub(crate) async fn serve(mut self, builders: std::sync::Arc<Builders>, limits: Limits) {
        let protocol = tokio::select! {
            sniffed = sniff(&self.stream, limits.header_read_timeout) => sniffed,
            _ = self.stop.changed() => return,
        };
        let Ok(protocol) = protocol else {
            return;
        };
        let io = TokioIo::new(WriteStall::new(self.stream, limits.write_stall_timeout));
        match protocol {
            Protocol::Http1 => {
                let conn = builders.http1.serve_connection(io, self.service);
                let _ = Repolled::new(self.drain.watch(conn, http1::Connection::graceful_shutdown))
                    .await;
            }
            Protocol::Http2 => {
                let conn = builders.http2.serve_connection(io, self.service);
                let _ = Box::pin(Repolled::new(
                    self.drain.watch(conn, http2::Connection::graceful_shutdown),
                ))
                .await;
            }
        }
        drop(self.slot);
    }
}

/// One connection's service.
#[derive(Clone)]
pub(crate) struct Conn {
    pub(crate) front: Front,
    pub(crate) peer: SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for Conn {
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<BoxBody>, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let front = self.front.clone();
        let peer = self.peer;
        Box::pin(async move { Ok(front.handle(request, peer).await) })
    }
}
