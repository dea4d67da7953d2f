//! How a response body ended, told once to whoever holds something until
//! then.
//!
//! A permit, a compartment slot, a breaker's verdict, a quota's
//! correction, a request's metrics: each is held until the answer's body
//! ends, and each needs to know *how* it ended. [`WatchBody`] wraps a body
//! and tells its [`OnEnd`] guard exactly once: [`End::Complete`] (sent in
//! full), [`End::Failed`] (the body broke: the upstream cut it, a stall),
//! or [`End::Cancelled`] (dropped before its end: the client left). The
//! failure stays a typed error on its way up; only the proxy, at the top,
//! renders it into the client's framing.
//!
//! A body is complete when it says so (`poll_frame` gives `None`, or
//! `is_end_stream` after a frame) *or* when it has delivered every byte
//! its length promised: hyper stops polling a body with a
//! `Content-Length` once that many bytes are written and drops it, so a
//! non-streamed answer whose body never says "end" by itself must not be
//! taken for one the client abandoned. A stream dropped after its
//! terminal frame went by whole (Ollama's `"done":true` line, OpenAI's
//! `data: [DONE]`, Anthropic's `message_stop`, the Responses API's
//! `response.completed`) is complete too: its client had the whole answer
//! and closed the connection before the upstream's body said it ended,
//! as the OpenAI SDKs do. It is told so when dropped or at its end, not
//! earlier: what it holds stays held while the upstream finishes.
//!
//! Modelled on tower-http's in-flight counter body and linkerd's
//! `body-eos`: one watcher, many guards.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::sync::{Arc, Mutex};
//! use corral_core::{End, OnEnd, WatchBody};
//! use http_body_util::{BodyExt, Full};
//!
//! struct Seen(Arc<Mutex<Vec<String>>>);
//! impl OnEnd for Seen {
//!     fn on_end(self, end: End<'_>) {
//!         self.0.lock().unwrap().push(format!("{end:?}"));
//!     }
//! }
//!
//! let seen = Arc::new(Mutex::new(Vec::new()));
//! let body = WatchBody::new(Full::new(bytes::Bytes::from("done")), Seen(seen.clone()));
//! assert_eq!(body.collect().await.unwrap().to_bytes(), "done");
//! assert_eq!(*seen.lock().unwrap(), ["Complete"]);
//!
//! // Dropped before its end: cancelled.
//! let body = WatchBody::new(Full::new(bytes::Bytes::from("never read")), Seen(seen.clone()));
//! drop(body);
//! assert_eq!(seen.lock().unwrap()[1], "Cancelled");
//! # }
//! ```

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Buf;
use http::{header, HeaderMap};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::terminal::TerminalFrame;
use crate::{classify_error, BoxError, Failure, Outcome};

/// How a body ended.
pub enum End<'a> {
    /// Sent in full.
    Complete,
    /// It broke: the error it gave (an upstream cut, a stall timeout).
    Failed(&'a (dyn std::error::Error + Send + Sync + 'static)),
    /// Dropped before its end: the client left, or a layer above gave up.
    Cancelled,
}

impl fmt::Debug for End<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Complete => f.write_str("Complete"),
            End::Failed(e) => write!(f, "Failed({e})"),
            End::Cancelled => f.write_str("Cancelled"),
        }
    }
}

impl End<'_> {
    /// What the end says of the upstream, for those who count failures:
    /// complete is a success, a break is the upstream's failure (its kind
    /// when the error says, a broken stream otherwise), a client that
    /// left says nothing.
    ///
    /// ```
    /// use corral_core::{End, Failure, Outcome, Timeout, TimeoutKind};
    /// use std::time::Duration;
    ///
    /// assert_eq!(End::Complete.outcome(), Outcome::Success);
    /// assert_eq!(End::Cancelled.outcome(), Outcome::Ignored);
    /// let stalled = Timeout::new(TimeoutKind::Idle, Duration::from_secs(60));
    /// assert_eq!(End::Failed(&stalled).outcome(), Outcome::Failure(Failure::Timeout));
    /// let other = std::io::Error::other("reset");
    /// assert_eq!(End::Failed(&other).outcome(), Outcome::Failure(Failure::Stream));
    /// ```
    pub fn outcome(&self) -> Outcome {
        match self {
            End::Complete => Outcome::Success,
            End::Cancelled => Outcome::Ignored,
            End::Failed(e) => match classify_error(*e) {
                Outcome::Failure(Failure::Connect | Failure::Broken) | Outcome::Ignored => {
                    Outcome::Failure(Failure::Stream)
                }
                failure => failure,
            },
        }
    }

    /// A short name: `completed`, `error` or `cancelled`.
    pub fn as_str(&self) -> &'static str {
        match self {
            End::Complete => "completed",
            End::Failed(_) => "error",
            End::Cancelled => "cancelled",
        }
    }
}

/// What a layer holds until a body ends: told of each data chunk, then of
/// the end, exactly once.
pub trait OnEnd: Send + 'static {
    /// A chunk of the body went by (token counts are read here).
    fn on_data(&mut self, _chunk: &[u8]) {}

    /// The body ended so.
    fn on_end(self, end: End<'_>);
}

/// Nothing to tell: a body watched by nobody (a layer that let a request
/// through without holding anything).
impl<T: OnEnd> OnEnd for Option<T> {
    fn on_data(&mut self, chunk: &[u8]) {
        if let Some(guard) = self {
            guard.on_data(chunk);
        }
    }

    fn on_end(self, end: End<'_>) {
        if let Some(guard) = self {
            guard.on_end(end);
        }
    }
}

/// The guard until it has been told; told "cancelled" when dropped first,
/// "complete" when dropped after the stream's terminal frame.
struct Armed<W: OnEnd> {
    guard: Option<W>,
    terminal: Option<TerminalFrame>,
}

impl<W: OnEnd> Armed<W> {
    fn end(&mut self, end: End<'_>) {
        if let Some(guard) = self.guard.take() {
            guard.on_end(end);
        }
    }

    /// A chunk of data went by.
    fn on_data(&mut self, chunk: &[u8]) {
        if let Some(guard) = self.guard.as_mut() {
            guard.on_data(chunk);
            if let Some(terminal) = self.terminal.as_mut() {
                terminal.read(chunk);
            }
        }
    }
}

impl<W: OnEnd> Drop for Armed<W> {
    fn drop(&mut self) {
        if self.terminal.as_ref().is_some_and(TerminalFrame::is_seen) {
            self.end(End::Complete);
        } else {
            self.end(End::Cancelled);
        }
    }
}

pin_project! {
    /// A body that tells its guard how it ended.
    ///
    /// Frames pass through untouched; an error becomes a [`BoxError`] (the
    /// same error, boxed) after the guard has seen it.
    pub struct WatchBody<B, W: OnEnd> {
        #[pin]
        inner: B,
        guard: Armed<W>,
        // Bytes still promised by the answer's length, when it has one.
        remaining: Option<u64>,
    }
}

impl<B: Body, W: OnEnd> WatchBody<B, W> {
    /// Watches `inner` for `guard`; its length, if it knows one, is the
    /// body's exact size hint.
    pub fn new(inner: B, guard: W) -> Self {
        let remaining = inner.size_hint().exact();
        Self::with_length(inner, guard, remaining, None)
    }

    /// Watches the body of an answer with `headers`: a `Content-Length`
    /// there is the length hyper will write and no more, and an NDJSON or
    /// SSE `Content-Type` a stream whose terminal frame is watched for.
    pub fn with_headers(inner: B, headers: &HeaderMap, guard: W) -> Self {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let remaining = declared.or_else(|| inner.size_hint().exact());
        Self::with_length(inner, guard, remaining, TerminalFrame::of(headers))
    }

    /// `response` with its body watched for `guard`, its length taken
    /// from its headers.
    pub fn response(response: http::Response<B>, guard: W) -> http::Response<Self> {
        let (parts, body) = response.into_parts();
        let body = Self::with_headers(body, &parts.headers, guard);
        http::Response::from_parts(parts, body)
    }

    fn with_length(
        inner: B,
        guard: W,
        remaining: Option<u64>,
        terminal: Option<TerminalFrame>,
    ) -> Self {
        let mut body = Self {
            guard: Armed {
                guard: Some(guard),
                terminal,
            },
            remaining,
            inner,
        };
        // An empty body may never be polled (hyper writes none for it).
        if body.inner.is_end_stream() || body.remaining == Some(0) {
            body.guard.end(End::Complete);
        }
        body
    }

    /// The body inside.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// Whether the guard has been told how the body ended.
    pub fn has_ended(&self) -> bool {
        self.guard.guard.is_none()
    }
}

impl<B: fmt::Debug, W: OnEnd> fmt::Debug for WatchBody<B, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchBody")
            .field("inner", &self.inner)
            .field("ended", &self.guard.guard.is_none())
            .finish()
    }
}

impl<B, W> Body for WatchBody<B, W>
where
    B: Body,
    B::Error: Into<BoxError>,
    W: OnEnd,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let mut this = self.project();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.guard.end(End::Complete);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                let e: BoxError = e.into();
                this.guard.end(End::Failed(&*e));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.remaining() as u64;
                    this.guard.on_data(data.chunk());
                    if let Some(left) = this.remaining.as_mut() {
                        *left = left.saturating_sub(len);
                    }
                }
                if *this.remaining == Some(0) || this.inner.is_end_stream() {
                    this.guard.end(End::Complete);
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
