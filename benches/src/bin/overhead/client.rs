//! The load generator's side of the wire: one explicit HTTP/1.1
//! keep-alive connection per worker (not a pool, so the number of
//! connections each target holds is exactly what the bench says), the
//! request it repeats, and a tally of what the answers said besides
//! their latency (status, cache verdict, degradation), which is how the
//! bench proves its numbers measure forwarding and not refusals or
//! cache hits.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Errors of the bench: any error, sendable between tasks.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A latency histogram in nanoseconds, 1 ns to 10 minutes, 3 significant
/// digits: fine enough to tell 10 µs apart at the median.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid histogram bounds")
}

/// Nanoseconds of a duration, saturating (a histogram takes `u64`).
pub(crate) fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A request the bench sends many times: built once, cloned cheaply.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    method: Method,
    path: &'static str,
    host: HeaderValue,
    body: Bytes,
}

impl Call {
    /// `POST /api/generate` with a JSON body to `addr`.
    pub(crate) fn generate(addr: SocketAddr, body: &'static str) -> Self {
        Self {
            method: Method::POST,
            path: "/api/generate",
            host: host(addr),
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    /// `GET path` to `addr`.
    pub(crate) fn get(addr: SocketAddr, path: &'static str) -> Self {
        Self {
            method: Method::GET,
            path,
            host: host(addr),
            body: Bytes::new(),
        }
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut builder = Request::builder()
            .method(self.method.clone())
            .uri(self.path)
            .header(http::header::HOST, self.host.clone());
        if !self.body.is_empty() {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
        }
        builder
            .body(Full::new(self.body.clone()))
            .expect("a request of a valid method, path and header builds")
    }
}

/// The `Host` header for `addr`: HTTP/1.1 requires one and nginx answers
/// 400 without it (hyper's connection API, unlike its pooled client,
/// does not add it).
fn host(addr: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&addr.to_string()).expect("a socket address is a valid header value")
}

/// What the answers said apart from their latency.
#[derive(Debug, Default, Clone)]
pub(crate) struct Tally {
    /// 2xx answers.
    pub(crate) ok: u64,
    /// Answers of any other status (refusals, upstream errors).
    pub(crate) non_2xx: u64,
    /// Requests with no answer (connection or protocol errors).
    pub(crate) errors: u64,
    /// Connections the server closed that had to be opened again.
    pub(crate) reconnects: u64,
    /// Answers with `X-Corral-Degraded` (degradation rewrote them).
    pub(crate) degraded: u64,
    /// `X-Corral-Cache` values seen, by value (`none` when absent).
    pub(crate) cache: BTreeMap<String, u64>,
}

impl Tally {
    /// Adds `other`'s counts to this one's.
    pub(crate) fn merge(&mut self, other: &Tally) {
        self.ok += other.ok;
        self.non_2xx += other.non_2xx;
        self.errors += other.errors;
        self.reconnects += other.reconnects;
        self.degraded += other.degraded;
        for (value, n) in &other.cache {
            *self.cache.entry(value.clone()).or_default() += n;
        }
    }

    /// Counts one answer by its status and headers.
    fn note(&mut self, response: &Response<Incoming>) {
        if response.status().is_success() {
            self.ok += 1;
        } else {
            self.non_2xx += 1;
        }
        if response.headers().contains_key("x-corral-degraded") {
            self.degraded += 1;
        }
        let cache = response
            .headers()
            .get("x-corral-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none");
        *self.cache.entry(cache.to_string()).or_default() += 1;
    }

    /// The cache verdicts as `value n, value n`.
    pub(crate) fn cache_summary(&self) -> String {
        let parts: Vec<String> = self.cache.iter().map(|(v, n)| format!("{v} {n}")).collect();
        parts.join(", ")
    }
}

/// One keep-alive connection that opens itself again when the server
/// closed it (counted, so a proxy that closes connections shows up).
pub(crate) struct Conn {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    /// Opens a connection to `addr`.
    pub(crate) async fn open(addr: SocketAddr) -> Result<Self, BoxError> {
        Ok(Self {
            addr,
            sender: Some(handshake(addr).await?),
        })
    }

    /// Sends `call` and returns the answer's head (the body still to read),
    /// counting its status in `tally`.
    pub(crate) async fn send(
        &mut self,
        call: &Call,
        tally: &mut Tally,
    ) -> Result<Response<Incoming>, BoxError> {
        let ready = match &mut self.sender {
            Some(sender) => sender.ready().await.is_ok(),
            None => false,
        };
        if !ready {
            tally.reconnects += 1;
            self.sender = Some(handshake(self.addr).await?);
        }
        let sender = self
            .sender
            .as_mut()
            .expect("a sender was just put in place");
        match sender.send_request(call.request()).await {
            Ok(response) => {
                tally.note(&response);
                Ok(response)
            }
            Err(e) => {
                self.sender = None;
                Err(e.into())
            }
        }
    }

    /// Sends `call` and reads the whole answer; true when it was a 2xx
    /// read to its end. Failures are counted in `tally`.
    pub(crate) async fn exchange(&mut self, call: &Call, tally: &mut Tally) -> bool {
        let response = match self.send(call, tally).await {
            Ok(response) => response,
            Err(_) => {
                tally.errors += 1;
                return false;
            }
        };
        let success = response.status().is_success();
        match response.into_body().collect().await {
            Ok(_) => success,
            Err(_) => {
                tally.errors += 1;
                self.sender = None;
                false
            }
        }
    }
}

/// A new HTTP/1.1 connection with Nagle off (as every target sets it).
async fn handshake(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// One `GET path` on a fresh connection: the status and body, for
/// readiness checks and the metrics scrape.
pub(crate) async fn fetch(addr: SocketAddr, path: &'static str) -> Result<(u16, Bytes), BoxError> {
    let mut conn = Conn::open(addr).await?;
    let mut tally = Tally::default();
    let response = conn.send(&Call::get(addr, path), &mut tally).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}
