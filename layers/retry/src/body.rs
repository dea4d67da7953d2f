use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use corral_core::{AttemptTimedOut, BoxError, Timeout, TimeoutKind};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::metrics::TIMEOUTS_TOTAL;

pin_project! {
    /// The response body of a retried request: ends a stream that stalls
    /// longer than the idle timeout (or runs past the total timeout) with
    /// a [`Timeout`] error, which the layers above count as a failure and
    /// the proxy renders in the client's framing: never a silent
    /// truncation.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        idle: Option<Duration>,
        idle_sleep: Option<Pin<Box<Sleep>>>,
        total_sleep: Option<Pin<Box<Sleep>>>,
        total: Duration,
        ended: bool,
        // Set when a timeout ends the stream, so the layers below that
        // see the body dropped count the upstream's failure, not a
        // client that left.
        timed_out: Option<AttemptTimedOut>,
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(
        inner: B,
        idle: Option<Duration>,
        total: Option<(Instant, Duration)>,
    ) -> Self {
        Self {
            inner,
            idle,
            idle_sleep: idle.map(|d| Box::pin(tokio::time::sleep(d))),
            total_sleep: total.map(|(deadline, _)| Box::pin(tokio::time::sleep_until(deadline))),
            total: total.map_or(Duration::ZERO, |(_, d)| d),
            ended: false,
            timed_out: None,
        }
    }

    /// Marks `timed_out` when a timeout ends the stream.
    pub(crate) fn marking(mut self, timed_out: AttemptTimedOut) -> Self {
        self.timed_out = Some(timed_out);
        self
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(idle), Some(sleep)) = (this.idle, this.idle_sleep.as_mut()) {
                    sleep.as_mut().reset(Instant::now() + *idle);
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        let timeout = if this
            .idle_sleep
            .as_mut()
            .is_some_and(|s| s.as_mut().poll(cx).is_ready())
        {
            Some(Timeout::new(
                TimeoutKind::Idle,
                this.idle.unwrap_or_default(),
            ))
        } else if this
            .total_sleep
            .as_mut()
            .is_some_and(|s| s.as_mut().poll(cx).is_ready())
        {
            Some(Timeout::new(TimeoutKind::Total, *this.total))
        } else {
            None
        };
        let Some(timeout) = timeout else {
            return Poll::Pending;
        };
        *this.ended = true;
        if let Some(flag) = this.timed_out.as_ref() {
            flag.set();
        }
        let kind = match timeout.kind() {
            TimeoutKind::Idle => "idle",
            _ => "total",
        };
        metrics::counter!(TIMEOUTS_TOTAL, "kind" => kind).increment(1);
        Poll::Ready(Some(Err(Box::new(timeout))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.ended {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}
